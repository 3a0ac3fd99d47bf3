//! End-to-end tests of where the gateway sends credentials and patient data: never over
//! plain http or plain MQTT to a host beyond this machine (token endpoints configured or
//! found by SMART discovery, the MQTT ingest broker's password) unless the configuration
//! says `allow_insecure`, and never on to the place a redirect names. The servers are real
//! HTTP servers on 127.0.0.1 (iomt-testkit); "the network beyond this machine" is an HTTP
//! proxy the daemon is pointed at with `http_proxy`, which records every plain-http request
//! to another host that the daemon would have sent.

mod common;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use common::kit::{committed_ids, read, sigterm_and_wait, wait_running, Kit};
use common::{wait_until, write_private};
use iomt_testkit::{Canned, CannedServer};

/// A token endpoint on a host that is not this machine (`.invalid` never resolves).
const REMOTE_TOKEN_URL: &str = "http://auth.iomt.invalid/token";

/// Waits (at most 30 s) for the daemon to exit; returns whether it succeeded and its log.
fn exit_of(mut child: Child, log: &Path) -> (bool, String) {
    let mut status = None;
    wait_until(Duration::from_secs(30), "the daemon to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    (status.is_some_and(|s| s.success()), read(log))
}

/// Asserts that both the configuration check (`outbox status`, which loads and validates
/// the configuration before it looks for the database) and `run` refuse the kit's
/// configuration, each with every one of `needles` in its message.
fn refused_at_start(kit: &mut Kit, config: &Path, needles: &[&str]) {
    let (ok, out) = kit.cli(&["outbox", "status"]);
    assert!(!ok);
    for needle in needles {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
    let (ok, log) = {
        let (child, log) = kit.start(config);
        exit_of(child, &log)
    };
    assert!(!ok, "run accepted the configuration:\n{log}");
    for needle in needles {
        assert!(log.contains(needle), "`{needle}` not in:\n{log}");
    }
}

/// Asserts that the configuration check accepts the kit's configuration (and then finds
/// no database, as no daemon ran).
fn accepted(kit: &Kit) {
    let (_, out) = kit.cli(&["outbox", "status"]);
    assert!(
        out.contains("no outbox database here yet"),
        "refused:\n{out}"
    );
}

#[test]
fn a_plain_http_token_url_beyond_loopback_is_refused_at_start() {
    let mut kit = Kit::new();
    let secret = kit.path("client.secret");
    write_private(&secret, "cs-never-in-clear");
    let oauth2 = |url: &str, extra: &str| {
        format!(
            "{extra}\n[uplinks.oauth2]\ntoken_url = \"{url}\"\nclient_id = \"kit-7\"\nclient_secret_file = \"{}\"\n",
            secret.display()
        )
    };
    let config = kit.config_with(0.01, &["sim-scale"], 1, &oauth2(REMOTE_TOKEN_URL, ""));
    refused_at_start(
        &mut kit,
        &config,
        &[
            "token_url",
            REMOTE_TOKEN_URL,
            "plain http to a host that is not loopback",
        ],
    );

    // The same for a SMART token_url (checked before the key is read).
    let smart = format!(
        "[uplinks.smart]\nclient_id = \"kit-7\"\nprivate_key_file = \"{}\"\ntoken_url = \"{REMOTE_TOKEN_URL}\"\n",
        kit.path("smart.pem").display()
    );
    kit.config_with(0.01, &["sim-scale"], 1, &smart);
    let (ok, out) = kit.cli(&["outbox", "status"]);
    assert!(
        !ok && out.contains("token_url")
            && out.contains("plain http to a host that is not loopback"),
        "{out}"
    );

    // https, a loopback http endpoint, or the explicit allow_insecure are accepted.
    kit.config_with(
        0.01,
        &["sim-scale"],
        1,
        &oauth2("https://auth.iomt.invalid/token", ""),
    );
    accepted(&kit);
    kit.config_with(
        0.01,
        &["sim-scale"],
        1,
        &oauth2(&kit.server.token_url(), ""),
    );
    accepted(&kit);
    kit.config_with(
        0.01,
        &["sim-scale"],
        1,
        &oauth2(REMOTE_TOKEN_URL, "allow_insecure = true"),
    );
    accepted(&kit);
}

/// The environment that sends the daemon's plain-http requests to hosts other than this
/// machine through `proxy`.
fn through(proxy: &CannedServer) -> Vec<(&'static str, String)> {
    let url = proxy.url();
    vec![
        ("http_proxy", url.clone()),
        ("HTTP_PROXY", url),
        ("no_proxy", "127.0.0.1,localhost".into()),
        ("NO_PROXY", "127.0.0.1,localhost".into()),
    ]
}

/// Starts the daemon with `env` until the simulator has committed `n` readings and the
/// uplink `fhir` has logged a failed delivery (or `wrong` holds: what must not happen did);
/// returns that failure's line ("" if none) and the log.
fn run_until_delivery_fails(
    kit: &mut Kit,
    config: &Path,
    env: &[(&str, String)],
    n: usize,
    wrong: impl Fn(&Kit) -> bool,
) -> (String, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut child, log) = kit.start_with_env(config, &env);
    wait_running(&mut child, &log);
    let failure = |text: &str| {
        text.lines()
            .find(|l| l.contains("delivery failed") && l.contains("uplink=fhir"))
            .map(str::to_string)
    };
    wait_until(
        Duration::from_secs(30),
        "a failed delivery and the readings committed",
        || {
            let text = read(&log);
            (failure(&text).is_some() || wrong(kit)) && committed_ids(&text).len() >= n
        },
    );
    sigterm_and_wait(child, &log);
    let text = read(&log);
    (failure(&text).unwrap_or_default(), text)
}

/// What `outbox status` says of the uplink `fhir`.
fn queued(kit: &Kit) -> serde_json::Value {
    let status = kit.outbox_status();
    common::uplink_named(&status, "fhir")
        .map(|u| u["queued"].clone())
        .unwrap_or_else(|| panic!("no uplink fhir in {status}"))
}

/// A configuration like the kit's, but with the FHIR base URL `base_url`.
fn config_at(kit: &Kit, base_url: &str, max_readings: u64, extra: &str) -> PathBuf {
    let config = kit.config_with(0.01, &["sim-thermometer"], max_readings, extra);
    let text = read(&config).replace(&kit.server.base_url(), base_url);
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn a_discovered_plain_http_token_endpoint_gets_no_assertion_and_the_rows_stay() {
    let mut kit = Kit::new();
    // A FHIR server on this machine whose SMART discovery names a plain-http token
    // endpoint on another host.
    let discovery = kit
        .rt
        .block_on(CannedServer::start(Canned::json(&serde_json::json!({
            "token_endpoint": REMOTE_TOKEN_URL,
            "grant_types_supported": ["client_credentials"],
        }))))
        .unwrap();
    let network = kit
        .rt
        .block_on(CannedServer::start(Canned {
            status: 502,
            headers: Vec::new(),
            body: String::new(),
        }))
        .unwrap();
    let smart = format!(
        "[uplinks.smart]\nclient_id = \"kit-7\"\nprivate_key_file = \"{}\"\n",
        kit.path("smart.pem").display()
    );
    let base = format!("{}/fhir", discovery.url());
    let config = config_at(&kit, &base, 3, &smart);
    let (ok, out) = kit.cli(&["keygen", "--smart"]);
    assert!(ok, "{out}");

    let (line, text) = run_until_delivery_fails(&mut kit, &config, &through(&network), 3, |_| {
        !network.seen().is_empty()
    });
    let crossed: Vec<String> = network.seen().iter().map(|r| r.target.clone()).collect();
    assert!(
        crossed.is_empty(),
        "requests crossed the network: {crossed:?}"
    );
    assert!(
        line.contains(REMOTE_TOKEN_URL)
            && line.contains("plain http to a host that is not loopback")
            && line.contains("token_url"),
        "the error should name the endpoint and the fix:\n{text}"
    );
    let seen = discovery.seen();
    assert!(!seen.is_empty() && seen.iter().all(|r| r.method == "GET"));
    assert_eq!(queued(&kit), 3);

    // The observer works: with the explicit allow_insecure, the assertion does go out.
    let config = config_at(&kit, &base, 0, &format!("allow_insecure = true\n{smart}"));
    let env = through(&network);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut child, log) = kit.start_with_env(&config, &env);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "the token request", || {
        !network.seen().is_empty()
    });
    sigterm_and_wait(child, &log);
    let request = &network.seen()[0];
    assert_eq!(request.target, REMOTE_TOKEN_URL);
    assert!(String::from_utf8_lossy(&request.body).contains("client_assertion="));
}

