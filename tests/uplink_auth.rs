//! End-to-end tests of the FHIR uplink's authorization: OAuth2 client credentials and
//! SMART Backend Services (ES384 and RS384), against a real local authorization server and
//! FHIR server (iomt-testkit) that accept only the tokens they issued.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::kit::{committed_ids, read, sigterm_and_wait, wait_running, Kit};
use common::wait_until;
use iomt_testkit::oauth::OAuthConfig;

const CLIENT: &str = "iomt-kit-7";

/// Every secret the logs must never show: issued tokens, and the given texts.
fn assert_logs_hold_no_secret(kit: &Kit, secrets: &[&str]) {
    let tokens: Vec<String> = kit
        .server
        .with_oauth(|o| o.issued.keys().cloned().collect());
    assert!(!tokens.is_empty());
    for run in 1..=kit.runs {
        let log = kit.run_log(run);
        for t in &tokens {
            assert!(
                !log.contains(t.as_str()),
                "an access token is in run {run}'s log"
            );
        }
        for s in secrets {
            assert!(!log.contains(s), "a secret is in run {run}'s log");
        }
    }
    let (_, status) = kit.cli(&["outbox", "status"]);
    for s in secrets {
        assert!(!status.contains(s));
    }
}

fn token_requests(kit: &Kit) -> u64 {
    kit.server.with_oauth(|o| o.token_requests)
}

#[test]
fn oauth2_client_credentials_fetch_one_token_and_reuse_it() {
    let mut kit = Kit::new();
    let secret = "cs-4f7a9e21-very-secret";
    kit.server.enable_oauth(OAuthConfig {
        client_id: CLIENT.into(),
        secret: Some(secret.into()),
        jwks: None,
        token_lifetime: Duration::from_secs(3600),
    });
    let secret_file = kit.path("client.secret");
    common::write_private(&secret_file, secret);
    let extra = format!(
        "[uplinks.oauth2]\ntoken_url = \"{}\"\nclient_id = \"{CLIENT}\"\nclient_secret_file = \"{}\"\nscope = \"system/Observation.write\"",
        kit.server.token_url(),
        secret_file.display()
    );
    let config = kit.config_with(0.02, &["sim-scale"], 8, &extra);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "every reading delivered", || {
        kit.server_ids().len() >= 8
    });
    sigterm_and_wait(child, &log);
    assert_eq!(
        token_requests(&kit),
        1,
        "the token is cached, not fetched per Bundle"
    );
    kit.server.with_store(|s| assert!(s.requests >= 2));
    assert_logs_hold_no_secret(&kit, &[secret]);
}

/// Makes the SMART key with the CLI and returns its JWK Set.
fn smart_key(kit: &Kit, alg: &str) -> serde_json::Value {
    let (ok, out) = kit.cli(&["keygen", "--smart", "--alg", alg]);
    assert!(ok, "{out}");
    let start = out.find('{').expect("a JWK Set on stdout");
    let end = out.rfind('}').unwrap();
    let jwks: serde_json::Value = serde_json::from_str(&out[start..=end]).unwrap();
    assert_eq!(jwks["keys"][0]["alg"], alg);
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "the JWK Set must hold no private part"
    );
    let key = kit.path("smart.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    jwks
}

fn smart_config(kit: &Kit, alg: &str, max_readings: u64) -> std::path::PathBuf {
    let extra = format!(
        "[uplinks.smart]\nclient_id = \"{CLIENT}\"\nprivate_key_file = \"{}\"\nalg = \"{alg}\"",
        kit.path("smart.pem").display()
    );
    kit.config_with(0.02, &["sim-thermometer"], max_readings, &extra)
}

fn private_key_lines(path: &Path) -> Vec<String> {
    read(path)
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .map(str::to_string)
        .collect()
}

fn smart_backend_services_with(alg: &str) {
    let mut kit = Kit::new();
    // keygen reads the configuration that names the key.
    let config = smart_config(&kit, alg, 0);
    let jwks = smart_key(&kit, alg);
    // Running keygen again keeps the key and prints the same JWK Set.
    assert_eq!(smart_key(&kit, alg), jwks);
    kit.server.enable_oauth(OAuthConfig {
        client_id: CLIENT.into(),
        secret: None,
        jwks: Some(jwks),
        token_lifetime: Duration::from_secs(3600),
    });
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(
        Duration::from_secs(60),
        "the first readings delivered",
        || kit.server_ids().len() >= 2,
    );
    assert_eq!(token_requests(&kit), 1);

    // The server forgets its tokens: the next delivery gets a 401, and the gateway asks
    // for exactly one new token, then delivers the rest.
    kit.server.revoke_tokens();
    let before = kit.server_ids().len();
    wait_until(
        Duration::from_secs(60),
        "delivery after the revocation",
        || kit.server_ids().len() > before + 2,
    );
    sigterm_and_wait(child, &log);
    let unauthorized = kit.server.with_store(|s| s.unauthorized);
    assert_eq!(unauthorized, 1, "exactly one request met the revoked token");
    assert_eq!(
        token_requests(&kit),
        2,
        "a 401 leads to exactly one new token request"
    );
    kit.server
        .with_oauth(|o| assert!(o.refusals.is_empty(), "{:?}", o.refusals));
    let key_lines = private_key_lines(&kit.path("smart.pem"));
    let secrets: Vec<&str> = key_lines.iter().map(String::as_str).collect();
    assert_logs_hold_no_secret(&kit, &secrets);
}

#[test]
fn smart_backend_services_with_es384_discover_sign_and_renew_after_a_401() {
    smart_backend_services_with("ES384");
}

