//! Property test of the Body Composition Measurement decoder (0x2A9C), like
//! `ble_roundtrip.rs` for the other decoders: a small encoder written here from the SIG
//! layout (independent of the decoder) builds a value for **every** 16-bit flags value
//! (reserved bits and the multiple-packet bit included) from random field values; the
//! decoder must read back each value with its precision and unit, the time stamp, the
//! user, and report exactly the set reserved bits; every strictly shorter prefix must be
//! rejected as truncated.

use chrono::NaiveDate;
use iomt_drivers::ble::weight::UnitSystem;
use iomt_drivers::ble::{
    Anomaly, BodyCompositionMeasurement, FinalMeasurement, GattDateTime, GattError, UserId,
};
use iomt_drivers::{AbsentReason, DeviceTime, Measurement};
use proptest::prelude::*;
use rust_decimal::Decimal;

/// The optional u16 fields after the user id, in wire order: flag bit, name, and how a
/// raw value scales (factor, decimals) in SI and imperial units, and the units.
type Spec = (
    u16,
    &'static str,
    (i64, u32),
    (i64, u32),
    &'static str,
    &'static str,
);
const FIELDS: [Spec; 9] = [
    (1 << 3, "basal_metabolism", (1, 0), (1, 0), "kJ", "kJ"),
    (1 << 4, "muscle_percentage", (1, 1), (1, 1), "%", "%"),
    (1 << 5, "muscle_mass", (5, 3), (1, 2), "kg", "[lb_av]"),
    (1 << 6, "fat_free_mass", (5, 3), (1, 2), "kg", "[lb_av]"),
    (1 << 7, "soft_lean_mass", (5, 3), (1, 2), "kg", "[lb_av]"),
    (1 << 8, "body_water_mass", (5, 3), (1, 2), "kg", "[lb_av]"),
    (1 << 9, "impedance", (1, 1), (1, 1), "Ohm", "Ohm"),
    (1 << 10, "body_weight", (5, 3), (1, 2), "kg", "[lb_av]"),
    (1 << 11, "body_height", (1, 3), (1, 1), "m", "[in_i]"),
];

fn expected(raw: u16, (factor, decimals): (i64, u32)) -> Measurement {
    if raw == 0xFFFF {
        Measurement::Absent(AbsentReason::NotANumber)
    } else {
        Measurement::Value(Decimal::new(i64::from(raw) * factor, decimals))
    }
}

fn date_time() -> impl Strategy<Value = (u16, u8, u8, u8, u8, u8)> {
    (
        1582u16..=9999,
        1u8..=12,
        1u8..=28,
        0u8..24,
        0u8..60,
        0u8..60,
    )
}

fn check(flags: u16, fat: u16, ts: [u8; 7], user: u8, raw: &[u16; 9]) {
    let mut b = flags.to_le_bytes().to_vec();
    b.extend(fat.to_le_bytes());
    if flags & 0x02 != 0 {
        b.extend(ts);
    }
    if flags & 0x04 != 0 {
        b.push(user);
    }
    for ((bit, ..), r) in FIELDS.iter().zip(raw) {
        if flags & bit != 0 {
            b.extend(r.to_le_bytes());
        }
    }
    let m = BodyCompositionMeasurement::decode(&b).unwrap();
    let imperial = flags & 1 != 0;
    assert_eq!(
        m.units,
        if imperial {
            UnitSystem::Imperial
        } else {
            UnitSystem::Si
        }
    );
    let mut want = vec![("body_fat", expected(fat, (1, 1)), "%")];
    for ((bit, name, si, imp, si_unit, imp_unit), r) in FIELDS.iter().zip(raw) {
        if flags & bit != 0 {
            let (scale, unit) = if imperial {
                (*imp, *imp_unit)
            } else {
                (*si, *si_unit)
            };
            want.push((name, expected(*r, scale), unit));
        }
    }
    let got = m.quantities();
    assert_eq!(got.len(), want.len(), "{flags:#06x}");
    for (q, (name, value, unit)) in got.iter().zip(&want) {
        assert_eq!((q.name.as_str(), q.unit.as_str()), (*name, *unit));
        assert_eq!(q.value, *value);
        if let (Measurement::Value(a), Measurement::Value(e)) = (q.value, value) {
            assert_eq!(a.scale(), e.scale(), "precision of {name}");
        }
    }
    let time = GattDateTime::from_bytes(ts).to_naive().unwrap();
    assert_eq!(
        m.device_time(),
        (flags & 0x02 != 0).then_some(DeviceTime::Local(time))
    );
    assert_eq!(
        m.user_id,
        (flags & 0x04 != 0).then_some(if user == 0xFF {
            UserId::Unknown
        } else {
            UserId::Known(user)
        })
    );
    assert_eq!(m.multiple_packets, flags & 0x1000 != 0);
    let reserved = flags & 0xE000;
    let anomalies = if reserved == 0 {
        vec![]
    } else {
        vec![Anomaly::ReservedFlags {
            bits: u32::from(reserved),
        }]
    };
    assert_eq!(m.anomalies, anomalies);
    for n in 0..b.len() {
        assert!(
            matches!(
                BodyCompositionMeasurement::decode(&b[..n]),
                Err(GattError::Truncated { .. })
            ),
            "prefix of {n} bytes of {b:02X?}"
        );
    }
}

fn ts_bytes((y, mo, d, h, mi, s): (u16, u8, u8, u8, u8, u8)) -> [u8; 7] {
    let [y0, y1] = y.to_le_bytes();
    assert!(NaiveDate::from_ymd_opt(i32::from(y), u32::from(mo), u32::from(d)).is_some());
    [y0, y1, mo, d, h, mi, s]
}

#[test]
fn every_flags_value_round_trips() {
    let raw = [7296, 438, 6688, 0xFFFF, 10032, 8048, 5000, 14000, 1750];
    let ts = ts_bytes((2023, 12, 25, 14, 30, 45));
    for flags in 0..=u16::MAX {
        check(flags, 214, ts, 2, &raw);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_values_round_trip_under_random_flags(
        flags in any::<u16>(), fat in any::<u16>(), ts in date_time(), user in any::<u8>(),
        raw in proptest::array::uniform9(any::<u16>()),
    ) {
        check(flags, fat, ts_bytes(ts), user, &raw);
    }
}
