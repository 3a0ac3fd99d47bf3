//! The simulator driver: realistic, slowly varying vitals from imaginary devices.
//!
//! It powers `iomt-gateway demo` and the tests. Each simulated device emits one reading per
//! interval with all its signals. Signals follow a mean-reverting random walk around a
//! physiological baseline (an Ornstein-Uhlenbeck process), so consecutive readings look
//! like a real patient's, and blood pressure, mean arterial pressure and pulse stay
//! consistent with each other. With configurable probabilities a quantity is reported as
//! "not a number" or as a physiologically implausible value, so the gateway's unhappy
//! paths run in every demo.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::{FixedOffset, Utc};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

mod signal;

pub use signal::{Signal, ALL_SIGNALS};

use crate::driver::{CommitReceiver, Driver, DriverError, DriverFuture, ReadingSender};
use crate::reading::{AbsentReason, DeviceIdentity, DeviceTime, Quantity, Reading, ReadingFlag};

/// How a simulated device stamps its readings: the three cases real devices present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimClock {
    /// A time with its offset (like an ISO 8601 timestamp from a Wi-Fi sensor).
    Zoned,
    /// A wall-clock time without zone (like a GATT Date Time), in the given local offset.
    Local(FixedOffset),
    /// No device time: the gateway uses its receive time.
    None,
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// Its identity (profile id, a stable instance address, model...).
    pub identity: Arc<DeviceIdentity>,
    /// How it stamps its readings.
    pub clock: SimClock,
    /// The quantities it reports: (field name, signal).
    pub signals: Vec<(String, Signal)>,
}

/// The simulator's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Time between two readings of the same device.
    pub interval: Duration,
    /// Probability (0..=1) that one quantity of a reading is reported as "not a number".
    pub nan_probability: f64,
    /// Probability (0..=1) that one quantity of a reading is physiologically implausible.
    pub out_of_range_probability: f64,
    /// Random seed; the same seed gives the same sequence of values.
    pub seed: u64,
    /// Stop after this many readings in total (`None`: run until cancelled).
    pub max_readings: Option<u64>,
    /// The devices to simulate.
    pub devices: Vec<SimDevice>,
}

/// The simulator driver.
#[derive(Debug)]
pub struct SimDriver {
    config: SimConfig,
}

impl SimDriver {
    /// Creates the driver; fails if the configuration cannot work.
    pub fn new(config: SimConfig) -> Result<Self, DriverError> {
        let bad = |reason: String| DriverError::Config {
            driver: "sim".into(),
            reason,
        };
        if config.interval.is_zero() {
            return Err(bad("interval must be greater than zero".into()));
        }
        for (name, p) in [
            ("nan_probability", config.nan_probability),
            ("out_of_range_probability", config.out_of_range_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(bad(format!("{name} must be between 0 and 1, got {p}")));
            }
        }
        Ok(Self { config })
    }
}

/// The evolving state of one simulated device.
struct DeviceState {
    device: SimDevice,
    /// Current value of each signal, in the order of `device.signals`.
    values: Vec<f64>,
    sequence: u64,
}

impl DeviceState {
    fn new(device: SimDevice) -> Self {
        let values = device
            .signals
            .iter()
            .map(|(_, s)| s.model().baseline)
            .collect();
        Self {
            device,
            values,
            sequence: 0,
        }
    }

    fn step(&mut self, rng: &mut SmallRng, config: &SimConfig) -> Reading {
        for (value, (_, signal)) in self.values.iter_mut().zip(&self.device.signals) {
            let m = signal.model();
            let noise: f64 = rng.gen_range(-1.0..=1.0) * m.step * 1.7;
            *value += (m.baseline - *value) * m.reversion + noise;
            *value = value.clamp(m.min, m.max);
        }
        self.keep_pressures_consistent();

        let nan_at = pick(rng, config.nan_probability, self.values.len());
        let implausible_at = pick(rng, config.out_of_range_probability, self.values.len());
        let quantities = self
            .device
            .signals
            .iter()
            .zip(&self.values)
            .enumerate()
            .map(|(i, ((name, signal), value))| {
                let m = signal.model();
                if nan_at == Some(i) {
                    Quantity::absent(name.clone(), AbsentReason::NotANumber, signal.unit())
                } else if implausible_at == Some(i) {
                    Quantity::new(
                        name.clone(),
                        decimal(m.implausible, m.decimals),
                        signal.unit(),
                    )
                } else {
                    Quantity::new(name.clone(), decimal(*value, m.decimals), signal.unit())
                }
            })
            .collect();

        let now = Utc::now();
        let device_time = match self.device.clock {
            SimClock::Zoned => Some(DeviceTime::Zoned(now.fixed_offset())),
            SimClock::Local(offset) => {
                Some(DeviceTime::Local(now.with_timezone(&offset).naive_local()))
            }
            SimClock::None => None,
        };
        self.sequence += 1;
        Reading {
            clock: None,
            device: self.device.identity.clone(),
            device_time,
            received_at: now,
            sequence: Some(self.sequence),
            quantities,
            flags: vec![ReadingFlag::DemoData],
        }
    }

