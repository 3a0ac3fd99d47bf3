use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use rust_decimal::Decimal;

use super::*;
use crate::decode::FieldSpec;
use crate::reading::{DeviceIdentity, DeviceTime, Measurement, Reading, ReadingFlag, Transport};

fn device() -> Arc<DeviceIdentity> {
    Arc::new(DeviceIdentity {
        revisions: Default::default(),
        profile: "t".into(),
        transport: Transport::Serial,
        address: "/dev/ttyUSB0".into(),
        serial_number: None,
        manufacturer: None,
        model: None,
    })
}

fn spec(name: &str, unit: &str) -> FieldSpec {
    FieldSpec {
        name: name.into(),
        source: name.into(),
        unit: unit.into(),
        scale: None,
        no_reading: Vec::new(),
    }
}

fn u8_at(offset: usize, mask: Option<u64>) -> ValueLayout {
    ValueLayout::Int {
        offset,
        ty: IntType::U8,
        endian: Endian::Big,
        mask,
        shift: 0,
    }
}

fn bits(ranges: &[&str]) -> ValueLayout {
    ValueLayout::Bits(ranges.iter().map(|r| BitRange::parse(r).unwrap()).collect())
}

fn pattern(offset: isize, mask: u8, value: u8) -> BytePattern {
    BytePattern {
        offset,
        mask,
        value,
    }
}

/// Nonin OEM III data format 2: 5-byte frames, 25 per packet.
fn nonin() -> FrameDecoder {
    FrameDecoder {
        spec: FrameSpec {
            size: FrameSize::Fixed(5),
            sync: vec![pattern(0, 0xFF, 0x01), pattern(1, 0x80, 0x80)],
            checksum: Some(Checksum {
                kind: ChecksumKind::Sum8,
                from: 0,
                to: -1,
                at: -1,
                endian: Endian::Big,
            }),
            packet: Some(Packet {
                frames: 25,
                start: vec![pattern(1, 0x01, 0x01)],
            }),
        },
        fields: vec![
            FrameField {
                spec: spec("pulse", "/min"),
                layout: bits(&["3[1:0]", "8[6:0]"]),
                no_reading: vec![511],
            },
            FrameField {
                spec: spec("spo2", "%"),
                layout: u8_at(13, Some(0x7F)),
                no_reading: vec![127],
            },
        ],
        flags: vec![FrameFlag {
            pattern: pattern(1, 0x40, 0x40),
            kind: FlagKind::NoReading,
        }],
        timestamp: None,
    }
}

