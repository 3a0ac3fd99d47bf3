//! Shared helpers of the end-to-end tests: the real binary, the independent FHIR
//! validator, key files, `outbox status`, and waiting on a condition with a deadline.

#![allow(dead_code)]

pub mod config;
pub mod kit;
pub mod privacy;
pub mod running;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rand::Rng;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A command running the real `iomt-gateway` binary from the repository root.
pub fn gateway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iomt-gateway"));
    c.current_dir(root());
    c.env_remove("RUST_LOG");
    c
}

/// Runs the binary with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    gateway()
        .args(args)
        .output()
        .expect("the gateway binary runs")
}

/// Runs the binary with `args`, asserts that it succeeds, and returns its stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    let (stdout, stderr) = texts(&out);
    assert!(
        out.status.success(),
        "{args:?} exited with {:?}:\n{stdout}{stderr}",
        out.status
    );
    stdout
}

/// Runs the binary with `args`, asserts that it fails, and returns its stderr.
pub fn run_fails(args: &[&str]) -> String {
    fails(gateway().args(args))
}

/// Runs `command`, asserts that it fails, and returns its stderr.
pub fn fails(command: &mut Command) -> String {
    let out = command.output().expect("the gateway binary runs");
    let (stdout, stderr) = texts(&out);
    assert!(
        !out.status.success(),
        "{command:?} succeeded:\n{stdout}{stderr}"
    );
    stderr
}

/// `iomt-gateway run --config CONFIG`, not started yet.
pub fn run_config(config: &Path) -> Command {
    let mut c = gateway();
    c.args(["run", "--config", config.to_str().unwrap()]);
    c
}

/// Text of stdout and stderr.
pub fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The Python interpreter that has the pinned `fhir.resources` (R4) installed:
/// `$FHIR_VALIDATOR_PYTHON`, else the repository's `.venv` made by `tests/run-all`.
/// Missing is a test failure, never a skip.
pub fn validator_python() -> PathBuf {
    if let Some(p) = std::env::var_os("FHIR_VALIDATOR_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "no FHIR validator environment: run `tests/run-all` (it creates .venv with fhir.resources) or set FHIR_VALIDATOR_PYTHON"
    );
    venv
}

/// Runs the independent validator (`tests/fhir_validate.py`) on `args`; returns
/// (success, combined output).
pub fn validate_fhir(args: &[&Path]) -> (bool, String) {
    let out = Command::new(validator_python())
        .arg(root().join("tests/fhir_validate.py"))
        .args(args)
        .output()
        .expect("the validator runs");
    let (o, e) = texts(&out);
    (out.status.success(), format!("{o}{e}"))
}

/// Writes `contents` to `path` with the permission bits `mode`.
pub fn write_with_mode(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `contents` to `path` readable by its owner only (mode 0600), as the gateway
/// wants its keys, secrets and tokens.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    write_with_mode(path, contents, 0o600);
}

/// A fresh random 32-byte key.
pub fn random_key() -> [u8; 32] {
    rand::thread_rng().gen()
}

/// Writes fresh random keys `pseudonym.key` and `storage.key` (mode 0600) into `dir`,
/// where a [`config::Config`] expects them.
pub fn write_keys(dir: &Path) {
    for key in ["pseudonym.key", "storage.key"] {
        write_private(&dir.join(key), random_key());
    }
}

/// `outbox status --json` on the configuration `config`: the status it prints, or `Err`
/// with its output when it fails or prints no JSON.
pub fn try_outbox_status(config: &Path) -> Result<serde_json::Value, String> {
    let out = run(&[
        "outbox",
        "status",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    let (stdout, stderr) = texts(&out);
    if !out.status.success() {
        return Err(format!("outbox status failed: {stdout}{stderr}"));
    }
    serde_json::from_str(&stdout)
        .map_err(|e| format!("outbox status printed no JSON ({e}): {stdout}{stderr}"))
}

/// `outbox status --json` on the configuration `config`, which must succeed.
pub fn outbox_status(config: &Path) -> serde_json::Value {
    try_outbox_status(config).unwrap_or_else(|e| panic!("{e}"))
}

/// The entry of the uplink `name` in an `outbox status --json` status.
pub fn uplink_named<'a>(
    status: &'a serde_json::Value,
    name: &str,
) -> Option<&'a serde_json::Value> {
    status["uplinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
}

/// Polls `condition` until it holds or `deadline` passes.
pub fn wait_until(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    if std::env::var_os("KEEP_TEST_LOGS").is_some() {
        eprintln!("waiting for {what}");
    }
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JSON files in a directory, sorted.
pub fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Every Observation in the Bundles of a directory.
pub fn observations_in(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for f in json_files(dir) {
        let bundle: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        for e in bundle["entry"].as_array().unwrap() {
            if e["resource"]["resourceType"] == "Observation" {
                out.push(e["resource"].clone());
            }
        }
    }
    out
}

/// The PHD IG's extension by which an Observation references its Coincident Time Stamp.
pub const COINCIDENT_REFERENCE: &str =
    "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference";

/// The Coincident Time Stamp Observation `obs` references, among the Observations of
/// `dir`: (gateway time, device time).
pub fn coincident_of(dir: &Path, obs: &serde_json::Value) -> (String, String) {
    let reference = obs["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == COINCIDENT_REFERENCE)
        .unwrap_or_else(|| panic!("no coincident time stamp reference: {obs}"));
    let wanted = &reference["valueReference"]["identifier"]["value"];
    let cts = observations_in(dir)
        .into_iter()
        .find(|o| o["identifier"][0]["value"] == *wanted)
        .unwrap_or_else(|| panic!("the coincident time stamp {wanted} was not delivered"));
    assert_eq!(cts["code"]["coding"][0]["code"], "67975", "{cts}");
    (
        cts["effectiveDateTime"].as_str().unwrap().to_string(),
        cts["valueDateTime"].as_str().unwrap().to_string(),
    )
}

/// Kills process `pid` if it is still a running iomt-gateway (used by test guards so a
/// failing test leaves no daemon behind).
pub fn kill_if_gateway(pid: u32) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains("iomt-gateway") {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Kills the wrapped daemon when dropped, if it is still running.
pub struct DaemonGuard(pub u32);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        kill_if_gateway(self.0);
    }
}