    /// Diastolic tracks systolic, and mean arterial pressure is diastolic + pulse pressure / 3.
    fn keep_pressures_consistent(&mut self) {
        let find = |sig| self.device.signals.iter().position(|(_, s)| *s == sig);
        let (Some(sys), dia, map) = (
            find(Signal::Systolic),
            find(Signal::Diastolic),
            find(Signal::MeanArterial),
        ) else {
            return;
        };
        let systolic = self.values[sys];
        let diastolic = match dia {
            Some(d) => {
                let target = systolic * 0.64;
                self.values[d] = (self.values[d] * 0.5 + target * 0.5).clamp(50.0, systolic - 20.0);
                self.values[d]
            }
            None => systolic * 0.64,
        };
        if let Some(m) = map {
            self.values[m] = diastolic + (systolic - diastolic) / 3.0;
        }
    }
}

/// The most commit acknowledgements the simulator keeps waiting for.
const MAX_AWAITED: usize = 65_536;

/// Logs the commits that have arrived, oldest first, without waiting.
fn log_commits(awaiting: &mut VecDeque<(String, u64, CommitReceiver)>) {
    while let Some((_, _, rx)) = awaiting.front_mut() {
        match rx.try_recv() {
            Ok(committed) => {
                if let Some((device, sequence, _)) = awaiting.pop_front() {
                    tracing::debug!(
                        device = %device,
                        sequence,
                        observations = %committed.observations.join(","),
                        "reading committed"
                    );
                }
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => break,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                awaiting.pop_front();
            }
        }
    }
}

/// Waits for the outstanding commit acknowledgements (until cancelled) and logs them.
async fn wait_for_commits(
    awaiting: VecDeque<(String, u64, CommitReceiver)>,
    cancel: &CancellationToken,
) {
    for (device, sequence, rx) in awaiting {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx => if let Ok(committed) = r {
                tracing::debug!(
                    device = %device,
                    sequence,
                    observations = %committed.observations.join(","),
                    "reading committed"
                );
            }
        }
    }
}

/// With probability `p`, one index below `len`.
fn pick(rng: &mut SmallRng, p: f64, len: usize) -> Option<usize> {
    (len > 0 && p > 0.0 && rng.gen_bool(p)).then(|| rng.gen_range(0..len))
}

/// Rounds `value` to `decimals` places as an exact decimal (keeping trailing zeros).
fn decimal(value: f64, decimals: u32) -> Decimal {
    let mut d = Decimal::from_f64_retain(value)
        .unwrap_or_default()
        .round_dp(decimals);
    d.rescale(decimals);
    d
}

impl SimDriver {
    /// Generates `count` readings at once, without waiting for the interval (benchmarks
    /// and tests that need many readings fast). Devices take turns, as in `run`.
    pub fn generate(&self, count: usize) -> Vec<Reading> {
        let config = &self.config;
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let mut devices: Vec<DeviceState> = config
            .devices
            .iter()
            .cloned()
            .map(DeviceState::new)
            .collect();
        let mut out = Vec::with_capacity(count);
        if devices.is_empty() {
            return out;
        }
        while out.len() < count {
            for state in &mut devices {
                if out.len() == count {
                    break;
                }
                out.push(state.step(&mut rng, config));
            }
        }
        out
    }
}

impl Driver for SimDriver {
    fn name(&self) -> &str {
        "sim"
    }

