use super::*;
use crate::ble::{decode, GattValue};
use crate::reading::AbsentReason;
use chrono::{FixedOffset, NaiveDate, TimeZone};
use rust_decimal::Decimal;

fn dec(m: i64, scale: u32) -> Measurement {
    Measurement::Value(Decimal::new(m, scale))
}

/// With a valid E2E-CRC appended.
fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let crc = e2e_crc(&b);
    b.extend(crc.to_le_bytes());
    b
}

#[test]
fn crc_is_mcrf4xx_as_the_reference_check_values() {
    assert_eq!(e2e_crc(b"123456789"), 0x6F91);
    assert_eq!(e2e_crc(b"A"), 0x5C0A);
    assert_eq!(
        e2e_crc(&[0x3E, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09]),
        0x2F01
    );
}

#[test]
fn every_field_with_a_valid_crc() {
    let b = [
        0x0F, 0xE3, 0xD2, 0xE4, 0x05, 0x00, 0x02, 0x14, 0xFF, 0x02, 0xF0, 0xE5, 0xF3, 0x8E, 0x3F,
    ];
    let m = CgmMeasurement::decode_checked(&b, true).unwrap();
    assert_eq!(m.glucose, dec(1234, 2));
    assert_eq!(m.time_offset_minutes, 5);
    assert_eq!(
        m.status,
        CgmStatus {
            status: Some(0xFF),
            cal_temp: Some(0x14),
            warning: Some(0x02),
        }
    );
    assert_eq!(m.status.bits(), 0x02_14_FF);
    assert_eq!(m.trend, Some(dec(2, 1)));
    assert_eq!(m.quality, Some(dec(997, 1)));
    assert_eq!(m.e2e_crc, Some(0x3F8E));
    assert!(m.anomalies.is_empty());
    assert_eq!(m.sequence(), Some(5));
    assert_eq!(m.device_time(), None, "no session start: no time");
    let names: Vec<_> = m.quantities().into_iter().map(|q| q.unit).collect();
    assert_eq!(names, ["mg/dL", "mg/dL/min", "%"]);
}

#[test]
fn a_wrong_crc_is_a_rejected_record_with_the_reason() {
    let err =
        CgmMeasurement::decode(&[0x08, 0x00, 0x0C, 0x10, 0x06, 0x00, 0x58, 0x6F]).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("CGM Measurement (0x2AA7)") && text.contains("E2E-CRC mismatch"),
        "{text}"
    );
    assert!(text.contains("0x6F59"), "names the computed CRC: {text}");
    assert!(CgmMeasurement::decode(&[0x08, 0x00, 0x0C, 0x10, 0x06, 0x00, 0x59, 0x6F]).is_ok());
}

#[test]
fn a_missing_crc_is_rejected_only_when_the_feature_says_so() {
    let b = [0x06, 0x00, 0x0C, 0x10, 0x06, 0x00];
    let m = CgmMeasurement::decode_checked(&b, false).unwrap();
    assert_eq!(m.glucose, dec(120, 0));
    assert_eq!(m.time_offset_minutes, 6);
    assert_eq!(m.status, CgmStatus::default());
    assert_eq!(m.e2e_crc, None);
    let err = CgmMeasurement::decode_checked(&b, true).unwrap_err();
    assert!(err.to_string().contains("no E2E-CRC"), "{err}");
}

#[test]
fn concatenated_records_are_split_by_their_sizes() {
    let b = [
        0x06, 0x00, 0x0C, 0x10, 0x05, 0x00, 0x06, 0x00, 0x0C, 0x10, 0x06, 0x00,
    ];
    let all = CgmMeasurement::decode_all(&b, false).unwrap();
    let offsets: Vec<_> = all.iter().map(|m| m.time_offset_minutes).collect();
    assert_eq!(offsets, [5, 6]);
    let first = CgmMeasurement::decode(&b).unwrap();
    assert_eq!(first.anomalies, [Anomaly::TrailingBytes { count: 6 }]);
}

#[test]
fn sizes_that_fit_neither_layout_are_rejected() {
    assert!(matches!(
        CgmMeasurement::decode(&[0x05, 0x00, 0x0C, 0x10, 0x05]),
        Err(GattError::Invalid { .. })
    ));
    assert!(matches!(
        CgmMeasurement::decode(&[0x07, 0x00, 0x0C, 0x10, 0x05, 0x00, 0x00]),
        Err(GattError::Invalid { .. })
    ));
    assert!(matches!(
        CgmMeasurement::decode(&[0x08, 0x00, 0x0C, 0x10, 0x05, 0x00]),
        Err(GattError::Truncated {
            len: 6,
            required: 8,
            ..
        })
    ));
    assert!(matches!(
        CgmMeasurement::decode(&[]),
        Err(GattError::Truncated { .. })
    ));
}

