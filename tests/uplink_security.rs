//! End-to-end tests of transport security: the uplinks' and the MQTT ingest connection's
//! TLS verified against the system roots plus a configured private CA, mutual TLS, MQTT
//! user names and passwords (never logged), and the refusal of plain http or mqtt uplinks
//! beyond loopback. Certificates are made by the test (rcgen); the servers are a real
//! HTTPS FHIR server on 127.0.0.1 (iomt-testkit) and a real mosquitto with a TLS listener
//! configured by the test.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kit::{committed_ids, read, sigterm_and_wait, wait_logged, wait_running, Kit};
use common::{wait_until, write_private};
use iomt_testkit::mosquitto::free_port;
use iomt_testkit::tls::{server_config, Issued, TestPki};
use iomt_testkit::{Collector, FhirServer, Mosquitto};

/// A kit whose FHIR server speaks HTTPS with a certificate from `pki`, requiring client
/// certificates from the same CA when `mutual`.
fn tls_kit(pki: &TestPki, mutual: bool) -> Kit {
    let server = pki.server().unwrap();
    let ca = pki.ca_pem();
    let config = server_config(&server, mutual.then_some(ca.as_str())).unwrap();
    Kit::with_server(move || FhirServer::start_tls(config))
}

fn ca_file(kit: &Kit, pki: &TestPki) -> PathBuf {
    let path = kit.path("ca.pem");
    std::fs::write(&path, pki.ca_pem()).unwrap();
    path
}

#[test]
fn https_delivery_works_with_the_private_ca_configured_and_fails_clearly_without_it() {
    let pki = TestPki::new("iomt test CA").unwrap();
    let mut kit = tls_kit(&pki, false);
    assert!(kit.server.base_url().starts_with("https://localhost:"));

    // Without the CA: the server's certificate is not trusted; rows stay queued.
    let config = kit.config(0.01, &["sim-scale"], 3);
    let (line, text) = run_until_delivery_fails(&mut kit, &config, "fhir", 3);
    assert!(
        line.contains("set ca_file"),
        "the error should say what to do:\n{text}"
    );
    assert_eq!(kit.server_ids().len(), 0);
    assert_eq!(uplink_status(&kit, "fhir")["queued"], 3);

    // With the CA: the queued rows and the new ones are delivered.
    let extra = format!("ca_file = \"{}\"", ca_file(&kit, &pki).display());
    let config = kit.config_with(0.01, &["sim-scale"], 3, &extra);
    run_until(&mut kit, &config, "delivery over verified TLS", |k, _| {
        k.server_ids().len() >= 6
    });
    assert_eq!(uplink_status(&kit, "fhir")["queued"], 0);
}

#[test]
fn mutual_tls_accepts_the_configured_client_certificate_and_rejects_none() {
    let pki = TestPki::new("iomt test CA").unwrap();
    let mut kit = tls_kit(&pki, true);
    let ca = format!("ca_file = \"{}\"", ca_file(&kit, &pki).display());

    // No client certificate: the handshake fails, reported clearly; rows are kept.
    let config = kit.config_with(0.01, &["sim-thermometer"], 3, &ca);
    let (line, text) = run_until_delivery_fails(&mut kit, &config, "fhir", 3);
    assert!(
        line.contains("client_cert_file"),
        "the error should point at the client certificate:\n{text}"
    );
    wait_until(
        Duration::from_secs(10),
        "the server to count the refusal",
        || kit.server.with_store(|s| s.tls_failures) > 0,
    );
    assert_eq!(kit.server_ids().len(), 0);
    assert_eq!(uplink_status(&kit, "fhir")["queued"], 3);

    // With the configured client certificate: accepted, everything delivered.
    let client = pki.client("kit-store-1").unwrap();
    let (extra, key) = client_identity(&kit, &client, &ca);
    let config = kit.config_with(0.01, &["sim-thermometer"], 3, &extra);
    let text = run_until(&mut kit, &config, "delivery over mutual TLS", |k, _| {
        k.server_ids().len() >= 6
    });
    assert_no_key_material(&text, &client.key_pem);

    a_readable_client_key_is_refused_at_start(&mut kit, &config, &key);
}

