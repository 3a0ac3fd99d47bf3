//! `iomt-gateway pseudonym`: the pseudonym a backend uses to enrol a patient. A one-shot
//! command: no async runtime, no thread.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use iomt_gateway::config::{Config, DEFAULT_PATH};
use iomt_gateway::pseudonym::{self, Pseudonymizer};
use iomt_gateway::secret_file;

/// The arguments of `pseudonym`.
#[derive(clap::Args)]
pub(crate) struct PseudonymArgs {
    /// The patient identifier.
    id: String,
    /// The configuration file naming the pseudonymization key.
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_PATH)]
    config: PathBuf,
}

/// Runs `pseudonym`: prints `system|pseudonym`.
pub(crate) fn execute(args: PseudonymArgs) -> Result<ExitCode> {
    pseudonym_of(&args.id, &args.config)
}

fn pseudonym_of(id: &str, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let key = secret_file::read_key_file(&config.pseudonym_key_file)?;
    let p = Pseudonymizer::new(&key).pseudonym(pseudonym::Domain::Patient, id);
    println!("{}|{p}", iomt_gateway::normalize::PATIENT_PSEUDONYM_SYSTEM);
    Ok(ExitCode::SUCCESS)
}
