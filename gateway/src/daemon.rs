//! Wiring: drivers → bounded channel → pipeline → uplinks, with a cancellation token.
//!
//! Shutdown order (the mini-redis pattern): cancelling the token stops the drivers; when
//! the last driver drops its sender the channel closes; the pipeline hands what is left to
//! the outbox; each uplink makes a last delivery pass within a deadline; the outbox
//! writer commits what it holds and closes the database.
//!
//! The whole shutdown is bounded: the drivers and the pipeline get [`SHUTDOWN_INTAKE`]
//! after cancellation to hand their readings over (past it they are aborted: a full
//! outbox in "block" mode cannot hold the process), then the uplinks' request in flight
//! and last pass share [`SHUTDOWN_DRAIN`], so the process exits within a service
//! manager's stop timeout (systemd's `TimeoutStopSec`) without breaking *acknowledge
//! after commit* or *delete after delivery*.
//!
//! [`Hooks`] let the binary tell a service manager when the gateway is ready and, while it
//! is healthy, that it is alive (systemd's `READY=1` and `WATCHDOG=1`); the library knows
//! nothing of systemd.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{Offset, Utc};
use iomt_drivers::ble_driver::{uuid_from_u16, BleConfig, BleDeviceConfig, BleDriver};
use iomt_drivers::mqtt::{Credentials, MqttConfig, MqttDriver, MqttTls, Subscription};
use iomt_drivers::serial::{PortConfig, SerialConfig, SerialDriver};
use iomt_drivers::sim::{SimClock as DriverClock, SimConfig, SimDevice, SimDriver};
use iomt_drivers::{
    reading_channel, reject_channel, DeviceIdentity, Driver, RejectReceiver, Transport,
};
use tokio_util::sync::CancellationToken;

use std::time::Duration;

use crate::config::{
    is_loopback_host, BleSettings, Config, MqttSettings, SerialSettings, SimSettings,
    Uplink as UplinkConfig, UplinkKind,
};
use crate::normalize::{self, Zone};
use crate::outbox::seal::Keyring;
use crate::outbox::{Outbox, OutboxError};
use crate::pipeline::{Observer, Pipeline, Stats};
use crate::profile::{Profile, SimClock, TransportSpec};
use crate::pseudonym::{Domain, Pseudonymizer};
use crate::uplink::deliver::{self, DeliverySettings, DeliveryStats};
use crate::uplink::fhir_http::FhirUplink;
use crate::uplink::file::FileUplink;
use crate::uplink::mqtt::MqttUplink;
use crate::uplink::{Uplink, UplinkError};

