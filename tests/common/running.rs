//! A daemon the test watches through its log as it comes: the serial and BLE tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{run_config, wait_until};

/// The running gateway, with its stderr collected as it comes; killed on drop.
pub struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    deadline: Duration,
}

impl Running {
    /// Starts `iomt-gateway run` on `config` with the environment variables `env` set;
    /// waiting for its log gives up after `deadline`.
    pub fn start(config: &Path, env: &[(&str, &str)], deadline: Duration) -> Self {
        let mut child = run_config(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Self {
            child,
            log,
            reader: Some(reader),
            deadline,
        }
    }

    /// The daemon's process id (benchmarks read its `/proc` entries).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log holds `needle` at least `times` times.
    pub fn wait_log(&self, needle: &str, times: usize) {
        wait_until(
            self.deadline,
            &format!("{times}× `{needle}` in the log"),
            || self.log().matches(needle).count() >= times,
        );
    }

    /// SIGTERM, then the whole log.
    pub fn stop(mut self) -> String {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let log = self.log();
        assert!(status.success(), "exit {status:?}\n{log}");
        log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
