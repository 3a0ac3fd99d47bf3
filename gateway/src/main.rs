//! The `iomt-gateway` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use iomt_gateway::config::{Config, LogFormat, DEFAULT_PATH};
use iomt_gateway::daemon::RunStats;
use iomt_gateway::normalize::Zone;
use iomt_gateway::outbox::{self, seal, seal::Keyring};
use iomt_gateway::pipeline::Observer;
use iomt_gateway::profile::{self, Profile, ProfileErrors};
use iomt_gateway::pseudonym::{self, Pseudonymizer};
use iomt_gateway::{daemon, demo, probe};
use tokio_util::sync::CancellationToken;

/// Edge gateway for the Internet of Medical Things.
///
/// Reads vitals from medical devices (Bluetooth LE, serial, MQTT, or the built-in
/// simulator), turns each reading into an HL7 FHIR R4 Observation coded with LOINC, MDC
/// and UCUM, and forwards pseudonymized Bundles.
#[derive(Parser)]
#[command(name = "iomt-gateway", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon with a configuration file (stops cleanly on SIGTERM or Ctrl-C).
    Run {
        /// The configuration file (TOML). Environment variables IOMT_GATEWAY__SECTION__KEY
        /// override its keys.
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Run the whole pipeline on simulated devices, with no hardware and no cloud.
    ///
    /// A simulated home-care kit (cuff, oximeter, thermometer, scale, glucose meter, vitals
    /// patch) produces readings; the real normalizer turns them into FHIR Observations; a
    /// file uplink writes each Bundle as a JSON file. Each Observation is shown as it flows,
    /// and a summary at the end.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long = "for", value_name = "SECONDS")]
        duration: Option<f64>,
        /// Directory for the Bundles (default: a fresh directory whose path is printed).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Seconds between two readings of one simulated device.
        #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
        interval: f64,
        /// Random seed of the simulator (same seed, same values).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Do not show each Observation, only the summary.
        #[arg(long, short)]
        quiet: bool,
        /// Instead of the simulated kit, simulate the shipped serial devices (Masimo,
        /// Nonin, Contec, Tanita) on pseudo-terminals and read them with the real serial
        /// driver.
        #[arg(long)]
        serial: bool,
    },
    /// Check and try device profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Create the secret keys (never overwrites one), or rotate the storage key.
    ///
    /// Creates the storage key ([outbox] key_file: seals the outbox, never leaves the
    /// device) and the pseudonymization key ([pseudonymization] key_file: shared with the
    /// backend's re-identification service), each 32 random bytes with mode 0600.
    Keygen {
        /// The configuration file naming the key files.
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// Rotate the storage key: new rows use a new key; the old one moves to
        /// `<key_file>.retired` and keeps old rows readable until they are delivered.
        #[arg(long, conflicts_with = "smart")]
        rotate: bool,
        /// Create the SMART Backend Services key named in [uplinks.smart] private_key_file
        /// (mode 0600; an existing key is kept) and print its public JWK Set, which the
        /// backend registers for this client.
        #[arg(long)]
        smart: bool,
        /// The SMART key's algorithm (default: the one in [uplinks.smart], else ES384).
        #[arg(long, value_enum, requires = "smart")]
        alg: Option<iomt_gateway::smart::Alg>,
        #[command(flatten)]
        keys: KeyPaths,
    },
    /// List nearby Bluetooth LE devices, their advertised services and the profiles that
    /// match each, to fill in [[ble.devices]] (talks to BlueZ on the system bus).
    Scan {
        /// Scan for this many seconds.
        #[arg(long = "for", value_name = "SECONDS", default_value_t = 10.0)]
        duration: f64,
        /// Where to look the BLE profiles up (default: ./device-profiles, else the
        /// installed ones).
        #[arg(long, value_name = "DIR")]
        profiles: Option<PathBuf>,
        /// The Bluetooth adapter (default: the first one BlueZ reports).
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
    },
    /// Print the pseudonym a backend uses to enrol a patient (HMAC-SHA256 of the id
    /// under the pseudonymization key).
    Pseudonym {
        /// The patient identifier.
        id: String,
        /// The configuration file naming the pseudonymization key.
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Inspect the outbox.
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

/// Key files named on the command line. With both given, `keygen` needs no configuration
/// file (the Debian package creates the keys on first install this way, before the
/// configuration has been edited).
#[derive(Args)]
struct KeyPaths {
    /// The storage key file (instead of the configuration's [outbox] key_file).
    #[arg(long, value_name = "FILE", conflicts_with = "smart")]
    storage_key: Option<PathBuf>,
    /// The pseudonymization key file (instead of the configuration's
    /// [pseudonymization] key_file).
    #[arg(long, value_name = "FILE", conflicts_with = "smart")]
    pseudonym_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Queued, oldest, delivered, dead-lettered and evicted rows per uplink, and bytes on
    /// disk. Reads the database without a key and without writing; safe while the daemon
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
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Validate profiles; print `file:line: problem` for each error and exit 1 if any.
    Check {
        /// Profile files or directories (default: ./device-profiles if present, else the
        /// installed profiles directory).
        paths: Vec<PathBuf>,
    },
    /// Decode one captured payload with a profile and print the resulting FHIR
    /// Observations as a JSON array.
    Test(TestArgs),
}

#[derive(Args)]
struct TestArgs {
    /// The profile: a file path, or the id of a profile in --profiles.
    profile: String,
    /// The payload: a text line (line-oriented serial), hex bytes holding one or more
    /// whole frames (binary serial, e.g. "C5 3C 28 48 62"), a JSON object (MQTT;
    /// simulator profiles take {"field": value}), or hex bytes for BLE (spaces allowed).
    #[arg(long)]
    payload: String,
    /// The GATT characteristic the payload came from (BLE profiles), e.g. 2A35.
    #[arg(long, value_name = "UUID")]
    characteristic: Option<String>,
    /// The topic the payload was published on (MQTT profiles): checked against the
    /// profile's topic filter.
    #[arg(long)]
    topic: Option<String>,
    /// Where to look the profile id up.
    #[arg(long, value_name = "DIR")]
    profiles: Option<PathBuf>,
    /// IANA zone of the device's clock for times without zone (default: this machine's).
    #[arg(long, value_name = "ZONE")]
    time_zone: Option<String>,
    /// Take the payload as received at this time (RFC 3339, e.g. 2024-03-15T10:42:07Z)
    /// instead of now: the receive time (`issued`, and the effective time of readings
    /// without a device clock) is then fixed, so the output is reproducible.
    #[arg(long, value_name = "TIME")]
    received_at: Option<String>,
}

const INSTALLED_PROFILES: &str = "/usr/share/iomt-gateway/device-profiles";

fn default_profiles_dir() -> PathBuf {
    let local = PathBuf::from("device-profiles");
    if local.is_dir() {
        local
    } else {
        PathBuf::from(INSTALLED_PROFILES)
    }
}

/// Whether stderr is the systemd journal: systemd sets `JOURNAL_STREAM` to the device and
/// inode of the stream it connects to stderr (systemd.exec(5)); a child whose stderr was
/// redirected inherits the variable but not the stream, so both are compared.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    match std::fs::File::from(fd).metadata() {
        Ok(m) => dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()),
        Err(_) => false,
    }
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Under systemd, log to the journal natively: each key/value field becomes a journal
    // field (`journalctl -u iomt-gateway UPLINK=fhir`), levels become priorities.
    if stderr_is_journal() {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        match tracing_journald::layer() {
            Ok(journal) => {
                let journal = journal
                    .with_field_prefix(None)
                    .with_syslog_identifier("iomt-gateway".into());
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(journal)
                    .try_init();
                return;
            }
            Err(e) => eprintln!("cannot reach the journal ({e}); logging to stderr"),
        }
    }
    // Colours only for a person at a terminal; journald and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Profile(ProfileCommand::Check { paths }) => profile_check(paths),
        Command::Profile(ProfileCommand::Test(args)) => profile_test(args),
        Command::Run { config } => runtime().and_then(|rt| rt.block_on(run(&config))),
        Command::Keygen {
            config,
            rotate,
            smart,
            alg,
            keys,
        } => {
            if smart {
                keygen_smart(&config, alg)
            } else {
                keygen(&config, rotate, keys)
            }
        }
        Command::Pseudonym { id, config } => pseudonym_of(&id, &config),
        Command::Scan {
            duration,
            profiles,
            adapter,
        } => scan(duration, profiles, adapter.as_deref()),
        Command::Outbox(OutboxCommand::Status { config, json }) => outbox_status(&config, json),
        Command::Outbox(OutboxCommand::DeadLetters {
            config,
            payloads,
            json,
        }) => dead_letters(&config, payloads, json),
        Command::Demo {
            duration,
            out,
            interval,
            seed,
            quiet,
            serial,
        } => runtime()
            .and_then(|rt| rt.block_on(run_demo(duration, out, interval, seed, quiet, serial))),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn profile_check(paths: Vec<PathBuf>) -> Result<ExitCode> {
    let paths = if paths.is_empty() {
        vec![default_profiles_dir()]
    } else {
        paths
    };
    let mut checked = 0usize;
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for path in &paths {
        match profile::files_in(path) {
            Ok(files) => {
                for f in files {
                    checked += 1;
                    match profile::load_file(&f) {
                        Ok(p) => ok.push(p),
                        Err(ProfileErrors(mut e)) => errors.append(&mut e),
                    }
                }
            }
            Err(ProfileErrors(mut e)) => errors.append(&mut e),
        }
    }
    errors.extend(profile::duplicate_ids(&ok));
    for e in &errors {
        eprintln!("{e}");
    }
    let failed_files: std::collections::BTreeSet<_> =
        errors.iter().map(|e| e.file.clone()).collect();
    if checked == 0 && errors.is_empty() {
        eprintln!(
            "no profile files (*.toml) found in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    for p in &ok {
        if !failed_files.contains(&p.source) {
            println!(
                "ok  {}  {} ({}, {} fields)",
                p.source.display(),
                p.id,
                p.transport.transport(),
                p.fields.len()
            );
        }
    }
    if errors.is_empty() {
        println!("{checked} profile(s) checked, all valid");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{} problem(s) in {} of {checked} profile file(s)",
            errors.len(),
            failed_files.len()
        );
        Ok(ExitCode::FAILURE)
    }
}

