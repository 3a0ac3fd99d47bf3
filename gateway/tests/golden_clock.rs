//! Golden files of the gateway's own clock: its Device resource (the PHD IG's PhgDevice
//! time synchronization property) with the clock synchronized and not, and an
//! Observation that went out marked uncertain because the clock never was synchronized
//! in time (`clock::hold`). Regenerate with `UPDATE_GOLDEN=1 cargo test -p iomt-gateway
//! --test golden_clock` and review the diff. The Device files live in `golden/devices/`
//! (the folder's top level holds Observation arrays only, which `tests/cli.rs` validates).
//! The released Observation is compared member by member (its members are printed in
//! alphabetical order here; on the wire they keep the order of the stored JSON).

mod golden_support;

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use golden_support::{check_json, ctx};
use iomt_drivers::{DeviceIdentity, Quantity, Reading, Transport};
use iomt_gateway::clock::hold::{release, Release};
use iomt_gateway::normalize::{self, OutOfRange, Zone};
use iomt_gateway::profile;
use rust_decimal::Decimal;

const GATEWAY: &str = "fedcba9876543210fedcba9876543210";

#[test]
fn the_gateway_device_reports_its_clock_synchronized() {
    let device = normalize::gateway_resource(GATEWAY);
    check_json("devices/gateway-clock-synchronized", &device);
}

#[test]
fn the_gateway_device_reports_its_clock_not_synchronized() {
    let mut device = normalize::gateway_resource(GATEWAY);
    normalize::set_clock_synchronized(&mut device, false);
    check_json("devices/gateway-clock-unsynchronized", &device);
}

#[test]
fn an_observation_whose_time_could_not_be_corrected_is_marked_uncertain() {
    let profile = profile::parse(
        std::path::Path::new("golden.toml"),
        "id = \"golden\"\nname = \"Golden test device\"\nmanufacturer = \"Test\"\nmodel = \"G-1\"\n[mqtt]\ntopic = \"golden/#\"\n[mqtt.json]\n[[field]]\nname = \"heart_rate\"\nvital = \"heart_rate\"\npointer = \"/heart_rate\"\n",
    )
    .unwrap();
    // Received by a gateway whose clock still read 1970 (no real-time clock, no NTP).
    let reading = Reading {
        device: Arc::new(DeviceIdentity {
            profile: "golden".into(),
            transport: Transport::Mqtt,
            address: "golden-device".into(),
            serial_number: None,
            manufacturer: None,
            model: None,
            revisions: Default::default(),
        }),
        device_time: None,
        received_at: Utc.with_ymd_and_hms(1970, 1, 1, 0, 3, 12).unwrap(),
        sequence: None,
        quantities: vec![Quantity::new("heart_rate", Decimal::from(72), "/min")],
        flags: Vec::new(),
        clock: None,
    };
    let out = normalize::normalize(
        &reading,
        &profile,
        &ctx(Zone::Named(chrono_tz::UTC), OutOfRange::Flag),
    );
    let released: Vec<serde_json::Value> = out
        .observations
        .iter()
        .map(|o| {
            let raw = serde_json::value::to_raw_value(o).unwrap();
            let sent = release(&raw, Release::Uncertain).unwrap();
            serde_json::from_str(sent.get()).unwrap()
        })
        .collect();
    check_json("time-uncertain", &released);
}
