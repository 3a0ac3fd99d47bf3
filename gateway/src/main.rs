//! The `iomt-gateway` command line: the clap [`Cli`] and the dispatch to one module per
//! subcommand (`cmd/`), plus the logging set-up and the systemd glue. The only code of
//! the crate that uses `anyhow`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod logging;
mod systemd;

/// mimalloc: a heap per thread, so the runtime's threads, the outbox's writer and the
/// delivery loop allocate without taking one lock in turn (glibc's allocator, held to one
/// arena for its memory's sake, spent about a sixth of the daemon's CPU under load in
/// that lock and the wake-ups it caused), and freed pages go back to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Edge gateway for the Internet of Medical Things.
///
/// Reads vitals from medical devices (Bluetooth LE, serial, MQTT, or the built-in
/// simulator), turns each reading into an HL7 FHIR R4 Observation coded with LOINC, MDC
/// and UCUM, and forwards pseudonymized Bundles.
#[derive(Parser)]
#[command(name = "iomt-gateway", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon with a configuration file (stops cleanly on SIGTERM or Ctrl-C).
    Run(cmd::run::RunArgs),
    /// Run the whole pipeline on simulated devices, with no hardware and no cloud.
    ///
    /// A simulated home-care kit (cuff, oximeter, thermometer, scale, glucose meter, vitals
    /// patch) produces readings; the real normalizer turns them into FHIR Observations; a
    /// file uplink writes each Bundle as a JSON file. Each Observation is shown as it flows,
    /// and a summary at the end.
    Demo(cmd::demo::DemoArgs),
    /// Check and try device profiles.
    #[command(subcommand)]
    Profile(cmd::profile::ProfileCommand),
    /// Create the secret keys (never overwrites one), or rotate the storage key.
    ///
    /// Creates the storage key ([outbox] key_file: seals the outbox, never leaves the
    /// device) and the pseudonymization key ([pseudonymization] key_file: shared with the
    /// backend's re-identification service), each 32 random bytes with mode 0600.
    Keygen(cmd::keygen::KeygenArgs),
    /// List nearby Bluetooth LE devices, their advertised services and the profiles that
    /// match each, to fill in [[ble.devices]] (talks to BlueZ on the system bus).
    Scan(cmd::scan::ScanArgs),
    /// Print the pseudonym a backend uses to enrol a patient (HMAC-SHA256 of the id
    /// under the pseudonymization key).
    Pseudonym(cmd::pseudonym::PseudonymArgs),
    /// Show the running gateway's health: devices, uplinks, clock, disk (asks the
    /// daemon's local status endpoint, [status] listen).
    Status(cmd::status::StatusArgs),
    /// Inspect the outbox.
    #[command(subcommand)]
    Outbox(cmd::outbox::OutboxCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd::run::execute(args),
        Command::Demo(args) => cmd::demo::execute(args),
        Command::Profile(command) => cmd::profile::execute(command),
        Command::Keygen(args) => cmd::keygen::execute(args),
        Command::Scan(args) => cmd::scan::execute(args),
        Command::Pseudonym(args) => cmd::pseudonym::execute(args),
        Command::Outbox(command) => cmd::outbox::execute(command),
        Command::Status(args) => cmd::status::execute(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