fn nonin_frame(index: usize, float: u8) -> Vec<u8> {
    let status = 0x80 | u8::from(index == 0);
    let mut f = vec![0x01, status, 0x01, float];
    f.push(f.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
    f
}

fn nonin_packet(hr: u16, spo2: u8) -> Vec<u8> {
    (0..25)
        .flat_map(|i| {
            let float = match i {
                0 => ((hr >> 7) & 0x03) as u8,
                1 => (hr & 0x7F) as u8,
                2 => spo2,
                3 => 0x30,
                _ => 0,
            };
            nonin_frame(i, float)
        })
        .collect()
}

fn scan_all(decoder: &FrameDecoder, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, FrameScanner) {
    let mut scanner = decoder.scanner();
    let mut events = Vec::new();
    for c in chunks {
        scanner.push(c, &mut events);
    }
    let units = events
        .into_iter()
        .filter_map(|e| match e {
            ScanEvent::Unit(u) => Some(u),
            ScanEvent::Rejected { .. } => None,
        })
        .collect();
    (units, scanner)
}

fn values(r: &Reading) -> Vec<String> {
    r.quantities
        .iter()
        .map(|q| match q.value {
            Measurement::Value(v) => v.to_string(),
            Measurement::Absent(_) => "absent".into(),
        })
        .collect()
}

#[test]
fn the_public_nonin_test_vector_gives_heart_rate_72_and_spo2_97() {
    // TestFrameReceiver.cpp: the first four frames of a packet.
    let head = [
        0x01, 0x81, 0x01, 0x00, 0x83, 0x01, 0x80, 0x01, 0x48, 0xCA, 0x01, 0x80, 0x01, 0x61, 0xE3,
        0x01, 0x80, 0x01, 0x30, 0xB2,
    ];
    let mut stream = head.to_vec();
    for i in 4..25 {
        stream.extend(nonin_frame(i, 0));
    }
    let d = nonin();
    let (units, scanner) = scan_all(&d, &[&stream]);
    assert_eq!(units.len(), 1);
    assert_eq!(scanner.stats.rejected, 0);
    let r = d.decode(&units[0], device(), Utc::now()).unwrap();
    assert_eq!(values(&r), ["72", "97"]);
}

#[test]
fn frames_split_across_reads_are_reassembled() {
    let d = nonin();
    let stream = nonin_packet(130, 95);
    let chunks: Vec<&[u8]> = stream.chunks(3).collect();
    let (units, _) = scan_all(&d, &chunks);
    assert_eq!(units.len(), 1);
    let r = d.decode(&units[0], device(), Utc::now()).unwrap();
    assert_eq!(values(&r), ["130", "95"]);
}

#[test]
fn a_bad_checksum_is_rejected_and_the_next_valid_packet_still_decodes() {
    let d = nonin();
    let mut bad = nonin_packet(80, 96);
    bad[12] ^= 0x01; // corrupt frame 2's pleth byte: its checksum fails
    let good = nonin_packet(81, 97);
    let stream = [bad, good].concat();
    let mut scanner = d.scanner();
    let mut events = Vec::new();
    scanner.push(&stream, &mut events);
    let rejected: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, ScanEvent::Rejected { .. }))
        .collect();
    assert!(matches!(
        rejected[0],
        ScanEvent::Rejected {
            reason: FrameRejection::Checksum,
            ..
        }
    ));
    let units: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ScanEvent::Unit(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(units.len(), 1, "only the intact packet");
    let r = d.decode(units[0], device(), Utc::now()).unwrap();
    assert_eq!(values(&r), ["81", "97"]);
    assert_eq!(scanner.stats.incomplete_packets, 1);
}

#[test]
fn line_noise_and_a_partial_first_frame_are_skipped() {
    let d = nonin();
    let packet = nonin_packet(72, 98);
    let stream = [
        &[0xFF, 0x00, 0x01, 0x80][..],
        &packet[7..],
        &[0x13, 0x37],
        &packet,
    ]
    .concat();
    let (units, scanner) = scan_all(&d, &[&stream]);
    assert_eq!(units.len(), 1);
    assert!(scanner.stats.skipped_bytes >= 4, "{:?}", scanner.stats);
    let r = d.decode(&units[0], device(), Utc::now()).unwrap();
    assert_eq!(values(&r), ["72", "98"]);
}

#[test]
fn missing_value_markers_become_absent_quantities() {
    let d = nonin();
    let (units, _) = scan_all(&d, &[&nonin_packet(511, 127)]);
    let r = d.decode(&units[0], device(), Utc::now()).unwrap();
    assert_eq!(values(&r), ["absent", "absent"]);
}

/// Contec CMS50: 5-byte packets, only byte 0 has bit 7 set.
fn cms50() -> FrameDecoder {
    FrameDecoder {
        spec: FrameSpec {
            size: FrameSize::Fixed(5),
            sync: vec![
                pattern(0, 0x80, 0x80),
                pattern(1, 0x80, 0),
                pattern(2, 0x80, 0),
                pattern(3, 0x80, 0),
                pattern(4, 0x80, 0),
            ],
            checksum: None,
            packet: None,
        },
        fields: vec![
            FrameField {
                spec: spec("pulse", "/min"),
                layout: bits(&["2[6]", "3[6:0]"]),
                no_reading: vec![255],
            },
            FrameField {
                spec: spec("spo2", "%"),
                layout: u8_at(4, Some(0x7F)),
                no_reading: vec![127],
            },
        ],
        flags: vec![FrameFlag {
            pattern: pattern(0, 0x10, 0x10),
            kind: FlagKind::NoReading,
        }],
        timestamp: None,
    }
}

#[test]
fn the_constructed_cms50_packet_gives_pulse_72_and_spo2_98() {
    let d = cms50();
    let (units, _) = scan_all(&d, &[&[0x42, 0xC5, 0x3C, 0x28, 0x48, 0x62]]);
    assert_eq!(units, vec![vec![0xC5, 0x3C, 0x28, 0x48, 0x62]]);
    let r = d.decode(&units[0], device(), Utc::now()).unwrap();
    assert_eq!(values(&r), ["72", "98"]);
}

