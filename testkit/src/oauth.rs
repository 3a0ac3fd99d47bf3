//! An authorization server for tests: OAuth2 client credentials (client secret, HTTP
//! Basic) and SMART Backend Services (JWT client assertions verified against a registered
//! JWK Set, ES384 and RS384). It issues opaque access tokens the test FHIR server accepts.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature;
use serde_json::{json, Value};

/// What the authorization server accepts.
#[derive(Debug, Clone)]
pub struct OAuthConfig {
    /// The registered client id.
    pub client_id: String,
    /// The client secret, for client credentials with a secret.
    pub secret: Option<String>,
    /// The registered JWK Set, for SMART Backend Services.
    pub jwks: Option<Value>,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
}

/// The authorization server's state.
#[derive(Debug, Default)]
pub struct OAuthState {
    /// Its configuration (none: authorization is off).
    pub config: Option<OAuthConfig>,
    /// Issued tokens and when they expire.
    pub issued: HashMap<String, Instant>,
    /// `jti` values already used.
    pub seen_jti: HashSet<String>,
    /// Token requests received.
    pub token_requests: u64,
    /// Token requests refused, with the reasons given.
    pub refusals: Vec<String>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn refuse(state: &mut OAuthState, error: &str, description: &str) -> (u16, Value) {
    state.refusals.push(format!("{error}: {description}"));
    (
        400,
        json!({"error": error, "error_description": description}),
    )
}

impl OAuthState {
    /// Whether `Authorization: Bearer <token>` carries a live token.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| self.issued.get(t))
            .is_some_and(|expiry| Instant::now() < *expiry)
    }

    /// Handles a token request; returns (HTTP status, JSON body).
    pub fn token(
        &mut self,
        form: &HashMap<String, String>,
        authorization: Option<&str>,
        token_url: &str,
    ) -> (u16, Value) {
        self.token_requests += 1;
        let Some(config) = self.config.clone() else {
            return refuse(self, "invalid_request", "authorization is not enabled");
        };
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return refuse(self, "unsupported_grant_type", "only client_credentials");
        }
        match form.get("client_assertion_type").map(String::as_str) {
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer") => {
                let Some(jwt) = form.get("client_assertion") else {
                    return refuse(self, "invalid_request", "client_assertion missing");
                };
                if let Err(why) = self.verify_assertion(&config, jwt, token_url) {
                    return refuse(self, "invalid_client", &why);
                }
            }
            Some(_) => return refuse(self, "invalid_request", "unknown client_assertion_type"),
            None => {
                let expected = config.secret.as_ref().map(|s| {
                    format!(
                        "Basic {}",
                        STANDARD.encode(format!("{}:{s}", config.client_id))
                    )
                });
                if expected.is_none() || authorization != expected.as_deref() {
                    return refuse(self, "invalid_client", "client authentication failed");
                }
            }
        }
        let mut raw = [0u8; 24];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw);
        let token = URL_SAFE_NO_PAD.encode(raw);
        // A lifetime too long for the clock (the gateway's tests send u64::MAX seconds)
        // is a token that never expires here.
        let now = Instant::now();
        let expiry = now
            .checked_add(config.token_lifetime)
            .unwrap_or(now + Duration::from_secs(100 * 365 * 86_400));
        self.issued.insert(token.clone(), expiry);
        (
            200,
            json!({"access_token": token, "token_type": "bearer", "expires_in": config.token_lifetime.as_secs(), "scope": form.get("scope")}),
        )
    }

    fn verify_assertion(
        &mut self,
        config: &OAuthConfig,
        jwt: &str,
        token_url: &str,
    ) -> Result<(), String> {
        let parts: Vec<&str> = jwt.split('.').collect();
        let [h, c, s] = parts.as_slice() else {
            return Err("not a JWS compact serialization".into());
        };
        let decode = |p: &str| -> Result<Value, String> {
            let bytes = URL_SAFE_NO_PAD
                .decode(p)
                .map_err(|_| "bad base64url".to_string())?;
            serde_json::from_slice(&bytes).map_err(|_| "bad JSON".to_string())
        };
        let header = decode(h)?;
        let claims = decode(c)?;
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| "bad signature encoding".to_string())?;
        let kid = header["kid"].as_str().ok_or("no kid in the header")?;
        let alg = header["alg"].as_str().ok_or("no alg in the header")?;
        let jwks = config.jwks.as_ref().ok_or("no JWK Set registered")?;
        let jwk = jwks["keys"]
            .as_array()
            .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
            .ok_or("unknown kid: the key is not registered")?;
        let input = format!("{h}.{c}");
        let b64 = |v: &Value| {
            URL_SAFE_NO_PAD
                .decode(v.as_str().unwrap_or_default())
                .unwrap_or_default()
        };
        let verified = match (alg, jwk["kty"].as_str()) {
            ("ES384", Some("EC")) => {
                let mut point = vec![4u8];
                point.extend(b64(&jwk["x"]));
                point.extend(b64(&jwk["y"]));
                signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(input.as_bytes(), &sig)
                    .is_ok()
            }
            ("RS384", Some("RSA")) => signature::RsaPublicKeyComponents {
                n: b64(&jwk["n"]),
                e: b64(&jwk["e"]),
            }
            .verify(
                &signature::RSA_PKCS1_2048_8192_SHA384,
                input.as_bytes(),
                &sig,
            )
            .is_ok(),
            _ => false,
        };
        if !verified {
            return Err("signature does not verify".into());
        }
        if claims["iss"] != config.client_id.as_str() || claims["sub"] != config.client_id.as_str()
        {
            return Err("iss and sub must be the client id".into());
        }
        if claims["aud"] != token_url {
            return Err(format!("aud must be the token URL {token_url}"));
        }
        let exp = claims["exp"].as_i64().ok_or("no exp")?;
        let now = now_secs();
        if exp <= now {
            return Err("the assertion has expired (exp is in the past)".into());
        }
        if exp > now + 300 + 5 {
            return Err("exp is more than 5 minutes in the future".into());
        }
        let jti = claims["jti"].as_str().ok_or("no jti")?;
        if !self.seen_jti.insert(jti.to_string()) {
            return Err("jti reused".into());
        }
        Ok(())
    }
}
