//! Logging set-up: `tracing` to stderr (text or JSON), or natively to the journal when
//! stderr is the systemd journal.

use iomt_gateway::config::LogFormat;

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

/// Installs the global subscriber: `RUST_LOG` if set, else `level`.
pub(crate) fn init_logging(level: &str, format: LogFormat) {
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
