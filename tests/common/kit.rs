//! The end-to-end test bed shared by the store-and-forward and uplink-security tests.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use iomt_testkit::FhirServer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rand::Rng;

use super::{gateway, wait_until};

/// The patient id every kit's configuration uses.
pub const PATIENT: &str = "MRN-STORE-4711";

/// A test bed: a temp dir with keys, a FHIR server on its own runtime, and the daemons
/// started (killed on drop, so a failing test leaves none behind).
pub struct Kit {
    pub dir: tempfile::TempDir,
    pub rt: tokio::runtime::Runtime,
    pub server: FhirServer,
    pub runs: usize,
    pids: Vec<u32>,
}

impl Drop for Kit {
    /// A failing test must not leave a daemon running: kill every one still alive.
    fn drop(&mut self) {
        for pid in &self.pids {
            super::kill_if_gateway(*pid);
        }
    }
}

impl Kit {
    /// A kit with a plain-HTTP FHIR server.
    pub fn new() -> Self {
        Self::with_server(FhirServer::start)
    }

    /// A kit with the FHIR server `start` makes.
    pub fn with_server<F, Fut>(start: F) -> Self
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::io::Result<FhirServer>>,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(start()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for key in ["pseudonym.key", "storage.key"] {
            let path = dir.path().join(key);
            std::fs::write(&path, rand::thread_rng().gen::<[u8; 32]>()).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Kit {
            dir,
            rt,
            server,
            runs: 0,
            pids: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the configuration: the simulator at `interval` seconds, a FHIR uplink.
    pub fn config(&self, interval: f64, profiles: &[&str], max_readings: u64) -> PathBuf {
        self.config_with(interval, profiles, max_readings, "")
    }

    /// Like `config`, with `extra` appended to the `[[uplinks]]` table of the FHIR
    /// uplink (more keys, or further `[[uplinks]]` tables).
    pub fn config_with(
        &self,
        interval: f64,
        profiles: &[&str],
        max_readings: u64,
        extra: &str,
    ) -> PathBuf {
        let config = self.path("gateway.toml");
        let profiles: Vec<String> = profiles.iter().map(|p| format!("\"{p}\"")).collect();
        std::fs::write(
            &config,
            format!(
                r#"[gateway]
id = "kit-store-1"
profiles_dir = "{root}/device-profiles"

[patient]
id = "{PATIENT}"

[pseudonymization]
key_file = "{dir}/pseudonym.key"

[sim]
enabled = true
profiles = [{profiles}]
interval_secs = {interval}
max_readings = {max_readings}

[outbox]
path = "{dir}/outbox.db"
key_file = "{dir}/storage.key"
commit_window_ms = 5

[[uplinks]]
kind = "fhir"
base_url = "{url}"
batch_size = 50
timeout_secs = 5
max_backoff_secs = 2
{extra}

[log]
level = "info,iomt_drivers=debug,iomt_gateway::uplink=debug"
"#,
                root = super::root().display(),
                dir = self.dir.path().display(),
                profiles = profiles.join(", "),
                url = self.server.base_url(),
            ),
        )
        .unwrap();
        config
    }

    /// Starts the daemon with its stderr in a log file of its own.
    pub fn start(&mut self, config: &Path) -> (Child, PathBuf) {
        self.runs += 1;
        let log = self.path(&format!("run-{}.log", self.runs));
        let child = gateway()
            .args(["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        self.pids.push(child.id());
        (child, log)
    }

    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let config = self.path("gateway.toml");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        let out = gateway().args(&all).output().unwrap();
        let (o, e) = super::texts(&out);
        (out.status.success(), format!("{o}{e}"))
    }

    pub fn server_ids(&self) -> Vec<String> {
        self.server.with_store(|s| {
            s.observations
                .iter()
                .map(|o| {
                    o["identifier"][0]["value"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches("urn:uuid:")
                        .to_string()
                })
                .collect()
        })
    }
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Observation ids the simulator logged as committed, in log order.
pub fn committed_ids(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("reading committed"))
        .filter_map(|l| l.split("observations=").nth(1))
        .flat_map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or("")
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|id| !id.is_empty())
        .collect()
}

pub fn sigterm_and_wait(mut child: Child, log: &Path) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}\n{}", read(log));
}

pub fn wait_running(child: &mut Child, log: &Path) {
    wait_until(Duration::from_secs(30), "the gateway to start", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the gateway exited with {status:?} instead of starting:\n{}",
                read(log)
            );
        }
        read(log).contains("gateway running")
    });
}
