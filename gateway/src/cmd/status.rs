//! `iomt-gateway status [--json]`: asks the running daemon's status endpoint
//! (`[status] listen` in the configuration) and prints its health model for a person (a
//! table, ages in words) or as JSON. Exit code 3 when the daemon is not running (as
//! `systemctl status`). A one-shot command: plain blocking HTTP/1.0 over a TCP socket,
//! no async runtime and no thread (it also runs under qemu-user).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::{DateTime, Utc};
use iomt_gateway::config::{Config, DEFAULT_PATH};
use iomt_gateway::health::view::{StatusView, UplinkState};
use iomt_gateway::secret_file;

/// The arguments of `status`.
#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    /// The configuration file (TOML) the daemon runs with: its [status] section says
    /// where to ask.
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Print the status as JSON (the `/status` document) for scripts.
    #[arg(long)]
    json: bool,
}

/// The exit code when the daemon is not running.
const NOT_RUNNING: u8 = 3;

pub(crate) fn execute(args: StatusArgs) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let Some(status) = config.status else {
        bail!(
            "the status endpoint is disabled in {} ([status] enabled = false): enable it to use this command",
            args.config.display()
        );
    };
    let mut addr = status.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let token = match &status.token_file {
        Some(path) => Some(
            String::from_utf8_lossy(&secret_file::read_secret_file(path)?)
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let body = match get(addr, "/status", token.as_deref()) {
        Ok(body) => body,
        Err(Fetch::NotRunning(e)) => {
            eprintln!(
                "the gateway is not running: nothing answers on {addr} ([status] listen in {}): {e}\nstart it with `systemctl start iomt-gateway`, and see `journalctl -u iomt-gateway`",
                args.config.display()
            );
            return Ok(ExitCode::from(NOT_RUNNING));
        }
        Err(Fetch::Other(e)) => return Err(e),
    };
    if args.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let view: StatusView = serde_json::from_str(&body)
        .with_context(|| format!("the answer of {addr}/status is not a status document"))?;
    print!("{}", table(&view));
    Ok(ExitCode::SUCCESS)
}

enum Fetch {
    NotRunning(std::io::Error),
    Other(anyhow::Error),
}

/// GET `path` over HTTP/1.0 (the answer has a length, or ends with the connection).
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<String, Fetch> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| {
        if matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
        ) {
            Fetch::NotRunning(e)
        } else {
            Fetch::Other(anyhow!("cannot connect to {addr}: {e}"))
        }
    })?;
    let other = |e: std::io::Error| Fetch::Other(anyhow!("talking to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(other)?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").map_err(other)?;
    let mut answer = Vec::new();
    stream
        .take(16 << 20)
        .read_to_end(&mut answer)
        .map_err(other)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| Fetch::Other(anyhow!("{addr} answered something that is not HTTP")))?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(Fetch::Other(anyhow!(
            "{addr}{path} answered `{status_line}`: {}",
            body.trim()
        )));
    }
    Ok(body.to_string())
}

/// An age in words: "just now", "42 s ago", "2 min ago", "3 h ago", "5 days ago".
fn ago(now: DateTime<Utc>, t: Option<DateTime<Utc>>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let s = (now - t).num_seconds();
    match s {
        i64::MIN..=4 => "just now".into(),
        5..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// A duration in words.
fn span(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} days {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// Bytes in words.
fn bytes(b: Option<u64>) -> String {
    let Some(b) = b else {
        return "unknown".into();
    };
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map(|v| format!("{v}{unit}"))
        .unwrap_or_else(|| "-".into())
}

/// Rows as aligned columns.
fn columns(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The view for a person.
fn table(v: &StatusView) -> String {
    let g = &v.gateway;
    let now = g.now;
    let clock = match g.clock_synchronized {
        Some(true) => "synchronized",
        Some(false) => "NOT synchronized",
        None => "not watched",
    };
    let mut out = format!(
        "Gateway {}: up {}, clock {clock}, outbox {}, disk free {}, dead letters {}\n\n",
        g.version,
        span(g.uptime_seconds),
        bytes(g.outbox_bytes),
        bytes(g.disk_free_bytes),
        opt(g.dead_letters, ""),
    );
    let mut rows = vec![[
        "DEVICE",
        "PROFILE",
        "TRANSPORT",
        "STATE",
        "LAST SEEN",
        "LAST READING",
        "24 H",
        "BATTERY",
        "SIGNAL",
        "PROBLEM",
    ]
    .map(String::from)
    .to_vec()];
    for d in &v.devices {
        rows.push(vec![
            d.device.chars().take(12).collect(),
            d.profile.clone(),
            d.transport.clone(),
            serde_json::to_value(d.state)
                .ok()
                .and_then(|s| s.as_str().map(String::from))
                .unwrap_or_default(),
            ago(now, d.last_seen),
            ago(now, d.last_reading),
            d.readings_24h.to_string(),
            opt(d.battery_percent, " %"),
            match (d.signal_dbm, d.signal_at) {
                (Some(dbm), at) => format!("{dbm} dBm ({})", ago(now, at)),
                _ => "-".into(),
            },
            match (&d.last_error, d.last_error_at) {
                (Some(e), at) => format!("{e} ({})", ago(now, at)),
                _ => "-".into(),
            },
        ]);
    }
    if v.devices.is_empty() {
        out.push_str("No device configured or seen yet.\n");
    } else {
        out.push_str(&columns(&rows));
    }
    out.push('\n');
    let mut rows = vec![[
        "UPLINK",
        "STATE",
        "LAST DELIVERY",
        "BACKLOG",
        "OLDEST",
        "FAILURES",
        "DEAD LETTERS",
    ]
    .map(String::from)
    .to_vec()];
    for u in &v.uplinks {
        rows.push(vec![
            u.name.clone(),
            match u.state {
                UplinkState::Ok => "ok".into(),
                UplinkState::Failing => format!("FAILING since {}", ago(now, u.last_failure)),
            },
            ago(now, u.last_delivery),
            opt(u.backlog_rows, " rows"),
            u.oldest_age_seconds.map(span).unwrap_or_else(|| "-".into()),
            u.consecutive_failures.to_string(),
            opt(u.dead_letters, ""),
        ]);
    }
    out.push_str(&columns(&rows));
    out
}
