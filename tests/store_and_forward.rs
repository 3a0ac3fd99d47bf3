//! End-to-end tests of the outbox and the FHIR uplink: the real binary, a real SQLite file,
//! and a real HTTP FHIR server (iomt-testkit) on 127.0.0.1.

mod common;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{gateway, wait_until};
use iomt_testkit::{FhirServer, Mode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

const PATIENT: &str = "MRN-STORE-4711";

struct Kit {
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    server: FhirServer,
    runs: usize,
    pids: Vec<u32>,
}

impl Drop for Kit {
    /// A failing test must not leave a daemon running: kill every one still alive.
    fn drop(&mut self) {
        for pid in &self.pids {
            common::kill_if_gateway(*pid);
        }
    }
}

impl Kit {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(FhirServer::start()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for key in ["pseudonym.key", "storage.key"] {
            let path = dir.path().join(key);
            std::fs::write(&path, rand::thread_rng().gen::<[u8; 32]>()).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Kit {
            dir,
            rt,
            server,
            runs: 0,
            pids: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the configuration: the simulator at `interval` seconds, a FHIR uplink.
    fn config(&self, interval: f64, profiles: &[&str], max_readings: u64) -> PathBuf {
        let config = self.path("gateway.toml");
        let profiles: Vec<String> = profiles.iter().map(|p| format!("\"{p}\"")).collect();
        std::fs::write(
            &config,
            format!(
                r#"[gateway]
id = "kit-store-1"
profiles_dir = "{root}/device-profiles"

[patient]
id = "{PATIENT}"

[pseudonymization]
key_file = "{dir}/pseudonym.key"

[sim]
enabled = true
profiles = [{profiles}]
interval_secs = {interval}
max_readings = {max_readings}

[outbox]
path = "{dir}/outbox.db"
key_file = "{dir}/storage.key"
commit_window_ms = 5

[[uplinks]]
kind = "fhir"
base_url = "{url}"
batch_size = 50
timeout_secs = 5
max_backoff_secs = 2

[log]
level = "info,iomt_drivers=debug,iomt_gateway::uplink=debug"
"#,
                root = common::root().display(),
                dir = self.dir.path().display(),
                profiles = profiles.join(", "),
                url = self.server.base_url(),
            ),
        )
        .unwrap();
        config
    }

    /// Starts the daemon with its stderr in a log file of its own.
    fn start(&mut self, config: &Path) -> (Child, PathBuf) {
        self.runs += 1;
        let log = self.path(&format!("run-{}.log", self.runs));
        let child = gateway()
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        self.pids.push(child.id());
        (child, log)
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let config = self.path("gateway.toml");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        let out = gateway().args(&all).output().unwrap();
        let (o, e) = common::texts(&out);
        (out.status.success(), format!("{o}{e}"))
    }

    fn server_ids(&self) -> Vec<String> {
        self.server.with_store(|s| {
            s.observations
                .iter()
                .map(|o| {
                    o["identifier"][0]["value"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches("urn:uuid:")
                        .to_string()
                })
                .collect()
        })
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Observation ids the simulator logged as committed, in log order.
fn committed_ids(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("reading committed"))
        .filter_map(|l| l.split("observations=").nth(1))
        .flat_map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|id| !id.is_empty())
        .collect()
}

fn sigterm_and_wait(mut child: Child, log: &Path) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}\n{}", read(log));
}

fn wait_running(child: &mut Child, log: &Path) {
    wait_until(Duration::from_secs(30), "the gateway to start", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the gateway exited with {status:?} instead of starting:\n{}",
                read(log)
            );
        }
        read(log).contains("gateway running")
    });
}

#[test]
fn crash_safety_twenty_sigkills_lose_nothing_and_duplicate_nothing() {
    let mut kit = Kit::new();
    let config = kit.config(0.002, &[], 0);
    let mut committed: Vec<String> = Vec::new();
    let mut rng = rand::thread_rng();
    for round in 0..20 {
        let (mut child, log) = kit.start(&config);
        wait_running(&mut child, &log);
        // Kill at a random moment: after a random number of committed readings.
        let target = rng.gen_range(5..400);
        wait_until(Duration::from_secs(60), "commits before the kill", || {
            committed_ids(&read(&log)).len() >= target
        });
        kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the process should have been killed"
        );
        committed.extend(committed_ids(&read(&log)));
    }
    // Restart once more; the simulator stops almost at once, and the backlog drains.
    let config = kit.config(0.5, &["sim-scale"], 1);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    let wanted: HashSet<String> = committed.iter().cloned().collect();
    assert!(wanted.len() > 100, "only {} committed", wanted.len());
    wait_until(
        Duration::from_secs(120),
        "every committed observation at the server",
        || {
            let have: HashSet<String> = kit.server_ids().into_iter().collect();
            wanted.is_subset(&have)
        },
    );
    sigterm_and_wait(child, &log);

    let ids = kit.server_ids();
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an Observation was created twice");
    kit.server
        .with_store(|s| assert_eq!(s.duplicate_creates, 0));
    let (ok, status) = kit.cli(&["outbox", "status"]);
    assert!(ok, "{status}");
}

