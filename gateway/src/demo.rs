//! The demo's embedded defaults: the simulator kit's profiles, a configuration, a demo
//! pseudonymization key, and the console view of observations as they flow.
//!
//! Everything here is compiled into the binary, so `iomt-gateway demo` works on a fresh
//! machine with no files at all.

use std::path::{Path, PathBuf};

use iomt_drivers::DeviceIdentity;

use iomt_drivers::serial::pty::Pty;
use iomt_drivers::serial::sim::{SerialSim, SimFormat};

use crate::config::{Config, ConfigError, UplinkKind};
use crate::fhir::{Observation, Quantity};
use crate::ingest::serial::{SerialPort, SerialSettings};
use crate::profile::{self, Profile, ProfileErrors};

/// The simulator kit's profiles, as shipped in `device-profiles/`.
pub const EMBEDDED_PROFILES: &[(&str, &str)] = &[
    (
        "sim-bp-cuff.toml",
        include_str!("../../device-profiles/sim-bp-cuff.toml"),
    ),
    (
        "sim-pulse-oximeter.toml",
        include_str!("../../device-profiles/sim-pulse-oximeter.toml"),
    ),
    (
        "sim-thermometer.toml",
        include_str!("../../device-profiles/sim-thermometer.toml"),
    ),
    (
        "sim-scale.toml",
        include_str!("../../device-profiles/sim-scale.toml"),
    ),
    (
        "sim-glucose-meter.toml",
        include_str!("../../device-profiles/sim-glucose-meter.toml"),
    ),
    (
        "sim-vitals-patch.toml",
        include_str!("../../device-profiles/sim-vitals-patch.toml"),
    ),
];

/// The shipped serial profiles and the simulator format that feeds each in
/// `demo --serial`.
pub const EMBEDDED_SERIAL_PROFILES: &[(&str, &str, SimFormat)] = &[
    (
        "masimo-rad8-ascii1.toml",
        include_str!("../../device-profiles/masimo-rad8-ascii1.toml"),
        SimFormat::MasimoAscii1,
    ),
    (
        "nonin-oem3-format2.toml",
        include_str!("../../device-profiles/nonin-oem3-format2.toml"),
        SimFormat::NoninOem3Format2,
    ),
    (
        "nonin-9560-format13.toml",
        include_str!("../../device-profiles/nonin-9560-format13.toml"),
        SimFormat::Nonin9560Format13,
    ),
    (
        "contec-cms50.toml",
        include_str!("../../device-profiles/contec-cms50.toml"),
        SimFormat::ContecCms50,
    ),
    (
        "tanita-bc418.toml",
        include_str!("../../device-profiles/tanita-bc418.toml"),
        SimFormat::TanitaBc418,
    ),
];

/// Parses the embedded serial profiles, each with its simulator format.
pub fn embedded_serial_profiles() -> Result<Vec<(Profile, SimFormat)>, ProfileErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, text, format) in EMBEDDED_SERIAL_PROFILES {
        match profile::parse(&PathBuf::from(format!("<embedded>/{name}")), text) {
            Ok(p) => out.push((p, *format)),
            Err(ProfileErrors(mut e)) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ProfileErrors(errors))
    }
}

/// A simulated serial device writing its format to a pseudo-terminal.
pub struct SerialDemoDevice {
    /// The profile the gateway reads it with.
    pub profile: Profile,
    /// The pty; the gateway opens its slave side.
    pub pty: Pty,
    /// The simulator.
    pub sim: SerialSim,
}

/// Opens one pty per embedded serial profile, with its simulator.
pub fn serial_devices(seed: u64) -> std::io::Result<Vec<SerialDemoDevice>> {
    let profiles = embedded_serial_profiles()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    profiles
        .into_iter()
        .enumerate()
        .map(|(i, (profile, format))| {
            Ok(SerialDemoDevice {
                profile,
                pty: Pty::open()?,
                sim: SerialSim::new(format, seed.wrapping_add(i as u64)),
            })
        })
        .collect()
}

/// Switches a demo configuration from the simulator kit to the serial ports of
/// `devices`.
pub fn use_serial_devices(config: &mut Config, devices: &[SerialDemoDevice]) {
    config.sim = None;
    config.serial = Some(SerialSettings {
        ports: devices
            .iter()
            .map(|d| SerialPort {
                path: d.pty.slave_path().display().to_string(),
                profile: d.profile.id.clone(),
                zone: None,
                min_interval: None,
                live_clock: None,
            })
            .collect(),
        reconnect_initial: std::time::Duration::from_millis(200),
        reconnect_max: std::time::Duration::from_secs(2),
    });
}

