//! `iomt-gateway demo`: the whole pipeline on simulated devices.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use iomt_gateway::config::LogFormat;
use iomt_gateway::daemon::{self, RunStats};
use iomt_gateway::demo;
use iomt_gateway::outbox::seal::Keyring;
use iomt_gateway::pipeline::Observer;
use iomt_gateway::profile::Profile;
use iomt_gateway::pseudonym::Pseudonymizer;
use iomt_gateway::secret_file;
use tokio_util::sync::CancellationToken;

use crate::logging::init_logging;

/// The arguments of `demo`.
#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long = "for", value_name = "SECONDS")]
    duration: Option<f64>,
    /// Directory for the Bundles (default: a fresh directory whose path is printed).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Seconds between two readings of one simulated device.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    interval: f64,
    /// Random seed of the simulator (same seed, same values).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Do not show each Observation, only the summary.
    #[arg(long, short)]
    quiet: bool,
    /// Instead of the simulated kit, simulate the shipped serial devices (Masimo,
    /// Nonin, Contec, Tanita) on pseudo-terminals and read them with the real serial
    /// driver.
    #[arg(long)]
    serial: bool,
}

/// Runs the demo on a multi-threaded runtime; exit code 1 unless every Observation was
/// delivered or dead-lettered.
pub(crate) fn execute(args: DemoArgs) -> Result<ExitCode> {
    super::runtime().and_then(|rt| rt.block_on(run_demo(args)))
}

async fn run_demo(args: DemoArgs) -> Result<ExitCode> {
    let DemoArgs {
        duration,
        out,
        interval,
        seed,
        quiet,
        serial,
    } = args;
    init_logging("warn", LogFormat::Text);
    let out = match out {
        Some(dir) => dir,
        None => {
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
            std::env::temp_dir().join(format!("iomt-gateway-demo-{stamp}-{}", std::process::id()))
        }
    };
    let mut config = demo::config(&out, interval, seed)?;
    let cancel = CancellationToken::new();
    let profiles = if serial {
        let devices = demo::serial_devices(seed).context("cannot open pseudo-terminals")?;
        demo::use_serial_devices(&mut config, &devices);
        println!(
            "iomt-gateway demo --serial: {} simulated serial devices on pseudo-terminals, one message each every {interval} s",
            devices.len()
        );
        for d in &devices {
            println!("  {}  {}", d.pty.slave_path().display(), d.profile.name);
        }
        let profiles = devices.iter().map(|d| d.profile.clone()).collect();
        tokio::spawn(demo::run_serial_devices(
            devices,
            Duration::from_secs_f64(interval),
            cancel.clone(),
        ));
        profiles
    } else {
        let profiles = demo::embedded_profiles()
            .map_err(|e| anyhow::anyhow!("embedded profiles are invalid:\n{e}"))?;
        println!(
            "iomt-gateway demo: simulated kit of {} devices, one reading each every {interval} s",
            profiles.len()
        );
        profiles
    };
    println!("Bundles go to {}", out.display());
    match duration {
        Some(s) => println!("Running for {s} s (Ctrl-C stops earlier).\n"),
        None => println!("Running until Ctrl-C.\n"),
    }
    let observer: Option<Observer> = (!quiet).then(|| {
        Box::new(
            |p: &Profile, d: &iomt_drivers::DeviceIdentity, o: &iomt_gateway::fhir::Observation| {
                println!("{}", demo::console_line(p, d, o));
            },
        ) as Observer
    });
    let stop = cancel.clone();
    let limit = match duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => bail!("--for must be a positive number of seconds"),
        None => None,
    };
    tokio::spawn(async move {
        match limit {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = super::shutdown_signal() => {}
                }
            }
            None => super::shutdown_signal().await,
        }
        stop.cancel();
    });
    // The demo's outbox is sealed with a key that lives only in memory for this run.
    let keyring = Arc::new(Keyring::new(&secret_file::random_key()?));
    let outbox_dir = demo::outbox_path(&out).parent().map(Path::to_path_buf);
    let stats = daemon::run(
        config,
        profiles,
        Pseudonymizer::new(&demo::DEMO_KEY),
        keyring,
        observer,
        cancel,
    )
    .await?;
    if let Some(dir) = outbox_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    print_summary(&stats, &out);
    let delivered: u64 = stats
        .uplinks
        .iter()
        .map(|(_, s)| s.delivered + s.dead_lettered)
        .sum();
    Ok(if delivered == stats.pipeline.observations {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_summary(stats: &RunStats, out: &Path) {
    let p = &stats.pipeline;
    let bundles: u64 = stats.uplinks.iter().map(|(_, s)| s.bundles).sum();
    let delivered: u64 = stats.uplinks.iter().map(|(_, s)| s.delivered).sum();
    let failures: u64 = stats.uplinks.iter().map(|(_, s)| s.failures).sum();
    println!();
    println!("Summary");
    println!("  readings             {}", p.readings);
    println!("  observations         {}", p.observations);
    println!("  without value (NaN)  {}", p.absent);
    println!("  flagged implausible  {}", p.flagged);
    println!("  rejected             {}", p.rejected);
    println!("  delivered            {delivered}");
    println!("  bundles written      {bundles}");
    println!("  delivery errors      {failures}");
    println!("  output               {}", out.display());
}
