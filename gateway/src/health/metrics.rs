//! `/metrics`: the view in the Prometheus text exposition format (version 0.0.4).
//!
//! Written by hand: a dozen families rendered from [`StatusView`], which already holds
//! every number; a metrics crate would keep a second registry of the same counters in
//! step with the model. Names follow Prometheus conventions (`iomt_gateway_` prefix,
//! `_total` on counters, base units: seconds, bytes; dBm for a radio signal). Labels are
//! transport, profile and uplink, so the series stay few and name nobody; the one
//! per-device gauge, the BLE signal, adds `device`, the pseudonym `/status` shows (its
//! series are bounded by the BLE allow-list). Counters count since the daemon started
//! (a restart resets them, which Prometheus' `rate` handles).

use std::fmt::Write as _;

use super::view::{DeviceState, StatusView, UplinkState};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// Renders the view.
pub fn render(view: &StatusView) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let g = &view.gateway;
    f.head("iomt_gateway_build_info", "gauge", "The gateway's version.");
    f.sample("iomt_gateway_build_info", &[("version", &g.version)], 1);
    f.head(
        "iomt_gateway_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    f.sample("iomt_gateway_uptime_seconds", &[], g.uptime_seconds);
    if let Some(s) = g.clock_synchronized {
        f.head(
            "iomt_gateway_clock_synchronized",
            "gauge",
            "1 if the system clock is synchronized, else 0.",
        );
        f.sample("iomt_gateway_clock_synchronized", &[], u8::from(s));
    }
    if let Some(b) = g.outbox_bytes {
        f.head(
            "iomt_gateway_outbox_bytes",
            "gauge",
            "Bytes of the outbox's files on disk.",
        );
        f.sample("iomt_gateway_outbox_bytes", &[], b);
    }
    if let Some(b) = g.disk_free_bytes {
        f.head(
            "iomt_gateway_disk_free_bytes",
            "gauge",
            "Bytes free on the outbox's file system.",
        );
        f.sample("iomt_gateway_disk_free_bytes", &[], b);
    }
    if let Some(h) = &g.commit_seconds {
        let name = "iomt_gateway_outbox_commit_seconds";
        f.head(
            name,
            "histogram",
            "How long the outbox's write transactions took, to the commit on disk.",
        );
        for (bound, n) in &h.buckets {
            f.sample(&format!("{name}_bucket"), &[("le", &bound.to_string())], n);
        }
        f.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count);
        f.sample(&format!("{name}_sum"), &[], h.sum_seconds);
        f.sample(&format!("{name}_count"), &[], h.count);
    }
    type Ingest = fn(&super::view::IngestView) -> u64;
    let ingest: [(&str, &str, Ingest); 3] = [
        (
            "iomt_gateway_readings_total",
            "Readings received from devices.",
            |i| i.readings,
        ),
        (
            "iomt_gateway_observations_total",
            "Observations made and handed to the outbox.",
            |i| i.observations,
        ),
        (
            "iomt_gateway_rejected_total",
            "Fields or readings refused (unmapped field, bad unit, implausible value, test data).",
            |i| i.rejected,
        ),
    ];
    for (name, help, get) in ingest {
        f.head(name, "counter", help);
        for i in &view.ingest {
            f.sample(
                name,
                &[("transport", &i.transport), ("profile", &i.profile)],
                get(i),
            );
        }
    }
    f.head(
        "iomt_gateway_devices_connected",
        "gauge",
        "Devices with an open session (BLE), by transport and profile.",
    );
    let mut connected: std::collections::BTreeMap<(&str, &str), u64> = Default::default();
    for d in &view.devices {
        *connected
            .entry((d.transport.as_str(), d.profile.as_str()))
            .or_default() += u64::from(d.state == DeviceState::Connected);
    }
    for ((transport, profile), n) in connected {
        f.sample(
            "iomt_gateway_devices_connected",
            &[("transport", transport), ("profile", profile)],
            n,
        );
    }
    f.head(
        "iomt_gateway_device_signal_dbm",
        "gauge",
        "The signal strength a BLE device was last heard advertising at (RSSI), dBm.",
    );
    for d in &view.devices {
        if let Some(dbm) = d.signal_dbm {
            f.sample(
                "iomt_gateway_device_signal_dbm",
                &[
                    ("transport", &d.transport),
                    ("profile", &d.profile),
                    ("device", &d.device),
                ],
                dbm,
            );
        }
    }
    type Uplink = fn(&super::view::UplinkView) -> Option<u64>;
    let uplink: [(&str, &str, &str, Uplink); 7] = [
        (
            "iomt_gateway_delivered_observations_total",
            "counter",
            "Observations the uplink's destination acknowledged.",
            |u| Some(u.delivered),
        ),
        (
            "iomt_gateway_delivery_failures_total",
            "counter",
            "Failed delivery attempts (retried).",
            |u| Some(u.failures),
        ),
        (
            "iomt_gateway_dead_lettered_observations_total",
            "counter",
            "Observations the destination refused for good, moved to the dead letters.",
            |u| Some(u.dead_lettered),
        ),
        (
            "iomt_gateway_uplink_up",
            "gauge",
            "1 if the uplink's last attempt succeeded (or none failed), else 0.",
            |u| Some(u64::from(u.state == UplinkState::Ok)),
        ),
        (
            "iomt_gateway_backlog_rows",
            "gauge",
            "Outbox rows waiting for the uplink.",
            |u| u.backlog_rows,
        ),
        (
            "iomt_gateway_backlog_oldest_age_seconds",
            "gauge",
            "Age of the oldest row waiting for the uplink (0 when none waits).",
            |u| u.backlog_rows.map(|_| u.oldest_age_seconds.unwrap_or(0)),
        ),
        (
            "iomt_gateway_dead_letters",
            "gauge",
            "Rows in the uplink's dead letters.",
            |u| u.dead_letters,
        ),
    ];
    for (name, kind, help, get) in uplink {
        f.head(name, kind, help);
        for u in &view.uplinks {
            if let Some(v) = get(u) {
                f.sample(name, &[("uplink", &u.name)], v);
            }
        }
    }
    out
}