    fn run(self: Box<Self>, tx: ReadingSender, cancel: CancellationToken) -> DriverFuture {
        Box::pin(async move {
            let config = self.config;
            let mut rng = SmallRng::seed_from_u64(config.seed);
            let mut devices: Vec<DeviceState> = config
                .devices
                .iter()
                .cloned()
                .map(DeviceState::new)
                .collect();
            let mut ticker = tokio::time::interval(config.interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut sent: u64 = 0;
            // Commit acknowledgements still awaited: (device, sequence, receiver). Logged at
            // debug level once committed, which is what the crash tests check against.
            let mut awaiting: VecDeque<(String, u64, CommitReceiver)> = VecDeque::new();
            tracing::info!(
                devices = devices.len(),
                interval_ms = config.interval.as_millis() as u64,
                "simulator started"
            );
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                for state in &mut devices {
                    if config.max_readings.is_some_and(|max| sent >= max) {
                        tracing::info!(readings = sent, "simulator reached its reading limit");
                        wait_for_commits(awaiting, &cancel).await;
                        return Ok(());
                    }
                    let reading = state.step(&mut rng, &config);
                    let (device, sequence) = (
                        reading.device.address.clone(),
                        reading.sequence.unwrap_or_default(),
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        res = tx.send_noted(reading) => match res {
                            Ok(rx) => {
                                if awaiting.len() >= MAX_AWAITED {
                                    awaiting.pop_front();
                                }
                                awaiting.push_back((device, sequence, rx));
                            }
                            Err(_) => {
                                tracing::debug!("reading channel closed; simulator stops");
                                return Ok(());
                            }
                        }
                    }
                    sent += 1;
                    log_commits(&mut awaiting);
                }
            }
            log_commits(&mut awaiting);
            tracing::info!(readings = sent, "simulator stopped");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Measurement, Transport};

    fn device(signals: &[Signal], clock: SimClock) -> SimDevice {
        SimDevice {
            identity: Arc::new(DeviceIdentity {
                revisions: Default::default(),
                profile: "sim-test".into(),
                transport: Transport::Sim,
                address: "sim-test-1".into(),
                serial_number: Some("SN1".into()),
                manufacturer: None,
                model: None,
            }),
            clock,
            signals: signals
                .iter()
                .map(|s| (s.as_str().to_string(), *s))
                .collect(),
        }
    }

    fn config(devices: Vec<SimDevice>, nan: f64, oor: f64) -> SimConfig {
        SimConfig {
            interval: Duration::from_secs(1),
            nan_probability: nan,
            out_of_range_probability: oor,
            seed: 7,
            max_readings: None,
            devices,
        }
    }

    #[test]
    fn every_signal_stays_within_its_physiological_bounds_without_faults() {
        let cfg = config(vec![device(&ALL_SIGNALS, SimClock::None)], 0.0, 0.0);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut state = DeviceState::new(cfg.devices[0].clone());
        for _ in 0..2000 {
            let r = state.step(&mut rng, &cfg);
            for (q, (_, sig)) in r.quantities.iter().zip(&cfg.devices[0].signals) {
                let v = q.value.value().expect("no faults configured");
                let m = sig.model();
                let f: f64 = v.to_string().parse().unwrap();
                assert!(f >= m.min - 1.0 && f <= m.max + 1.0, "{sig:?} = {v}");
                assert_eq!(v.scale(), m.decimals, "{sig:?} precision");
            }
        }
    }

    #[test]
    fn consecutive_readings_vary_slowly() {
        let cfg = config(vec![device(&[Signal::HeartRate], SimClock::None)], 0.0, 0.0);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut state = DeviceState::new(cfg.devices[0].clone());
        let values: Vec<f64> = (0..500)
            .map(|_| {
                state.step(&mut rng, &cfg).quantities[0]
                    .value
                    .value()
                    .unwrap()
                    .to_string()
                    .parse()
                    .unwrap()
            })
            .collect();
        let distinct: std::collections::HashSet<_> = values.iter().map(|v| *v as i64).collect();
        assert!(distinct.len() > 5, "values should vary: {distinct:?}");
        for pair in values.windows(2) {
            assert!((pair[0] - pair[1]).abs() <= 10.0, "jump {pair:?}");
        }
    }

    #[test]
    fn blood_pressure_keeps_diastolic_below_systolic_and_map_between() {
        let sigs = [Signal::Systolic, Signal::Diastolic, Signal::MeanArterial];
        let cfg = config(vec![device(&sigs, SimClock::None)], 0.0, 0.0);
        let mut rng = SmallRng::seed_from_u64(5);
        let mut state = DeviceState::new(cfg.devices[0].clone());
        for _ in 0..1000 {
            let r = state.step(&mut rng, &cfg);
            let v: Vec<Decimal> = r
                .quantities
                .iter()
                .map(|q| q.value.value().unwrap())
                .collect();
            assert!(v[1] < v[0], "diastolic {} >= systolic {}", v[1], v[0]);
            assert!(
                v[2] >= v[1] && v[2] <= v[0],
                "map {} outside [{}, {}]",
                v[2],
                v[1],
                v[0]
            );
        }
    }

    #[test]
    fn faults_appear_at_their_configured_rates() {
        let cfg = config(
            vec![device(&[Signal::Spo2, Signal::HeartRate], SimClock::None)],
            0.1,
            0.1,
        );
        let mut rng = SmallRng::seed_from_u64(9);
        let mut state = DeviceState::new(cfg.devices[0].clone());
        let (mut nan, mut implausible) = (0, 0);
        for _ in 0..2000 {
            for q in state.step(&mut rng, &cfg).quantities {
                match q.value {
                    Measurement::Absent(AbsentReason::NotANumber) => nan += 1,
                    Measurement::Value(v) if v > Decimal::from(200) => implausible += 1,
                    _ => {}
                }
            }
        }
        assert!((120..=290).contains(&nan), "nan count {nan}");
        assert!(
            (100..=290).contains(&implausible),
            "implausible count {implausible}"
        );
    }

    #[test]
    fn clocks_produce_zoned_local_or_no_device_time() {
        let offset = FixedOffset::east_opt(3600).unwrap();
        for (clock, check) in [
            (
                SimClock::Zoned,
                (|t: Option<DeviceTime>| matches!(t, Some(DeviceTime::Zoned(_))))
                    as fn(Option<DeviceTime>) -> bool,
            ),
            (SimClock::Local(offset), |t| {
                matches!(t, Some(DeviceTime::Local(_)))
            }),
            (SimClock::None, |t| t.is_none()),
        ] {
            let cfg = config(vec![device(&[Signal::Glucose], clock)], 0.0, 0.0);
            let mut rng = SmallRng::seed_from_u64(1);
            let r = DeviceState::new(cfg.devices[0].clone()).step(&mut rng, &cfg);
            assert!(check(r.device_time), "{clock:?} gave {:?}", r.device_time);
            assert_eq!(r.flags, vec![ReadingFlag::DemoData]);
        }
    }

    #[test]
    fn unknown_signal_names_are_rejected_with_the_known_list() {
        let err = "heartrate".parse::<Signal>().unwrap_err();
        assert!(err.contains("heart_rate"), "{err}");
        assert_eq!("spo2".parse::<Signal>(), Ok(Signal::Spo2));
    }

    #[test]
    fn invalid_probabilities_are_refused() {
        let cfg = config(vec![], 1.5, 0.0);
        assert!(matches!(
            SimDriver::new(cfg),
            Err(DriverError::Config { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn driver_sends_readings_on_each_tick_and_stops_on_cancel() {
        let cfg = config(
            vec![device(&[Signal::HeartRate], SimClock::Zoned)],
            0.0,
            0.0,
        );
        let driver = Box::new(SimDriver::new(cfg).unwrap());
        let (tx, mut rx) = crate::driver::reading_channel(4);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(driver.run(tx, cancel.clone()));
        let first = rx.recv().await.unwrap().reading;
        let second = rx.recv().await.unwrap().reading;
        assert_eq!(first.sequence, Some(1));
        assert_eq!(second.sequence, Some(2));
        cancel.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn driver_stops_after_max_readings() {
        let mut cfg = config(vec![device(&[Signal::HeartRate], SimClock::None)], 0.0, 0.0);
        cfg.max_readings = Some(3);
        let driver = Box::new(SimDriver::new(cfg).unwrap());
        let (tx, mut rx) = crate::driver::reading_channel(1);
        let task = tokio::spawn(driver.run(tx, CancellationToken::new()));
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
        task.await.unwrap().unwrap();
    }
}
