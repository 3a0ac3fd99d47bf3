//! The signals the simulator produces and the shape of each: baseline, variability,
//! bounds and precision.

use std::str::FromStr;

/// A physiological signal the simulator knows how to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Heart rate, `/min`.
    HeartRate,
    /// Pulse rate (from a cuff or an oximeter), `/min`.
    PulseRate,
    /// Oxygen saturation, `%`.
    Spo2,
    /// Systolic blood pressure, `mm[Hg]`.
    Systolic,
    /// Diastolic blood pressure, `mm[Hg]`.
    Diastolic,
    /// Mean arterial pressure, `mm[Hg]`.
    MeanArterial,
    /// Body temperature, `Cel`.
    BodyTemperature,
    /// Body weight, `kg`.
    BodyWeight,
    /// Capillary blood glucose, `mg/dL`.
    Glucose,
    /// Respiratory rate, `/min`.
    RespiratoryRate,
}

/// Every signal, in a fixed order (documentation and tests).
pub const ALL_SIGNALS: [Signal; 10] = [
    Signal::HeartRate,
    Signal::PulseRate,
    Signal::Spo2,
    Signal::Systolic,
    Signal::Diastolic,
    Signal::MeanArterial,
    Signal::BodyTemperature,
    Signal::BodyWeight,
    Signal::Glucose,
    Signal::RespiratoryRate,
];

/// The shape of one signal: baseline, variability, bounds and precision.
#[derive(Debug, Clone, Copy)]
pub(super) struct Model {
    pub(super) baseline: f64,
    /// Standard deviation of one step of the random walk.
    pub(super) step: f64,
    /// Fraction of the distance to the baseline recovered per step.
    pub(super) reversion: f64,
    pub(super) min: f64,
    pub(super) max: f64,
    pub(super) decimals: u32,
    /// A physiologically implausible value, for the out-of-range path.
    pub(super) implausible: f64,
}

impl Signal {
    /// The signal's name in device profiles (`sim.signal`), e.g. `heart_rate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::HeartRate => "heart_rate",
            Signal::PulseRate => "pulse_rate",
            Signal::Spo2 => "spo2",
            Signal::Systolic => "systolic",
            Signal::Diastolic => "diastolic",
            Signal::MeanArterial => "mean_arterial",
            Signal::BodyTemperature => "body_temperature",
            Signal::BodyWeight => "body_weight",
            Signal::Glucose => "glucose",
            Signal::RespiratoryRate => "respiratory_rate",
        }
    }

    /// The UCUM unit the simulator reports this signal in.
    pub fn unit(self) -> &'static str {
        match self {
            Signal::HeartRate | Signal::PulseRate | Signal::RespiratoryRate => "/min",
            Signal::Spo2 => "%",
            Signal::Systolic | Signal::Diastolic | Signal::MeanArterial => "mm[Hg]",
            Signal::BodyTemperature => "Cel",
            Signal::BodyWeight => "kg",
            Signal::Glucose => "mg/dL",
        }
    }

    pub(super) fn model(self) -> Model {
        let m = |baseline, step, reversion, min, max, decimals, implausible| Model {
            baseline,
            step,
            reversion,
            min,
            max,
            decimals,
            implausible,
        };
        match self {
            Signal::HeartRate | Signal::PulseRate => m(72.0, 2.0, 0.1, 50.0, 120.0, 0, 320.0),
            Signal::Spo2 => m(97.0, 0.6, 0.2, 88.0, 100.0, 0, 130.0),
            Signal::Systolic => m(124.0, 3.0, 0.1, 95.0, 175.0, 0, 420.0),
            // Diastolic and mean arterial are derived from systolic when both are present.
            Signal::Diastolic => m(80.0, 2.0, 0.1, 55.0, 110.0, 0, 5.0),
            Signal::MeanArterial => m(95.0, 2.0, 0.1, 70.0, 130.0, 0, 400.0),
            Signal::BodyTemperature => m(36.8, 0.08, 0.1, 35.8, 39.5, 1, 48.5),
            Signal::BodyWeight => m(78.4, 0.05, 0.02, 60.0, 110.0, 1, 900.0),
            Signal::Glucose => m(105.0, 6.0, 0.1, 60.0, 250.0, 0, 2500.0),
            Signal::RespiratoryRate => m(15.0, 0.7, 0.15, 9.0, 26.0, 0, 140.0),
        }
    }
}

impl FromStr for Signal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ALL_SIGNALS
            .into_iter()
            .find(|sig| sig.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = ALL_SIGNALS.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown simulator signal `{s}`; known: {}",
                    names.join(", ")
                )
            })
    }
}
