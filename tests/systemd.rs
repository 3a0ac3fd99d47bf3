//! The daemon under a service manager: the systemd notification protocol (`NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`) spoken to a unix datagram socket the test binds, as systemd does, and
//! a shutdown bounded well within the unit's stop timeout.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::config::Config;
use common::{run_config, wait_until, DaemonGuard};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the daemon may take to exit after SIGTERM (the unit's promise).
const STOP_WITHIN: Duration = Duration::from_secs(5);

/// The keys and a configuration with the simulator and the given `[[uplinks]]` table.
fn write_config(dir: &Path, uplink: &str) -> PathBuf {
    write_config_with(dir, uplink, "interval_secs = 0.05", "")
}

/// The keys and a configuration with the simulator (`sim` lines added to `[sim]`), the
/// `[[uplinks]]` table and `outbox` lines added to `[outbox]`.
fn write_config_with(dir: &Path, uplink: &str, sim: &str, outbox: &str) -> PathBuf {
    common::write_keys(dir);
    Config::new(dir, "kit-systemd-1", "MRN-SYSTEMD-1")
        .driver(&format!("[sim]\nenabled = true\n{sim}"))
        .outbox(outbox)
        .uplink(uplink)
        .write()
}

/// The `[[uplinks]]` keys of a FHIR uplink named `cloud` to 127.0.0.1:`port`, its
/// requests timing out after 30 s.
fn cloud_uplink(port: u16) -> String {
    format!(
        "kind = \"fhir\"\nname = \"cloud\"\nbase_url = \"http://127.0.0.1:{port}/fhir\"\ntimeout_secs = 30"
    )
}

/// The notification socket systemd would bind, and what arrived on it.
struct Notify {
    socket: UnixDatagram,
    path: PathBuf,
    seen: Vec<String>,
}

impl Notify {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notify {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Receives datagrams until `condition` holds on the lines seen so far, or fails
    /// after `deadline`.
    fn wait_for(&mut self, deadline: Duration, what: &str, condition: impl Fn(&[String]) -> bool) {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while !condition(&self.seen) {
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}; received: {:?}",
                self.seen
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.extend(text.lines().map(str::to_string));
            }
        }
    }

    /// Waits for READY=1.
    fn wait_ready(&mut self) {
        self.wait_for(Duration::from_secs(20), "READY=1", |seen| {
            seen.iter().any(|l| l == "READY=1")
        });
    }

    fn count(&self, line: &str) -> usize {
        self.seen.iter().filter(|l| *l == line).count()
    }
}

/// Starts the daemon as systemd would, with `notify`'s socket and a watchdog of
/// `watchdog_usec`; the guard kills it if the test fails.
fn spawn_under_systemd(config: &Path, notify: &Notify, watchdog_usec: u64) -> (Child, DaemonGuard) {
    let child = run_config(config)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", watchdog_usec.to_string())
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = DaemonGuard(child.id());
    (child, guard)
}

/// `outbox status --json`: (rows stored, rows delivered to `uplink`).
fn outbox_counts(config: &Path, uplink: &str) -> (u64, u64) {
    let status = common::outbox_status(config);
    let delivered = common::uplink_named(&status, uplink)
        .and_then(|u| u["delivered"].as_u64())
        .unwrap_or(0);
    (status["rows"].as_u64().unwrap(), delivered)
}

/// Sends SIGTERM and asserts that the daemon exits 0 within [`STOP_WITHIN`]; returns its
/// stderr.
fn stop_in_time(child: &mut Child) -> String {
    let (status, took) = terminate(child);
    let stderr = stderr_of(child);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; stderr:\n{stderr}"
    );
    assert!(
        took < STOP_WITHIN,
        "took {took:?} to stop; stderr:\n{stderr}"
    );
    stderr
}

/// Sends SIGTERM and waits for the exit; returns its status and how long it took.
fn terminate(child: &mut Child) -> (ExitStatus, Duration) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let start = Instant::now();
    let mut status = None;
    wait_until(STOP_WITHIN * 2, "the daemon to exit after SIGTERM", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    (status.unwrap(), start.elapsed())
}

fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    text
}

#[test]
fn under_systemd_the_daemon_says_ready_feeds_the_watchdog_and_exits_0_within_5_s_of_sigterm_with_its_outbox_intact(
) {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let config = write_config(
        tmp.path(),
        &format!(
            "kind = \"file\"\nname = \"archive\"\ndir = \"{}\"\nbatch_size = 10",
            out_dir.display()
        ),
    );
    let mut notify = Notify::bind(tmp.path());
    // 200 ms: keep-alives every 100 ms.
    let (mut child, _guard) = spawn_under_systemd(&config, &notify, 200_000);

    notify.wait_ready();
    assert!(
        tmp.path().join("outbox.db").exists(),
        "READY=1 came before the outbox was open"
    );
    let ready_at = notify.seen.iter().position(|l| l == "READY=1").unwrap();
    notify.wait_for(
        Duration::from_secs(10),
        "five WATCHDOG=1 keep-alives",
        |seen| {
            seen[ready_at..]
                .iter()
                .filter(|l| *l == "WATCHDOG=1")
                .count()
                >= 5
        },
    );

    // Rows committed (and some delivered) before the signal. The notification socket is
    // read meanwhile, as systemd does: a full socket would block the daemon's keep-alives.
    let counts = std::cell::Cell::new((0, 0));
    notify.wait_for(Duration::from_secs(20), "rows in the outbox", |_| {
        counts.set(outbox_counts(&config, "archive"));
        counts.get().0 + counts.get().1 > 0
    });
    let before = counts.get();

    stop_in_time(&mut child);
    notify.wait_for(Duration::from_secs(2), "STOPPING=1", |seen| {
        seen.iter().any(|l| l == "STOPPING=1")
    });
    assert_eq!(notify.count("READY=1"), 1, "READY=1 is sent once");

    // The outbox opens afterwards, and every row committed before the signal is still
    // there or was delivered.
    let after = outbox_counts(&config, "archive");
    assert!(
        after.0 + after.1 >= before.0 + before.1,
        "rows lost at shutdown: before (stored, delivered) = {before:?}, after = {after:?}"
    );
    assert!(after.1 >= before.1, "delivered count went back");
}