fn find_profile(spec: &str, dir: Option<PathBuf>) -> Result<Profile> {
    let path = Path::new(spec);
    if path.is_file() {
        return profile::load_file(path).map_err(|e| anyhow::anyhow!("{e}"));
    }
    let explicit = dir.is_some();
    let dir = dir.unwrap_or_else(default_profiles_dir);
    let files = match profile::files_in(&dir) {
        Ok(files) => files,
        // Without --profiles, a missing default directory just leaves the built-in profiles.
        Err(_) if !explicit => Vec::new(),
        Err(e) => bail!("{e}"),
    };
    for f in files {
        if let Ok(p) = profile::load_file(&f) {
            if p.id == spec {
                return Ok(p);
            }
        }
    }
    if let Ok(embedded) = demo::embedded_profiles() {
        if let Some(p) = embedded.into_iter().find(|p| p.id == spec) {
            return Ok(p);
        }
    }
    bail!(
        "no profile file `{spec}`, and no valid profile with that id in {}",
        dir.display()
    )
}

fn profile_test(args: TestArgs) -> Result<ExitCode> {
    let profile = find_profile(&args.profile, args.profiles)?;
    let zone = match &args.time_zone {
        None => Zone::GatewayLocal,
        Some(z) => Zone::Named(
            z.parse()
                .map_err(|_| anyhow::anyhow!("`{z}` is not an IANA time zone name"))?,
        ),
    };
    let received_at = match &args.received_at {
        None => chrono::Utc::now(),
        Some(t) => chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| anyhow::anyhow!("--received-at `{t}` is not an RFC 3339 time: {e}"))?
            .with_timezone(&chrono::Utc),
    };
    let observations = probe::test_payload(
        &profile,
        &args.payload,
        args.characteristic.as_deref(),
        args.topic.as_deref(),
        received_at,
        zone,
    )?;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &observations)?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
                    _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Sends a notification to systemd if it asked for them (`NOTIFY_SOCKET`); a failure is
