//! `iomt-gateway scan`: list nearby Bluetooth LE devices and the BLE profiles each
//! matches. Runs a current-thread runtime (no worker threads) for the scan.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use iomt_drivers::ble_driver::Nearby;
use iomt_gateway::ingest::ble::{matching_ble_profiles, ProfileMatch};
use iomt_gateway::profile;

use super::default_profiles_dir;

/// The arguments of `scan`.
#[derive(clap::Args)]
pub(crate) struct ScanArgs {
    /// Scan for this many seconds.
    #[arg(long = "for", value_name = "SECONDS", default_value_t = 10.0)]
    duration: f64,
    /// Where to look the BLE profiles up (default: ./device-profiles, else the
    /// installed ones).
    #[arg(long, value_name = "DIR")]
    profiles: Option<PathBuf>,
    /// The Bluetooth adapter (default: the first one BlueZ reports).
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
    /// Also connect briefly to each device that matches a profile, read the manufacturer
    /// and model its Device Information reports, and rank the profiles by them.
    #[arg(long)]
    identify: bool,
}

/// Runs `scan`.
pub(crate) fn execute(args: ScanArgs) -> Result<ExitCode> {
    scan(
        args.duration,
        args.profiles,
        args.adapter.as_deref(),
        args.identify,
    )
}

fn scan(
    duration: f64,
    profiles: Option<PathBuf>,
    adapter: Option<&str>,
    identify: bool,
) -> Result<ExitCode> {
    if !(duration.is_finite() && duration > 0.0) {
        bail!("--for must be a positive number of seconds");
    }
    let dir = profiles.unwrap_or_else(default_profiles_dir);
    let profiles = profile::load_all(std::slice::from_ref(&dir))
        .map_err(|e| anyhow::anyhow!("device profiles in {} are invalid:\n{e}", dir.display()))?;
    // A one-shot command: a current-thread runtime, no worker threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Only devices some profile matches are connected, and only when asked.
    let wanted = |d: &Nearby| identify && !matching_ble_profiles(&profiles, d).is_empty();
    let found = rt
        .block_on(iomt_drivers::ble_driver::scan_nearby(
            adapter,
            Duration::from_secs_f64(duration),
            &wanted,
        ))
        .context("cannot scan: is bluetoothd running, and may this user talk to org.bluez?")?;
    if found.is_empty() {
        println!("no Bluetooth LE device found");
    }
    for d in &found {
        let services: Vec<String> = d
            .services
            .iter()
            .map(|u| match iomt_drivers::ble_driver::uuid_to_u16(*u) {
                Some(s) => format!("{s:04X}"),
                None => u.to_string(),
            })
            .collect();
        let matching = matching_ble_profiles(&profiles, d);
        let info = match (&d.manufacturer, &d.model) {
            (None, None) => String::new(),
            (m, n) => format!(
                "  device information {:?} {:?}",
                m.as_deref().unwrap_or(""),
                n.as_deref().unwrap_or("")
            ),
        };
        println!(
            "{}  name {:?}  rssi {}  services [{}]{info}  profiles: {}",
            d.address,
            d.name.as_deref().unwrap_or(""),
            d.rssi.map_or_else(|| "-".to_string(), |r| r.to_string()),
            services.join(", "),
            describe(&matching)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The matching profiles, best first, each with why it matched; the first is marked
/// `best` when it ranks above the others, else the tie is said.
fn describe(matching: &[ProfileMatch]) -> String {
    let Some(first) = matching.first() else {
        return "none".to_string();
    };
    let tied = matching
        .get(1)
        .is_some_and(|m| m.how.rank() == first.how.rank());
    let mut parts = Vec::new();
    for (i, m) in matching.iter().enumerate() {
        let best = if i == 0 && !tied { "best match: " } else { "" };
        parts.push(format!("{} ({best}{})", m.id, m.how.reason()));
    }
    let mut text = parts.join(", ");
    if tied {
        text.push_str(
            "; no single best match: the advertisement does not tell these apart (check the device's model, then pick one in [[ble.devices]])",
        );
    }
    text
}
