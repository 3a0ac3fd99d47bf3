//! `[serial]` and `[[serial.ports]]`: the serial driver's settings, and each configured
//! port bound to its serial profile's link settings and framing.

use std::time::Duration;

use iomt_drivers::serial::{PortConfig, SerialConfig, SerialDriver};
use iomt_drivers::Transport;
use serde::Deserialize;

use super::{
    bound, check_reconnect, default_reconnect_initial, default_reconnect_max, identity,
    of_transport, optional_zone, Built, Context, IngestError, Source,
};
use crate::limits;
use crate::normalize::Zone;
use crate::profile::TransportSpec;

/// `[serial]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerial {
    /// Milliseconds before the first attempt to reopen a port that failed or vanished.
    #[serde(default = "default_reconnect_initial")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between two attempts, in milliseconds (the wait doubles up to it).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// The ports to read; none (default) leaves the serial driver off.
    #[serde(default)]
    pub ports: Vec<RawSerialPort>,
}

impl Default for RawSerial {
    fn default() -> Self {
        Self {
            reconnect_initial_ms: default_reconnect_initial(),
            reconnect_max_ms: default_reconnect_max(),
            ports: Vec::new(),
        }
    }
}

/// `[[serial.ports]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerialPort {
    /// The device path; prefer a stable `/dev/serial/by-id/...` name.
    pub path: String,
    /// The id of the serial profile of the device on this port.
    pub profile: String,
    /// IANA zone of this device's clock; default: `[devices.<profile>]`, then `[gateway]`.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Forward at most one reading per this many milliseconds (0, default: all).
    #[serde(default)]
    pub min_interval_ms: u64,
    /// Whether the device on this port sends each line or frame as it measures, stamped
    /// by its own clock, so that its clock is compared with the receive time; default: the
    /// profile's `live_clock`. `false` for a recording or a data logger played back.
    #[serde(default)]
    pub live_clock: Option<bool>,
}

/// One serial port, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialPort {
    /// The device path.
    pub path: String,
    /// The profile id.
    pub profile: String,
    /// The zone of the device's clock, when set for this port.
    pub zone: Option<Zone>,
    /// At most one reading per this interval, if set.
    pub min_interval: Option<Duration>,
    /// `live_clock` for this port, when it overrides the profile's.
    pub live_clock: Option<bool>,
}

