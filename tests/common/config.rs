//! The `gateway.toml` of an end-to-end test. What every test's configuration holds (the
//! gateway, the patient, the keys, the outbox, the log) is written here once; a test
//! states only its own tables: the driver's, the uplinks, and what it wants to break.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A configuration for a test directory: its keys are `pseudonym.key` and `storage.key`
/// there (see [`super::write_keys`]), its outbox is `outbox.db` there, and it is written
/// to `gateway.toml` there.
pub struct Config {
    dir: PathBuf,
    id: String,
    patient: String,
    time_zone: Option<String>,
    drivers: String,
    outbox: String,
    uplinks: String,
    log: String,
    clock: String,
    tail: String,
}

impl Config {
    /// The configuration of gateway `id` for patient `patient` in `dir`, logging at
    /// `info`, with no driver and no uplink yet.
    pub fn new(dir: &Path, id: &str, patient: &str) -> Self {
        Config {
            dir: dir.to_path_buf(),
            id: id.to_string(),
            patient: patient.to_string(),
            time_zone: None,
            drivers: String::new(),
            outbox: String::new(),
            uplinks: String::new(),
            log: "info".to_string(),
            // The test machines' kernels need not report a synchronized clock (no time
            // daemon in a container or VM): tests trust the clock unless they test it.
            clock: "source = \"assume-synchronized\"".to_string(),
            tail: String::new(),
        }
    }

    /// Sets `gateway.time_zone`.
    pub fn time_zone(mut self, zone: &str) -> Self {
        self.time_zone = Some(zone.to_string());
        self
    }

    /// Adds TOML ahead of `[outbox]`: a driver's tables (`[sim]`, `[serial]` and its
    /// `[[serial.ports]]`, `[ble]`, `[mqtt]`).
    pub fn driver(mut self, toml: &str) -> Self {
        self.drivers.push_str(toml);
        self.drivers.push('\n');
        self
    }

    /// Adds lines to the `[outbox]` table.
    pub fn outbox(mut self, lines: &str) -> Self {
        self.outbox.push_str(lines);
        self.outbox.push('\n');
        self
    }

    /// Adds an `[[uplinks]]` table with `keys` (which may go on with more TOML, such as
    /// the uplink's `[uplinks.oauth2]` or further `[[uplinks]]` tables).
    pub fn uplink(mut self, keys: &str) -> Self {
        self.uplinks.push_str(&format!("[[uplinks]]\n{keys}\n\n"));
        self
    }

    /// Adds a file uplink writing its Bundles to `out`.
    pub fn file_uplink(self, out: &Path) -> Self {
        self.uplink(&format!("kind = \"file\"\ndir = \"{}\"", out.display()))
    }

    /// Replaces the keys of the `[clock]` table (by default `source =
    /// "assume-synchronized"`).
    pub fn clock(mut self, lines: &str) -> Self {
        self.clock = lines.to_string();
        self
    }

    /// Sets `log.level`.
    pub fn log(mut self, level: &str) -> Self {
        self.log = level.to_string();
        self
    }

    /// Appends TOML after the `[log]` table (more keys of it, or anything else).
    pub fn append(mut self, toml: &str) -> Self {
        self.tail.push_str(toml);
        self.tail.push('\n');
        self
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        let dir = self.dir.display();
        let time_zone = self
            .time_zone
            .as_ref()
            .map(|z| format!("time_zone = \"{z}\"\n"))
            .unwrap_or_default();
        format!(
            r#"[gateway]
id = "{id}"
profiles_dir = "{root}/device-profiles"
{time_zone}
[patient]
id = "{patient}"

[pseudonymization]
key_file = "{dir}/pseudonym.key"

{drivers}
[outbox]
path = "{dir}/outbox.db"
key_file = "{dir}/storage.key"
{outbox}
{uplinks}[clock]
{clock}

[log]
level = "{log}"
{tail}"#,
            id = self.id,
            root = super::root().display(),
            patient = self.patient,
            drivers = self.drivers,
            outbox = self.outbox,
            uplinks = self.uplinks,
            log = self.log,
            clock = self.clock,
            tail = self.tail,
        )
    }

    /// Writes `gateway.toml` into the directory; returns its path.
    pub fn write(&self) -> PathBuf {
        let path = self.dir.join("gateway.toml");
        std::fs::write(&path, self.text()).unwrap();
        path
    }
}