/// Why the gateway could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No driver is enabled, so there would be nothing to do.
    #[error("no driver is enabled: add a Bluetooth device with a [[ble.devices]] table (address and profile), a serial port with a [[serial.ports]] table (path and profile), enable the MQTT driver with [mqtt] enabled = true, or enable the simulator with [sim] enabled = true")]
    NoDriver,
    /// `[mqtt] profiles` names a profile that is not a loaded MQTT profile.
    #[error("mqtt.profiles names `{0}`, which is not a loaded MQTT profile")]
    UnknownMqttProfile(String),
    /// The MQTT driver is enabled but there is nothing to subscribe to.
    #[error(
        "the MQTT driver is enabled but no MQTT profile is loaded (check gateway.profiles_dir)"
    )]
    NoMqttProfile,
    /// The MQTT credentials file cannot be used.
    #[error("mqtt.credentials_file: {0}")]
    MqttCredentials(String),
    /// TLS to the MQTT broker cannot be set up (CA or client certificate files).
    #[error("mqtt: {0}")]
    MqttTls(String),
    /// A serial port names a profile that is not loaded or not a serial profile.
    #[error("serial port `{path}`: profile `{profile}` is not a loaded serial profile{hint}")]
    UnknownSerialProfile {
        /// The port path.
        path: String,
        /// The profile id it names.
        profile: String,
        /// The loaded serial profiles, for the message.
        hint: String,
    },
    /// A BLE device names a profile that is not loaded or not a BLE profile.
    #[error("ble device `{address}`: profile `{profile}` is not a loaded BLE profile{hint}")]
    UnknownBleProfile {
        /// The device address.
        address: String,
        /// The profile id it names.
        profile: String,
        /// The loaded BLE profiles, for the message.
        hint: String,
    },
    /// A BLE profile's service UUID is not a UUID.
    #[error("profile `{profile}`: advertised service `{service}` is not a UUID")]
    BadServiceUuid {
        /// The profile id.
        profile: String,
        /// The service as written.
        service: String,
    },
    /// The simulator names a profile that is not loaded or not a sim profile.
    #[error("sim.profiles names `{0}`, which is not a loaded simulator profile")]
    UnknownSimProfile(String),
    /// The simulator has no profile to run.
    #[error("the simulator is enabled but no simulator profile is loaded")]
    NoSimProfile,
    /// A driver refused its configuration.
    #[error(transparent)]
    Driver(#[from] iomt_drivers::DriverError),
    /// An uplink could not be set up.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// The current UTC offset of a zone (for simulated wall clocks).
fn current_offset(zone: Zone) -> chrono::FixedOffset {
    match zone {
        Zone::GatewayLocal => chrono::Local::now().offset().fix(),
        Zone::Named(tz) => Utc::now().with_timezone(&tz).offset().fix(),
    }
}

/// The loaded profiles of one transport with their transport specs (`spec` is one of
/// [`TransportSpec::as_sim`], `as_serial`, `as_ble`, `as_mqtt`).
fn of_transport<T>(
    profiles: &[Arc<Profile>],
    spec: fn(&TransportSpec) -> Option<&T>,
) -> Vec<(&Profile, &T)> {
    profiles
        .iter()
        .filter_map(|p| spec(&p.transport).map(|s| (p.as_ref(), s)))
        .collect()
}

/// The profiles a driver section selects by id (all of them when `wanted` is empty), or
/// the first wanted id that is not among them.
fn select<'a, T>(
    loaded: Vec<(&'a Profile, &'a T)>,
    wanted: &[String],
) -> Result<Vec<(&'a Profile, &'a T)>, String> {
    if let Some(missing) = wanted
        .iter()
        .find(|w| !loaded.iter().any(|(p, _)| &p.id == *w))
    {
        return Err(missing.clone());
    }
    Ok(loaded
        .into_iter()
        .filter(|(p, _)| wanted.is_empty() || wanted.contains(&p.id))
        .collect())
}

/// The profile `id` a configured port or device is bound to, or, when no loaded
/// `transport` profile has that id, the end of the error message listing those loaded.
fn bound<'a, T>(
    loaded: &[(&'a Profile, &'a T)],
    id: &str,
    transport: &str,
) -> Result<(&'a Profile, &'a T), String> {
    if let Some(found) = loaded.iter().find(|(p, _)| p.id == id) {
        return Ok(*found);
    }
    let known: Vec<&str> = loaded.iter().map(|(p, _)| p.id.as_str()).collect();
    Err(if known.is_empty() {
        format!("; no {transport} profile is loaded")
    } else {
        format!("; loaded {transport} profiles: {}", known.join(", "))
    })
}

/// The identity of a device read with `profile` at `address`.
fn identity(
    profile: &Profile,
    transport: Transport,
    address: String,
    serial_number: Option<String>,
) -> Arc<DeviceIdentity> {
    Arc::new(DeviceIdentity {
        profile: profile.id.clone(),
        transport,
        address,
        serial_number,
        manufacturer: Some(profile.manufacturer.clone()),
        model: Some(profile.model.clone()),
    })
}

