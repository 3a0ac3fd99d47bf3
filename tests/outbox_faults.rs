//! End-to-end tests of faults a kit meets unattended, in its own outbox: a damaged row,
//! the same Observation stored twice, a storage-key rotation followed through. The real
//! binary, the simulator, a real SQLite file the test damages while the daemon is
//! stopped, and the test FHIR server (iomt-testkit) on 127.0.0.1.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::kit::{committed_ids, read, sigterm_and_wait, wait_running, Kit};
use common::wait_until;

/// Commits `readings` thermometer readings while the FHIR server is down, then stops
/// the daemon cleanly: the rows wait in the outbox. Returns the committed ids.
fn backlog(kit: &mut Kit, readings: u64) -> Vec<String> {
    kit.rt.block_on(kit.server.stop());
    let config = kit.config(0.005, &["sim-thermometer"], readings);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(
        Duration::from_secs(30),
        "the readings committed while the server is down",
        || {
            let text = read(&log);
            text.contains("simulator reached its reading limit")
                && committed_ids(&text).len() as u64 >= readings
        },
    );
    sigterm_and_wait(child, &log);
    committed_ids(&read(&log))
}

#[test]
fn damaged_rows_go_to_the_dead_letters_and_every_other_row_is_delivered() {
    let mut kit = Kit::new();
    let committed = backlog(&mut kit, 30);
    assert_eq!(committed.len(), 30, "one Observation per reading");

    // Damage five rows of the real file while the daemon is stopped.
    let db = rusqlite::Connection::open(kit.path("outbox.db")).unwrap();
    let seqs: Vec<i64> = db
        .prepare("SELECT seq FROM rows ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(seqs.len(), 30);
    let damage = [
        // A device id that is not text, and one that is not UTF-8.
        (
            seqs[3],
            "UPDATE rows SET device_id = CAST(x'ff00fe' AS BLOB) WHERE seq = ?1",
        ),
        (
            seqs[7],
            "UPDATE rows SET device_id = CAST(x'ff00fe' AS TEXT) WHERE seq = ?1",
        ),
        // A wrong-typed column: a key id that is text.
        (
            seqs[15],
            "UPDATE rows SET key_id = 'not a key' WHERE seq = ?1",
        ),
    ];
    // An enqueue time that is a blob, on the oldest row (the size cap looks at it in
    // every transaction): only the age cap needs it, the row is still delivered.
    db.execute(
        "UPDATE rows SET created_ms = x'00' WHERE seq = ?1",
        [seqs[0]],
    )
    .unwrap();
    for (seq, statement) in damage {
        assert_eq!(db.execute(statement, [seq]).unwrap(), 1, "{statement}");
    }
    // A ciphertext altered: one byte flipped.
    let mut sealed: Vec<u8> = db
        .query_row("SELECT sealed FROM rows WHERE seq = ?1", [seqs[11]], |r| {
            r.get(0)
        })
        .unwrap();
    sealed[10] ^= 0x5a;
    db.execute(
        "UPDATE rows SET sealed = ?1 WHERE seq = ?2",
        rusqlite::params![sealed, seqs[11]],
    )
    .unwrap();
    drop(db);
    let damaged: HashSet<i64> = damage.iter().map(|(s, _)| *s).chain([seqs[11]]).collect();

    kit.rt.block_on(kit.server.restart()).unwrap();
    let config = kit.config(0.005, &["sim-thermometer"], 5);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(
        Duration::from_secs(60),
        "every undamaged row delivered and the damaged ones dead-lettered",
        || {
            let text = read(&log);
            text.contains("simulator reached its reading limit")
                && kit.try_outbox_status().is_ok_and(|v| {
                    v["rows"] == 0 && v["uplinks"][0]["dead_lettered"] == damaged.len()
                })
        },
    );
    sigterm_and_wait(child, &log);

    // Every other row reached the server, once each.
    let created = kit.server_ids();
    let unique: HashSet<&String> = created.iter().collect();
    assert_eq!(
        unique.len(),
        created.len(),
        "an Observation was created twice"
    );
    assert_eq!(created.len(), 30 - damaged.len() + 5, "{created:?}");
    let all: HashSet<String> = committed
        .iter()
        .chain(&committed_ids(&read(&log)))
        .cloned()
        .collect();
    assert!(created.iter().all(|id| all.contains(id)), "{created:?}");
    kit.server
        .with_store(|s| assert_eq!(s.duplicate_creates, 0));

    // The damaged rows are listed with a reason that names the row, never its content.
    let (ok, letters) = kit.cli(&["outbox", "dead-letters"]);
    assert!(ok, "{letters}");
    let listed: HashSet<i64> = letters
        .lines()
        .filter_map(|l| {
            l.split("row=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(listed, damaged, "{letters}");
    assert!(
        !letters.contains("ff00fe") && !letters.contains('\u{fffd}'),
        "{letters}"
    );
    // The log says what happened, row by row.
    let text = read(&log);
    assert_eq!(
        text.matches("an outbox row cannot be opened; moved to the dead letters")
            .count(),
        damaged.len(),
        "{text}"
    );
}

fn reject_spo2(obs: &serde_json::Value) -> Option<String> {
    let is_spo2 = obs["code"]["coding"]
        .as_array()?
        .iter()
        .any(|c| c["code"] == "2708-6");
    is_spo2.then(|| "SpO2 not accepted by this server (test rule)".to_string())
}

/// Runs the daemon on `config` until the simulator has reached its limit and `outbox
/// status` satisfies `done`, then stops it.
fn run_until(
    kit: &mut Kit,
    config: &std::path::Path,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) {
    let (mut child, log) = kit.start(config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(60), what, || {
        read(&log).contains("simulator reached its reading limit")
            && kit.try_outbox_status().is_ok_and(|v| done(&v))
    });
    sigterm_and_wait(child, &log);
}

#[test]
fn after_a_key_rotation_the_documented_procedure_keeps_the_kit_starting_with_readable_dead_letters()
{
    let mut kit = Kit::new();
    kit.server.set_poison(Some(reject_spo2));
    // Under the first key: a pulse oximeter's Device resource, its pulse rates
    // delivered, its SpO2 values in the dead letters.
    let config = kit.config(0.01, &["sim-pulse-oximeter"], 5);
    run_until(&mut kit, &config, "the SpO2 rows dead-lettered", |v| {
        v["uplinks"][0]["dead_lettered"] == 5 && v["uplinks"][0]["queued"] == 0
    });

    let (ok, rotated) = kit.cli(&["keygen", "--rotate"]);
    assert!(ok, "{rotated}");
    // Under the new key: a thermometer; the oximeter is not seen again.
    let config = kit.config(0.01, &["sim-thermometer"], 5);
    run_until(&mut kit, &config, "everything delivered", |v| {
        v["uplinks"][0]["delivered"] == 10 && v["uplinks"][0]["queued"] == 0
    });

    // The documented procedure: once `outbox status` lists none of the retired key ids
    // as in use, the retired key file can be deleted.
    let retired = kit.path("storage.key.retired");
    let retired_ids: Vec<String> = std::fs::read(&retired)
        .unwrap()
        .chunks(32)
        .map(|k| {
            let key = iomt_gateway::outbox::seal::StorageKey::derive(k.try_into().unwrap());
            format!("{:08x}", key.id)
        })
        .collect();
    assert!(
        rotated.contains(&format!("no longer lists key {}", retired_ids[0])),
        "{rotated}"
    );
    let status = kit.outbox_status();
    let in_use: Vec<&str> = status["keys_in_use"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k[0].as_str())
        .collect();
    assert!(
        !in_use.is_empty(),
        "the current key seals Devices and dead letters: {status}"
    );
    assert!(
        retired_ids.iter().all(|id| !in_use.contains(&id.as_str())),
        "the retired key is still in use: {status}"
    );
    std::fs::remove_file(&retired).unwrap();

    // The gateway still starts, and its dead letters still open.
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    sigterm_and_wait(child, &log);
    let (ok, letters) = kit.cli(&["outbox", "dead-letters"]);
    assert!(ok, "{letters}");
    assert_eq!(
        letters
            .matches("SpO2 not accepted by this server (test rule)")
            .count(),
        5,
        "{letters}"
    );
}

#[test]
fn the_same_mqtt_message_stored_twice_reaches_the_server_once_and_both_rows_leave_the_outbox() {
    let mut kit = Kit::new();
    let broker = iomt_testkit::Mosquitto::start(&kit.path("broker"), "").unwrap();
    // The server is down, so both copies wait in the outbox and go out in one Bundle.
    kit.rt.block_on(kit.server.stop());
    let config = kit
        .config_for("kit-mqtt-dup", "MRN-MQTT-4242")
        .driver(&format!(
            "[mqtt]\nenabled = true\nport = {}\nclient_id = \"iomt-gateway-dup\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\nprofiles = [\"mqtt-generic-json-vitals\"]",
            broker.port()
        ))
        .outbox("commit_window_ms = 5")
        .uplink(&kit.fhir_uplink(1))
        .log("info,iomt_drivers=debug")
        .write();
    let (mut child, log) = kit.start(&config);
    common::kit::wait_logged(
        &mut child,
        &log,
        "the gateway to connect",
        "connected to the MQTT broker",
    );
    // A source that sends the same reading again (as one does after a crash between
    // the gateway's commit and its acknowledgement): one Observation, two rows.
    let message = (
        "iomt/dup-1/vitals".to_string(),
        br#"{"time":"2026-01-01T08:00:00Z","heart_rate":72}"#.to_vec(),
    );
    kit.rt
        .block_on(iomt_testkit::mosquitto::publish_acked(
            broker.port(),
            "test-publisher",
            vec![message.clone(), message],
            Duration::from_secs(30),
        ))
        .unwrap();
    wait_until(Duration::from_secs(30), "both copies committed", || {
        kit.try_outbox_status()
            .is_ok_and(|v| v["uplinks"][0]["queued"] == 2)
    });
    kit.rt.block_on(kit.server.restart()).unwrap();
    wait_until(
        Duration::from_secs(30),
        "both rows gone from the outbox",
        || {
            kit.try_outbox_status().is_ok_and(|v| {
                v["rows"] == 0
                    && v["uplinks"][0]["queued"] == 0
                    && v["uplinks"][0]["delivered"] == 2
            })
        },
    );
    sigterm_and_wait(child, &log);
    let status = kit.outbox_status();
    assert_eq!(status["uplinks"][0]["dead_lettered"], 0, "{status}");
    kit.server.with_store(|s| {
        assert_eq!(s.observations.len(), 1);
        assert_eq!((s.rejected, s.duplicate_creates), (0, 0));
    });
}
