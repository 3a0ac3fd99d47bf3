//! Arbitrary bytes, cut into arbitrary reads, through the binary frame scanner and
//! decoder, with the layouts of the shipped binary profiles and with layouts built from
//! the input itself. Nothing may panic, and every frame the scanner accepts really
//! passes its sync patterns and checksum.

#![no_main]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use iomt_drivers::decode::frame::*;
use iomt_drivers::decode::FieldSpec;
use iomt_drivers::{DeviceIdentity, Transport};
use libfuzzer_sys::fuzz_target;

fn spec(name: &str) -> FieldSpec {
    FieldSpec {
        name: name.into(),
        source: name.into(),
        unit: "/min".into(),
        scale: Some(rust_decimal::Decimal::new(5, 1)),
        no_reading: Vec::new(),
    }
}

fn p(offset: isize, mask: u8, value: u8) -> BytePattern {
    BytePattern {
        offset,
        mask,
        value,
    }
}

fn int(offset: usize, ty: IntType, endian: Endian, mask: Option<u64>, shift: u32) -> ValueLayout {
    ValueLayout::Int {
        offset,
        ty,
        endian,
        mask,
        shift,
    }
}

fn field(layout: ValueLayout, no_reading: Vec<i64>) -> FrameField {
    FrameField {
        spec: spec("value"),
        layout,
        no_reading,
    }
}

/// A decoder chosen (or built) from the first bytes of the input.
fn decoder(control: &[u8]) -> FrameDecoder {
    let c = |i: usize| control.get(i).copied().unwrap_or(0);
    let kinds = ChecksumKind::ALL;
    match c(0) % 4 {
        // Nonin OEM III format 2: packets of frames.
        0 => FrameDecoder {
            spec: FrameSpec {
                size: FrameSize::Fixed(5),
                sync: vec![p(0, 0xFF, 0x01), p(1, 0x80, 0x80)],
                checksum: Some(Checksum {
                    kind: ChecksumKind::Sum8,
                    from: 0,
                    to: -1,
                    at: -1,
                    endian: Endian::Big,
                }),
                packet: Some(Packet {
                    frames: usize::from(c(1) % 30).max(2),
                    start: vec![p(1, 0x01, 0x01)],
                }),
            },
            fields: vec![
                field(ValueLayout::Bits(vec![
                    BitRange { byte: 3, high: 1, low: 0 },
                    BitRange { byte: 8, high: 6, low: 0 },
                ]), vec![511]),
                field(int(13, IntType::U8, Endian::Big, Some(0x7F), 0), vec![127]),
            ],
            flags: vec![FrameFlag { pattern: p(1, 0x40, 0x40), kind: FlagKind::NoReading }],
            timestamp: None,
        },
        // Nonin 9560 format 13: length-prefixed with a timestamp.
        1 => {
            let at = |o| int(o, IntType::U8, Endian::Big, None, 0);
            FrameDecoder {
                spec: FrameSpec {
                    size: FrameSize::Prefixed {
                        offset: 4,
                        ty: IntType::U16,
                        endian: Endian::Big,
                        add: i64::from(c(1) as i8),
                        max: 64 + usize::from(c(2)),
                    },
                    sync: vec![p(0, 0xFF, 0), p(1, 0xFF, 2), p(-1, 0xFF, 3)],
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
                    field(int(16, IntType::U16, Endian::Big, None, 0), vec![511]),
                    field(at(19), vec![127]),
                ],
                flags: vec![FrameFlag { pattern: p(15, 0x10, 0x10), kind: FlagKind::FromStorage }],
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
        // Contec CMS50: bit-7 sync, no checksum.
        2 => FrameDecoder {
            spec: FrameSpec {
                size: FrameSize::Fixed(5),
                sync: (0..5).map(|i| p(i, 0x80, if i == 0 { 0x80 } else { 0 })).collect(),
                checksum: None,
                packet: None,
            },
            fields: vec![
                field(ValueLayout::Bits(vec![
                    BitRange { byte: 2, high: 6, low: 6 },
                    BitRange { byte: 3, high: 6, low: 0 },
                ]), vec![]),
                field(int(4, IntType::U8, Endian::Big, Some(0x7F), 0), vec![]),
            ],
            flags: vec![FrameFlag { pattern: p(0, 0x10, 0x10), kind: FlagKind::NoReading }],
            timestamp: None,
        },
        // A layout built from the input: any size, checksum, offsets and types.
        _ => {
            let size = usize::from(c(1) % 40).max(1);
            let types = [IntType::U8, IntType::I8, IntType::U16, IntType::I16, IntType::U32, IntType::I32];
            let endian = if c(2) & 1 == 0 { Endian::Big } else { Endian::Little };
            let (_, kind) = kinds[usize::from(c(3)) % kinds.len()];
            let length = c(2) & 2 != 0;
            FrameDecoder {
                spec: FrameSpec {
                    size: if length {
                        FrameSize::Prefixed {
                            offset: usize::from(c(4) % 8),
                            ty: types[usize::from(c(5)) % 3 * 2],
                            endian,
                            add: i64::from(c(6) as i8),
                            max: size * 4,
                        }
                    } else {
                        FrameSize::Fixed(size)
                    },
                    sync: vec![p(i8::from_le_bytes([c(7)]) as isize % 8, c(8), c(9))],
                    checksum: Some(Checksum {
                        kind,
                        from: (c(10) as i8 % 8) as isize,
                        to: (c(11) as i8 % 8) as isize,
                        at: (c(12) as i8 % 8) as isize,
                        endian,
                    }),
                    packet: None,
                },
                fields: vec![
                    field(int(usize::from(c(13) % 48), types[usize::from(c(14)) % types.len()], endian, (c(15) != 0).then(|| u64::from(c(15))), u32::from(c(16) % 70)), vec![0]),
                    field(ValueLayout::Bits(vec![BitRange { byte: usize::from(c(17) % 48), high: c(18) % 8, low: 0 }]), vec![]),
                ],
                flags: vec![FrameFlag { pattern: p(i8::from_le_bytes([c(19)]) as isize, c(20), c(21)), kind: FlagKind::ClockNotSet }],
                timestamp: None,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let (control, bytes) = data.split_at(24);
    let d = decoder(control);
    let chunk = usize::from(control[23]).max(1);
    let device = Arc::new(DeviceIdentity {
        revisions: Default::default(),
        profile: "fuzz".into(),
        transport: Transport::Serial,
        address: "/dev/fuzz".into(),
        serial_number: None,
        manufacturer: None,
        model: None,
    });
    let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
    let mut scanner = d.scanner();
    let mut events = Vec::new();
    for piece in bytes.chunks(chunk) {
        scanner.push(piece, &mut events);
    }
    for e in events {
        if let ScanEvent::Unit(unit) = e {
            if d.spec.packet.is_none() {
                assert!(d.spec.sync.iter().all(|s| s.matches(&unit) == Some(true)));
                if let Some(c) = d.spec.checksum {
                    assert!(c.verify(&unit));
                }
            }
            let _ = d.decode(&unit, device.clone(), at);
        }
    }
});