#[test]
fn a_cms50_pulse_rate_above_127_uses_the_high_bit_in_byte_2() {
    let d = cms50();
    let r = d
        .decode(&[0x80, 0, 0x40, 0x7F, 0], device(), Utc::now())
        .unwrap();
    assert_eq!(values(&r)[0], "absent", "255 means no reading");
    let r = d
        .decode(&[0x80, 0, 0x40, 0x02, 90], device(), Utc::now())
        .unwrap();
    assert_eq!(values(&r), ["130", "90"]);
}

#[test]
fn a_cms50_finger_out_flag_makes_every_value_absent() {
    let d = cms50();
    let r = d
        .decode(&[0x95, 0, 0x08, 0x48, 0x62], device(), Utc::now())
        .unwrap();
    assert_eq!(values(&r), ["absent", "absent"]);
}

/// Nonin 9560 data format 13: `00 02 type:u16 len:u16 data[len] sum8 03`.
fn nonin_df13() -> FrameDecoder {
    let at = |offset| u8_at(offset, None);
    FrameDecoder {
        spec: FrameSpec {
            size: FrameSize::Prefixed {
                offset: 4,
                ty: IntType::U16,
                endian: Endian::Big,
                add: 8,
                max: 64,
            },
            sync: vec![
                pattern(0, 0xFF, 0x00),
                pattern(1, 0xFF, 0x02),
                pattern(-1, 0xFF, 0x03),
            ],
            checksum: Some(Checksum {
                kind: ChecksumKind::Sum8,
                from: 6,
                to: -2,
                at: -2,
                endian: Endian::Big,
            }),
            packet: None,
        },
        fields: vec![
            FrameField {
                spec: spec("pulse", "/min"),
                layout: ValueLayout::Int {
                    offset: 16,
                    ty: IntType::U16,
                    endian: Endian::Big,
                    mask: None,
                    shift: 0,
                },
                no_reading: vec![511],
            },
            FrameField {
                spec: spec("spo2", "%"),
                layout: at(19),
                no_reading: vec![127],
            },
        ],
        flags: vec![FrameFlag {
            pattern: pattern(15, 0x10, 0x10),
            kind: FlagKind::FromStorage,
        }],
        timestamp: Some(FrameTimestamp {
            century: Some(at(6)),
            year: at(7),
            year_base: 0,
            month: at(8),
            day: at(9),
            hour: at(10),
            minute: at(11),
            second: at(12),
        }),
    }
}

fn df13(date: [u8; 7], status: u16, hr: u16, spo2: u8, extra: &[u8]) -> Vec<u8> {
    let mut data = date.to_vec();
    data.push(0); // fraction
    data.extend(status.to_be_bytes());
    data.extend(hr.to_be_bytes());
    data.push(0); // reserved
    data.push(spo2);
    data.extend_from_slice(extra);
    let mut f = vec![0x00, 0x02, 0x00, 0x0D];
    f.extend((data.len() as u16).to_be_bytes());
    let sum = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    f.extend(data);
    f.push(sum);
    f.push(0x03);
    f
}

#[test]
fn a_length_prefixed_nonin_spot_check_decodes_with_its_date() {
    let d = nonin_df13();
    let frame = df13([20, 24, 2, 29, 13, 37, 5], 0x0010, 68, 97, &[1, 2, 3]);
    let (units, _) = scan_all(&d, &[&[0x55], &frame[..9], &frame[9..]]);
    assert_eq!(units.len(), 1);
    let r = d.decode(&units[0], device(), Utc::now()).unwrap();
    assert_eq!(values(&r), ["68", "97"]);
    assert_eq!(
        r.device_time,
        Some(DeviceTime::Local(
            NaiveDate::from_ymd_opt(2024, 2, 29)
                .unwrap()
                .and_hms_opt(13, 37, 5)
                .unwrap()
        ))
    );
    assert_eq!(r.flags, vec![ReadingFlag::FromStorage]);
}

#[test]
fn an_impossible_date_falls_back_to_the_receive_time_with_a_flag() {
    let d = nonin_df13();
    let frame = df13([20, 24, 2, 30, 13, 37, 5], 0, 68, 97, &[]);
    let r = d.decode(&frame, device(), Utc::now()).unwrap();
    assert_eq!(r.device_time, None);
    assert!(r.flags.contains(&ReadingFlag::ClockNotSet));
}

