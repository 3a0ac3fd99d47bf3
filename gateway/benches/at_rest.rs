//! The at-rest benchmark: `cargo bench -p iomt-gateway --bench at_rest`.
//!
//! A kit spends its life mostly idle, so this measures what the real daemon
//! (`iomt-gateway run`, built in the bench profile) costs when little happens. Four
//! scenarios, each a fresh daemon with a fresh outbox, one simulated pulse oximeter (two
//! Observations per reading) and a FHIR uplink to the test FHIR server (`iomt-testkit`, on
//! 127.0.0.1 in this process), so Observations really are delivered and counted:
//!
//! 1. no readings (the simulator's interval is a day: its one reading at start falls in
//!    the warm-up), uplink up;
//! 2. one reading a minute;
//! 3. one reading a second;
//! 4. ten readings a second.
//!
//! The daemon runs as under systemd: a notification socket (`NOTIFY_SOCKET`) and the
//! watchdog period of `systemd/iomt-gateway.service` (`WATCHDOG_USEC`, 30 s), so its
//! keep-alives are part of what is measured; its log goes to a pipe, as to the journal,
//! so log lines cost CPU but no disk write of the daemon. After the daemon logs
//! "gateway running" and a warm-up, a window of wall time is measured from `/proc`:
//!
//! - CPU: `utime + stime` of `/proc/PID/stat` (every thread, exited ones included), in
//!   clock ticks (`getconf CLK_TCK`, that is `sysconf(_SC_CLK_TCK)`);
//! - wakeups: `voluntary_ctxt_switches + nonvoluntary_ctxt_switches` summed over
//!   `/proc/PID/task/*/status`; sampled every 250 ms per thread, so a thread that exits
//!   in the window still counts up to its last sample;
//! - disk: `write_bytes` of `/proc/PID/io` (bytes the daemon caused to be written to the
//!   storage layer: SQLite's database, WAL and checkpoints);
//! - Observations: how many the test server received in the window;
//! - memory: `VmRSS` at the end of the window and `VmHWM` (the peak).
//!
//! The daemon is stopped with SIGTERM (it must exit 0) and its temp dir removed.
//!
//! Options (environment): `AT_REST_SECS` (measured seconds per scenario, default 60),
//! `AT_REST_WARMUP_SECS` (default 10: past the outbox's `DELETE_DELAY`, so the idle
//! scenario's start-up reading is delivered and deleted before the window opens), `TMPDIR` (where the temp dir, and so the outbox,
//! lives: put it on the disk to measure). Under `cargo test --benches` (no `--bench`
//! argument) each scenario runs for 2 s, to check that the benchmark works.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::kit::{Kit, PATIENT};
use common::running::Running;

/// The watchdog period of `systemd/iomt-gateway.service` (`WatchdogSec=30s`).
const WATCHDOG_USEC: &str = "30000000";

/// One scenario: a name and the simulator's interval between readings.
struct Scenario {
    name: &'static str,
    interval_secs: f64,
    /// Whether readings are expected in the window (not for the idle scenario).
    readings: bool,
}

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "no readings (uplink up)",
        interval_secs: 86_400.0,
        readings: false,
    },
    Scenario {
        name: "1 reading / min",
        interval_secs: 60.0,
        readings: true,
    },
    Scenario {
        name: "1 reading / s",
        interval_secs: 1.0,
        readings: true,
    },
    Scenario {
        name: "10 readings / s",
        interval_secs: 0.1,
        readings: true,
    },
];

/// What one scenario measured over its window.
struct Measured {
    secs: f64,
    cpu_secs: f64,
    wakeups: u64,
    written: u64,
    observations: usize,
    bundles: u64,
    rss_kib: u64,
    hwm_kib: u64,
    threads: usize,
    keepalives: usize,
}

/// A `Key: value` line of a `/proc` status-like file, as a number (`kB` dropped).
fn proc_value(file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
    })
}

/// `utime + stime` of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the daemon runs");
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')').expect("a /proc stat line") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Context switches (voluntary + nonvoluntary) of each live thread of the process.
fn switches_by_thread(pid: u32) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let status = format!("/proc/{pid}/task/{tid}/status");
        if let (Some(v), Some(n)) = (
            proc_value(&status, "voluntary_ctxt_switches:"),
            proc_value(&status, "nonvoluntary_ctxt_switches:"),
        ) {
            out.insert(tid, v + n);
        }
    }
    out
}

/// Reads the notifications the daemon sent since the last call; returns how many were
/// watchdog keep-alives (`WATCHDOG=1`).
fn watchdog_keepalives(notify: &UnixDatagram) -> usize {
    let mut buf = [0u8; 512];
    let mut count = 0;
    while let Ok(n) = notify.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "WATCHDOG=1")
        {
            count += 1;
        }
    }
    count
}

/// `write_bytes` of `/proc/PID/io`.
fn write_bytes(pid: u32) -> u64 {
    proc_value(&format!("/proc/{pid}/io"), "write_bytes:").expect("/proc/PID/io is readable")
}

