//! The gateway's own clock: is the system clock synchronized to UTC, and what to do with
//! readings received while it is not.
//!
//! **Where the status comes from.** The kernel's NTP state, read with `adjtimex(2)` (modes
//! 0: read only): the clock is synchronized when the call does not return `TIME_ERROR`
//! and `STA_UNSYNC` is clear. Every time daemon a kit may run (systemd-timesyncd,
//! chrony, ntpd) clears `STA_UNSYNC` once it has set the clock and the kernel sets it again
//! when nobody disciplines the clock any more, so one system call answers for all of them,
//! without systemd, without D-Bus, and in a few microseconds. systemd-timesyncd's D-Bus
//! properties would answer only for timesyncd, need a bus connection the daemon otherwise
//! does not have, and are missing where chrony runs. (systemd's `ProtectClock=yes` filters
//! `adjtimex` even for reading: the shipped unit allows that one call instead, and the
//! clock stays unsettable without `CAP_SYS_TIME`. Should the call be refused anyway, the
//! clock is trusted as before, with one error in the log.) `[clock] source` can instead
//! `assume-synchronized` (a virtual machine whose clock the host keeps, with no time daemon
//! to tell the kernel), or, for tests only, read a status file (see [`ClockSource`]).
//!
//! **When it is looked at** (no polling at rest): on every reading the pipeline takes,
//! and, only while the clock is not synchronized, once every [`RECHECK`] by a timer (so a
//! kit with no readings still notices the sync). While the clock is synchronized no timer
//! runs. Each transition is logged once (`warn` when the clock is lost, `info` when it is
//! back) and wakes the delivery loops; a loop holding rows back also wakes when the first
//! of them has waited `[clock] unsynchronized_wait_secs`, and not for commits (what is
//! committed meanwhile is held too). A clock lost while the kit is idle is noticed at the
//! next reading, the first moment it matters.
//!
//! **Held readings** (`hold.rs`). A reading received while the clock is not synchronized
//! is stored with a [`TimeHold`]: the boot id, `CLOCK_BOOTTIME` at receipt (a clock that
//! never jumps) and the wall time written into its Observations. The delivery loops hold
//! such rows back; once the clock is synchronized the receipt time is computed again as
//! `now - (boottime now - boottime at receipt)` and written into `issued` (and into
//! `effectiveDateTime` where that came from the receipt time). The first synchronized look
//! of each boot also records that boot's anchor (wall clock minus boottime,
//! `anchors.rs`), so a row of an earlier boot whose clock was synchronized later (a
//! restart between the sync and the delivery) is corrected too, as the boottime at
//! receipt plus the anchor. Past `[clock] unsynchronized_wait_secs`, or when the row
//! comes from an earlier boot that has no anchor (its clock was never seen synchronized:
//! its boottime cannot be compared with anything), the row goes out with its times as
//! they were, marked uncertain (a `meta.tag` and a `note`). The rule book in
//! `normalize.rs` says it for clinical engineers.

pub mod anchors;
pub mod hold;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::limits;
pub use hold::{ClockNow, Release, TimeHold, HOLD_MEMBER};

/// How often the status is looked at again while the clock is not synchronized.
pub const RECHECK: Duration = Duration::from_secs(60);

/// The file of the boots' anchors, in the outbox's directory (`anchors.rs`).
pub const ANCHORS_FILE: &str = "clock-anchors.json";

/// The default of `[clock] unsynchronized_wait_secs`: a day.
pub const DEFAULT_WAIT_SECS: u64 = 86_400;

/// Where the synchronization status comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockSource {
    /// The kernel's NTP status (`adjtimex`): the production source.
    Kernel,
    /// Always synchronized: a machine whose clock is kept by its host.
    AssumeSynchronized,
    /// **For tests only**: a file whose first word is `synchronized` or
    /// `unsynchronized`, optionally followed by `offset_secs=N`: the wall clock is then
    /// treated as reading N seconds off the true time (a negative N: behind). A missing
    /// or unreadable file reads as unsynchronized.
    StatusFile(PathBuf),
}

/// What the source says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// Whether the system clock is synchronized to UTC.
    pub synchronized: bool,
    /// The simulated error of the wall clock, in ms (status file only; 0 otherwise).
    pub offset_ms: i64,
}