#[test]
fn plain_http_beyond_loopback_is_refused_unless_explicitly_allowed() {
    // Checked with `outbox status`, which loads and validates the configuration without
    // sending anything: no traffic ever goes to the non-loopback address below.
    let kit = Kit::new();
    let config = kit.config(0.01, &["sim-scale"], 1);
    let text = std::fs::read_to_string(&config).unwrap();
    let remote = text.replace(&kit.server.base_url(), "http://fhir.example.org/r4");
    std::fs::write(&config, &remote).unwrap();
    let (ok, out) = kit.cli(&["outbox", "status"]);
    assert!(!ok);
    assert!(
        out.contains("plain http to a host that is not loopback"),
        "{out}"
    );

    let allowed = remote.replace(
        "max_backoff_secs = 2",
        "max_backoff_secs = 2\nallow_insecure = true",
    );
    std::fs::write(&config, allowed).unwrap();
    let (_, out) = kit.cli(&["outbox", "status"]);
    assert!(!out.contains("plain http"), "{out}");

    // https to the same host is fine without any flag.
    let https = remote.replace("http://fhir.example.org", "https://fhir.example.org");
    std::fs::write(&config, https).unwrap();
    let (_, out) = kit.cli(&["outbox", "status"]);
    assert!(!out.contains("plain http"), "{out}");
}

/// A mosquitto with a plain listener (for the test's subscriber) and a TLS listener on
/// another 127.0.0.1 port, its certificate from `pki`, requiring client certificates
/// from the same CA when `mutual`. Returns the broker and the TLS port.
fn tls_broker(kit: &Kit, pki: &TestPki, mutual: bool) -> (Mosquitto, u16) {
    let dir = kit.path("broker");
    std::fs::create_dir_all(&dir).unwrap();
    let server = pki.server().unwrap();
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    write_private(&cert, &server.cert_pem);
    write_private(&key, &server.key_pem);
    let tls_port = free_port().unwrap();
    let listener = format!(
        "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {mutual}\n",
        ca.display(),
        cert.display(),
        key.display()
    );
    let broker = Mosquitto::start(&dir, &listener).unwrap();
    (broker, tls_port)
}

/// The `[[uplinks]]` table of an MQTT uplink named `cloud` to `mqtts://127.0.0.1:port`,
/// with `extra` keys.
fn mqtts_uplink(port: u16, extra: &str) -> String {
    format!(
        "\n[[uplinks]]\nkind = \"mqtt\"\nname = \"cloud\"\nurl = \"mqtts://127.0.0.1:{port}\"\ntopic = \"fhir/{{gateway}}\"\nmode = \"observation\"\nbatch_size = 20\ntimeout_secs = 2\nmax_backoff_secs = 1\n{extra}\n"
    )
}

/// The Observations the subscriber received, by identifier.
fn received_ids(collector: &Collector) -> HashSet<String> {
    collector
        .received()
        .iter()
        .filter_map(|(_, p)| {
            let v: serde_json::Value = serde_json::from_slice(p).ok()?;
            v["identifier"][0]["value"].as_str().map(str::to_string)
        })
        .collect()
}

/// What `outbox status` says of the uplink `name`.
fn uplink_status(kit: &Kit, name: &str) -> serde_json::Value {
    let status = kit.outbox_status();
    common::uplink_named(&status, name)
        .cloned()
        .unwrap_or_else(|| panic!("no uplink {name} in {status}"))
}

/// The first line logging a failed delivery of the uplink `name` ("" if none).
fn failure_line<'a>(log: &'a str, name: &str) -> &'a str {
    let tag = format!("uplink={name}");
    log.lines()
        .find(|l| l.contains("delivery failed") && l.contains(&tag))
        .unwrap_or_default()
}

/// Runs the daemon until the uplink `name` has logged a failed delivery and the
/// simulator has committed `n` readings; returns that failure's log line and the log.
fn run_until_delivery_fails(
    kit: &mut Kit,
    config: &Path,
    name: &str,
    n: usize,
) -> (String, String) {
    let text = run_until(
        kit,
        config,
        "a failed delivery and the readings committed",
        |_, log| !failure_line(log, name).is_empty() && committed_ids(log).len() >= n,
    );
    (failure_line(&text, name).to_string(), text)
}

/// Runs the daemon until `done` (given the kit and the log so far) holds, stops it, and
/// returns its log.
fn run_until(
    kit: &mut Kit,
    config: &Path,
    what: &str,
    done: impl Fn(&Kit, &str) -> bool,
) -> String {
    let (mut child, log) = kit.start(config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), what, || done(kit, &read(&log)));
    sigterm_and_wait(child, &log);
    read(&log)
}

/// Writes `identity`'s certificate and key (mode 0600) and returns the uplink keys that
/// name them, after `ca` (the `ca_file` line); the key file's path too.
fn client_identity(kit: &Kit, identity: &Issued, ca: &str) -> (String, PathBuf) {
    let (cert, key) = (kit.path("client.pem"), kit.path("client.key"));
    write_private(&cert, &identity.cert_pem);
    write_private(&key, &identity.key_pem);
    let keys = format!(
        "{ca}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        cert.display(),
        key.display()
    );
    (keys, key)
}

