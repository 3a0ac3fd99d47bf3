//! Texts for failed network connections, shared by the MQTT driver and the gateway
//! (whose `net` module re-exports them for its MQTT and HTTPS connections): the cause
//! chain of an error, and what to configure when TLS or the login is at fault.

/// What to configure, given the text of a failed TLS connection (rustls's error names),
/// or "" when the text is not about TLS.
pub fn tls_hint(cause: &str) -> &'static str {
    if cause.contains("UnknownIssuer") || cause.contains("invalid peer certificate") {
        " (the server's certificate is not trusted: for a private CA set ca_file)"
    } else if cause.contains("CertificateRequired")
        || cause.contains("certificate required")
        || cause.contains("HandshakeFailure")
    {
        " (the TLS handshake failed: the server may require a client certificate, see client_cert_file and client_key_file)"
    } else if cause.contains("BadCertificate")
        || cause.contains("UnknownCA")
        || cause.contains("CertificateUnknown")
    {
        " (the server refused the client certificate: check client_cert_file against the CA the server trusts)"
    } else {
        ""
    }
}

/// What to configure when an MQTT broker refused the connection (CONNACK), or "".
fn refusal_hint(e: &rumqttc::ConnectionError) -> &'static str {
    use rumqttc::ConnectReturnCode as Code;
    match e {
        rumqttc::ConnectionError::ConnectionRefused(
            Code::BadUserNamePassword | Code::NotAuthorized,
        ) => " (the broker refused the user name or password: check credentials_file)",
        rumqttc::ConnectionError::ConnectionRefused(Code::BadClientId) => {
            " (the broker refused the client id: check client_id)"
        }
        _ => "",
    }
}

/// An MQTT connection error with its cause chain and, for a TLS problem or a refused
/// login, what to configure. rumqttc's errors never carry the credentials.
pub fn describe_mqtt_error(e: &rumqttc::ConnectionError) -> String {
    let refused = refusal_hint(e);
    if !refused.is_empty() {
        return format!("{e}{refused}");
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    format!("{text}{}", tls_hint(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_name_the_setting_to_change() {
        assert!(tls_hint("invalid peer certificate: UnknownIssuer").contains("set ca_file"));
        assert!(tls_hint("received fatal alert: CertificateRequired").contains("client_cert_file"));
        assert!(tls_hint("received fatal alert: UnknownCA").contains("refused the client"));
        assert_eq!(tls_hint("Connection refused (os error 111)"), "");
    }

    #[test]
    fn a_refused_login_points_at_the_credentials_file() {
        use rumqttc::{ConnectReturnCode as Code, ConnectionError};
        for code in [Code::BadUserNamePassword, Code::NotAuthorized] {
            let text = describe_mqtt_error(&ConnectionError::ConnectionRefused(code));
            assert!(text.contains("check credentials_file"), "{text}");
        }
        let text = describe_mqtt_error(&ConnectionError::ConnectionRefused(Code::BadClientId));
        assert!(text.contains("check client_id"), "{text}");
    }
}