impl ClockSource {
    /// Reads the status. When the kernel refuses to tell (a sandbox filtering
    /// `adjtimex`, such as systemd's `ProtectClock=yes`), the clock is trusted as before
    /// this check existed, with one error logged saying so.
    pub fn read(&self) -> ClockReading {
        match self {
            ClockSource::Kernel => ClockReading {
                synchronized: kernel_synchronized().unwrap_or_else(|e| {
                    if !KERNEL_REFUSED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        tracing::error!(error = %e, "cannot read the kernel's clock status (adjtimex); the clock is trusted as it is. Under systemd, ProtectClock=yes blocks it: the shipped unit allows adjtimex instead (SystemCallFilter=adjtimex)");
                    }
                    true
                }),
                offset_ms: 0,
            },
            ClockSource::AssumeSynchronized => ClockReading {
                synchronized: true,
                offset_ms: 0,
            },
            ClockSource::StatusFile(path) => read_status_file(path),
        }
    }

    /// A word for `outbox status` and the logs.
    pub fn name(&self) -> &'static str {
        match self {
            ClockSource::Kernel => "kernel (adjtimex)",
            ClockSource::AssumeSynchronized => "assumed synchronized",
            ClockSource::StatusFile(_) => "status file (tests only)",
        }
    }
}

/// Set once the kernel has refused `adjtimex` (logged once).
static KERNEL_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The kernel's view: `adjtimex` with no modes set only reads.
fn kernel_synchronized() -> std::io::Result<bool> {
    // SAFETY: an all-zero `timex` is a valid value (modes = 0 asks for nothing to be
    // set), and the kernel writes only into the struct passed.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `tx` is a valid, exclusively borrowed `timex` for the call's duration.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0)
}

fn read_status_file(path: &Path) -> ClockReading {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut words = text.split_whitespace();
    let synchronized = words.next() == Some("synchronized");
    let offset_ms = words
        .filter_map(|w| w.strip_prefix("offset_secs="))
        .filter_map(|n| n.parse::<i64>().ok())
        .map(|s| s.saturating_mul(1000))
        .next_back()
        .unwrap_or(0);
    ClockReading {
        synchronized,
        offset_ms,
    }
}

/// `CLOCK_BOOTTIME` in ms: monotonic, counts suspend, never set or stepped.
// `i64::from` is a conversion on armv7 (32-bit `time_t` and `long`), none elsewhere.
#[allow(clippy::useless_conversion)]
pub fn boottime_ms() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, exclusively borrowed `timespec`; CLOCK_BOOTTIME exists on
    // every Linux the gateway supports (2.6.39 and later).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    i64::from(ts.tv_sec)
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.tv_nsec) / 1_000_000)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): boottimes compare only within one
/// boot. Empty when it cannot be read (then no held row is ever corrected, only marked).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `[clock]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClock {
    /// `kernel` (the default: the kernel's NTP status), `assume-synchronized` (a machine
    /// whose clock its host keeps), or `status-file` (tests only, with `status_file`).
    #[serde(default)]
    pub source: RawSource,
    /// For `source = "status-file"` only (tests): the file to read.
    #[serde(default)]
    pub status_file: Option<PathBuf>,
    /// How long a reading received while the clock is not synchronized is held back
    /// waiting for the clock, in seconds of uptime; past it, it goes out marked uncertain.
    /// Default a day.
    #[serde(default)]
    pub unsynchronized_wait_secs: Option<u64>,
}

/// `[clock] source`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawSource {
    /// The kernel's NTP status.
    #[default]
    Kernel,
    /// Always synchronized.
    AssumeSynchronized,
    /// A status file (tests only).
    StatusFile,
}

/// `[clock]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockSettings {
    /// The source of the status.
    pub source: ClockSource,
    /// How long held readings wait for the clock.
    pub wait: Duration,
}

impl Default for ClockSettings {
    fn default() -> Self {
        ClockSettings {
            source: ClockSource::Kernel,
            wait: Duration::from_secs(DEFAULT_WAIT_SECS),
        }
    }
}