/// A FHIR "server" on 127.0.0.1 that accepts connections and never answers. Returns its
/// port and the number of connections accepted so far.
fn silent_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, connections)
}

#[test]
fn sigterm_while_the_fhir_server_never_answers_still_exits_0_within_5_s_and_keeps_the_rows_queued()
{
    // The request in flight would wait for its 30 s timeout if shutdown did not cut it.
    let (port, connections) = silent_server();
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config(tmp.path(), &cloud_uplink(port));
    let mut notify = Notify::bind(tmp.path());
    let (mut child, _guard) = spawn_under_systemd(&config, &notify, 10_000_000);
    notify.wait_ready();
    wait_until(Duration::from_secs(20), "a request in flight", || {
        connections.load(Ordering::SeqCst) > 0
    });
    let mut before = (0, 0);
    wait_until(Duration::from_secs(20), "rows in the outbox", || {
        before = outbox_counts(&config, "cloud");
        before.0 > 0
    });

    let stderr = stop_in_time(&mut child);
    assert!(
        stderr.contains("shutdown deadline reached"),
        "the abandoned request is logged; stderr:\n{stderr}"
    );
    let after = outbox_counts(&config, "cloud");
    assert_eq!(
        after.1, 0,
        "nothing was acknowledged, so nothing is delivered"
    );
    assert!(
        after.0 >= before.0,
        "rows lost at shutdown: before {before:?}, after {after:?}"
    );
}

#[test]
fn sigterm_with_a_full_blocking_outbox_and_a_silent_server_still_exits_0_within_5_s() {
    // `when_full = "block"`: the pipeline waits for room that a silent server never
    // makes, and the drivers wait on the full channel. Shutdown must not wait for them.
    let (port, _connections) = silent_server();
    let tmp = tempfile::tempdir().unwrap();
    let config = write_config_with(
        tmp.path(),
        &cloud_uplink(port),
        "interval_secs = 0.001\nnan_probability = 0.0",
        "max_size_mb = 1\nwhen_full = \"block\"",
    );
    let mut notify = Notify::bind(tmp.path());
    let (mut child, _guard) = spawn_under_systemd(&config, &notify, 10_000_000);
    notify.wait_ready();
    let mut before = (0, 0);
    let mut payload = 0;
    wait_until(Duration::from_secs(60), "a full outbox", || {
        let status = common::try_outbox_status(&config).unwrap_or_default();
        payload = status["payload_bytes"].as_u64().unwrap_or(0);
        payload >= 1024 * 1024
    });
    // Full means the writer takes no more appends: the row count stays put while the
    // simulator (6000 readings/s) fills the pipeline's and the drivers' channels.
    let (mut last, mut unchanged) = (u64::MAX, 0);
    wait_until(
        Duration::from_secs(30),
        "the row count to stop growing",
        || {
            let rows = outbox_counts(&config, "cloud").0;
            unchanged = if rows == last { unchanged + 1 } else { 0 };
            last = rows;
            unchanged >= 20
        },
    );
    before.0 = last;

    stop_in_time(&mut child);
    let after = outbox_counts(&config, "cloud");
    assert!(
        after.0 >= before.0,
        "rows lost: before {before:?}, after {after:?}"
    );
}

#[test]
fn under_systemd_the_status_line_summarizes_the_kit_and_changes_with_its_state_not_on_a_timer() {
    let tmp = tempfile::tempdir().unwrap();
    // Nothing listens there: every delivery attempt fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = write_config_with(
        tmp.path(),
        &format!("{}\nmax_backoff_secs = 1", cloud_uplink(closed)),
        "interval_secs = 0.05\nprofiles = [\"sim-thermometer\", \"sim-scale\"]",
        "",
    );
    let mut notify = Notify::bind(tmp.path());
    let (mut child, _guard) = spawn_under_systemd(&config, &notify, 200_000);
    notify.wait_ready();
    notify.wait_for(
        Duration::from_secs(20),
        "a STATUS= line saying the uplink fails",
        |seen| {
            seen.iter().any(|l| {
                l.starts_with("STATUS=running: 2 device(s), 2 seen")
                    && l.ends_with("uplink(s) failing: cloud")
            })
        },
    );
    let statuses = |seen: &[String]| seen.iter().filter(|l| l.starts_with("STATUS=")).count();
    let last = |seen: &[String]| {
        seen.iter()
            .rev()
            .find(|l| l.starts_with("STATUS="))
            .cloned()
    };
    assert!(
        last(&notify.seen).is_some_and(|l| l.ends_with("failing: cloud")),
        "the summary is what systemctl status shows last: {:?}",
        notify.seen
    );
    let before = statuses(&notify.seen);
    let watchdogs = notify.count("WATCHDOG=1");
    notify.wait_for(
        Duration::from_secs(10),
        "ten more WATCHDOG=1 keep-alives",
        |seen| seen.iter().filter(|l| *l == "WATCHDOG=1").count() >= watchdogs + 10,
    );
    assert_eq!(
        statuses(&notify.seen),
        before,
        "STATUS= is sent on changes only: {:?}",
        notify.seen
    );
    assert!(before <= 6, "a handful of changes: {:?}", notify.seen);
    stop_in_time(&mut child);
}