#[test]
fn after_an_outage_and_503s_the_backlog_drains_completely_oldest_first() {
    let mut kit = Kit::new();
    kit.rt.block_on(kit.server.stop());
    let config = kit.config(0.01, &["sim-pulse-oximeter", "sim-thermometer"], 60);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(
        Duration::from_secs(30),
        &format!(
            "all readings committed while the server is down: {}",
            log.display()
        ),
        || {
            let text = read(&log);
            text.contains("simulator reached its reading limit")
                && committed_ids(&text).len() >= 60
                && text.matches("delivery failed").count() >= 2
        },
    );
    assert!(read(&log).contains("cannot connect"), "{}", read(&log));

    // The server comes back answering 503 with Retry-After for a while.
    kit.server.set_mode(Mode::Unavailable {
        retry_after_secs: 1,
    });
    kit.rt.block_on(kit.server.restart()).unwrap();
    wait_until(Duration::from_secs(30), "503 answers", || {
        kit.server.with_store(|s| s.unavailable >= 2)
    });
    assert_eq!(kit.server_ids().len(), 0);
    kit.server.set_mode(Mode::Normal);

    let committed = committed_ids(&read(&log));
    wait_until(Duration::from_secs(30), "the backlog to drain", || {
        kit.server_ids().len() >= committed.len()
    });
    // Oldest first: the server created them in the order they were committed.
    assert_eq!(kit.server_ids(), committed);
    // Retry-After was respected: no retry was scheduled sooner than the server asked.
    let text = read(&log);
    let after_503: Vec<u64> = text
        .lines()
        .filter(|l| l.contains("delivery failed") && l.contains("HTTP 503"))
        .filter_map(|l| {
            l.split("retry_in_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(!after_503.is_empty(), "{text}");
    assert!(after_503.iter().all(|ms| *ms >= 1000), "{after_503:?}");

    wait_until(Duration::from_secs(30), "the outbox to be empty", || {
        let (ok, status) = kit.cli(&["outbox", "status", "--json"]);
        assert!(ok, "{status}");
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        v["uplinks"][0]["queued"] == 0 && v["uplinks"][0]["delivered"] == committed.len()
    });
    sigterm_and_wait(child, &log);
}

fn reject_spo2(obs: &serde_json::Value) -> Option<String> {
    let is_spo2 = obs["code"]["coding"]
        .as_array()?
        .iter()
        .any(|c| c["code"] == "2708-6");
    is_spo2.then(|| "SpO2 profile not accepted by this server (test rule)".to_string())
}

#[test]
fn a_poison_entry_lands_in_dead_letters_with_the_reason_and_the_rest_is_delivered() {
    let mut kit = Kit::new();
    kit.server.set_poison(Some(reject_spo2));
    let config = kit.config(0.01, &["sim-pulse-oximeter"], 10);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(
        Duration::from_secs(30),
        "the pulse observations to arrive",
        || kit.server.with_store(|s| s.observations.len()) >= 10,
    );
    wait_until(
        Duration::from_secs(30),
        "the SpO2 rows in the dead letters",
        || {
            let (_, status) = kit.cli(&["outbox", "status", "--json"]);
            serde_json::from_str::<serde_json::Value>(&status).is_ok_and(|v| {
                v["uplinks"][0]["dead_lettered"] == 10 && v["uplinks"][0]["queued"] == 0
            })
        },
    );
    sigterm_and_wait(child, &log);
    kit.server.with_store(|s| {
        assert_eq!(s.observations.len(), 10);
        assert!(s.observations.iter().all(|o| reject_spo2(o).is_none()));
    });
    let (ok, letters) = kit.cli(&["outbox", "dead-letters"]);
    assert!(ok, "{letters}");
    assert_eq!(
        letters
            .matches("SpO2 profile not accepted by this server")
            .count(),
        10,
        "{letters}"
    );
    // Dead-lettered rows are not retried forever.
    let rejected = kit.server.with_store(|s| s.rejected);
    assert!(rejected < 40, "{rejected} rejected requests");
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn at_rest_nothing_is_in_clear_and_a_wrong_key_or_damaged_file_is_refused_untouched() {
    let mut kit = Kit::new();
    kit.rt.block_on(kit.server.stop());
    let config = kit.config(0.01, &["sim-bp-cuff", "sim-glucose-meter"], 20);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "rows committed", || {
        committed_ids(&read(&log)).len() >= 20
    });
    let db = kit.path("outbox.db");
    let mut files = file_bytes(&db);
    let wal = kit.path("outbox.db-wal");
    if wal.exists() {
        files.extend(file_bytes(&wal));
    }
    let haystack = String::from_utf8_lossy(&files);
    for needle in [
        PATIENT,
        "SIM-SIM-BP-CUFF",
        "sim-bp-cuff-1",
        "valueQuantity",
        "8480-6",
        "mm[Hg]",
        "Observation",
        "effectiveDateTime",
    ] {
        assert!(
            !haystack.contains(needle),
            "`{needle}` is in the database in clear"
        );
    }
    sigterm_and_wait(child, &log);

    // A wrong storage key: refused, and the file stays byte-identical.
    let before = file_bytes(&db);
    let key = kit.path("storage.key");
    std::fs::write(&key, [0x5a; 32]).unwrap();
    let (child, log) = kit.start(&config);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let text = read(&log);
    assert!(text.contains("different storage key"), "{text}");
    assert_eq!(file_bytes(&db), before, "the database was modified");

    // A truncated database: refused, untouched.
    std::fs::write(&key, []).unwrap();
    let truncated = &before[..before.len() / 2];
    std::fs::write(&db, truncated).unwrap();
    std::fs::remove_file(&key).unwrap();
    let (ok, text) = kit.cli(&["keygen"]);
    assert!(ok, "{text}");
    let (child, log) = kit.start(&config);
    assert!(!child.wait_with_output().unwrap().status.success());
    assert!(read(&log).contains("is damaged"), "{}", read(&log));
    assert_eq!(
        file_bytes(&db),
        truncated,
        "the damaged database was modified"
    );

    // Garbage instead of a database: refused, untouched.
    std::fs::write(
        &db,
        b"this is not a database, but it is the patient's data file",
    )
    .unwrap();
    let (child, log) = kit.start(&config);
    assert!(!child.wait_with_output().unwrap().status.success());
    assert!(
        read(&log).contains("not an SQLite database"),
        "{}",
        read(&log)
    );
    assert!(file_bytes(&db).starts_with(b"this is not a database"));
}

#[test]
fn keygen_never_overwrites_and_rotation_keeps_old_rows_deliverable() {
    let mut kit = Kit::new();
    for key in ["pseudonym.key", "storage.key"] {
        std::fs::remove_file(kit.path(key)).unwrap();
    }
    let config = kit.config(0.01, &["sim-scale"], 5);
    let (ok, text) = kit.cli(&["keygen"]);
    assert!(ok && text.contains("created the storage key"), "{text}");
    let storage = file_bytes(&kit.path("storage.key"));
    assert_eq!(storage.len(), 32);
    assert_eq!(
        std::fs::metadata(kit.path("storage.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let (ok, text) = kit.cli(&["keygen"]);
    assert!(
        ok && text.contains("kept the existing storage key"),
        "{text}"
    );
    assert_eq!(
        file_bytes(&kit.path("storage.key")),
        storage,
        "keygen overwrote a key"
    );

    // Rows sealed with the first key, while the server is down.
    kit.rt.block_on(kit.server.stop());
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "rows committed", || {
        committed_ids(&read(&log)).len() >= 5
    });
    sigterm_and_wait(child, &log);
    let first_batch = committed_ids(&read(&log));

    let (ok, text) = kit.cli(&["keygen", "--rotate"]);
    assert!(ok && text.contains("rotated"), "{text}");
    assert_ne!(file_bytes(&kit.path("storage.key")), storage);
    let (ok, status) = kit.cli(&["outbox", "status"]);
    assert!(ok, "{status}");

    // After the rotation the old rows are still delivered, with the new ones.
    kit.rt.block_on(kit.server.restart()).unwrap();
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(
        Duration::from_secs(30),
        "old and new rows delivered",
        || {
            let have: HashSet<String> = kit.server_ids().into_iter().collect();
            first_batch.iter().all(|id| have.contains(id)) && have.len() >= 10
        },
    );
    sigterm_and_wait(child, &log);
}

#[test]
fn the_pseudonym_command_gives_the_subject_the_backend_receives() {
    let mut kit = Kit::new();
    let config = kit.config(0.01, &["sim-thermometer"], 3);
    let (ok, printed) = kit.cli(&["pseudonym", PATIENT]);
    assert!(ok, "{printed}");
    let (system, value) = printed.trim().split_once('|').unwrap();
    assert_eq!(system, "urn:iomt-gateway:patient-pseudonym");
    assert_eq!(value.len(), 32);
    assert!(!printed.contains(PATIENT));

    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "observations delivered", || {
        kit.server_ids().len() >= 3
    });
    sigterm_and_wait(child, &log);
    let subjects: HashMap<String, usize> = kit.server.with_store(|s| {
        let mut m = HashMap::new();
        for o in &s.observations {
            *m.entry(
                o["subject"]["identifier"]["value"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
            .or_insert(0) += 1;
        }
        m
    });
    assert_eq!(subjects.keys().collect::<Vec<_>>(), vec![value]);
    assert!(!read(&log).contains(PATIENT));
}