impl RawClock {
    /// Validates, adding problems (naming the key) to `problems`.
    pub fn validate(&self, problems: &mut Vec<String>) -> ClockSettings {
        let wait = limits::optional(
            "clock.unsynchronized_wait_secs",
            self.unsynchronized_wait_secs,
            DEFAULT_WAIT_SECS,
            &limits::UNSYNCHRONIZED_WAIT_SECS,
        )
        .unwrap_or_else(|e| {
            problems.push(e);
            DEFAULT_WAIT_SECS
        });
        let source = match (self.source, &self.status_file) {
            (RawSource::StatusFile, Some(path)) => ClockSource::StatusFile(path.clone()),
            (RawSource::StatusFile, None) => {
                problems.push("clock.source = \"status-file\" needs clock.status_file".into());
                ClockSource::Kernel
            }
            (_, Some(_)) => {
                problems.push("clock.status_file is read only with clock.source = \"status-file\" (for tests); remove it".into());
                ClockSource::Kernel
            }
            (RawSource::Kernel, None) => ClockSource::Kernel,
            (RawSource::AssumeSynchronized, None) => ClockSource::AssumeSynchronized,
        };
        ClockSettings {
            source,
            wait: Duration::from_secs(wait),
        }
    }
}

/// The daemon's clock: the source, the last status seen, and a notification of changes.
#[derive(Debug)]
pub struct Clock {
    settings: ClockSettings,
    boot: Arc<str>,
    last: Mutex<Option<bool>>,
    changes: watch::Sender<u64>,
    /// The anchors file (`anchors.rs`), when the clock keeps one.
    anchors_path: Option<PathBuf>,
    anchors: Mutex<Arc<Vec<anchors::Anchor>>>,
}

impl Clock {
    /// A clock reading `settings.source`, for this boot.
    pub fn new(settings: ClockSettings) -> Arc<Self> {
        Self::build(settings, None)
    }

    /// A clock that keeps each boot's anchor (`anchors.rs`) in `state_dir`, the directory
    /// of the outbox.
    pub fn with_state(settings: ClockSettings, state_dir: &Path) -> Arc<Self> {
        Self::build(settings, Some(state_dir.join(ANCHORS_FILE)))
    }

    fn build(settings: ClockSettings, anchors_path: Option<PathBuf>) -> Arc<Self> {
        let anchors = anchors_path
            .as_deref()
            .map(anchors::load)
            .unwrap_or_default();
        Arc::new(Clock {
            settings,
            boot: boot_id().into(),
            last: Mutex::new(None),
            changes: watch::channel(0).0,
            anchors_path,
            anchors: Mutex::new(Arc::new(anchors)),
        })
    }

    /// How long held readings wait for the clock.
    pub fn wait(&self) -> Duration {
        self.settings.wait
    }

