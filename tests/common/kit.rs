//! The end-to-end test bed shared by the store-and-forward, uplink and MQTT tests.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use iomt_testkit::FhirServer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::config::Config;
use super::{gateway, run_config, wait_until};

/// The patient id every kit's configuration uses.
pub const PATIENT: &str = "MRN-STORE-4711";

/// A test bed: a temp dir with keys, a FHIR server on its own runtime, and the daemons
/// started (killed on drop, so a failing test leaves none behind). Run `n` logs to
/// `run-n.log` in the temp dir.
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
        super::write_keys(dir.path());
        Kit {
            dir,
            rt,
            server,
            runs: 0,
            pids: Vec::new(),
        }
    }

    /// The path of `name` in the temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The configuration of gateway `id` for patient `patient` in the temp dir, ready for
    /// the test's own tables.
    pub fn config_for(&self, id: &str, patient: &str) -> Config {
        Config::new(self.dir.path(), id, patient)
    }

    /// The `[[uplinks]]` keys of a FHIR uplink to the kit's server, retrying after at most
    /// `max_backoff_secs`.
    pub fn fhir_uplink(&self, max_backoff_secs: u64) -> String {
        format!(
            "kind = \"fhir\"\nbase_url = \"{}\"\nbatch_size = 50\ntimeout_secs = 5\nmax_backoff_secs = {max_backoff_secs}",
            self.server.base_url()
        )
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
        let profiles: Vec<String> = profiles.iter().map(|p| format!("\"{p}\"")).collect();
        self.config_for("kit-store-1", PATIENT)
            .driver(&format!(
                "[sim]\nenabled = true\nprofiles = [{}]\ninterval_secs = {interval}\nmax_readings = {max_readings}",
                profiles.join(", ")
            ))
            .outbox("commit_window_ms = 5\nquiet_commit_window_ms = 5")
            .uplink(&format!("{}\n{extra}", self.fhir_uplink(2)))
            .log("info,iomt_drivers=debug,iomt_gateway::uplink=debug")
            .write()
    }

    /// Starts the daemon with its stderr in a log file of its own.
    pub fn start(&mut self, config: &Path) -> (Child, PathBuf) {
        self.start_with_env(config, &[])
    }

    /// Like `start`, with `env` added to the daemon's environment.
    pub fn start_with_env(&mut self, config: &Path, env: &[(&str, &str)]) -> (Child, PathBuf) {
        self.runs += 1;
        let log = self.path(&format!("run-{}.log", self.runs));
        let child = run_config(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        self.pids.push(child.id());
        (child, log)
    }

    /// The log of run `run` (counted from 1).
    pub fn run_log(&self, run: usize) -> String {
        read(&self.path(&format!("run-{run}.log")))
    }

    /// Runs the CLI with `args` on the kit's configuration; returns (success, stdout and
    /// stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let config = self.path("gateway.toml");
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config.to_str().unwrap()]);
        let out = gateway().args(&all).output().unwrap();
        let (o, e) = super::texts(&out);
        (out.status.success(), format!("{o}{e}"))
    }

    /// `outbox status --json` on the kit's configuration, which must succeed.
    pub fn outbox_status(&self) -> serde_json::Value {
        super::outbox_status(&self.path("gateway.toml"))
    }

    /// `outbox status --json` on the kit's configuration, `Err` when it fails.
    pub fn try_outbox_status(&self) -> Result<serde_json::Value, String> {
        super::try_outbox_status(&self.path("gateway.toml"))
    }

    /// The identifiers (without `urn:uuid:`) of the Observations at the server, in the
    /// order they were created.
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

/// The text of `path`; empty when it cannot be read (yet).
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

/// Sends SIGTERM and asserts that the daemon exits successfully.
pub fn sigterm_and_wait(mut child: Child, log: &Path) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}\n{}", read(log));
}

/// Waits until the daemon has logged that it runs; fails at once if it exits.
pub fn wait_running(child: &mut Child, log: &Path) {
    wait_logged(child, log, "the gateway to start", "gateway running");
}

/// Waits (for `what`) until the daemon's log holds `needle`; fails at once, showing the
/// log, if the daemon exits first.
pub fn wait_logged(child: &mut Child, log: &Path, what: &str, needle: &str) {
    wait_until(Duration::from_secs(30), what, || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the gateway exited with {status:?} while waiting for {what}:\n{}",
                read(log)
            );
        }
        read(log).contains(needle)
    });
}

/// Waits until the daemon's MQTT driver has connected to its broker and subscribed (its
/// line names the subscriptions; the MQTT uplink logs its own connection too).
pub fn wait_mqtt_connected(child: &mut Child, log: &Path) {
    wait_logged(child, log, "the gateway to connect", "subscriptions=");
}

/// `n` valid messages from device `dev` for the generic JSON vitals profile (topic
/// `iomt/<dev>/vitals`), each with a distinct time starting at second `from` (so a
/// distinct Observation identifier).
pub fn vitals(dev: &str, from: u32, n: u32) -> Vec<(String, Vec<u8>)> {
    (from..from + n)
        .map(|i| {
            let t = format!(
                "2026-01-01T{:02}:{:02}:{:02}Z",
                i / 3600 % 24,
                i / 60 % 60,
                i % 60
            );
            (
                format!("iomt/{dev}/vitals"),
                format!(r#"{{"time":"{t}","heart_rate":{}}}"#, 60 + i % 40).into_bytes(),
            )
        })
        .collect()
}