/// Runs one scenario on a fresh kit; returns what it measured.
fn measure(scenario: &Scenario, warmup: Duration, window: Duration, ticks: u64) -> Measured {
    let kit = Kit::new();
    kit.server.keep_resources(false);
    let config = kit
        .config_for("kit-at-rest", PATIENT)
        .driver(&format!(
            "[sim]\nenabled = true\nprofiles = [\"sim-pulse-oximeter\"]\ninterval_secs = {}\nnan_probability = 0\nout_of_range_probability = 0\nseed = 1",
            scenario.interval_secs
        ))
        .uplink(&format!(
            "kind = \"fhir\"\nbase_url = \"{}\"",
            kit.server.base_url()
        ))
        .log("info")
        .write();
    let notify_path = kit.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    let notify_path = notify_path.to_str().unwrap().to_string();
    let daemon = Running::start(
        &config,
        &[
            ("NOTIFY_SOCKET", &notify_path),
            ("WATCHDOG_USEC", WATCHDOG_USEC),
        ],
        Duration::from_secs(30),
    );
    let pid = daemon.pid();
    daemon.wait_log("gateway running", 1);
    std::thread::sleep(warmup);

    // Keep-alives sent before the window are not counted.
    watchdog_keepalives(&notify);
    let mut keepalives = 0;

    let observed = || {
        kit.server
            .with_store(|s| (s.observations.len(), s.requests))
    };
    let (observations_before, requests_before) = observed();
    let cpu_before = cpu_ticks(pid);
    let written_before = write_bytes(pid);
    let baseline = switches_by_thread(pid);
    let start = Instant::now();
    let mut last = baseline.clone();
    while start.elapsed() < window {
        std::thread::sleep(Duration::from_millis(250).min(window.saturating_sub(start.elapsed())));
        last.extend(switches_by_thread(pid));
        keepalives += watchdog_keepalives(&notify);
        assert!(
            std::path::Path::new(&format!("/proc/{pid}/stat")).exists(),
            "the daemon exited during the window:\n{}",
            daemon.log()
        );
    }
    let cpu_after = cpu_ticks(pid);
    let written_after = write_bytes(pid);
    last.extend(switches_by_thread(pid));
    let secs = start.elapsed().as_secs_f64();
    let (observations_after, requests_after) = observed();
    let status = format!("/proc/{pid}/status");
    let rss_kib = proc_value(&status, "VmRSS:").unwrap_or(0);
    let hwm_kib = proc_value(&status, "VmHWM:").unwrap_or(0);
    let threads = proc_value(&status, "Threads:").unwrap_or(0) as usize;
    keepalives += watchdog_keepalives(&notify);

    let log = daemon.stop();
    let complaints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    if !complaints.is_empty() {
        eprintln!(
            "{}: the daemon logged {} warnings or errors, the first:\n  {}",
            scenario.name,
            complaints.len(),
            complaints[..complaints.len().min(5)].join("\n  ")
        );
    }
    let wakeups = last
        .iter()
        .map(|(tid, n)| n.saturating_sub(baseline.get(tid).copied().unwrap_or(0)))
        .sum();
    let m = Measured {
        secs,
        cpu_secs: (cpu_after - cpu_before) as f64 / ticks as f64,
        wakeups,
        written: written_after - written_before,
        observations: observations_after - observations_before,
        bundles: requests_after - requests_before,
        rss_kib,
        hwm_kib,
        threads,
        keepalives,
    };
    let undelivered = kit.server.with_store(|s| s.observations.len()) == 0;
    assert!(
        !undelivered,
        "{}: no Observation reached the server (the start-up reading at least must):\n{log}",
        scenario.name
    );
    drop(kit); // stops the server and removes the temp dir
    m
}

/// `1234567` as `1,234,567`.
fn grouped(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in a unit a person reads at a glance.
fn bytes(n: f64) -> String {
    if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else if n >= 10.0 * 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{} B", grouped(n))
    }
}

fn env_secs(key: &str, default: f64) -> Duration {
    Duration::from_secs_f64(
        std::env::var(key)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|s: &f64| s.is_finite() && *s > 0.0)
            .unwrap_or(default),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this file as a test:
    // keep that short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let window = env_secs("AT_REST_SECS", if quick { 2.0 } else { 60.0 });
    let warmup = env_secs("AT_REST_WARMUP_SECS", if quick { 1.0 } else { 10.0 });
    let ticks = clock_ticks();
    let load = |when: &str| {
        let avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "load average {when}: {}",
            avg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
    };
    println!(
        "iomt-gateway at rest: {:.0} s measured per scenario after {:.0} s of warm-up; one simulated pulse oximeter (2 Observations per reading), FHIR uplink to the test server on 127.0.0.1",
        window.as_secs_f64(),
        warmup.as_secs_f64()
    );
    load("before");
    let results: Vec<(&Scenario, Measured)> = SCENARIOS
        .iter()
        .map(|s| {
            eprintln!("at_rest: {} ...", s.name);
            (s, measure(s, warmup, window, ticks))
        })
        .collect();
    load("after");
    println!();
    println!("| scenario | Observations delivered | CPU s / hour | % of one core | wakeups / s | written / hour | written / Observation | VmRSS | VmHWM |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (s, m) in &results {
        let per_hour = 3600.0 / m.secs;
        let per_observation = if m.observations > 0 {
            bytes(m.written as f64 / m.observations as f64)
        } else {
            "–".to_string()
        };
        println!(
            "| {} | {} | {:.1} | {:.2} % | {:.1} | {} | {} | {:.1} MiB | {:.1} MiB |",
            s.name,
            grouped(m.observations as f64),
            m.cpu_secs * per_hour,
            100.0 * m.cpu_secs / m.secs,
            m.wakeups as f64 / m.secs,
            bytes(m.written as f64 * per_hour),
            per_observation,
            m.rss_kib as f64 / 1024.0,
            m.hwm_kib as f64 / 1024.0,
        );
    }
    println!();
    for (s, m) in &results {
        println!(
            "{}: {:.1} s window, {} Bundles, {} threads at the end, {} watchdog keep-alives, {} bytes written",
            s.name,
            m.secs,
            m.bundles,
            m.threads,
            m.keepalives,
            grouped(m.written as f64)
        );
        if s.readings && !quick && m.observations == 0 {
            println!("  (no Observation delivered in the window: is the window shorter than the interval?)");
        }
    }
}