#[test]
fn smart_backend_services_with_rs384_discover_sign_and_renew_after_a_401() {
    smart_backend_services_with("RS384");
}

#[test]
fn an_expiring_token_is_renewed_by_exactly_one_request_before_it_runs_out() {
    let mut kit = Kit::new();
    let config = smart_config(&kit, "ES384", 0);
    let jwks = smart_key(&kit, "ES384");
    kit.server.enable_oauth(OAuthConfig {
        client_id: CLIENT.into(),
        secret: None,
        jwks: Some(jwks),
        token_lifetime: Duration::from_secs(2),
    });
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    // The token lives 2 s and is kept until shortly before that: a second one is fetched
    // while readings keep flowing, and no request is ever refused.
    wait_until(Duration::from_secs(30), "a renewed token", || {
        token_requests(&kit) >= 2
    });
    let delivered = kit.server_ids().len();
    wait_until(
        Duration::from_secs(30),
        "delivery with the renewed token",
        || kit.server_ids().len() > delivered + 2,
    );
    sigterm_and_wait(child, &log);
    kit.server
        .with_store(|s| assert_eq!(s.unauthorized, 0, "a token was used after it expired"));
}

#[test]
fn a_key_the_backend_does_not_know_leaves_rows_queued_with_an_actionable_error() {
    let mut kit = Kit::new();
    let config = smart_config(&kit, "ES384", 3);
    smart_key(&kit, "ES384");
    // The backend registered some other key.
    let other = Kit::new();
    let other_config = smart_config(&other, "ES384", 3);
    assert!(other_config.exists());
    let foreign = smart_key(&other, "ES384");
    kit.server.enable_oauth(OAuthConfig {
        client_id: CLIENT.into(),
        secret: None,
        jwks: Some(foreign),
        token_lifetime: Duration::from_secs(3600),
    });
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "the refusal logged", || {
        read(&log).contains("token endpoint refused")
    });
    wait_until(Duration::from_secs(30), "the readings committed", || {
        committed_ids(&read(&log)).len() >= 3
    });
    sigterm_and_wait(child, &log);
    let text = read(&log);
    assert!(
        text.contains("invalid_client") && text.contains("keygen --smart"),
        "{text}"
    );
    assert_eq!(kit.server_ids().len(), 0);
    let status = kit.outbox_status();
    assert_eq!(status["uplinks"][0]["queued"], 3, "{status}");
}

#[test]
fn the_token_endpoint_refuses_a_reused_jti_a_wrong_audience_and_an_old_assertion() {
    use iomt_gateway::smart::{Alg, SigningKey};
    let kit = Kit::new();
    let key = SigningKey::generate(Alg::Rs384, &kit.path("smart.pem")).unwrap();
    kit.server.enable_oauth(OAuthConfig {
        client_id: CLIENT.into(),
        secret: None,
        jwks: Some(key.jwks()),
        token_lifetime: Duration::from_secs(60),
    });
    let token_url = kit.server.token_url();
    let now = chrono::Utc::now().timestamp();
    let post = |assertion: &str| -> (u16, serde_json::Value) {
        kit.rt.block_on(async {
            let r = reqwest::Client::new()
                .post(&token_url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", "system/Observation.write"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion),
                ])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap())
        })
    };
    let good = key.client_assertion(CLIENT, &token_url, now, 300).unwrap();
    assert_eq!(post(&good).0, 200);
    let (status, body) = post(&good);
    assert_eq!(status, 400);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("jti reused"),
        "{body}"
    );
    let wrong_aud = key
        .client_assertion(CLIENT, "https://elsewhere.example/token", now, 300)
        .unwrap();
    assert!(post(&wrong_aud).1["error_description"]
        .as_str()
        .unwrap()
        .contains("aud"));
    let old = key
        .client_assertion(CLIENT, &token_url, now - 3600, 300)
        .unwrap();
    assert!(post(&old).1["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let other_client = key
        .client_assertion("someone-else", &token_url, now, 300)
        .unwrap();
    assert!(post(&other_client).1["error_description"]
        .as_str()
        .unwrap()
        .contains("iss and sub"));
}

#[test]
fn a_token_lifetime_too_long_for_the_clock_is_clamped_and_delivery_goes_on() {
    let mut kit = Kit::new();
    let secret = "cs-huge-lifetime";
    // `expires_in: 18446744073709551615`: `Instant + Duration` overflowed and aborted.
    kit.server.enable_oauth(OAuthConfig {
        client_id: CLIENT.into(),
        secret: Some(secret.into()),
        jwks: None,
        token_lifetime: Duration::from_secs(u64::MAX),
    });
    let secret_file = kit.path("client.secret");
    common::write_private(&secret_file, secret);
    let extra = format!(
        "[uplinks.oauth2]\ntoken_url = \"{}\"\nclient_id = \"{CLIENT}\"\nclient_secret_file = \"{}\"",
        kit.server.token_url(),
        secret_file.display()
    );
    let config = kit.config_with(0.05, &["sim-scale"], 0, &extra);
    let (mut child, log) = kit.start(&config);
    wait_running(&mut child, &log);
    wait_until(Duration::from_secs(30), "readings delivered", || {
        kit.server_ids().len() >= 6
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon stopped:\n{}",
        read(&log)
    );
    sigterm_and_wait(child, &log);
    let text = read(&log);
    assert!(
        text.contains("expires_in") && text.contains("kept for at most"),
        "the clamp is not logged:\n{text}"
    );
    assert_eq!(token_requests(&kit), 1);
}
