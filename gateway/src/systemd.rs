//! systemd glue: sd_notify messages (READY=1, STOPPING=1, WATCHDOG=1, and STATUS= with
//! the health model's one-line summary, sent when it changes) and the watchdog period. The library knows nothing of systemd; it offers `daemon::Hooks`.

use std::time::Duration;

use iomt_gateway::daemon;

/// Sends a notification to systemd if it asked for them (`NOTIFY_SOCKET`); a failure is
/// logged, never fatal.
pub(crate) fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`), unless `WATCHDOG_PID` names
/// another process (the rule of sd_watchdog_enabled(3)).
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// systemd integration (`Type=notify`, `WatchdogSec=`): READY=1 once the outbox is open
/// and the drivers are started; WATCHDOG=1 at half the watchdog period, only while the
/// daemon's health check passes, so a stuck gateway is restarted.
pub(crate) fn systemd_hooks() -> daemon::Hooks {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return daemon::Hooks::default();
    }
    let alive = watchdog_period().map(|period| {
        tracing::info!(
            period_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
        let keep_alive: Box<dyn FnMut() + Send> =
            Box::new(|| notify_systemd(&[sd_notify::NotifyState::Watchdog]));
        ((period / 2).max(Duration::from_millis(1)), keep_alive)
    });
    daemon::Hooks {
        ready: Some(Box::new(|| {
            notify_systemd(&[sd_notify::NotifyState::Ready])
        })),
        alive,
        // systemctl status shows the health model's one-line summary.
        status: Some(Box::new(|line: &str| {
            notify_systemd(&[sd_notify::NotifyState::Status(line)])
        })),
    }
}
