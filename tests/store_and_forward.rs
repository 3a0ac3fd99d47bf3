//! End-to-end tests of the outbox and the FHIR uplink: the real binary, a real SQLite file,
//! and a real HTTP FHIR server (iomt-testkit) on 127.0.0.1.

mod common;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::kit::{committed_ids, read, sigterm_and_wait, wait_running, Kit, PATIENT};
use common::wait_until;
use iomt_testkit::fhir_server::Rejections;
use iomt_testkit::Mode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

#[test]
fn crash_safety_a_hundred_sigkills_lose_nothing_and_duplicate_nothing() {
    let mut kit = Kit::new();
    let config = kit.config(0.002, &[], 0);
    let mut committed: Vec<String> = Vec::new();
    let mut rng = rand::thread_rng();
    for round in 0..100 {
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
        let v = kit.outbox_status();
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
            kit.try_outbox_status().is_ok_and(|v| {
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

/// The Observation (the value of its identifier, without `urn:uuid:`) that
/// `reject_the_chosen_one` refuses.
static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn reject_the_chosen_one(obs: &serde_json::Value) -> Option<String> {
    let id = obs["identifier"][0]["value"]
        .as_str()?
        .trim_start_matches("urn:uuid:");
    (CHOSEN.get().map(String::as_str) == Some(id)).then(|| format!("poison entry {id} (test rule)"))
}

#[test]
fn one_poison_row_among_a_hundred_rejected_without_names_is_isolated_by_bisection() {
    let mut kit = Kit::new();
    // The server is down while the readings are committed, so all 100 rows wait in one
    // batch when it comes back.
    kit.rt.block_on(kit.server.stop());
    let config = kit
        .config_for("kit-store-1", PATIENT)
        .driver("[sim]\nenabled = true\nprofiles = [\"sim-thermometer\"]\ninterval_secs = 0.005\nmax_readings = 100")
        .outbox("commit_window_ms = 5")
        .uplink(&format!(
            "kind = \"fhir\"\nbase_url = \"{}\"\nbatch_size = 100\ntimeout_secs = 5\nmax_backoff_secs = 1",
            kit.server.base_url()
        ))
        .log("info,iomt_drivers=debug,iomt_gateway::uplink=debug")
        .write();
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(
        Duration::from_secs(30),
        "100 readings committed while the server is down",
        || {
            let text = read(&log);
            text.contains("simulator reached its reading limit")
                && committed_ids(&text).len() >= 100
        },
    );
    let committed = committed_ids(&read(&log));
    assert_eq!(committed.len(), 100, "one Observation per reading");
    let poison = committed[37].clone();
    CHOSEN.set(poison.clone()).unwrap();
    // The server refuses any transaction holding it, without saying which entry is bad.
    kit.server.set_poison(Some(reject_the_chosen_one));
    kit.server.set_rejections(Rejections::Unnamed);
    kit.rt.block_on(kit.server.restart()).unwrap();
    wait_until(Duration::from_secs(60), "the outbox to be empty", || {
        kit.try_outbox_status()
            .is_ok_and(|v| v["uplinks"][0]["queued"] == 0 && v["uplinks"][0]["dead_lettered"] == 1)
    });
    sigterm_and_wait(child, &log);

    // The other 99 were created once each, and nothing was sent twice.
    let mut created = kit.server_ids();
    let mut expected: Vec<String> = committed
        .iter()
        .filter(|id| **id != poison)
        .cloned()
        .collect();
    created.sort();
    expected.sort();
    assert_eq!(created, expected, "created at the server");
    kit.server.with_store(|s| {
        assert_eq!((s.duplicate_creates, s.conditional_hits), (0, 0));
        // Halving: only the Bundles on the way down to the poison row were refused (at
        // most 1 + log2(100) of them), not one request per row.
        assert!(s.rejected <= 8, "{} rejected transactions", s.rejected);
        assert!(s.requests <= 15, "{} transactions", s.requests);
    });
    let text = read(&log);
    assert!(text.contains("named=0"), "{text}");
    assert!(!text.contains("named=1"), "{text}");
    let status = kit.outbox_status();
    assert_eq!(status["rows"], 0);
    assert_eq!(status["uplinks"][0]["delivered"], 99);
    // The poison row is in the dead letters, with the server's reason.
    let (ok, letters) = kit.cli(&["outbox", "dead-letters"]);
    assert!(ok, "{letters}");
    let rows: Vec<&str> = letters.lines().filter(|l| l.contains("uplink=")).collect();
    assert_eq!(rows.len(), 1, "{letters}");
    assert!(
        rows[0].contains(&format!("poison entry {poison} (test rule)")),
        "{letters}"
    );
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

#[test]
fn fan_out_delivers_every_row_to_every_uplink_before_it_leaves_the_outbox() {
    let mut kit = Kit::new();
    let archive = kit.path("archive");
    let extra = format!(
        "\n[[uplinks]]\nkind = \"file\"\nname = \"archive\"\ndir = \"{}\"\n",
        archive.display()
    );
    let config = kit.config_with(0.01, &["sim-vitals-patch"], 20, &extra);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(
        Duration::from_secs(30),
        "both uplinks to have every row",
        || {
            kit.try_outbox_status().is_ok_and(|v| {
                v["rows"] == 0
                    && v["uplinks"]
                        .as_array()
                        .is_some_and(|u| u.len() == 2 && u.iter().all(|u| u["delivered"] == 40))
            })
        },
    );
    sigterm_and_wait(child, &log);
    let at_server: HashSet<String> = kit.server_ids().into_iter().collect();
    let in_files: HashSet<String> = common::observations_in(&archive)
        .iter()
        .map(|o| o["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(at_server.len(), 40);
    assert_eq!(at_server, in_files);
}

#[test]
fn a_bearer_token_from_a_file_is_sent_and_never_logged() {
    let mut kit = Kit::new();
    let token = "tok-9f8e7d6c5b4a-secret";
    kit.server.require_token(Some(token));
    let token_file = kit.path("fhir.token");
    common::write_private(&token_file, format!("{token}\n"));
    // First without the token: refused, rows kept, a log line that says why.
    let config = kit.config(0.01, &["sim-scale"], 3);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "a refused delivery", || {
        read(&log).contains("refused the credentials")
    });
    wait_until(Duration::from_secs(30), "the readings committed", || {
        committed_ids(&read(&log)).len() >= 3
    });
    sigterm_and_wait(child, &log);
    assert_eq!(kit.server_ids().len(), 0);
    // Then with it: everything queued is delivered.
    let extra = format!("bearer_token_file = \"{}\"", token_file.display());
    let config = kit.config_with(0.01, &["sim-scale"], 3, &extra);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "delivery with the token", || {
        kit.server_ids().len() >= 6
    });
    sigterm_and_wait(child, &log);
    for run in 1..=kit.runs {
        assert!(!kit.run_log(run).contains(token), "the token was logged");
    }
    let (_, status) = kit.cli(&["outbox", "status"]);
    assert!(!status.contains(token));
}