#[test]
fn an_impossible_length_is_rejected_and_scanning_resumes() {
    let d = nonin_df13();
    let good = df13([20, 24, 1, 1, 0, 0, 0], 0, 60, 99, &[]);
    let stream = [&[0x00, 0x02, 0x00, 0x0D, 0xFF, 0xFF][..], &good].concat();
    let mut scanner = d.scanner();
    let mut events = Vec::new();
    scanner.push(&stream, &mut events);
    assert!(matches!(
        events[0],
        ScanEvent::Rejected {
            reason: FrameRejection::Length(_),
            ..
        }
    ));
    assert_eq!(events.last(), Some(&ScanEvent::Unit(good)));
}

#[test]
fn a_wrong_trailer_is_rejected() {
    let d = nonin_df13();
    let mut frame = df13([20, 24, 1, 1, 0, 0, 0], 0, 60, 99, &[]);
    let last = frame.len() - 1;
    frame[last] = 0x04;
    let mut scanner = d.scanner();
    let mut events = Vec::new();
    scanner.push(&frame, &mut events);
    assert!(matches!(
        events[0],
        ScanEvent::Rejected {
            reason: FrameRejection::Trailer,
            ..
        }
    ));
}

#[test]
fn crc16_variants_match_their_published_check_values() {
    let data = b"123456789";
    for (kind, check) in [
        (ChecksumKind::Crc16CcittFalse, 0x29B1),
        (ChecksumKind::Crc16Xmodem, 0x31C3),
        (ChecksumKind::Crc16Kermit, 0x2189),
        (ChecksumKind::Crc16Modbus, 0x4B37),
        (ChecksumKind::Crc16Arc, 0xBB3D),
        (ChecksumKind::Crc8, 0xF4),
        (ChecksumKind::Crc32, 0xCBF43926),
    ] {
        assert_eq!(kind.compute(data), check, "{kind:?}");
    }
}

#[test]
fn a_modbus_crc_is_read_little_endian_at_the_end_of_the_frame() {
    let mut frame = vec![0x01, 0x03, 0x02, 0x00, 0x48];
    let crc = ChecksumKind::Crc16Modbus.compute(&frame) as u16;
    frame.extend(crc.to_le_bytes());
    let c = Checksum {
        kind: ChecksumKind::Crc16Modbus,
        from: 0,
        to: -2,
        at: -2,
        endian: Endian::Little,
    };
    assert!(c.verify(&frame));
    frame[3] = 1;
    assert!(!c.verify(&frame));
}

#[test]
fn signed_and_little_endian_values_are_read_exactly() {
    let bytes = [0xFE, 0xFF, 0x34, 0x12];
    let i16le = ValueLayout::Int {
        offset: 0,
        ty: IntType::I16,
        endian: Endian::Little,
        mask: None,
        shift: 0,
    };
    assert_eq!(i16le.read(&bytes), Some(-2));
    let u16le = ValueLayout::Int {
        offset: 2,
        ty: IntType::U16,
        endian: Endian::Little,
        mask: Some(0x0FF0),
        shift: 4,
    };
    assert_eq!(u16le.read(&bytes), Some(0x23));
    assert_eq!(u16le.read(&bytes[..3]), None, "out of bounds is None");
}

#[test]
fn a_scale_gives_the_value_its_decimal_places() {
    let mut d = cms50();
    d.fields[1].spec.scale = Some(Decimal::new(1, 1));
    let r = d
        .decode(&[0x80, 0, 0, 0x48, 0x62], device(), Utc::now())
        .unwrap();
    assert_eq!(values(&r), ["72", "9.8"]);
}

#[test]
fn bit_ranges_parse_strictly() {
    assert_eq!(
        BitRange::parse("0[1:0]"),
        Some(BitRange {
            byte: 0,
            high: 1,
            low: 0
        })
    );
    assert_eq!(BitRange::parse("2[6]").map(|r| r.width()), Some(1));
    for bad in ["0[0:1]", "0[8]", "x[1]", "1[2", "[1]"] {
        assert_eq!(BitRange::parse(bad), None, "{bad}");
    }
}
