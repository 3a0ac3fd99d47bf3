//! `iomt-gateway outbox status|dead-letters`: inspect the outbox without writing to it;
//! `outbox accept-pseudonym-key`: record a new pseudonymization key with it. One-shot
//! commands: no async runtime, no thread.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use iomt_gateway::config::{Config, DEFAULT_PATH};
use iomt_gateway::outbox::{self, seal::Keyring};

/// The subcommands of `outbox`.
#[derive(Subcommand)]
pub(crate) enum OutboxCommand {
    /// Queued, oldest, delivered, dead-lettered and evicted rows per uplink, bytes on
    /// disk, and whether the system clock is synchronized. Reads the database without a key and without writing; safe while the daemon
    /// runs. Prints no patient data.
    Status {
        /// The configuration file naming the outbox.
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the rows an uplink rejected for good, with the server's reason, and the
    /// messages a driver refused (an MQTT payload that did not decode), with their topic
    /// and reason. Needs the storage key (they are sealed); reads without writing.
    DeadLetters {
        /// The configuration file naming the outbox and its key.
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Also print the refused messages' payloads (they may hold patient data).
        #[arg(long)]
        payloads: bool,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Accept a new pseudonymization key: the daemon refuses to start when the key differs
    /// from the one the outbox recorded, since every pseudonym changes with it. Run this
    /// (with the daemon stopped) only when the key was changed on purpose and the backend
    /// has it; the change is recorded and logged at the next start.
    AcceptPseudonymKey {
        /// The configuration file naming the outbox and the pseudonymization key.
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
}

/// Runs `outbox status`, `outbox dead-letters` or `outbox accept-pseudonym-key`.
pub(crate) fn execute(command: OutboxCommand) -> Result<ExitCode> {
    match command {
        OutboxCommand::Status { config, json } => outbox_status(&config, json),
        OutboxCommand::DeadLetters {
            config,
            payloads,
            json,
        } => dead_letters(&config, payloads, json),
        OutboxCommand::AcceptPseudonymKey { config } => accept_pseudonym_key(&config),
    }
}

fn accept_pseudonym_key(config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let key = iomt_gateway::secret_file::read_key_file(&config.pseudonym_key_file)?;
    let fingerprint = iomt_gateway::pseudonym::Pseudonymizer::new(&key).fingerprint();
    let previous = outbox::accept_pseudonym_key(&config.outbox.path, &fingerprint)?;
    match previous {
        Some(p) if p == fingerprint => println!(
            "the pseudonymization key {} (fingerprint {fingerprint}) is already the outbox's; nothing changed",
            config.pseudonym_key_file.display()
        ),
        previous => eprintln!(
            "accepted the pseudonymization key {} (fingerprint {fingerprint}, was {}) for the outbox {}: pseudonyms sent from now on differ from those sent before",
            config.pseudonym_key_file.display(),
            previous.as_deref().unwrap_or("none recorded"),
            config.outbox.path.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn dead_letters(config_path: &Path, payloads: bool, json: bool) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let keyring = Keyring::load(&config.storage_key_file)?;
    let letters = outbox::read_dead_letters(&config.outbox.path, &keyring)?;
    let mut refused = outbox::read_ingest_dead_letters(&config.outbox.path, &keyring)?;
    if !payloads {
        for r in &mut refused {
            r.payload.clear();
        }
    }
    if json {
        let out = serde_json::json!({ "uplinks": letters, "ingest": refused });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() && refused.is_empty() {
        println!("no dead letters");
    }
    for r in refused {
        let at = chrono::DateTime::from_timestamp_millis(r.at_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        println!(
            "{at}  {}  id={}  topic={}  bytes={}  reason: {}",
            r.transport, r.id, r.source, r.size, r.reason
        );
        if payloads {
            println!("    payload: {}", r.payload);
        }
    }
    for d in letters {
        let at = chrono::DateTime::from_timestamp_millis(d.at_ms)
            .map(|t| t.to_rfc3339())
            .unwrap_or_default();
        println!(
            "{at}  uplink={}  row={}  reason: {}",
            d.uplink, d.seq, d.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn outbox_status(config_path: &Path, json: bool) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let status = outbox::read_status(&config.outbox.path, &config.uplink_names())?;
    // The same source the daemon reads (the kernel is the same machine's).
    let clock = config.clock.source.read();
    if json {
        let mut out = serde_json::to_value(&status)?;
        if let Some(map) = out.as_object_mut() {
            map.insert(
                "clock".into(),
                serde_json::json!({
                    "synchronized": clock.synchronized,
                    "source": config.clock.source.name(),
                    "unsynchronized_wait_secs": config.clock.wait.as_secs(),
                }),
            );
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = chrono::Utc::now().timestamp_millis();
    println!("outbox      {}", status.path.display());
    println!("rows        {}", status.rows);
    println!("payload     {} bytes", status.payload_bytes);
    println!("on disk     {} bytes", status.disk_bytes);
    println!("evicted     {}", status.evicted);
    if clock.synchronized {
        println!("clock       synchronized ({})", config.clock.source.name());
    } else {
        println!(
            "clock       NOT synchronized ({}): readings are held back until it is, at most {} s, then sent marked uncertain",
            config.clock.source.name(),
            config.clock.wait.as_secs()
        );
    }
    println!();
    println!(
        "{:<16} {:>10} {:>14} {:>12} {:>14}",
        "uplink", "queued", "oldest", "delivered", "dead-lettered"
    );
    for u in &status.uplinks {
        let oldest = u
            .oldest_ms
            .map(|ms| format!("{}s ago", (now - ms).max(0) / 1000))
            .unwrap_or_else(|| "-".into());
        let name = if u.configured {
            u.name.clone()
        } else {
            format!("{} (removed)", u.name)
        };
        println!(
            "{name:<16} {:>10} {oldest:>14} {:>12} {:>14}",
            u.queued, u.delivered, u.dead_lettered
        );
    }
    for (id, rows) in &status.keys_in_use {
        println!("key {id}: {rows} sealed (rows, Device resources, dead letters)");
    }
    Ok(ExitCode::SUCCESS)
}
