//! End-to-end tests of the outbox on a small file system that really fills: the real
//! binary, the simulator, the test FHIR server, and a tmpfs the test mounts (the tests run
//! as root, as CI does) and unmounts at the end, even when it fails.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::kit::{committed_ids, read, sigterm_and_wait, wait_running, Kit};
use common::wait_until;

/// A tmpfs of `size` mounted on a fresh directory; unmounted (lazily, so a file still
/// open cannot keep it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with one file until it refuses more; returns its path.
fn fill(dir: &Path) -> PathBuf {
    // One allocation of what is free now, not a loop of writes until ENOSPC: a loop
    // would also take the reserve the gateway releases once it sees the disk full, which
    // is not what a full disk does to a kit (the reserve is the gateway's own room).
    let path = dir.join("filler");
    let f = std::fs::File::create(&path).unwrap();
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    let free = st.blocks_available() * st.fragment_size();
    let mut len = free;
    while nix::fcntl::posix_fallocate(&f, 0, len as nix::libc::off_t).is_err() {
        assert!(
            len > 1 << 20,
            "cannot allocate the free space of {}",
            dir.display()
        );
        len -= 64 * 1024;
    }
    let _ = f.sync_all();
    path
}

/// The log without the simulator's commit lines, for failure messages.
fn summary(log: &str) -> String {
    log.lines()
        .filter(|l| !l.contains("reading committed"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Requests the server has answered so far, and how many of them re-sent an Observation
/// it already had.
fn server_counts(kit: &Kit) -> (u64, u64) {
    kit.server.with_store(|s| (s.requests, s.conditional_hits))
}

#[test]
fn a_full_disk_stops_intake_names_the_cause_and_everything_resumes_when_space_returns() {
    let mut kit = Kit::new();
    let disk = Tmpfs::mount(kit.path("disk"), "16m");
    let config = kit.config(0.02, &["sim-pulse-oximeter"], 0);
    let db = disk.0.join("outbox.db");
    let text = read(&config).replace(
        &format!("path = \"{}\"", kit.path("outbox.db").display()),
        &format!("path = \"{}\"", db.display()),
    );
    assert!(text.contains(&db.display().to_string()), "{text}");
    std::fs::write(&config, text).unwrap();

    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(
        Duration::from_secs(30),
        "deliveries before the disk fills",
        || kit.server_ids().len() >= 40,
    );

    // Something else fills the file system.
    let filler = fill(&disk.0);
    wait_until(
        Duration::from_secs(30),
        "the gateway to notice the full disk",
        || read(&log).contains("disk is full"),
    );
    // Let what was committed before drain, then watch: no new acknowledgement, and no
    // Bundle sent again and again.
    let committed_before = committed_ids(&read(&log));
    wait_until(
        Duration::from_secs(30),
        "the rows committed before the disk filled to reach the server",
        || {
            let have: HashSet<String> = kit.server_ids().into_iter().collect();
            committed_ids(&read(&log))
                .iter()
                .all(|id| have.contains(id))
        },
    );
    // Delivered rows still leave the outbox: their deletions do not wait for appends
    // that cannot be stored.
    let mut last = Err(String::new());
    let deleted = Instant::now();
    while !last
        .as_ref()
        .is_ok_and(|v: &serde_json::Value| v["uplinks"][0]["queued"] == 0 && v["rows"] == 0)
    {
        assert!(
            deleted.elapsed() < Duration::from_secs(30),
            "the delivered rows were not deleted while the disk is full: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        last = kit.try_outbox_status();
    }
    let committed_full = committed_ids(&read(&log)).len();
    let lines_full = read(&log).lines().count();
    let (requests_full, hits_full) = server_counts(&kit);
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(12) {
        let now = committed_ids(&read(&log)).len();
        assert_eq!(
            now, committed_full,
            "a reading was acknowledged while the disk was full"
        );
        let (requests, hits) = server_counts(&kit);
        assert!(
            requests <= requests_full + 1 && hits == hits_full,
            "Bundles are sent again while the disk is full: {} more requests, {} re-sent Observations\n{}",
            requests - requests_full,
            hits - hits_full,
            summary(&read(&log))
        );
        assert!(child.try_wait().unwrap().is_none(), "{}", read(&log));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(committed_full >= committed_before.len());
    // One line says the disk is full; the gateway does not repeat it for every reading.
    let text = read(&log);
    let repeated: Vec<&str> = text
        .lines()
        .skip(lines_full)
        .filter(|l| l.contains("outbox") && (l.contains("ERROR") || l.contains("WARN")))
        .collect();
    assert!(
        repeated.len() <= 1,
        "{} outbox errors or warnings while the disk stayed full:\n{}",
        repeated.len(),
        repeated
            .iter()
            .take(5)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Space returns: intake and delivery resume without a restart.
    std::fs::remove_file(&filler).unwrap();
    wait_until(
        Duration::from_secs(60),
        "new readings committed after the space returned",
        || committed_ids(&read(&log)).len() >= committed_full + 50,
    );
    let wanted: Vec<String> = committed_ids(&read(&log));
    wait_until(
        Duration::from_secs(60),
        "every committed reading at the server",
        || {
            let have: HashSet<String> = kit.server_ids().into_iter().collect();
            wanted.iter().all(|id| have.contains(id))
        },
    );
    let text = read(&log);
    // The log names the cause, once when the episode starts and once when it ends.
    assert!(
        text.contains("database or disk is full") || text.contains("the disk is full"),
        "{}",
        summary(&text)
    );
    assert_eq!(
        text.matches("outbox: the disk is full").count(),
        1,
        "{}",
        summary(&text)
    );
    assert_eq!(
        text.matches("outbox: disk space is back").count(),
        1,
        "{}",
        summary(&text)
    );
    assert!(
        !text.contains("the transaction failed"),
        "{}",
        summary(&text)
    );
    if std::env::var_os("KEEP_TEST_LOGS").is_some() {
        eprintln!("{}", summary(&text));
    }
    sigterm_and_wait(child, &log);

    let ids = kit.server_ids();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an Observation was created twice");
    kit.server
        .with_store(|s| assert_eq!(s.duplicate_creates, 0));
    drop(disk);
}

#[test]
fn evict_oldest_warns_once_per_episode_and_then_at_most_once_a_minute() {
    let mut kit = Kit::new();
    kit.rt.block_on(kit.server.stop());
    let config = kit.config(0.002, &["sim-pulse-oximeter"], 0);
    let text = read(&config).replace(
        "\ncommit_window_ms = 5",
        "\ncommit_window_ms = 5\nmax_size_mb = 1",
    );
    std::fs::write(&config, text).unwrap();
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(60), "the first eviction", || {
        read(&log).contains("oldest undelivered rows evicted")
    });
    let evicted_first = kit.outbox_status()["evicted"].as_u64().unwrap();
    // Ten more seconds of readings into a full outbox.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            summary(&read(&log))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = kit.outbox_status();
    let evicted = status["evicted"].as_u64().unwrap();
    assert!(
        evicted > evicted_first + 100,
        "the outbox kept evicting: {evicted_first} then {evicted}"
    );
    let text = read(&log);
    let warnings = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("evicted"))
        .count();
    assert!(
        warnings <= 2,
        "{warnings} eviction warnings in 10 s:\n{}",
        summary(&text)
            .lines()
            .filter(|l| l.contains("evicted"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // What a 1 MiB cap really occupies on disk.
    let size = |suffix: &str| {
        std::fs::metadata(kit.path(&format!("outbox.db{suffix}"))).map_or(0, |m| m.len())
    };
    eprintln!(
        "max_size_mb = 1: payload {} bytes, on disk {} bytes (database {}, WAL {}, reserve {})",
        status["payload_bytes"],
        status["disk_bytes"],
        size(""),
        size("-wal"),
        size("-reserve")
    );
    sigterm_and_wait(child, &log);
    let text = read(&log);
    assert!(
        text.lines()
            .any(|l| l.contains("evicted") && l.contains("total=")),
        "no eviction summary at the end:\n{}",
        summary(&text)
            .lines()
            .filter(|l| l.contains("evicted"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_cap_the_file_system_cannot_hold_is_named_at_start() {
    let mut kit = Kit::new();
    let disk = Tmpfs::mount(kit.path("disk"), "16m");
    let config = kit.config(1.0, &["sim-thermometer"], 1);
    let db = disk.0.join("outbox.db");
    let text = read(&config)
        .replace(
            &format!("path = \"{}\"", kit.path("outbox.db").display()),
            &format!("path = \"{}\"", db.display()),
        )
        .replace(
            "\ncommit_window_ms = 5",
            "\ncommit_window_ms = 5\nmax_size_mb = 64",
        );
    std::fs::write(&config, text).unwrap();
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    sigterm_and_wait(child, &log);
    let text = read(&log);
    let line = text
        .lines()
        .find(|l| l.contains("max_size_mb"))
        .unwrap_or_else(|| panic!("no word about the cap:\n{}", summary(&text)));
    assert!(line.contains("WARN"), "{line}");
    // It says what the cap needs, what is free, and what would fit.
    for word in ["needs", "free", "at most"] {
        assert!(line.contains(word), "{word} missing: {line}");
    }
    drop(disk);
}

#[test]
fn a_gateway_started_on_a_full_disk_comes_up_says_so_and_resumes_when_space_returns() {
    let mut kit = Kit::new();
    let disk = Tmpfs::mount(kit.path("disk"), "16m");
    let config = kit.config(0.05, &["sim-thermometer"], 0);
    let db = disk.0.join("outbox.db");
    let text = read(&config).replace(
        &format!("path = \"{}\"", kit.path("outbox.db").display()),
        &format!("path = \"{}\"", db.display()),
    );
    std::fs::write(&config, text).unwrap();
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "first deliveries", || {
        kit.server_ids().len() >= 10
    });
    sigterm_and_wait(child, &log);

    let filler = fill(&disk.0);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "the full disk named", || {
        read(&log).contains("outbox: the disk is full")
    });
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        assert!(
            committed_ids(&read(&log)).is_empty(),
            "acknowledged on a full disk:\n{}",
            summary(&read(&log))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&filler).unwrap();
    wait_until(
        Duration::from_secs(60),
        "readings committed and delivered",
        || {
            let committed = committed_ids(&read(&log));
            let have: HashSet<String> = kit.server_ids().into_iter().collect();
            committed.len() >= 10 && committed.iter().all(|id| have.contains(id))
        },
    );
    assert!(read(&log).contains("outbox: disk space is back"));
    sigterm_and_wait(child, &log);
    kit.server
        .with_store(|s| assert_eq!(s.duplicate_creates, 0));
    drop(disk);
}
