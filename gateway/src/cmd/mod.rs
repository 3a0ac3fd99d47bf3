//! One module per subcommand, each with its clap arguments and an `execute` function
//! returning the process's exit code; `main.rs` parses and dispatches.
//!
//! One-shot commands (`profile`, `keygen`, `pseudonym`, `outbox`, `status`) start no async runtime
//! and no thread: they also run under qemu-user, which hangs when a guest program starts
//! a thread. `run` and `demo` use [`runtime`]; `scan` a current-thread runtime.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

pub(crate) mod demo;
pub(crate) mod keygen;
pub(crate) mod outbox;
pub(crate) mod profile;
pub(crate) mod pseudonym;
pub(crate) mod run;
pub(crate) mod scan;
pub(crate) mod status;

/// Where the Debian package installs the shipped profiles.
const INSTALLED_PROFILES: &str = "/usr/share/iomt-gateway/device-profiles";

/// `./device-profiles` if it is a directory, else the installed profiles.
fn default_profiles_dir() -> PathBuf {
    let local = PathBuf::from("device-profiles");
    if local.is_dir() {
        local
    } else {
        PathBuf::from(INSTALLED_PROFILES)
    }
}

/// The daemon's and the demo's runtime: two worker threads.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tune_allocators();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The allocators' settings, before the runtime's threads start.
///
/// Rust's allocations go to mimalloc (`main.rs`), which keeps freed memory for
/// `purge_delay` before it returns it to the system (1 s by default in mimalloc 3): under
/// load that kept the daemon's peak RSS about 9 MiB above what it used (the MQTT round-trip
/// benchmark). 3 ms gave the peak back and kept the speed; 0 slowed it by a fifth.
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
///
/// SQLite allocates through glibc's allocator, which gives each thread that allocates its
/// own arena, each keeping what it freed: one arena, unless `MALLOC_ARENA_MAX` says
/// otherwise (only the outbox's database thread runs SQLite, so that arena's lock is not
/// contended).
fn tune_allocators() {
    // mimalloc reads its options from the environment when the process loads, so a
    // default set now would not count: the option is set unless the environment has it.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options, a plain integer read when memory is
        // purged.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` only sets a tunable of the allocator; called before the
        // runtime's threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_t` of mimalloc 3, which
/// the bindings do not name; `the_purge_delay_option_is_where_we_set_it` checks it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before returning it, in milliseconds.
const PURGE_DELAY_MS: std::os::raw::c_long = 3;

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_where_we_set_it() {
        // mimalloc 3's default for purge_delay is 1000 ms: at another place in
        // `mi_option_t` (after an upgrade) this reads another option's value.
        // SAFETY: reads an option.
        let value = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert!(value == 1000 || value == PURGE_DELAY_MS, "{value}");
    }
}