/// A client key readable by others makes the daemon refuse to start, naming the fix.
fn a_readable_client_key_is_refused_at_start(kit: &mut Kit, config: &Path, key: &Path) {
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (child, log) = kit.start(config);
    assert!(!child.wait_with_output().unwrap().status.success());
    assert!(read(&log).contains("chmod 600"), "{}", read(&log));
}

/// The log holds no line of the PEM key's body.
fn assert_no_key_material(log: &str, key_pem: &str) {
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!log.contains(line), "key material in the log:\n{log}");
    }
}

/// A TLS broker from `pki` (see [`tls_broker`]) with a subscriber to `fhir/#` on its
/// plain listener.
fn tls_broker_with_subscriber(
    kit: &Kit,
    pki: &TestPki,
    mutual: bool,
) -> (Mosquitto, u16, Collector) {
    let (broker, tls_port) = tls_broker(kit, pki, mutual);
    let collector = kit.rt.block_on(Collector::start(
        broker.port(),
        "cloud-subscriber",
        "fhir/#",
    ));
    (broker, tls_port, collector)
}

#[test]
fn mqtts_delivery_works_with_the_private_ca_configured_and_fails_clearly_without_it() {
    let pki = TestPki::new("iomt test CA").unwrap();
    let mut kit = Kit::new();
    let (_broker, tls_port, collector) = tls_broker_with_subscriber(&kit, &pki, false);

    // Without the CA: the broker's certificate is not trusted; rows stay queued.
    let config = kit.config_with(0.01, &["sim-scale"], 3, &mqtts_uplink(tls_port, ""));
    let (line, text) = run_until_delivery_fails(&mut kit, &config, "cloud", 3);
    assert!(
        line.contains("set ca_file") && line.contains("UnknownIssuer"),
        "the error should say what is wrong and what to do:\n{text}"
    );
    assert!(received_ids(&collector).is_empty());
    assert_eq!(uplink_status(&kit, "cloud")["queued"], 3);

    // With the CA: the queued rows and the new ones are delivered over verified TLS.
    let ca = format!("ca_file = \"{}\"", ca_file(&kit, &pki).display());
    let config = kit.config_with(0.01, &["sim-scale"], 3, &mqtts_uplink(tls_port, &ca));
    run_until(&mut kit, &config, "delivery over verified TLS", |_, _| {
        received_ids(&collector).len() >= 6
    });
    assert_eq!(received_ids(&collector).len(), 6);
    assert_eq!(uplink_status(&kit, "cloud")["queued"], 0);
}

#[test]
fn mqtt_mutual_tls_accepts_the_configured_client_certificate_and_rejects_none() {
    let pki = TestPki::new("iomt test CA").unwrap();
    let mut kit = Kit::new();
    let (_broker, tls_port, collector) = tls_broker_with_subscriber(&kit, &pki, true);
    let ca = format!("ca_file = \"{}\"", ca_file(&kit, &pki).display());

    // No client certificate: the broker ends the handshake, reported clearly; rows kept.
    let config = kit.config_with(0.01, &["sim-thermometer"], 3, &mqtts_uplink(tls_port, &ca));
    let (line, text) = run_until_delivery_fails(&mut kit, &config, "cloud", 3);
    assert!(
        line.contains("client_cert_file"),
        "the error should point at the client certificate:\n{text}"
    );
    assert!(received_ids(&collector).is_empty());
    assert_eq!(uplink_status(&kit, "cloud")["queued"], 3);

    // A client certificate from another CA is refused as well.
    let other_ca = TestPki::new("some other CA").unwrap();
    let (extra, _) = client_identity(&kit, &other_ca.client("kit-store-1").unwrap(), &ca);
    let config = kit.config_with(
        0.01,
        &["sim-thermometer"],
        3,
        &mqtts_uplink(tls_port, &extra),
    );
    let (line, text) = run_until_delivery_fails(&mut kit, &config, "cloud", 3);
    assert!(
        line.contains("refused the client certificate"),
        "the error should say the certificate was refused:\n{text}"
    );
    assert!(received_ids(&collector).is_empty());
    assert_eq!(uplink_status(&kit, "cloud")["queued"], 6);

    // The configured certificate from the broker's CA: accepted, everything delivered.
    let client = pki.client("kit-store-1").unwrap();
    let (extra, key) = client_identity(&kit, &client, &ca);
    let config = kit.config_with(
        0.01,
        &["sim-thermometer"],
        3,
        &mqtts_uplink(tls_port, &extra),
    );
    let text = run_until(&mut kit, &config, "delivery over mutual TLS", |_, _| {
        received_ids(&collector).len() >= 9
    });
    assert_eq!(received_ids(&collector).len(), 9);
    assert_eq!(uplink_status(&kit, "cloud")["queued"], 0);
    assert_no_key_material(&text, &client.key_pem);

    a_readable_client_key_is_refused_at_start(&mut kit, &config, &key);
}

