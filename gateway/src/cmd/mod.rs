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
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// glibc's allocator gives each thread that allocates its own arena (up to 8 per core),
/// and each arena keeps what it freed: under load, the daemon's few threads held about
/// twice the memory in use (the MQTT round-trip benchmark: 23 MB resident in arenas for
/// 5 MB allocated). One arena, set before the runtime's threads start, unless
/// `MALLOC_ARENA_MAX` says otherwise.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` only sets a tunable of the allocator; called before the
        // runtime's threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

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
