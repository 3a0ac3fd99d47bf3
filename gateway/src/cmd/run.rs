//! `iomt-gateway run`: the daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use iomt_gateway::config::{Config, DEFAULT_PATH};
use iomt_gateway::daemon;
use iomt_gateway::outbox::seal::Keyring;
use iomt_gateway::profile;
use iomt_gateway::pseudonym::Pseudonymizer;
use iomt_gateway::secret_file;
use tokio_util::sync::CancellationToken;

use crate::logging::init_logging;
use crate::systemd::{notify_systemd, systemd_hooks};

/// The arguments of `run`.
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The configuration file (TOML). Environment variables IOMT_GATEWAY__SECTION__KEY
    /// override its keys.
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_PATH)]
    config: PathBuf,
}

/// Runs the daemon on a multi-threaded runtime until SIGTERM or SIGINT.
pub(crate) fn execute(args: RunArgs) -> Result<ExitCode> {
    super::runtime().and_then(|rt| rt.block_on(run(&args.config)))
}

async fn run(config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    init_logging(&config.log_level, config.log_format);
    let profiles = profile::load_all(std::slice::from_ref(&config.profiles_dir)).map_err(|e| {
        anyhow::anyhow!(
            "device profiles in {} are invalid:\n{e}",
            config.profiles_dir.display()
        )
    })?;
    let key = secret_file::read_key_file(&config.pseudonym_key_file)?;
    let keyring = Arc::new(Keyring::load(&config.storage_key_file)?);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        stop.cancel();
    });
    tracing::info!(config = %config_path.display(), profiles = profiles.len(), "starting");
    let stats = daemon::run_with_hooks(
        config,
        profiles,
        Pseudonymizer::new(&key),
        keyring,
        None,
        cancel,
        systemd_hooks(),
    )
    .await?;
    tracing::info!(
        readings = stats.pipeline.readings,
        observations = stats.pipeline.observations,
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}