/// Writes each device's next message every `interval` (or the device's own slower
/// rate, see [`SimFormat::min_period`]) until `cancel` fires.
pub async fn run_serial_devices(
    mut devices: Vec<SerialDemoDevice>,
    interval: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    let mut last: Vec<Option<tokio::time::Instant>> = vec![None; devices.len()];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = chrono::Local::now().naive_local();
        let instant = tokio::time::Instant::now();
        for (d, last) in devices.iter_mut().zip(last.iter_mut()) {
            let period = d.sim.format().min_period();
            if last.is_some_and(|l| instant.duration_since(l) < period) {
                continue;
            }
            // The gateway discards the partial line it opens into: a leading line end
            // makes the first real message whole.
            let mut bytes = if last.is_none() {
                b"\r\n".to_vec()
            } else {
                Vec::new()
            };
            *last = Some(instant);
            bytes.extend(d.sim.next_message(now));
            if let Err(e) = d.pty.write(&bytes) {
                tracing::warn!(profile = %d.profile.id, error = %e, "simulated serial device cannot write");
            }
        }
    }
}

/// The demo's configuration (the uplink directory is filled in by [`config`]).
pub const DEMO_CONFIG: &str = r#"
[gateway]
id = "demo-kit"
profiles_dir = "<embedded>"

[patient]
id = "demo-patient"

[pseudonymization]
key_file = "<embedded demo key>"

[sim]
enabled = true
interval_secs = 1.0
nan_probability = 0.03
out_of_range_probability = 0.02

[outbox]
path = "<set by demo>"
key_file = "<an ephemeral key made by demo>"
commit_window_ms = 50
quiet_commit_window_ms = 50

# Simulated data: the demo takes the machine's clock as it is, time daemon or not.
[clock]
source = "assume-synchronized"

# The demo may run beside a real gateway: it leaves the status port to it.
[status]
enabled = false

[[uplinks]]
kind = "file"
dir = "<set by demo>"
batch_size = 20
"#;

/// The demo's pseudonymization key. Public, and only for simulated data: a real kit uses
/// a secret key file.
pub const DEMO_KEY: [u8; 32] = *b"iomt-gateway-demo-key-not-secret";

/// Where the demo keeps its outbox: a hidden directory next to the Bundles. It is sealed
/// with a key that exists only while the demo runs.
pub fn outbox_path(out: &Path) -> PathBuf {
    out.join(".outbox").join("outbox.db")
}

/// Parses the embedded profiles.
pub fn embedded_profiles() -> Result<Vec<Profile>, ProfileErrors> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in EMBEDDED_PROFILES {
        match profile::parse(&PathBuf::from(format!("<embedded>/{name}")), text) {
            Ok(p) => out.push(p),
            Err(ProfileErrors(mut e)) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ProfileErrors(errors))
    }
}

/// The demo configuration writing into `out`, with the given reading interval and seed.
pub fn config(out: &Path, interval_secs: f64, seed: u64) -> Result<Config, ConfigError> {
    let mut config = Config::from_toml_str(DEMO_CONFIG, "<embedded demo config>")?;
    if let Some(u) = config.uplinks.first_mut() {
        u.kind = UplinkKind::File {
            dir: out.to_path_buf(),
        };
    }
    config.outbox.path = outbox_path(out);
    if let Some(sim) = config.sim.as_mut() {
        if !(interval_secs.is_finite() && interval_secs > 0.0) {
            return Err(ConfigError {
                source_name: None,
                problems: vec!["--interval must be a positive number of seconds".into()],
            });
        }
        sim.interval = std::time::Duration::from_secs_f64(interval_secs);
        sim.seed = seed;
    }
    Ok(config)
}

fn quantity_text(q: &Quantity) -> String {
    format!("{} {}", q.value, q.code)
}

/// One console line for an Observation: time, device, vital, value and unit, flags.
///
/// This prints measured values, which is acceptable only because the demo's data is
/// simulated; the daemon never prints or logs values.
pub fn console_line(profile: &Profile, device: &DeviceIdentity, obs: &Observation) -> String {
    let what = obs.code.text.clone().unwrap_or_default();
    let value = if let Some(q) = &obs.value_quantity {
        quantity_text(q)
    } else if let Some(dar) = &obs.data_absent_reason {
        format!(
            "(no value: {})",
            dar.coding.first().map(|c| c.code.as_str()).unwrap_or("?")
        )
    } else {
        obs.component
            .iter()
            .map(|c| match &c.value_quantity {
                Some(q) => q.value.to_string(),
                None => "—".into(),
            })
            .collect::<Vec<_>>()
            .join("/")
            + " mm[Hg]"
    };
    let questionable = !obs.interpretation.is_empty()
        || obs.component.iter().any(|c| !c.interpretation.is_empty());
    format!(
        "{time}  {device:<24} {what:<38} {value}{flag}",
        time = obs.effective_date_time,
        device = format!(
            "{} ({})",
            profile.id,
            device.address.rsplit('-').next().unwrap_or("")
        ),
        flag = if questionable {
            "  [implausible: flagged]"
        } else {
            ""
        },
    )
}