/// Builds the simulator's devices: one per selected sim profile.
pub fn sim_devices(
    config: &Config,
    settings: &SimSettings,
    profiles: &[Arc<Profile>],
) -> Result<Vec<SimDevice>, DaemonError> {
    let selected = select(
        of_transport(profiles, TransportSpec::as_sim),
        &settings.profiles,
    )
    .map_err(DaemonError::UnknownSimProfile)?;
    if selected.is_empty() {
        return Err(DaemonError::NoSimProfile);
    }
    Ok(selected
        .into_iter()
        .map(|(p, spec)| {
            let clock = match spec.clock {
                SimClock::Zoned => DriverClock::Zoned,
                SimClock::Local => DriverClock::Local(current_offset(config.zone_for(&p.id))),
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

/// Builds the serial driver's ports: each configured path with its profile's link
/// settings and framing.
pub fn serial_ports(
    settings: &SerialSettings,
    profiles: &[Arc<Profile>],
) -> Result<Vec<PortConfig>, DaemonError> {
    let loaded = of_transport(profiles, TransportSpec::as_serial);
    let mut ports = Vec::new();
    for port in &settings.ports {
        let (profile, spec) = bound(&loaded, &port.profile, "serial").map_err(|hint| {
            DaemonError::UnknownSerialProfile {
                path: port.path.clone(),
                profile: port.profile.clone(),
                hint,
            }
        })?;
        ports.push(PortConfig {
            path: port.path.clone(),
            identity: identity(profile, Transport::Serial, port.path.clone(), None),
            link: spec.link,
            framing: spec.framing.clone(),
            poll: spec.poll.clone(),
            min_interval: port.min_interval,
        });
    }
    Ok(ports)
}

/// How long the drivers and the pipeline may take, once cancelled, to hand their last
/// readings to the outbox (normally one commit window). Past it they are aborted.
pub const SHUTDOWN_INTAKE: Duration = Duration::from_secs(1);

/// How long the uplinks may go on once shutdown reaches them: the request in flight and
/// the last delivery pass together. With [`SHUTDOWN_INTAKE`] before it and the outbox's
/// close after it, the daemon exits within 5 seconds of SIGTERM, at worst about 3.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);

/// Callbacks into the program running the daemon (the binary sends systemd
/// notifications from them). Both are optional; [`Hooks::default`] has neither.
#[derive(Default)]
pub struct Hooks {
    /// Called once, when the outbox is open and the drivers are started.
    pub ready: Option<Box<dyn FnOnce() + Send>>,
    /// A keep-alive callback and its period. Every period the daemon checks its health
    /// (the outbox writer answers a round trip through its transaction loop within the
    /// period, and the pipeline task is still running or has ended normally) and calls the
    /// callback only if the check passed. A stuck gateway thus stops calling it, so a
    /// watchdog can restart it. Not called once shutdown has begun.
    pub alive: Option<(Duration, Box<dyn FnMut() + Send>)>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("ready", &self.ready.is_some())
            .field("alive", &self.alive.as_ref().map(|(period, _)| period))
            .finish()
    }
}

/// The health check behind [`Hooks::alive`]: the pipeline has not panicked, and the
/// outbox writer answers a round trip within `within`. Says why when it fails.
async fn health(
    outbox: &Outbox,
    pipeline_failed: &std::sync::atomic::AtomicBool,
    within: Duration,
) -> Result<(), String> {
    if pipeline_failed.load(std::sync::atomic::Ordering::SeqCst) {
        return Err("the pipeline task failed".into());
    }
    match tokio::time::timeout(within, outbox.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the outbox is not healthy: {e}")),
        Err(_) => Err(format!(
            "the outbox writer did not answer within {} ms",
            within.as_millis()
        )),
    }
}

/// The liveness task behind [`Hooks::alive`]: every `period`, calls `alive` if the
/// [`health`] check passes, until `stop` fires.
async fn liveness(
    outbox: Outbox,
    period: Duration,
    mut alive: Box<dyn FnMut() + Send>,
    pipeline_failed: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            checked = health(&outbox, &pipeline_failed, period) => match checked {
                Ok(()) => alive(),
                Err(why) => tracing::error!(reason = %why, "unhealthy; watchdog keep-alive withheld"),
            },
        }
    }
}

/// Parses a profile's service UUID: 16-bit (`1810`), 32-bit or 128-bit form.
fn service_uuid(profile: &str, s: &str) -> Result<uuid::Uuid, DaemonError> {
    let bad = || DaemonError::BadServiceUuid {
        profile: profile.to_string(),
        service: s.to_string(),
    };
    let t = s.trim().trim_start_matches("0x");
    if t.len() <= 4 {
        return u16::from_str_radix(t, 16)
            .map(uuid_from_u16)
            .map_err(|_| bad());
    }
    uuid::Uuid::parse_str(t).map_err(|_| bad())
}

/// Builds the BLE driver's allow-list: each configured address with its profile's
/// advertised services, name prefix and measurement characteristic.
pub fn ble_devices(
    settings: &BleSettings,
    profiles: &[Arc<Profile>],
) -> Result<Vec<BleDeviceConfig>, DaemonError> {
    let loaded = of_transport(profiles, TransportSpec::as_ble);
    let mut devices = Vec::new();
    for d in &settings.devices {
        let (profile, spec) =
            bound(&loaded, &d.profile, "BLE").map_err(|hint| DaemonError::UnknownBleProfile {
                address: d.address.clone(),
                profile: d.profile.clone(),
                hint,
            })?;
        let services = spec
            .services
            .iter()
            .map(|s| service_uuid(&profile.id, s))
            .collect::<Result<Vec<_>, _>>()?;
        devices.push(BleDeviceConfig {
            address: d.address.clone(),
            identity: identity(profile, Transport::Ble, d.address.clone(), None),
            services,
            name_prefix: spec.name_prefix.clone(),
            measurement: spec.decoder.characteristic,
            battery: profile.field(iomt_drivers::ble::BATTERY_FIELD).is_some(),
        });
    }
    Ok(devices)
}

/// The ids of the loaded BLE profiles an advertisement (name, service UUIDs) matches: a
/// service in common, or the profile's name prefix.
pub fn matching_ble_profiles(
    profiles: &[Profile],
    name: Option<&str>,
    services: &[uuid::Uuid],
) -> Vec<String> {
    profiles
        .iter()
        .filter(|p| {
            p.transport.as_ble().is_some_and(|spec| {
                spec.services
                    .iter()
                    .filter_map(|s| service_uuid(&p.id, s).ok())
                    .any(|u| services.contains(&u))
                    || spec
                        .name_prefix
                        .as_deref()
                        .is_some_and(|pre| name.is_some_and(|n| n.starts_with(pre)))
            })
        })
        .map(|p| p.id.clone())
        .collect()
}

/// Builds the MQTT driver's subscriptions: one per selected MQTT profile.
pub fn mqtt_subscriptions(
    settings: &MqttSettings,
    profiles: &[Arc<Profile>],
) -> Result<Vec<Subscription>, DaemonError> {
    let subs: Vec<Subscription> = select(
        of_transport(profiles, TransportSpec::as_mqtt),
        &settings.profiles,
    )
    .map_err(DaemonError::UnknownMqttProfile)?
    .into_iter()
    .map(|(p, spec)| Subscription {
        profile: p.id.clone(),
        manufacturer: p.manufacturer.clone(),
        model: p.model.clone(),
        filter: spec.topic.clone(),
        decoder: spec.json.clone(),
        device_id_level: spec.device_id_level,
    })
    .collect();
    if subs.is_empty() {
        return Err(DaemonError::NoMqttProfile);
    }
    Ok(subs)
}

/// Keeps the messages drivers refused in the outbox's dead letters, acknowledging each to
/// its driver once committed.
async fn keep_dead_letters(mut rx: RejectReceiver, outbox: Outbox, limit: usize) -> u64 {
    let mut kept = 0;
    while let Some(envelope) = rx.recv().await {
        match outbox.ingest_dead_letter(&envelope.rejected, limit).await {
            Ok(()) => {
                kept += 1;
                let _ = envelope.ack.send(());
            }
            Err(e) => {
                tracing::error!(error = %e, "a refused message could not be kept in the dead letters; it is not acknowledged")
            }
        }
    }
    kept
}

/// What a run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunStats {
    /// The pipeline's counters.
    pub pipeline: Stats,
    /// Each uplink's counters, by name.
    pub uplinks: Vec<(String, DeliveryStats)>,
}

fn build_uplink(u: &UplinkConfig, gateway_pseudonym: &str) -> Result<Box<dyn Uplink>, UplinkError> {
    Ok(match &u.kind {
        UplinkKind::File { dir } => Box::new(FileUplink::new(&u.name, dir)?),
        UplinkKind::Fhir(settings) => Box::new(FhirUplink::new((**settings).clone())?),
        UplinkKind::Mqtt(settings) => {
            Box::new(MqttUplink::new((**settings).clone(), gateway_pseudonym)?)
        }
    })
}

/// Runs the gateway until `cancel` fires, then drains: drivers stop, the pipeline hands
/// everything to the outbox, each uplink makes a last delivery pass, and the outbox
/// closes. [`run_with_hooks`] without hooks.
pub async fn run(
    config: Config,
    profiles: Vec<Profile>,
    pseudonymizer: Pseudonymizer,
    keyring: Arc<Keyring>,
    observer: Option<Observer>,
    cancel: CancellationToken,
) -> Result<RunStats, DaemonError> {
    run_with_hooks(
        config,
        profiles,
        pseudonymizer,
        keyring,
        observer,
        cancel,
        Hooks::default(),
    )
    .await
}

/// [`run`], calling `hooks.ready` once the outbox is open and the drivers are started,
/// and `hooks.alive` periodically while the daemon is healthy.
pub async fn run_with_hooks(
    config: Config,
    profiles: Vec<Profile>,
    pseudonymizer: Pseudonymizer,
    keyring: Arc<Keyring>,
    observer: Option<Observer>,
    cancel: CancellationToken,
    hooks: Hooks,
) -> Result<RunStats, DaemonError> {
    let profiles: Vec<Arc<Profile>> = profiles.into_iter().map(Arc::new).collect();
    let mut drivers: Vec<Box<dyn Driver>> = Vec::new();
    if let Some(settings) = &config.sim {
        let devices = sim_devices(&config, settings, &profiles)?;
        drivers.push(Box::new(SimDriver::new(SimConfig {
            interval: settings.interval,
            nan_probability: settings.nan_probability,
            out_of_range_probability: settings.out_of_range_probability,
            seed: settings.seed,
            max_readings: settings.max_readings,
            devices,
        })?));
    }
    let mut address_zones = BTreeMap::new();
    if let Some(settings) = &config.serial {
        let ports = serial_ports(settings, &profiles)?;
        for p in &settings.ports {
            if let Some(zone) = p.zone {
                address_zones.insert(format!("{}:{}", Transport::Serial, p.path), zone);
            }
        }
        drivers.push(Box::new(SerialDriver::new(SerialConfig {
            ports,
            reconnect_initial: settings.reconnect_initial,
            reconnect_max: settings.reconnect_max,
        })?));
    }
    if let Some(settings) = &config.ble {
        let devices = ble_devices(settings, &profiles)?;
        for d in &settings.devices {
            if let Some(zone) = d.zone {
                address_zones.insert(format!("{}:{}", Transport::Ble, d.address), zone);
            }
        }
        // The glucose sequence file lives next to the outbox: both are the kit's state.
        let state_dir = config
            .outbox
            .path
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default();
        drivers.push(Box::new(BleDriver::new(BleConfig {
            adapter: settings.adapter.clone(),
            devices,
            reconnect_initial: settings.reconnect_initial,
            reconnect_max: settings.reconnect_max,
            sequence_file: state_dir.join("ble-glucose-sequences.json"),
        })?));
    }
    let mut rejects = None;
    if let Some(settings) = &config.mqtt {
        let subscriptions = mqtt_subscriptions(settings, &profiles)?;
        let credentials = match &settings.credentials_file {
            Some(path) => {
                let (username, password) = crate::uplink::mqtt::read_credentials(path)
                    .map_err(DaemonError::MqttCredentials)?;
                Some(Credentials { username, password })
            }
            None => None,
        };
        let (reject_tx, reject_rx) = reject_channel(settings.max_in_flight);
        rejects = Some((reject_rx, settings.dead_letter_limit));
        let tls = match &settings.tls {
            Some(t) => Some(MqttTls(
                crate::uplink::mqtt::tls::configuration(t).map_err(DaemonError::MqttTls)?,
            )),
            None => {
                if !is_loopback_host(&settings.host) {
                    tracing::warn!(broker = %settings.host, "mqtt.tls is off: readings travel unencrypted to a broker that is not on this machine");
                }
                None
            }
        };
        drivers.push(Box::new(MqttDriver::new(MqttConfig {
            host: settings.host.clone(),
            port: settings.port,
            tls,
            client_id: settings.client_id.clone(),
            credentials,
            keep_alive: settings.keep_alive,
            max_payload: settings.max_payload,
            max_in_flight: settings.max_in_flight,
            reconnect_initial: settings.reconnect_initial,
            reconnect_max: settings.reconnect_max,
            subscriptions,
            rejects: reject_tx,
        })?));
    }
    if drivers.is_empty() {
        return Err(DaemonError::NoDriver);
    }
    let gateway_pseudonym = pseudonymizer.pseudonym(Domain::Gateway, &config.gateway_id);
    let mut uplinks = Vec::new();
    for u in &config.uplinks {
        uplinks.push((build_uplink(u, &gateway_pseudonym)?, u.clone()));
    }

    let (outbox, writer) =
        Outbox::open(config.outbox.clone(), keyring, config.uplink_names()).await?;
    let dead_letter_task =
        rejects.map(|(rx, limit)| tokio::spawn(keep_dead_letters(rx, outbox.clone(), limit)));
    let gateway_device: crate::fhir::Device = normalize::gateway_resource(&gateway_pseudonym);

    let uplink_cancel = CancellationToken::new();
    let mut uplink_tasks = Vec::new();
    for (uplink, u) in uplinks {
        let settings = DeliverySettings {
            batch_size: u.batch_size,
            backoff_base: Duration::from_millis(500),
            backoff_max: u.backoff_max,
            drain_deadline: SHUTDOWN_DRAIN,
        };
        let task = tokio::spawn(deliver::run(
            outbox.clone(),
            uplink,
            settings,
            gateway_device.clone(),
            uplink_cancel.clone(),
        ));
        uplink_tasks.push((u.name.clone(), task));
    }

    let pipeline = Pipeline {
        profiles: profiles
            .iter()
            .map(|p| (p.id.clone(), p.clone()))
            .collect::<HashMap<_, _>>(),
        patient_pseudonym: pseudonymizer.pseudonym(Domain::Patient, &config.patient_id),
        gateway_pseudonym,
        pseudonymizer,
        zones: (config.zone, config.device_zones.clone()),
        address_zones,
        out_of_range: config.out_of_range,
        outbox: outbox.clone(),
        observer,
    };

    let (tx, rx) = reading_channel(config.channel_capacity);
    // Set if the pipeline task ends by panicking (the drop guard runs while unwinding).
    let pipeline_failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pipeline_task = {
        let failed = pipeline_failed.clone();
        tokio::spawn(async move {
            struct PanicFlag(Arc<std::sync::atomic::AtomicBool>);
            impl Drop for PanicFlag {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            }
            let _flag = PanicFlag(failed);
            pipeline.run(rx).await
        })
    };
    let mut driver_tasks = Vec::new();
    for driver in drivers {
        let name = driver.name().to_string();
        let fut = driver.run(tx.clone(), cancel.child_token());
        driver_tasks.push((name, tokio::spawn(fut)));
    }
    drop(tx);
    tracing::info!(
        drivers = driver_tasks.len(),
        profiles = profiles.len(),
        uplinks = uplink_tasks.len(),
        "gateway running"
    );
    if let Some(ready) = hooks.ready {
        ready();
    }
    let liveness_stop = cancel.child_token();
    let liveness_task = hooks.alive.map(|(period, alive)| {
        tokio::spawn(liveness(
            outbox.clone(),
            period,
            alive,
            pipeline_failed,
            liveness_stop.clone(),
        ))
    });
    // Shutdown is bounded: once cancelled, the drivers and the pipeline have
    // SHUTDOWN_INTAKE to hand everything to the outbox. Past it (a full outbox in "block"
    // mode that no uplink empties, a driver blocked on the full channel) they are
    // aborted: what they still hold was never acknowledged to its source.
    let hard_stop = CancellationToken::new();
    let hard_stop_timer = {
        let (cancel, hard_stop) = (cancel.clone(), hard_stop.clone());
        tokio::spawn(async move {
            cancel.cancelled().await;
            tokio::time::sleep(SHUTDOWN_INTAKE).await;
            hard_stop.cancel();
        })
    };
    for (name, mut task) in driver_tasks {
        let outcome = tokio::select! {
            outcome = &mut task => outcome,
            _ = hard_stop.cancelled() => {
                tracing::warn!(driver = %name, "driver still busy at the shutdown deadline; stopped");
                task.abort();
                task.await
            }
        };
        match outcome {
            Ok(Ok(())) => tracing::debug!(driver = %name, "driver stopped"),
            Ok(Err(e)) => tracing::error!(driver = %name, error = %e, "driver failed"),
            Err(e) if e.is_cancelled() => {}
            Err(e) => tracing::error!(driver = %name, error = %e, "driver task panicked"),
        }
    }
    let mut pipeline_task = pipeline_task;
    let pipeline_outcome = tokio::select! {
        outcome = &mut pipeline_task => outcome,
        _ = hard_stop.cancelled() => {
            tracing::warn!("the outbox took no more readings before the shutdown deadline (full, when_full = \"block\"?); the pipeline's last readings were not stored and not acknowledged");
            pipeline_task.abort();
            pipeline_task.await
        }
    };
    hard_stop_timer.abort();
    if let Some(task) = dead_letter_task {
        match task.await {
            Ok(kept) => tracing::info!(kept, "ingest dead-letter keeper stopped"),
            Err(e) => tracing::error!(error = %e, "dead-letter task panicked"),
        }
    }
    let mut stats = RunStats {
        pipeline: pipeline_outcome.unwrap_or_else(|e| {
            if !e.is_cancelled() {
                tracing::error!(error = %e, "pipeline task panicked");
            }
            Stats::default()
        }),
        uplinks: Vec::new(),
    };
    // Drivers that finish on their own (a simulator with a reading limit) do not stop
    // the daemon: the uplinks keep delivering the backlog until shutdown is asked for.
    cancel.cancelled().await;
    if let Some(task) = liveness_task {
        liveness_stop.cancel();
        let _ = task.await;
    }
    uplink_cancel.cancel();
    for (name, task) in uplink_tasks {
        match task.await {
            Ok(s) => stats.uplinks.push((name, s)),
            Err(e) => tracing::error!(uplink = %name, error = %e, "uplink task panicked"),
        }
    }
    drop(outbox);
    if let Err(e) = writer.await {
        tracing::error!(error = %e, "outbox writer panicked");
    }
    tracing::info!("outbox closed");
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::outbox::{OutboxSettings, WhenFull};

    async fn open_outbox(dir: &std::path::Path) -> (Outbox, tokio::task::JoinHandle<()>) {
        Outbox::open(
            OutboxSettings {
                path: dir.join("outbox.db"),
                max_bytes: 1 << 20,
                max_age: None,
                when_full: WhenFull::EvictOldest,
                commit_window: Duration::from_millis(1),
                max_batch_rows: 16,
            },
            Arc::new(Keyring::new(&[7; 32])),
            vec!["fhir".into()],
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn the_gateway_is_healthy_while_its_outbox_writer_answers() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _writer) = open_outbox(dir.path()).await;
        let failed = AtomicBool::new(false);
        assert_eq!(
            health(&outbox, &failed, Duration::from_secs(5)).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn the_keep_alive_is_withheld_once_the_outbox_writer_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, writer) = open_outbox(dir.path()).await;
        writer.abort();
        let _ = writer.await;
        let failed = AtomicBool::new(false);
        let why = health(&outbox, &failed, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(why.contains("outbox"), "{why}");
    }

    #[tokio::test]
    async fn the_keep_alive_is_withheld_after_the_pipeline_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _writer) = open_outbox(dir.path()).await;
        let failed = AtomicBool::new(false);
        failed.store(true, Ordering::SeqCst);
        let why = health(&outbox, &failed, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(why.contains("pipeline"), "{why}");
    }
}
