//! End-to-end tests of what the gateway promises on the kit itself (docs/security.md):
//! configuration errors never show a secret or identifying value, key files that are not
//! plain private files are refused without blocking, the files it creates are private
//! whatever the umask, and a swapped pseudonymization key stops it until accepted.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::config::Config;
use common::{fails, run_config, texts, wait_until};

const PATIENT: &str = "MRN-SECRET-80471";

/// The simulator and a file uplink to `dir/out`.
fn write_config(dir: &Path) -> PathBuf {
    Config::new(dir, "kit-sec-1", PATIENT)
        .driver("[sim]\nenabled = true\ninterval_secs = 0.05")
        .outbox("commit_window_ms = 5\nquiet_commit_window_ms = 5")
        .file_uplink(&dir.join("out"))
        .write()
}

/// `command` with the umask 022 of a login shell, as outside systemd.
fn with_umask_022(mut command: Command) -> Command {
    // SAFETY: umask is async-signal-safe and touches only the child's process state.
    unsafe {
        command.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            Ok(())
        });
    }
    command
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Runs the daemon until its file uplink wrote a Bundle, then stops it with SIGTERM.
/// Returns its log.
fn run_until_a_bundle(config: &Path, out: &Path) -> String {
    let before = common::json_files(out).len();
    let child = with_umask_022(run_config(config))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = common::DaemonGuard(child.id());
    wait_until(Duration::from_secs(30), "a bundle", || {
        common::json_files(out).len() > before
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    drop(guard);
    let (_, stderr) = texts(&output);
    assert!(output.status.success(), "{stderr}");
    stderr
}

/// Runs `command` (the daemon), which must exit with an error within 30 s; returns its
/// stderr. A daemon that starts instead is killed and the test fails.
fn refused(mut command: Command, what: &str) -> String {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = common::DaemonGuard(child.id());
    wait_until(
        Duration::from_secs(30),
        &format!("the gateway to refuse {what}"),
        || child.try_wait().unwrap().is_some(),
    );
    let output = child.wait_with_output().unwrap();
    let (_, stderr) = texts(&output);
    assert!(!output.status.success(), "{what} accepted:\n{stderr}");
    stderr
}

/// A typo in `[patient]` (an unterminated string, a value of the wrong type, from the
/// file or the environment) is reported with the key and the line, never the value.
#[test]
fn configuration_errors_name_key_and_line_but_never_the_patient_id() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_keys(tmp.path());
    let config = write_config(tmp.path());
    let good = std::fs::read_to_string(&config).unwrap();
    let line = good
        .lines()
        .position(|l| l.contains(PATIENT))
        .expect("the patient line")
        + 1;
    let cases = [
        (
            good.replace(&format!("\"{PATIENT}\""), &format!("\"{PATIENT}")),
            format!("line {line}"),
        ),
        (
            good.replace(&format!("\"{PATIENT}\""), &format!("[\"{PATIENT}\"]")),
            "patient.id".to_string(),
        ),
        (
            format!(
                "patient = \"{PATIENT}\"\n{}",
                good.replace(&format!("[patient]\nid = \"{PATIENT}\"\n"), "")
            ),
            "patient".to_string(),
        ),
    ];
    for (text, named) in cases {
        std::fs::write(&config, &text).unwrap();
        let stderr = fails(&mut run_config(&config));
        assert!(
            !stderr.contains("MRN-SECRET"),
            "the value was shown:\n{stderr}"
        );
        assert!(stderr.contains(&named), "`{named}` not named:\n{stderr}");
        assert!(stderr.contains("line "), "no line:\n{stderr}");
    }
    // A mistyped value from the environment: the key, never the value.
    std::fs::write(&config, &good).unwrap();
    let stderr = fails(run_config(&config).env("IOMT_GATEWAY__PATIENT", PATIENT));
    assert!(
        !stderr.contains("MRN-SECRET"),
        "the value was shown:\n{stderr}"
    );
    assert!(stderr.contains("patient"), "{stderr}");
}

/// A pseudonymization key that is a FIFO, or a link to a device that never ends, is
/// refused at once (before, start-up blocked for ever, or read until memory ran out); one
/// owned by another user is refused.
#[test]
fn key_files_that_are_not_private_regular_files_are_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_keys(tmp.path());
    let config = write_config(tmp.path());
    let key = tmp.path().join("pseudonym.key");
    let check = |what: &str, expected: &str| {
        let started = Instant::now();
        let stderr = refused(run_config(&config), what);
        assert!(stderr.contains(expected), "{what}:\n{stderr}");
        assert!(stderr.contains(&key.display().to_string()), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(30));
    };

    std::fs::remove_file(&key).unwrap();
    nix::unistd::mkfifo(&key, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    check("a FIFO", "not a regular file");

    std::fs::remove_file(&key).unwrap();
    let zero = tmp.path().join("zero");
    nix::sys::stat::mknod(
        &zero,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(1, 5),
    )
    .unwrap();
    std::os::unix::fs::symlink(&zero, &key).unwrap();
    check("a link to /dev/zero", "not a regular file");

    std::fs::remove_file(&key).unwrap();
    common::write_private(&key, common::random_key());
    nix::unistd::chown(&key, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    check("a key owned by another user", "owned by");
}

/// Under umask 022 the outbox database, its -wal and -shm (also after `outbox status`)
/// and the Bundles of the file uplink are private to the service user (and its group
/// for Bundles), not readable by others.
#[test]
fn files_the_gateway_creates_are_not_world_readable_under_umask_022() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_keys(tmp.path());
    let config = write_config(tmp.path());
    let out = tmp.path().join("out");
    run_until_a_bundle(&config, &out);
    let status = with_umask_022(common::gateway())
        .args(["outbox", "status", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(status.status.success(), "{:?}", texts(&status));
    let db = tmp.path().join("outbox.db");
    let mut files = vec![db.clone()];
    for suffix in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let p = PathBuf::from(p);
        if p.exists() {
            files.push(p);
        }
    }
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    let bundles = common::json_files(&out);
    assert!(!bundles.is_empty());
    for b in &bundles {
        assert_eq!(mode(b) & 0o007, 0, "{} is {:o}", b.display(), mode(b));
    }
}

/// The patient pseudonym of the Observations in the newest Bundle of `out`.
fn newest_patient_pseudonym(out: &Path) -> String {
    let newest = common::json_files(out).pop().unwrap();
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&newest).unwrap()).unwrap();
    let obs = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["resource"]["resourceType"] == "Observation")
        .unwrap();
    obs["resource"]["subject"]["identifier"]["value"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The pseudonym `iomt-gateway pseudonym` prints for the patient under the configured key.
fn cli_pseudonym(config: &Path) -> String {
    let out = common::run_ok(&["pseudonym", PATIENT, "--config", config.to_str().unwrap()]);
    out.trim().rsplit('|').next().unwrap().to_string()
}

/// Replacing the pseudonymization key stops the gateway with a message saying what to do;
/// `outbox accept-pseudonym-key` accepts it (logged), and Observations then carry the new
/// key's pseudonyms.
#[test]
fn a_swapped_pseudonymization_key_is_refused_until_accepted_explicitly() {
    let tmp = tempfile::tempdir().unwrap();
    common::write_keys(tmp.path());
    let config = write_config(tmp.path());
    let out = tmp.path().join("out");
    run_until_a_bundle(&config, &out);
    let old = cli_pseudonym(&config);
    assert_eq!(newest_patient_pseudonym(&out), old);

    let key = tmp.path().join("pseudonym.key");
    std::fs::remove_file(&key).unwrap();
    common::write_private(&key, common::random_key());
    let stderr = refused(run_config(&config), "a swapped key");
    assert!(
        stderr.contains("pseudonymization key") && stderr.contains("accept-pseudonym-key"),
        "{stderr}"
    );
    let bundles = common::json_files(&out).len();

    let out_cli = common::gateway()
        .args([
            "outbox",
            "accept-pseudonym-key",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let (o, e) = texts(&out_cli);
    assert!(out_cli.status.success(), "{o}{e}");
    assert!(format!("{o}{e}").contains("accepted"), "{o}{e}");

    let log = run_until_a_bundle(&config, &out);
    assert!(
        log.contains("new pseudonymization key accepted by `outbox accept-pseudonym-key`"),
        "{log}"
    );
    assert!(common::json_files(&out).len() > bundles);
    let new = cli_pseudonym(&config);
    assert_ne!(new, old);
    assert_eq!(newest_patient_pseudonym(&out), new, "{log}");
}