#[test]
fn plain_mqtt_beyond_loopback_is_refused_unless_explicitly_allowed() {
    // Checked with `outbox status`, which validates the configuration without connecting.
    let kit = Kit::new();
    let uplink = "\n[[uplinks]]\nkind = \"mqtt\"\nname = \"cloud\"\nurl = \"mqtt://mqtt.example.org\"\ntopic = \"fhir/{gateway}\"\n";
    kit.config_with(0.01, &["sim-scale"], 1, uplink);
    let (ok, out) = kit.cli(&["outbox", "status"]);
    assert!(!ok);
    assert!(
        out.contains("plain mqtt:// to a broker that is not loopback"),
        "{out}"
    );
    kit.config_with(
        0.01,
        &["sim-scale"],
        1,
        &format!("{uplink}allow_insecure = true\n"),
    );
    let (_, out) = kit.cli(&["outbox", "status"]);
    assert!(
        !out.contains("plain mqtt") && out.contains("no outbox database here yet"),
        "{out}"
    );
    kit.config_with(
        0.01,
        &["sim-scale"],
        1,
        &uplink.replace("mqtt://", "mqtts://"),
    );
    let (_, out) = kit.cli(&["outbox", "status"]);
    assert!(
        !out.contains("plain mqtt") && out.contains("no outbox database here yet"),
        "{out}"
    );
}

/// `n` JSON vitals messages of device `dev` for the generic MQTT profile.
fn vitals(dev: &str, n: u32) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("iomt/{dev}/vitals"),
                format!(
                    r#"{{"time":"2026-01-01T08:00:{i:02}Z","heart_rate":{}}}"#,
                    60 + i
                )
                .into_bytes(),
            )
        })
        .collect()
}

/// The `[mqtt]` ingest section for a TLS broker on `port`, with `extra` keys.
fn mqtt_ingest_tls(port: u16, extra: &str) -> String {
    format!(
        "\n[mqtt]\nenabled = true\nport = {port}\ntls = true\nclient_id = \"gw-tls\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\nprofiles = [\"mqtt-generic-json-vitals\"]\n{extra}\n"
    )
}

/// The first line in which the MQTT driver logged a failed connection ("" if none).
fn ingest_failure(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("MQTT broker unreachable"))
        .unwrap_or_default()
}

/// Runs the daemon until the MQTT driver has logged a failed connection; returns that line.
fn ingest_connection_failure(kit: &mut Kit, config: &Path) -> String {
    let text = run_until(kit, config, "a failed MQTT connection", |_, log| {
        !ingest_failure(log).is_empty()
    });
    ingest_failure(&text).to_string()
}

#[test]
fn mqtt_ingest_over_mutual_tls_verifies_the_broker_and_presents_the_client_certificate() {
    let pki = TestPki::new("iomt test CA").unwrap();
    let mut kit = Kit::new();
    let (broker, tls_port) = tls_broker(&kit, &pki, true);
    let ca = format!("ca_file = \"{}\"", ca_file(&kit, &pki).display());

    // The broker's certificate from a private CA, no ca_file: not trusted, said so.
    let config = kit.config_with(0.01, &["sim-scale"], 1, &mqtt_ingest_tls(tls_port, ""));
    let line = ingest_connection_failure(&mut kit, &config);
    assert!(
        line.contains("UnknownIssuer") && line.contains("set ca_file"),
        "{line}"
    );

    // Trusted, but no client certificate: the broker ends the handshake, said so.
    let config = kit.config_with(0.01, &["sim-scale"], 1, &mqtt_ingest_tls(tls_port, &ca));
    let line = ingest_connection_failure(&mut kit, &config);
    assert!(line.contains("client_cert_file"), "{line}");

    // With the client certificate: subscribed over mutual TLS; readings published by a
    // device reach the FHIR server.
    let (identity, _) = client_identity(&kit, &pki.client("kit-store-1").unwrap(), &ca);
    let config = kit.config_with(
        0.01,
        &["sim-scale"],
        1,
        &mqtt_ingest_tls(tls_port, &identity),
    );
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_logged(
        &mut child,
        &log,
        "the subscription over TLS",
        "connected to the MQTT broker",
    );
    kit.rt
        .block_on(iomt_testkit::mosquitto::publish_acked(
            broker.port(),
            "wearable",
            vitals("wear-tls", 5),
            Duration::from_secs(20),
        ))
        .unwrap();
    // The simulated scale also reports; count the heart rates (LOINC 8867-4) only.
    let heart_rates = || {
        kit.server.with_store(|s| {
            s.observations
                .iter()
                .filter(|o| o["code"]["coding"][0]["code"] == "8867-4")
                .count()
        })
    };
    wait_until(
        Duration::from_secs(30),
        "the MQTT readings delivered",
        || heart_rates() >= 5,
    );
    sigterm_and_wait(child, &log);
    assert_eq!(heart_rates(), 5);
}