/// logged, never fatal.
fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`), unless `WATCHDOG_PID` names
/// another process (the rule of sd_watchdog_enabled(3)).
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// systemd integration (`Type=notify`, `WatchdogSec=`): READY=1 once the outbox is open
/// and the drivers are started; WATCHDOG=1 at half the watchdog period, only while the
/// daemon's health check passes, so a stuck gateway is restarted.
fn systemd_hooks() -> daemon::Hooks {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return daemon::Hooks::default();
    }
    let alive = watchdog_period().map(|period| {
        tracing::info!(
            period_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
        let keep_alive: Box<dyn FnMut() + Send> =
            Box::new(|| notify_systemd(&[sd_notify::NotifyState::Watchdog]));
        ((period / 2).max(Duration::from_millis(1)), keep_alive)
    });
    daemon::Hooks {
        ready: Some(Box::new(|| {
            notify_systemd(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status("running"),
            ])
        })),
        alive,
    }
}

async fn run(config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    init_logging(&config.log_level, config.log_format);
    let profiles = profile::load_all(std::slice::from_ref(&config.profiles_dir)).map_err(|e| {
        anyhow::anyhow!(
            "device profiles in {} are invalid:\n{e}",
            config.profiles_dir.display()
        )
    })?;
    let key = pseudonym::read_key_file(&config.pseudonym_key_file)?;
    let keyring = Arc::new(Keyring::load(&config.storage_key_file)?);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        stop.cancel();
    });
    tracing::info!(config = %config_path.display(), profiles = profiles.len(), "starting");
    let stats = daemon::run_with_hooks(
        config,
        profiles,
        Pseudonymizer::new(&key),
        keyring,
        None,
        cancel,
        systemd_hooks(),
    )
    .await?;
    tracing::info!(
        readings = stats.pipeline.readings,
        observations = stats.pipeline.observations,
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_demo(
    duration: Option<f64>,
    out: Option<PathBuf>,
    interval: f64,
    seed: u64,
    quiet: bool,
    serial: bool,
) -> Result<ExitCode> {
    init_logging("warn", LogFormat::Text);
    let out = match out {
        Some(dir) => dir,
        None => {
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
            std::env::temp_dir().join(format!("iomt-gateway-demo-{stamp}-{}", std::process::id()))
        }
    };
    let mut config = demo::config(&out, interval, seed)?;
    let cancel = CancellationToken::new();
    let profiles = if serial {
        let devices = demo::serial_devices(seed).context("cannot open pseudo-terminals")?;
        demo::use_serial_devices(&mut config, &devices);
        println!(
            "iomt-gateway demo --serial: {} simulated serial devices on pseudo-terminals, one message each every {interval} s",
            devices.len()
        );
        for d in &devices {
            println!("  {}  {}", d.pty.slave_path().display(), d.profile.name);
        }
        let profiles = devices.iter().map(|d| d.profile.clone()).collect();
        tokio::spawn(demo::run_serial_devices(
            devices,
            Duration::from_secs_f64(interval),
            cancel.clone(),
        ));
        profiles
    } else {
        let profiles = demo::embedded_profiles()
            .map_err(|e| anyhow::anyhow!("embedded profiles are invalid:\n{e}"))?;
        println!(
            "iomt-gateway demo: simulated kit of {} devices, one reading each every {interval} s",
            profiles.len()
        );
        profiles
    };
    println!("Bundles go to {}", out.display());
    match duration {
        Some(s) => println!("Running for {s} s (Ctrl-C stops earlier).\n"),
        None => println!("Running until Ctrl-C.\n"),
    }
    let observer: Option<Observer> = (!quiet).then(|| {
        Box::new(
            |p: &Profile, d: &iomt_drivers::DeviceIdentity, o: &iomt_gateway::fhir::Observation| {
                println!("{}", demo::console_line(p, d, o));
            },
        ) as Observer
    });
    let stop = cancel.clone();
    let limit = match duration {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => bail!("--for must be a positive number of seconds"),
        None => None,
    };
    tokio::spawn(async move {
        match limit {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown_signal() => {}
                }
            }
            None => shutdown_signal().await,
        }
        stop.cancel();
    });
    // The demo's outbox is sealed with a key that lives only in memory for this run.
    let keyring = Arc::new(Keyring::new(&pseudonym::random_key()?));
    let outbox_dir = demo::outbox_path(&out).parent().map(Path::to_path_buf);
    let stats = daemon::run(
        config,
        profiles,
        Pseudonymizer::new(&demo::DEMO_KEY),
        keyring,
        observer,
        cancel,
    )
    .await?;
    if let Some(dir) = outbox_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    print_summary(&stats, &out);
    let delivered: u64 = stats
        .uplinks
        .iter()
        .map(|(_, s)| s.delivered + s.dead_lettered)
        .sum();
    Ok(if delivered == stats.pipeline.observations {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_summary(stats: &RunStats, out: &Path) {
    let p = &stats.pipeline;
    let bundles: u64 = stats.uplinks.iter().map(|(_, s)| s.bundles).sum();
    let delivered: u64 = stats.uplinks.iter().map(|(_, s)| s.delivered).sum();
    let failures: u64 = stats.uplinks.iter().map(|(_, s)| s.failures).sum();
    println!();
    println!("Summary");
    println!("  readings             {}", p.readings);
    println!("  observations         {}", p.observations);
    println!("  without value (NaN)  {}", p.absent);
    println!("  flagged implausible  {}", p.flagged);
    println!("  rejected             {}", p.rejected);
    println!("  delivered            {delivered}");
    println!("  bundles written      {bundles}");
    println!("  delivery errors      {failures}");
    println!("  output               {}", out.display());
}

fn keygen_smart(config_path: &Path, alg: Option<iomt_gateway::smart::Alg>) -> Result<ExitCode> {
    use iomt_gateway::config::UplinkKind;
    use iomt_gateway::smart::SigningKey;
    use iomt_gateway::uplink::fhir_http::AuthSettings;
    let config = Config::load(config_path)?;
    let smart = config
        .uplinks
        .iter()
        .find_map(|u| match &u.kind {
            UplinkKind::Fhir(f) => match &f.auth {
                AuthSettings::Smart(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no FHIR uplink has an [uplinks.smart] table naming private_key_file in {}",
                config_path.display()
            )
        })?;
    let alg = alg.unwrap_or(smart.alg);
    if alg != smart.alg {
        bail!(
            "--alg {} differs from alg = \"{}\" in [uplinks.smart]; change the configuration first",
            alg.as_str(),
            smart.alg.as_str()
        );
    }
    let path = &smart.private_key_file;
    let key = if path.exists() {
        eprintln!("kept the existing SMART key {}", path.display());
        SigningKey::load(alg, path)?
    } else {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let key = SigningKey::generate(alg, path)?;
        eprintln!(
            "created the SMART {} key {} (mode 0600)",
            alg.as_str(),
            path.display()
        );
        key
    };
    eprintln!(
        "register this JWK Set with the backend for client_id {}:",
        smart.client_id
    );
    println!("{}", serde_json::to_string_pretty(&key.jwks())?);
    Ok(ExitCode::SUCCESS)
}

fn keygen(config_path: &Path, rotate: bool, keys: KeyPaths) -> Result<ExitCode> {
    let (storage, pseudonym_key) = match keys {
        KeyPaths {
            storage_key: Some(s),
            pseudonym_key: Some(p),
        } => (s, p),
        KeyPaths {
            storage_key,
            pseudonym_key,
        } => {
            let config = Config::load(config_path)?;
            (
                storage_key.unwrap_or(config.storage_key_file),
                pseudonym_key.unwrap_or(config.pseudonym_key_file),
            )
        }
    };
    let storage = &storage;
    if rotate {
        pseudonym::rotate_key_file(storage, &pseudonym::random_key()?)?;
        println!(
            "rotated the storage key {} (previous key kept in {})",
            storage.display(),
            seal::retired_path(storage).display()
        );
        println!("restart the gateway to seal new rows with the new key");
        return Ok(ExitCode::SUCCESS);
    }
    for (what, path) in [
        ("storage key", storage),
        ("pseudonymization key", &pseudonym_key),
    ] {
        if path.exists() {
            println!("kept the existing {what} {}", path.display());
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        pseudonym::write_new_key_file(path, &pseudonym::random_key()?)?;
        println!("created the {what} {} (mode 0600)", path.display());
    }
    println!("give the pseudonymization key to the backend's re-identification service; the storage key never leaves this device");
    Ok(ExitCode::SUCCESS)
}

fn scan(duration: f64, profiles: Option<PathBuf>, adapter: Option<&str>) -> Result<ExitCode> {
    if !(duration.is_finite() && duration > 0.0) {
        bail!("--for must be a positive number of seconds");
    }
    let dir = profiles.unwrap_or_else(default_profiles_dir);
    let profiles = profile::load_all(std::slice::from_ref(&dir))
        .map_err(|e| anyhow::anyhow!("device profiles in {} are invalid:\n{e}", dir.display()))?;
    // A one-shot command: a current-thread runtime, no worker threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let found = rt
        .block_on(iomt_drivers::ble_driver::scan_nearby(
            adapter,
            Duration::from_secs_f64(duration),
        ))
        .context("cannot scan: is bluetoothd running, and may this user talk to org.bluez?")?;
    if found.is_empty() {
        println!("no Bluetooth LE device found");
    }
    for d in &found {
        let services: Vec<String> = d
            .services
            .iter()
            .map(|u| match iomt_drivers::ble_driver::uuid_to_u16(*u) {
                Some(s) => format!("{s:04X}"),
                None => u.to_string(),
            })
            .collect();
        let matching = iomt_gateway::ingest::ble::matching_ble_profiles(
            &profiles,
            d.name.as_deref(),
            &d.services,
        );
        println!(
            "{}  name {:?}  rssi {}  services [{}]  profiles: {}",
            d.address,
            d.name.as_deref().unwrap_or(""),
            d.rssi.map_or_else(|| "-".to_string(), |r| r.to_string()),
            services.join(", "),
            if matching.is_empty() {
                "none".to_string()
            } else {
                matching.join(", ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn pseudonym_of(id: &str, config_path: &Path) -> Result<ExitCode> {
    let config = Config::load(config_path)?;
    let key = pseudonym::read_key_file(&config.pseudonym_key_file)?;
    let p = Pseudonymizer::new(&key).pseudonym(pseudonym::Domain::Patient, id);
    println!("{}|{p}", iomt_gateway::normalize::PATIENT_PSEUDONYM_SYSTEM);
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
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    let now = chrono::Utc::now().timestamp_millis();
    println!("outbox      {}", status.path.display());
    println!("rows        {}", status.rows);
    println!("payload     {} bytes", status.payload_bytes);
    println!("on disk     {} bytes", status.disk_bytes);
    println!("evicted     {}", status.evicted);
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
        println!("key {id}: {rows} rows");
    }
    Ok(ExitCode::SUCCESS)
}
