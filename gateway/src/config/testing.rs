//! Test support for the configuration tests of every section: the smallest valid file,
//! and an assertion that a file is refused naming given problems.

use super::Config;

/// The smallest valid configuration: a gateway, a patient, a key, a file uplink.
pub const MINIMAL: &str = r#"
[gateway]
id = "kit-1"
[patient]
id = "MRN-1"
[pseudonymization]
key_file = "/tmp/key"
[[uplinks]]
kind = "file"
dir = "/tmp/out"
"#;

/// [`MINIMAL`] followed by `more`, validated.
pub fn minimal_with(more: &str) -> Result<Config, super::ConfigError> {
    Config::from_toml_str(&format!("{MINIMAL}\n{more}"), "test")
}

/// The configuration `text` is refused with a message naming every one of `needles`.
pub fn assert_problems(text: &str, needles: &[&str]) {
    let msg = Config::from_toml_str(text, "test").unwrap_err().to_string();
    for needle in needles {
        assert!(msg.contains(needle), "{needle} missing from {msg}");
    }
}
