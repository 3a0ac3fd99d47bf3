//! `iomt-gateway profile check|test`: validate device profiles and try one on a captured
//! payload. A one-shot command: no async runtime, no thread.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use iomt_gateway::normalize::Zone;
use iomt_gateway::profile::{self, Profile, ProfileErrors};
use iomt_gateway::{demo, probe};

use super::default_profiles_dir;

/// The subcommands of `profile`.
#[derive(Subcommand)]
pub(crate) enum ProfileCommand {
    /// Validate profiles; print `file:line: problem` for each error and exit 1 if any.
    Check {
        /// Profile files or directories (default: ./device-profiles if present, else the
        /// installed profiles directory).
        paths: Vec<PathBuf>,
    },
    /// Decode one captured payload with a profile and print the resulting FHIR
    /// Observations as a JSON array.
    Test(TestArgs),
}

/// The arguments of `profile test`.
#[derive(Args)]
pub(crate) struct TestArgs {
    /// The profile: a file path, or the id of a profile in --profiles.
    profile: String,
    /// The payload: a text line (line-oriented serial), hex bytes holding one or more
    /// whole frames (binary serial, e.g. "C5 3C 28 48 62"), a JSON object (MQTT;
    /// simulator profiles take {"field": value}), or hex bytes for BLE (spaces allowed).
    #[arg(long)]
    payload: String,
    /// The GATT characteristic the payload came from (BLE profiles), e.g. 2A35.
    #[arg(long, value_name = "UUID")]
    characteristic: Option<String>,
    /// The topic the payload was published on (MQTT profiles): checked against the
    /// profile's topic filter.
    #[arg(long)]
    topic: Option<String>,
    /// Where to look the profile id up.
    #[arg(long, value_name = "DIR")]
    profiles: Option<PathBuf>,
    /// IANA zone of the device's clock for times without zone (default: this machine's).
    #[arg(long, value_name = "ZONE")]
    time_zone: Option<String>,
    /// Take the payload as received at this time (RFC 3339, e.g. 2024-03-15T10:42:07Z)
    /// instead of now: the receive time (`issued`, and the effective time of readings
    /// without a device clock) is then fixed, so the output is reproducible.
    #[arg(long, value_name = "TIME")]
    received_at: Option<String>,
}

/// Runs `profile check` or `profile test`.
pub(crate) fn execute(command: ProfileCommand) -> Result<ExitCode> {
    match command {
        ProfileCommand::Check { paths } => profile_check(paths),
        ProfileCommand::Test(args) => profile_test(args),
    }
}

fn profile_check(paths: Vec<PathBuf>) -> Result<ExitCode> {
    let paths = if paths.is_empty() {
        vec![default_profiles_dir()]
    } else {
        paths
    };
    let mut checked = 0usize;
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for path in &paths {
        match profile::files_in(path) {
            Ok(files) => {
                for f in files {
                    checked += 1;
                    match profile::load_file(&f) {
                        Ok(p) => ok.push(p),
                        Err(ProfileErrors(mut e)) => errors.append(&mut e),
                    }
                }
            }
            Err(ProfileErrors(mut e)) => errors.append(&mut e),
        }
    }
    errors.extend(profile::duplicate_ids(&ok));
    for e in &errors {
        eprintln!("{e}");
    }
    let failed_files: std::collections::BTreeSet<_> =
        errors.iter().map(|e| e.file.clone()).collect();
    if checked == 0 && errors.is_empty() {
        eprintln!(
            "no profile files (*.toml) found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    for p in &ok {
        if !failed_files.contains(&p.source) {
            println!(
                "ok  {}  {} ({}, {} fields)",
                p.source.display(),
                p.id,
                p.transport.transport(),
                p.fields.len()
            );
        }
    }
    if errors.is_empty() {
        println!("{checked} profile(s) checked, all valid");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{} problem(s) in {} of {checked} profile file(s)",
            errors.len(),
            failed_files.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

fn find_profile(spec: &str, dir: Option<PathBuf>) -> Result<Profile> {
    let path = Path::new(spec);
    if path.is_file() {
        return profile::load_file(path).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let explicit = dir.is_some();
    let dir = dir.unwrap_or_else(default_profiles_dir);
    let files = match profile::files_in(&dir) {
        Ok(files) => files,
        // Without --profiles, a missing default directory just leaves the built-in profiles.
        Err(_) if !explicit => Vec::new(),
        Err(e) => bail!("{e}"),
    };
    for f in files {
        if let Ok(p) = profile::load_file(&f) {
            if p.id == spec {
                return Ok(p);
            }
        }
    }
    if let Ok(embedded) = demo::embedded_profiles() {
        if let Some(p) = embedded.into_iter().find(|p| p.id == spec) {
            return Ok(p);
        }
    }
    bail!(
        "no profile file `{spec}`, and no valid profile with that id in {}",
        dir.display()
    )
}

fn profile_test(args: TestArgs) -> Result<ExitCode> {
    let profile = find_profile(&args.profile, args.profiles)?;
    let zone = match &args.time_zone {
        None => Zone::GatewayLocal,
        Some(z) => Zone::Named(
            z.parse()
                .map_err(|_| anyhow::anyhow!("`{z}` is not an IANA time zone name"))?,
        ),
    };
    let received_at = match &args.received_at {
        None => chrono::Utc::now(),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| anyhow::anyhow!("--received-at `{t}` is not an RFC 3339 time: {e}"))?
            .with_timezone(&chrono::Utc),
    };
    let observations = probe::test_payload(
        &profile,
        &args.payload,
        args.characteristic.as_deref(),
        args.topic.as_deref(),
        received_at,
        zone,
    )?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &observations)?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}