/// Serial driver settings, validated.
#[derive(Debug, Clone)]
pub struct SerialSettings {
    /// The ports (at least one).
    pub ports: Vec<SerialPort>,
    /// First reconnect delay.
    pub reconnect_initial: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

impl RawSerial {
    /// Validates the section, adding each problem to `problems`; the settings when a
    /// port is configured.
    pub fn validate(&self, problems: &mut Vec<String>) -> Option<SerialSettings> {
        let mut ports = Vec::new();
        for (i, p) in self.ports.iter().enumerate() {
            let key = format!("serial.ports[{i}]");
            if p.path.trim().is_empty() {
                problems.push(format!("{key}.path must not be empty"));
            }
            if p.profile.trim().is_empty() {
                problems.push(format!("{key}.profile must name a serial profile id"));
            }
            if self.ports[..i].iter().any(|q| q.path == p.path) {
                problems.push(format!(
                    "{key}.path `{}` is configured twice; one port, one device",
                    p.path
                ));
            }
            limits::check(
                &format!("{key}.min_interval_ms"),
                p.min_interval_ms,
                &limits::MIN_INTERVAL_MS,
                problems,
            );
            let zone = optional_zone(&key, &p.time_zone, problems);
            ports.push(SerialPort {
                path: p.path.clone(),
                profile: p.profile.clone(),
                zone,
                min_interval: (p.min_interval_ms > 0)
                    .then(|| Duration::from_millis(p.min_interval_ms)),
                live_clock: p.live_clock,
            });
        }
        check_reconnect(
            "serial",
            self.reconnect_initial_ms,
            self.reconnect_max_ms,
            problems,
        );
        (!ports.is_empty()).then(|| SerialSettings {
            ports,
            reconnect_initial: Duration::from_millis(self.reconnect_initial_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
        })
    }
}

/// Builds the serial driver's ports: each configured path with its profile's link
/// settings and framing.
pub fn serial_ports(
    ctx: &Context<'_>,
    settings: &SerialSettings,
) -> Result<Vec<PortConfig>, IngestError> {
    let loaded = of_transport(ctx.profiles, TransportSpec::as_serial);
    let mut ports = Vec::new();
    for port in &settings.ports {
        let (profile, spec) = bound(&loaded, &port.profile, "serial").map_err(|hint| {
            IngestError::UnknownSerialProfile {
                path: port.path.clone(),
                profile: port.profile.clone(),
                hint,
            }
        })?;
        let live_clock = port.live_clock.unwrap_or(spec.live_clock);
        if live_clock && !spec.has_timestamp() {
            return Err(IngestError::LiveClockWithoutTimeStamp {
                path: port.path.clone(),
                profile: port.profile.clone(),
            });
        }
        ports.push(PortConfig {
            path: port.path.clone(),
            identity: identity(profile, Transport::Serial, port.path.clone(), None),
            link: spec.link,
            framing: spec.framing.clone(),
            poll: spec.poll.clone(),
            min_interval: port.min_interval,
            live_clock,
        });
    }
    Ok(ports)
}

impl Source for SerialSettings {
    fn build(&self, ctx: &Context<'_>) -> Result<Built, IngestError> {
        let ports = serial_ports(ctx, self)?;
        if let Some(health) = ctx.health {
            for p in &ports {
                health.device_configured(&p.identity);
            }
        }
        let address_zones = self
            .ports
            .iter()
            .filter_map(|p| Some((format!("{}:{}", Transport::Serial, p.path), p.zone?)))
            .collect();
        let driver = SerialDriver::new(SerialConfig {
            ports,
            reconnect_initial: self.reconnect_initial,
            reconnect_max: self.reconnect_max,
            links: ctx.health.map(|h| h.link_reporter()).unwrap_or_default(),
        })?;
        Ok(Built {
            driver: Box::new(driver),
            address_zones,
            rejects: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{assert_problems, minimal_with, MINIMAL};
    use crate::normalize::Zone;
    use std::time::Duration;

    #[test]
    fn serial_ports_are_validated_naming_each_key() {
        let text = format!(
            "{MINIMAL}\n[serial]\nreconnect_initial_ms = 0\n[[serial.ports]]\npath = \"/dev/ttyUSB0\"\nprofile = \"masimo\"\ntime_zone = \"Mars/Olympus\"\n[[serial.ports]]\npath = \"/dev/ttyUSB0\"\nprofile = \"nonin\"\n"
        );
        assert_problems(
            &text,
            &[
                "serial.ports[0].time_zone",
                "serial.ports[1].path `/dev/ttyUSB0` is configured twice",
                "serial.reconnect_initial_ms",
            ],
        );
    }

    #[test]
    fn a_serial_port_binds_a_path_to_a_profile_with_its_zone() {
        let c = minimal_with(
            "[[serial.ports]]\npath = \"/dev/serial/by-id/usb-FTDI-if00\"\nprofile = \"masimo\"\ntime_zone = \"UTC\"\n",
        )
        .unwrap();
        let serial = c.serial.unwrap();
        assert_eq!(serial.ports[0].profile, "masimo");
        assert_eq!(serial.ports[0].zone, Some(Zone::Named(chrono_tz::UTC)));
        assert_eq!(
            serial.ports[0].live_clock, None,
            "the profile's, by default"
        );
        assert_eq!(serial.reconnect_max, Duration::from_secs(30));
        let c = minimal_with(
            "[[serial.ports]]\npath = \"/dev/ttyUSB0\"\nprofile = \"masimo\"\nlive_clock = false\n",
        )
        .unwrap();
        assert_eq!(c.serial.unwrap().ports[0].live_clock, Some(false));
    }
}
