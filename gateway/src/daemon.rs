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
use std::time::Duration;

use iomt_drivers::{reading_channel, Driver, RejectReceiver};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::health::server::{Endpoint, StatusError};
use crate::health::Health;
use crate::ingest::{self, IngestError};
use crate::normalize;
use crate::outbox::seal::Keyring;
use crate::outbox::{Outbox, OutboxError};
use crate::pipeline::{Observer, Pipeline, Stats};
use crate::profile::Profile;
use crate::pseudonym::{Domain, Pseudonymizer};
use crate::uplink::deliver::{self, DeliverySettings, DeliveryStats};
use crate::uplink::UplinkError;

/// Why the gateway could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// No driver is enabled, so there would be nothing to do.
    #[error("no driver is enabled: add a Bluetooth device with a [[ble.devices]] table (address and profile), a serial port with a [[serial.ports]] table (path and profile), enable the MQTT driver with [mqtt] enabled = true, or enable the simulator with [sim] enabled = true")]
    NoDriver,
    /// A configured transport cannot start with the loaded profiles.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// An uplink could not be set up.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// The outbox could not be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The status endpoint refuses to start (its token file).
    #[error(transparent)]
    Status(#[from] StatusError),
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
    /// Called with the health model's one-line summary at start and each time it changes
    /// (a device connects or goes, an uplink starts or stops failing), never on a timer.
    pub status: Option<StatusHook>,
}

/// The callback of [`Hooks::status`].
pub type StatusHook = Box<dyn FnMut(&str) + Send>;

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("ready", &self.ready.is_some())
            .field("alive", &self.alive.as_ref().map(|(period, _)| period))
            .field("status", &self.status.is_some())
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
    // The BLE driver's glucose sequence file lives next to the outbox: both are the
    // kit's state.
    let state_dir = config
        .outbox
        .path
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    // The kit's health, reported into by every component (`health/`).
    let health = Health::new(pseudonymizer.clone());
    if let Some(status) = &config.status {
        health.set_seen_within(status.seen_within);
    }
    let ctx = ingest::Context {
        health: Some(&health),
        profiles: &profiles,
        zone: config.zone,
        device_zones: &config.device_zones,
        state_dir: &state_dir,
    };
    let mut drivers: Vec<Box<dyn Driver>> = Vec::new();
    let mut address_zones = BTreeMap::new();
    let mut rejects = None;
    for source in config.sources() {
        let built = source.build(&ctx)?;
        drivers.push(built.driver);
        address_zones.extend(built.address_zones);
        rejects = rejects.or(built.rejects);
    }
    if drivers.is_empty() {
        return Err(DaemonError::NoDriver);
    }
    let gateway_pseudonym = pseudonymizer.pseudonym(Domain::Gateway, &config.gateway_id);
    let mut uplinks = Vec::new();
    for u in &config.uplinks {
        uplinks.push((u.build(&gateway_pseudonym)?, u.clone()));
    }

    // A swapped pseudonymization key would silently change every pseudonym: the outbox
    // records the key's fingerprint and refuses another.
    let outbox_settings = crate::outbox::OutboxSettings {
        pseudonym_key: Some(pseudonymizer.fingerprint()),
        ..config.outbox.clone()
    };
    let (outbox, writer) = Outbox::open(outbox_settings, keyring, config.uplink_names()).await?;
    let dead_letter_task =
        rejects.map(|(rx, limit)| tokio::spawn(keep_dead_letters(rx, outbox.clone(), limit)));
    let gateway_device: crate::fhir::Device = normalize::gateway_resource(&gateway_pseudonym);
    // The gateway's own clock: looked at on each reading, and once a minute only while
    // it is not synchronized (`clock.rs`).
    let clock = Clock::with_state(config.clock.clone(), &state_dir);
    let clock_stop = CancellationToken::new();
    let clock_task = tokio::spawn(clock.clone().watch(clock_stop.clone()));

    let uplink_cancel = CancellationToken::new();
    let mut uplink_tasks = Vec::new();
    for (uplink, u) in uplinks {
        health.uplink_configured(&u.name);
        let settings = DeliverySettings {
            health: Some(health.clone()),
            heartbeat: config.heartbeat,
            batch_size: u.batch_size,
            backoff_base: Duration::from_millis(500),
            backoff_max: u.backoff_max,
            drain_deadline: SHUTDOWN_DRAIN,
            clock: Some(clock.clone()),
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
        clock: Some(clock.clone()),
        health: Some(health.clone()),
    };
    let status_stop = CancellationToken::new();
    let status_task = match config.status.clone() {
        Some(settings) => {
            let endpoint = Endpoint::new(
                settings,
                health.clone(),
                outbox.clone(),
                config.uplink_names(),
                Some(clock.clone()),
                state_dir.clone(),
            )?;
            Some(tokio::spawn(endpoint.serve(status_stop.clone())))
        }
        None => None,
    };
    let summary_task = hooks.status.map(|mut report| {
        let mut summary = health.summary();
        let stop = status_stop.clone();
        tokio::spawn(async move {
            loop {
                let line = summary.borrow_and_update().clone();
                report(&line);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = summary.changed() => if changed.is_err() { break },
                }
            }
        })
    });

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
    // No reading can come any more: what waits for company in the outbox is committed
    // now, so the uplinks' last pass can deliver it.
    if let Err(e) = outbox.flush().await {
        tracing::warn!(error = %e, "the outbox could not commit its last readings");
    }
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
    clock_stop.cancel();
    let _ = clock_task.await;
    status_stop.cancel();
    for task in [status_task, summary_task].into_iter().flatten() {
        let _ = task.await;
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
                quiet_commit_window: Duration::from_millis(1),
                max_batch_rows: 16,
                pseudonym_key: None,
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