#[test]
fn a_redirect_is_not_followed_and_the_rows_stay_queued() {
    // 307 and 308 keep the method and the body: followed, they re-POST the Bundle.
    for status in [307, 308] {
        let mut kit = Kit::new();
        // The kit's FHIR server (another origin) is where the redirect points.
        let location = kit.server.base_url();
        let redirector = kit
            .rt
            .block_on(CannedServer::start(Canned::redirect(status, &location)))
            .unwrap();
        let config = config_at(&kit, &format!("{}/fhir", redirector.url()), 3, "");
        let (line, text) = run_until_delivery_fails(&mut kit, &config, &[], 3, |k| {
            k.server.with_store(|s| s.requests > 0)
        });
        kit.server.with_store(|s| {
            assert_eq!(
                s.requests, 0,
                "HTTP {status}: a Bundle was POSTed to the Location:\n{text}"
            )
        });
        assert!(redirector.seen().iter().any(|r| r.method == "POST"));
        assert!(
            line.contains(&format!("HTTP {status}"))
                && line.contains(&location)
                && line.contains("the Location was not followed"),
            "the log should say that the redirect was not followed:\n{text}"
        );
        assert_eq!(queued(&kit), 3);
    }
}

#[test]
fn plain_mqtt_ingest_with_credentials_beyond_loopback_is_refused_unless_allowed() {
    let mut kit = Kit::new();
    let credentials = kit.path("mqtt.credentials");
    write_private(&credentials, "kit-store-1\nnever-in-clear\n");
    let mqtt = |extra: &str| {
        format!(
            "\n[mqtt]\nenabled = true\nhost = \"broker.iomt.invalid\"\nprofiles = [\"mqtt-generic-json-vitals\"]\n{extra}\n"
        )
    };
    let with_credentials = format!("credentials_file = \"{}\"", credentials.display());
    let config = kit.config_with(0.01, &["sim-scale"], 1, &mqtt(&with_credentials));
    refused_at_start(
        &mut kit,
        &config,
        &[
            "mqtt.credentials_file",
            "plain MQTT",
            "mqtt.tls = true",
            "mqtt.allow_insecure",
        ],
    );

    // The explicit allow_insecure, TLS, or no credentials are accepted.
    kit.config_with(
        0.01,
        &["sim-scale"],
        1,
        &mqtt(&format!("{with_credentials}\nallow_insecure = true")),
    );
    accepted(&kit);
    kit.config_with(
        0.01,
        &["sim-scale"],
        1,
        &mqtt(&format!("{with_credentials}\ntls = true")),
    );
    accepted(&kit);
    kit.config_with(0.01, &["sim-scale"], 1, &mqtt(""));
    accepted(&kit);
}
