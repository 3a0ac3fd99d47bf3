//! `[sim]`: the simulator, its settings, and its devices (one per selected sim profile).

use std::time::Duration;

use chrono::{Offset, Utc};
use iomt_drivers::sim::{SimClock as DriverClock, SimConfig, SimDevice, SimDriver};
use iomt_drivers::Transport;
use serde::Deserialize;

use super::{identity, of_transport, select, Built, Context, IngestError, Source};
use crate::normalize::Zone;
use crate::profile::{SimClock, TransportSpec};

/// `[sim]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSim {
    /// Run the simulator.
    #[serde(default)]
    pub enabled: bool,
    /// Profile ids to simulate; empty: every sim profile.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Seconds between two readings of one simulated device.
    #[serde(default = "default_sim_interval")]
    pub interval_secs: f64,
    /// Probability of a "not a number" quantity per reading.
    #[serde(default = "default_nan")]
    pub nan_probability: f64,
    /// Probability of an implausible quantity per reading.
    #[serde(default = "default_oor")]
    pub out_of_range_probability: f64,
    /// Random seed.
    #[serde(default)]
    pub seed: u64,
    /// Stop after this many readings (0: never).
    #[serde(default)]
    pub max_readings: u64,
}

impl Default for RawSim {
    fn default() -> Self {
        Self {
            enabled: false,
            profiles: Vec::new(),
            interval_secs: default_sim_interval(),
            nan_probability: default_nan(),
            out_of_range_probability: default_oor(),
            seed: 0,
            max_readings: 0,
        }
    }
}

fn default_sim_interval() -> f64 {
    5.0
}
fn default_nan() -> f64 {
    0.02
}
fn default_oor() -> f64 {
    0.01
}

/// Simulator settings, validated.
#[derive(Debug, Clone)]
pub struct SimSettings {
    /// Profile ids (empty: all sim profiles).
    pub profiles: Vec<String>,
    /// Interval between readings of one device.
    pub interval: Duration,
    /// NaN probability.
    pub nan_probability: f64,
    /// Implausible-value probability.
    pub out_of_range_probability: f64,
    /// Seed.
    pub seed: u64,
    /// Reading limit.
    pub max_readings: Option<u64>,
}

impl RawSim {
    /// Validates the section, adding each problem to `problems`; the settings when the
    /// simulator is enabled and the section is valid.
    pub fn validate(&self, problems: &mut Vec<String>) -> Option<SimSettings> {
        let s = self;
        let before = problems.len();
        if !(s.interval_secs.is_finite() && s.interval_secs > 0.0 && s.interval_secs <= 86_400.0) {
            problems.push(
                "sim.interval_secs must be between 0 and 86400 seconds (exclusive of 0)".into(),
            );
        }
        for (key, p) in [
            ("sim.nan_probability", s.nan_probability),
            ("sim.out_of_range_probability", s.out_of_range_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                problems.push(format!("{key} must be between 0 and 1"));
            }
        }
        // Invalid numbers make no settings (a negative interval is no Duration).
        (s.enabled && problems.len() == before).then(|| SimSettings {
            profiles: s.profiles.clone(),
            interval: Duration::from_secs_f64(s.interval_secs),
            nan_probability: s.nan_probability,
            out_of_range_probability: s.out_of_range_probability,
            seed: s.seed,
            max_readings: (s.max_readings > 0).then_some(s.max_readings),
        })
    }
}

/// The current UTC offset of a zone (for simulated wall clocks).
fn current_offset(zone: Zone) -> chrono::FixedOffset {
    match zone {
        Zone::GatewayLocal => chrono::Local::now().offset().fix(),
        Zone::Named(tz) => Utc::now().with_timezone(&tz).offset().fix(),
    }
}

/// Builds the simulator's devices: one per selected sim profile.
pub fn sim_devices(
    ctx: &Context<'_>,
    settings: &SimSettings,
) -> Result<Vec<SimDevice>, IngestError> {
    let selected = select(
        of_transport(ctx.profiles, TransportSpec::as_sim),
        &settings.profiles,
    )
    .map_err(IngestError::UnknownSimProfile)?;
    if selected.is_empty() {
        return Err(IngestError::NoSimProfile);
    }
    Ok(selected
        .into_iter()
        .map(|(p, spec)| {
            let clock = match spec.clock {
                SimClock::Zoned => DriverClock::Zoned,
                SimClock::Local => DriverClock::Local(current_offset(ctx.zone_for(&p.id))),
                SimClock::None => DriverClock::None,
            };
            SimDevice {
                identity: identity(
                    p,
                    Transport::Sim,
                    format!("{}-1", p.id),
                    Some(format!("SIM-{}-0001", p.id.to_uppercase())),
                ),
                clock,
                signals: spec.signals.clone(),
            }
        })
        .collect())
}

impl Source for SimSettings {
    fn build(&self, ctx: &Context<'_>) -> Result<Built, IngestError> {
        let devices = sim_devices(ctx, self)?;
        if let Some(health) = ctx.health {
            for d in &devices {
                health.device_configured(&d.identity);
            }
        }
        let driver = SimDriver::new(SimConfig {
            interval: self.interval,
            nan_probability: self.nan_probability,
            out_of_range_probability: self.out_of_range_probability,
            seed: self.seed,
            max_readings: self.max_readings,
            devices,
        })?;
        Ok(Built {
            driver: Box::new(driver),
            address_zones: Vec::new(),
            rejects: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_interval_is_a_problem_not_a_panic() {
        let raw = RawSim {
            enabled: true,
            interval_secs: -1.0,
            ..RawSim::default()
        };
        let mut problems = Vec::new();
        assert!(raw.validate(&mut problems).is_none());
        assert!(problems[0].contains("sim.interval_secs"), "{problems:?}");
    }
}
