//! End-to-end tests of the FHIR uplink's transport security: TLS verified against the
//! system roots plus a configured private CA, mutual TLS, and the refusal of plain http
//! beyond loopback. Certificates are made by the test (rcgen); the server is a real
//! HTTPS FHIR server on 127.0.0.1 (iomt-testkit).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::kit::{committed_ids, read, sigterm_and_wait, wait_running, Kit};
use common::wait_until;
use iomt_testkit::tls::{server_config, TestPki};
use iomt_testkit::FhirServer;

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

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
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "a certificate error", || {
        read(&log).contains("delivery failed")
    });
    wait_until(Duration::from_secs(30), "the readings committed", || {
        committed_ids(&read(&log)).len() >= 3
    });
    sigterm_and_wait(child, &log);
    let text = read(&log);
    assert!(
        text.contains("set ca_file"),
        "the error should say what to do:\n{text}"
    );
    assert_eq!(kit.server_ids().len(), 0);
    let (_, status) = kit.cli(&["outbox", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["uplinks"][0]["queued"], 3, "{status}");

    // With the CA: the queued rows and the new ones are delivered.
    let extra = format!("ca_file = \"{}\"", ca_file(&kit, &pki).display());
    let config = kit.config_with(0.01, &["sim-scale"], 3, &extra);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(
        Duration::from_secs(30),
        "delivery over verified TLS",
        || kit.server_ids().len() >= 6,
    );
    sigterm_and_wait(child, &log);
}

#[test]
fn mutual_tls_accepts_the_configured_client_certificate_and_rejects_none() {
    let pki = TestPki::new("iomt test CA").unwrap();
    let mut kit = tls_kit(&pki, true);
    let ca = format!("ca_file = \"{}\"", ca_file(&kit, &pki).display());

    // No client certificate: the handshake fails, reported clearly; rows are kept.
    let config = kit.config_with(0.01, &["sim-thermometer"], 3, &ca);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "a refused handshake", || {
        kit.server.with_store(|s| s.tls_failures) > 0 || read(&log).contains("delivery failed")
    });
    wait_until(Duration::from_secs(30), "the failure logged", || {
        read(&log).contains("delivery failed")
    });
    wait_until(Duration::from_secs(30), "the readings committed", || {
        committed_ids(&read(&log)).len() >= 3
    });
    sigterm_and_wait(child, &log);
    let text = read(&log);
    assert!(
        text.contains("client_cert_file"),
        "the error should point at the client certificate:\n{text}"
    );
    assert_eq!(kit.server_ids().len(), 0);

    // With the configured client certificate: accepted, everything delivered.
    let client = pki.client("kit-store-1").unwrap();
    let (cert, key) = (kit.path("client.pem"), kit.path("client.key"));
    write_private(&cert, &client.cert_pem);
    write_private(&key, &client.key_pem);
    let extra = format!(
        "{ca}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
        cert.display(),
        key.display()
    );
    let config = kit.config_with(0.01, &["sim-thermometer"], 3, &extra);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "delivery over mutual TLS", || {
        kit.server_ids().len() >= 6
    });
    sigterm_and_wait(child, &log);

    // A client key readable by others is refused at start.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (child, log) = kit.start(&config);
    assert!(!child.wait_with_output().unwrap().status.success());
    assert!(read(&log).contains("chmod 600"), "{}", read(&log));
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
