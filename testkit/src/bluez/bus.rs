//! [`PrivateBus`]: a private `dbus-daemon` with a system-bus configuration in a temporary
//! directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A private `dbus-daemon` with a system-bus configuration in a temporary directory.
/// Killed when dropped.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    address: String,
}

/// Why the test environment could not be set up.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SetupError {}

impl PrivateBus {
    /// Starts `dbus-daemon` listening on a socket in `dir`, and waits until it prints its
    /// address (it is listening then).
    pub fn start(dir: &Path) -> Result<Self, SetupError> {
        let config = dir.join("system-bus.conf");
        let socket = dir.join("system_bus_socket");
        let text = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
            socket.display()
        );
        std::fs::write(&config, text).map_err(|e| SetupError(format!("bus config: {e}")))?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| SetupError(format!("dbus-daemon (install the dbus package): {e}")))?;
        let mut line = String::new();
        let read = child
            .stdout
            .take()
            .map(|out| BufReader::new(out).read_line(&mut line));
        if !matches!(read, Some(Ok(n)) if n > 0) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SetupError("dbus-daemon printed no address".into()));
        }
        Ok(Self {
            child,
            address: line.trim().to_string(),
        })
    }

    /// The bus address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