#[test]
fn reserved_flags_and_special_values() {
    let b = [0x06, 0x1C, 0xFF, 0x07, 0x00, 0x00];
    let m = CgmMeasurement::decode(&b).unwrap();
    assert_eq!(m.glucose, Measurement::Absent(AbsentReason::NotANumber));
    assert_eq!(m.anomalies, [Anomaly::ReservedFlags { bits: 0x1C }]);
}

#[test]
fn annunciations_are_named_by_sig_bit_and_time_sync_is_clock_not_set() {
    let m = CgmMeasurement::decode(&with_crc(vec![
        0x0B, 0xE0, 0x0C, 0x10, 0x05, 0x00, 0x80, 0x01, 0x02,
    ]))
    .unwrap();
    assert_eq!(
        m.status.annunciations(),
        [
            "device battery low",
            "time synchronization between sensor and collector required",
            "result higher than the device can process"
        ]
    );
    assert_eq!(
        m.flags(),
        [
            ReadingFlag::ClockNotSet,
            ReadingFlag::DeviceStatus("device battery low"),
            ReadingFlag::DeviceStatus("time synchronization between sensor and collector required"),
            ReadingFlag::DeviceStatus("result higher than the device can process"),
        ]
    );
}

#[test]
fn session_start_plus_offset_is_the_time_zoned_when_known() {
    // 2024-03-15 08:30:00, UTC+1 (zone 4 quarter hours), DST +1 h (code 4).
    let start =
        SessionStartTime::decode(&[0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 4, 4]).unwrap();
    let m = CgmMeasurement::decode(&[0x06, 0x00, 0x0C, 0x10, 0x5A, 0x00])
        .unwrap()
        .in_session(&start);
    let zone = FixedOffset::east_opt(2 * 3600).unwrap();
    let expected = zone.with_ymd_and_hms(2024, 3, 15, 10, 0, 0).unwrap();
    assert_eq!(m.device_time(), Some(DeviceTime::Zoned(expected)));

    let unknown_zone = SessionStartTime::decode(&with_crc(vec![
        0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x80, 0xFF,
    ]))
    .unwrap();
    assert!(unknown_zone.e2e_crc);
    let local = NaiveDate::from_ymd_opt(2024, 3, 15)
        .unwrap()
        .and_hms_opt(10, 0, 0)
        .unwrap();
    assert_eq!(unknown_zone.time_at(90), Some(DeviceTime::Local(local)));
}

#[test]
fn session_start_rejects_a_wrong_crc_and_records_reserved_codes() {
    let mut b = with_crc(vec![0xE8, 0x07, 0x03, 0x0F, 0x08, 0x1E, 0x00, 0x40, 0x03]);
    let ok = SessionStartTime::decode(&b).unwrap();
    assert_eq!((ok.zone_minutes, ok.dst_minutes), (None, None));
    assert_eq!(ok.anomalies.len(), 2);
    b[9] ^= 1;
    let err = SessionStartTime::decode(&b).unwrap_err();
    assert!(err.to_string().contains("E2E-CRC mismatch"), "{err}");
    assert!(matches!(
        SessionStartTime::decode(&b[..8]),
        Err(GattError::Truncated { .. })
    ));
}

#[test]
fn feature_and_run_time() {
    let plain = CgmFeature::decode(&[0x00, 0x00, 0x00, 0x59, 0xFF, 0xFF]).unwrap();
    assert!(!plain.e2e_crc_supported());
    let crc = CgmFeature::decode(&with_crc(vec![0x00, 0x10, 0x00, 0x59])).unwrap();
    assert!(crc.e2e_crc_supported());
    assert!(CgmFeature::decode(&[0x00, 0x10, 0x00, 0x59, 0xFF, 0xFF]).is_err());
    let run = SessionRunTime::decode(&[0x50, 0x01]).unwrap();
    assert_eq!((run.hours, run.e2e_crc), (336, false));
    assert_eq!(
        SessionRunTime::decode(&with_crc(vec![0x50, 0x01]))
            .unwrap()
            .hours,
        336
    );
    assert!(SessionRunTime::decode(&[0x50, 0x01, 0x00]).is_err());
}

#[test]
fn the_registry_dispatches_cgm_values() {
    let v = decode(0x2AA7, &[0x06, 0x00, 0x0C, 0x10, 0x06, 0x00]).unwrap();
    assert!(matches!(v, GattValue::Cgm(_)) && v.as_final().is_some());
    let v = decode(0x2AAB, &[0x50, 0x01]).unwrap();
    assert!(matches!(v, GattValue::CgmSessionRunTime(_)) && v.as_final().is_none());
}
