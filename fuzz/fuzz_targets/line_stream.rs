//! Arbitrary bytes, cut into arbitrary reads, through the serial line splitter and the
//! regex line decoder (Masimo ASCII 1 and Tanita BC-418 layouts). Nothing may panic; no
//! line longer than the limit may come out; every reading has the fields it claims.

#![no_main]

use std::sync::{Arc, OnceLock};

use chrono::{TimeZone, Utc};
use iomt_drivers::decode::line::{LineDecoder, LineRegex, LineTimestamp};
use iomt_drivers::decode::stream::{Framing, StreamDecoder, StreamProblem};
use iomt_drivers::decode::FieldSpec;
use iomt_drivers::{DeviceIdentity, Transport};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 96;

fn field(name: &str, unit: &str, scale: Option<&str>) -> FieldSpec {
    FieldSpec {
        name: name.into(),
        source: name.into(),
        unit: unit.into(),
        scale: scale.map(|s| s.parse().unwrap()),
        no_reading: vec!["---".into(), "--.-".into()],
    }
}

fn decoders() -> [Arc<Framing>; 2] {
    let masimo = Framing::Line {
        terminator: "\r\n".into(),
        max_length: MAX,
        decoder: LineDecoder {
            regex: LineRegex::new(r"^(?P<date>\d\d/\d\d/\d\d) (?P<time>\d\d:\d\d:\d\d) .*?SPO2=(?P<spo2>[-\d]+)%?\s+BPM=(?P<bpm>[-\d]+)%?").unwrap().0,
            fields: vec![field("spo2", "%", None), field("bpm", "/min", Some("0.1"))],
            timestamp: Some(LineTimestamp {
                captures: vec!["date".into(), "time".into()],
                format: "%m/%d/%y %H:%M:%S".into(),
            }),
        },
    };
    let tanita = Framing::Line {
        terminator: "\r".into(),
        max_length: MAX,
        decoder: LineDecoder {
            regex: LineRegex::new(r#"^"?(?P<date>\d\d/\d\d/\d\d)"?,"?(?P<time>\d\d:\d\d)"?,(?P<weight>[^,]*),(?P<fat>[^,]*)"#).unwrap().0,
            fields: vec![field("weight", "kg", None), field("fat", "%", Some("1e3"))],
            timestamp: Some(LineTimestamp {
                captures: vec!["date".into(), "time".into()],
                format: "%d/%m/%y %H:%M".into(),
            }),
        },
    };
    [Arc::new(masimo), Arc::new(tanita)]
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, bytes)) = data.split_first() else {
        return;
    };
    static DECODERS: OnceLock<[Arc<Framing>; 2]> = OnceLock::new();
    let framing = DECODERS.get_or_init(decoders)[usize::from(control & 1)].clone();
    let chunk = usize::from(control >> 1).max(1);
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
    let mut stream = StreamDecoder::new(framing);
    for piece in bytes.chunks(chunk) {
        for item in stream.feed(piece, &device, at) {
            match item {
                Ok(r) => assert!(!r.quantities.is_empty() && r.quantities.len() <= 2),
                Err(StreamProblem::BadLine { raw, .. }) => assert!(raw.len() <= MAX * 3),
                Err(StreamProblem::LineTooLong { raw }) => assert!(raw.len() <= 64),
                Err(_) => {}
            }
        }
    }
});