#[test]
fn mqtt_ingest_tls_keys_without_tls_are_refused() {
    let kit = Kit::new();
    kit.config_with(
        0.01,
        &["sim-scale"],
        1,
        "\n[mqtt]\nenabled = true\nca_file = \"/etc/iomt-gateway/ca.pem\"\n",
    );
    let (ok, out) = kit.cli(&["outbox", "status"]);
    assert!(!ok);
    assert!(out.contains("need mqtt.tls = true"), "{out}");
}

#[test]
fn mqtt_credentials_are_presented_and_a_wrong_password_is_reported_without_showing_it() {
    const USER: &str = "kit-store-1";
    const PASSWORD: &str = "correct-horse-battery-staple-17";
    const WRONG: &str = "an-old-password-that-was-rotated";
    let mut kit = Kit::new();
    let dir = kit.path("broker");
    std::fs::create_dir_all(&dir).unwrap();
    let passwords = dir.join("passwords");
    let made = std::process::Command::new("mosquitto_passwd")
        .arg("-b")
        .arg("-c")
        .arg(&passwords)
        .args([USER, PASSWORD])
        .status()
        .unwrap();
    assert!(made.success());
    let broker = Mosquitto::start(
        &dir,
        &format!(
            "allow_anonymous false\npassword_file {}",
            passwords.display()
        ),
    )
    .unwrap();
    let port = broker.port();
    let credentials = kit.path("mqtt.credentials");
    let sections = format!(
        "\n[[uplinks]]\nkind = \"mqtt\"\nname = \"cloud\"\nurl = \"mqtt://127.0.0.1:{port}\"\ntopic = \"fhir/{{gateway}}\"\ncredentials_file = \"{c}\"\ntimeout_secs = 2\nmax_backoff_secs = 1\n\n[mqtt]\nenabled = true\nport = {port}\ncredentials_file = \"{c}\"\nreconnect_initial_ms = 50\nreconnect_max_ms = 500\nprofiles = [\"mqtt-generic-json-vitals\"]\n",
        c = credentials.display()
    );
    let config = kit.config_with(0.01, &["sim-scale"], 3, &sections);

    // A rotated password: both connections are refused, said so; the rows stay.
    write_private(&credentials, format!("{USER}\n{WRONG}\n"));
    let (line, text) = run_until_delivery_fails(&mut kit, &config, "cloud", 3);
    assert!(
        line.contains("credentials_file"),
        "the error should point at the credentials:\n{text}"
    );
    assert!(ingest_failure(&text).contains("credentials_file"), "{text}");
    assert_eq!(uplink_status(&kit, "cloud")["queued"], 3);

    // The right password: both connect, and everything is delivered.
    write_private(&credentials, format!("{USER}\n{PASSWORD}\n"));
    run_until(
        &mut kit,
        &config,
        "the MQTT driver connected and every row delivered",
        |k, log| {
            log.lines()
                .any(|l| l.contains("connected to the MQTT broker") && l.contains("subscriptions="))
                && committed_ids(log).len() >= 3
                && k.try_outbox_status()
                    .ok()
                    .and_then(|s| common::uplink_named(&s, "cloud").map(|u| u["queued"] == 0))
                    .unwrap_or(false)
        },
    );
    assert_eq!(uplink_status(&kit, "cloud")["delivered"], 6);

    // Neither password ever reaches a log or `outbox status`.
    for run in 1..=kit.runs {
        let log = kit.run_log(run);
        assert!(
            !log.contains(PASSWORD) && !log.contains(WRONG),
            "run {run}:\n{log}"
        );
    }
    let (_, status) = kit.cli(&["outbox", "status"]);
    assert!(!status.contains(PASSWORD) && !status.contains(WRONG));
}