    /// Reads the source; logs a transition and tells the subscribers.
    pub fn check(&self) -> ClockReading {
        let reading = self.settings.source.read();
        let before = {
            let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            last.replace(reading.synchronized)
        };
        if before != Some(reading.synchronized) {
            if reading.synchronized {
                self.anchor(reading);
            }
            let wait_secs = self.settings.wait.as_secs();
            if reading.synchronized {
                tracing::info!(source = self.settings.source.name(), "the system clock is synchronized; readings held for it are corrected and delivered");
            } else {
                tracing::warn!(source = self.settings.source.name(), wait_secs, "the system clock is not synchronized (no time daemon has set it: check systemd-timesyncd or chrony and the network); readings are held back until it is, and go out marked uncertain after the wait");
            }
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
        reading
    }

    /// Records this boot's anchor, unless it has one.
    fn anchor(&self, reading: ClockReading) {
        let wall_ms = chrono::Utc::now()
            .timestamp_millis()
            .saturating_add(reading.offset_ms);
        let anchor = anchors::Anchor {
            boot: self.boot.to_string(),
            offset_ms: wall_ms.saturating_sub(boottime_ms()),
        };
        let mut all = self.anchors.lock().unwrap_or_else(|e| e.into_inner());
        let mut updated = (**all).clone();
        if anchors::record(self.anchors_path.as_deref(), &mut updated, anchor) {
            *all = Arc::new(updated);
        }
    }

    /// The clock as the delivery loop needs it, read now.
    pub fn now(&self) -> ClockNow {
        let reading = self.check();
        ClockNow {
            synchronized: reading.synchronized,
            boot: self.boot.clone(),
            boottime_ms: boottime_ms(),
            wall_ms: chrono::Utc::now()
                .timestamp_millis()
                .saturating_add(reading.offset_ms),
            anchors: self
                .anchors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// A hold for a reading received now, when the clock is not synchronized (`None`
    /// when it is). `wall_ms` is the receipt time as written into the Observations.
    pub fn hold(&self, reading: ClockReading, wall_ms: i64) -> Option<TimeHold> {
        (!reading.synchronized).then(|| TimeHold {
            boot: self.boot.to_string(),
            boottime_ms: boottime_ms(),
            wall_ms,
        })
    }

    /// Changes on every transition (noticed by a reading, or by [`Clock::watch`]).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The last status seen (checks once if none was).
    pub fn synchronized(&self) -> bool {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.unwrap_or_else(|| self.check().synchronized)
    }

    /// Runs until `stop`: while the clock is not synchronized, looks at it every
    /// [`RECHECK`] (so a kit with no readings notices the sync too); while it is, waits
    /// for the next transition someone else noticed, with no timer.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut changes = self.subscribe();
        self.check();
        loop {
            if self.synchronized() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
            } else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RECHECK) => {
                        self.check();
                        changes.borrow_and_update();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(file: &Path) -> ClockSettings {
        ClockSettings {
            source: ClockSource::StatusFile(file.to_path_buf()),
            wait: Duration::from_secs(3600),
        }
    }

    #[test]
    fn the_status_file_says_synchronized_or_not_with_an_optional_offset() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("clock");
        let source = ClockSource::StatusFile(f.clone());
        assert!(
            !source.read().synchronized,
            "a missing file is unsynchronized"
        );
        std::fs::write(&f, "unsynchronized offset_secs=-259200\n").unwrap();
        assert_eq!(
            source.read(),
            ClockReading {
                synchronized: false,
                offset_ms: -259_200_000
            }
        );
        std::fs::write(&f, "synchronized").unwrap();
        assert_eq!(
            source.read(),
            ClockReading {
                synchronized: true,
                offset_ms: 0
            }
        );
    }

    #[test]
    fn the_kernel_status_can_be_read() {
        // Synchronized or not depends on the machine; the call itself must work.
        assert!(kernel_synchronized().is_ok());
        assert!(boottime_ms() > 0);
    }

    #[test]
    fn a_status_file_without_its_source_and_a_wait_out_of_range_are_refused() {
        let mut problems = Vec::new();
        RawClock {
            source: RawSource::Kernel,
            status_file: Some("/tmp/x".into()),
            unsynchronized_wait_secs: Some(0),
        }
        .validate(&mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("clock.unsynchronized_wait_secs"));
        assert!(problems[1].contains("clock.status_file"));
    }

    #[test]
    fn the_first_synchronized_look_of_a_boot_anchors_it_in_the_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("clock");
        let file = dir.path().join(ANCHORS_FILE);
        std::fs::write(&f, "unsynchronized").unwrap();
        let clock = Clock::with_state(settings(&f), dir.path());
        clock.check();
        assert!(!file.exists(), "no anchor while unsynchronized");
        std::fs::write(&f, "synchronized").unwrap();
        clock.check();
        let kept = anchors::load(&file);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].boot, boot_id());
        let expected = chrono::Utc::now().timestamp_millis() - boottime_ms();
        assert!((kept[0].offset_ms - expected).abs() < 1000, "{kept:?}");
        assert_eq!(clock.now().anchors.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn while_unsynchronized_the_watch_looks_once_a_minute_and_stops_looking_once_synchronized(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("clock");
        std::fs::write(&f, "unsynchronized").unwrap();
        let clock = Clock::new(settings(&f));
        let mut changes = clock.subscribe();
        let stop = CancellationToken::new();
        let task = tokio::spawn(clock.clone().watch(stop.clone()));
        changes.changed().await.unwrap(); // the first look: unsynchronized
        let start = tokio::time::Instant::now();
        std::fs::write(&f, "synchronized").unwrap();
        changes.changed().await.unwrap(); // the next look finds it synchronized
        assert_eq!(start.elapsed(), RECHECK);
        assert!(clock.synchronized());
        // Synchronized: no timer any more (in paused time, a timer would fire at once).
        let quiet = tokio::time::timeout(Duration::from_secs(3600), changes.changed()).await;
        assert!(quiet.is_err(), "no wake-up while synchronized");
        stop.cancel();
        task.await.unwrap();
    }
}
