//! How the `iomt-gateway` binary is linked.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // Relative relocations packed (DT_RELR): the binary is position independent, and
        // its ~53,000 relative relocations took 1.2 MiB as RELA entries, which the dynamic
        // loader reads at every start and which then stay resident. Packed they take a few
        // KiB. Needs glibc 2.36 (Debian 12 "bookworm", the oldest supported system); an
        // older one refuses to start the binary, naming `GLIBC_ABI_DT_RELR`.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
