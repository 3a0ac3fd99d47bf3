//! A serial byte stream to readings: framing (lines or binary frames) plus decoding, as
//! one pure state machine the serial driver feeds with whatever each read returned.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::frame::{FrameDecoder, FrameRejection, FrameScanner, ScanEvent};
use super::line::{LineDecoder, LineEvent, LineSplitter};
use super::DecodeError;
use crate::reading::{DeviceIdentity, Reading};

/// How a serial device's byte stream is cut and decoded.
#[derive(Debug, Clone)]
pub enum Framing {
    /// Text lines, each decoded with a regex.
    Line {
        /// `"\n"`, `"\r\n"` or `"\r"`.
        terminator: String,
        /// The longest line accepted, in bytes.
        max_length: usize,
        /// The line decoder.
        decoder: LineDecoder,
    },
    /// Binary frames.
    Frame(Box<FrameDecoder>),
}

/// Something in the stream that did not become a reading. None of these carries a
/// decoded value; `raw` holds bytes for a debug log only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamProblem {
    /// A line longer than the limit was discarded.
    LineTooLong {
        /// Its first bytes.
        raw: Vec<u8>,
    },
    /// A line that did not match the profile, or whose values did not decode.
    BadLine {
        /// Why.
        error: DecodeError,
        /// The line's bytes.
        raw: Vec<u8>,
    },
    /// A candidate frame failed its checksum, trailer or length check.
    BadFrame {
        /// Why.
        reason: FrameRejection,
        /// The candidate's bytes.
        raw: Vec<u8>,
    },
    /// A checked frame whose fields did not decode.
    Undecodable {
        /// Why.
        error: DecodeError,
        /// The frame's bytes.
        raw: Vec<u8>,
    },
}

impl StreamProblem {
    /// A short description for logs (no values).
    pub fn describe(&self) -> String {
        match self {
            StreamProblem::LineTooLong { .. } => "line longer than the limit discarded".into(),
            StreamProblem::BadLine { error, .. } => format!("line rejected: {error}"),
            StreamProblem::BadFrame { reason, .. } => format!("frame rejected: {reason}"),
            StreamProblem::Undecodable { error, .. } => format!("frame rejected: {error}"),
        }
    }

    /// The raw bytes involved.
    pub fn raw(&self) -> &[u8] {
        match self {
            StreamProblem::LineTooLong { raw }
            | StreamProblem::BadLine { raw, .. }
            | StreamProblem::BadFrame { raw, .. }
            | StreamProblem::Undecodable { raw, .. } => raw,
        }
    }
}

/// Counters of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Readings decoded.
    pub readings: u64,
    /// Lines or frames rejected (bad checksum, regex mismatch, too long, undecodable).
    pub rejected: u64,
    /// Bytes skipped while resynchronizing on frames (noise, partial frames).
    pub skipped_bytes: u64,
    /// Multi-frame packets dropped because a frame was lost.
    pub incomplete_packets: u64,
}

/// A receive time strictly after the previous reading's: several frames often arrive in
/// one read, and readings without a device clock are identified by their receive time,
/// so two of them must never share it.
fn stamp(last: &mut Option<DateTime<Utc>>, received_at: DateTime<Utc>) -> DateTime<Utc> {
    let at = match *last {
        Some(l) if received_at <= l => l + chrono::Duration::milliseconds(1),
        _ => received_at,
    };
    *last = Some(at);
    at
}

#[derive(Debug, Clone)]
enum State {
    Line(LineSplitter),
    Frame(FrameScanner),
}

/// The byte stream of one port, decoded. Feed it bytes; it returns readings and problems.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    framing: Arc<Framing>,
    state: State,
    rejected: u64,
    readings: u64,
    last_received: Option<DateTime<Utc>>,
}

impl StreamDecoder {
    /// A decoder in its just-opened state.
    pub fn new(framing: Arc<Framing>) -> Self {
        let state = match &*framing {
            Framing::Line {
                terminator,
                max_length,
                ..
            } => State::Line(LineSplitter::new(terminator, *max_length)),
            Framing::Frame(d) => State::Frame(d.scanner()),
        };
        Self {
            framing,
            state,
            rejected: 0,
            readings: 0,
            last_received: None,
        }
    }

    /// Forgets partial data, as after reopening the port.
    pub fn reset(&mut self) {
        match &mut self.state {
            State::Line(s) => s.reset(),
            State::Frame(s) => s.reset(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> StreamStats {
        let (skipped_bytes, incomplete_packets, scan_rejected) = match &self.state {
            State::Line(_) => (0, 0, 0),
            State::Frame(s) => (
                s.stats.skipped_bytes,
                s.stats.incomplete_packets,
                s.stats.rejected,
            ),
        };
        StreamStats {
            readings: self.readings,
            rejected: self.rejected + scan_rejected,
            skipped_bytes,
            incomplete_packets,
        }
    }

    /// Adds bytes read from the port; returns what they complete, in stream order.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        device: &Arc<DeviceIdentity>,
        received_at: DateTime<Utc>,
    ) -> Vec<Result<Reading, StreamProblem>> {
        let mut out = Vec::new();
        match (&mut self.state, &*self.framing) {
            (State::Line(splitter), Framing::Line { decoder, .. }) => {
                let mut events = Vec::new();
                splitter.push(bytes, &mut events);
                for e in events {
                    match e {
                        LineEvent::Line(line) => {
                            let received_at = stamp(&mut self.last_received, received_at);
                            out.push(decoder.decode(&line, device.clone(), received_at).map_err(
                                |error| StreamProblem::BadLine {
                                    error,
                                    raw: line.into_bytes(),
                                },
                            ));
                        }
                        LineEvent::TooLong { head } => {
                            out.push(Err(StreamProblem::LineTooLong { raw: head }))
                        }
                        LineEvent::PartialFirstLine => {}
                    }
                }
            }
            (State::Frame(scanner), Framing::Frame(decoder)) => {
                let mut events = Vec::new();
                scanner.push(bytes, &mut events);
                for e in events {
                    match e {
                        ScanEvent::Unit(unit) => {
                            let received_at = stamp(&mut self.last_received, received_at);
                            out.push(
                                decoder.decode(&unit, device.clone(), received_at).map_err(
                                    |error| StreamProblem::Undecodable { error, raw: unit },
                                ),
                            )
                        }
                        ScanEvent::Rejected { reason, raw } => {
                            // Counted by the scanner itself.
                            out.push(Err(StreamProblem::BadFrame { reason, raw }));
                        }
                    }
                }
            }
            // The state is built from the framing, so the two always agree.
            _ => {}
        }
        for r in &out {
            match r {
                Ok(_) => self.readings += 1,
                Err(StreamProblem::BadFrame { .. }) => {}
                Err(_) => self.rejected += 1,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::frame::{BytePattern, FrameField, FrameSize, FrameSpec, ValueLayout};
    use crate::decode::frame::{Endian, IntType};
    use crate::decode::FieldSpec;
    use crate::reading::Transport;

    #[test]
    fn frames_arriving_in_one_read_get_distinct_receive_times() {
        let framing = Arc::new(Framing::Frame(Box::new(FrameDecoder {
            spec: FrameSpec {
                size: FrameSize::Fixed(2),
                sync: vec![BytePattern {
                    offset: 0,
                    mask: 0xFF,
                    value: 0xAA,
                }],
                checksum: None,
                packet: None,
            },
            fields: vec![FrameField {
                spec: FieldSpec {
                    name: "spo2".into(),
                    source: "spo2".into(),
                    unit: "%".into(),
                    scale: None,
                    no_reading: Vec::new(),
                },
                layout: ValueLayout::Int {
                    offset: 1,
                    ty: IntType::U8,
                    endian: Endian::Big,
                    mask: None,
                    shift: 0,
                },
                no_reading: Vec::new(),
            }],
            flags: Vec::new(),
            timestamp: None,
        })));
        let device = Arc::new(DeviceIdentity {
            revisions: Default::default(),
            profile: "t".into(),
            transport: Transport::Serial,
            address: "/dev/ttyUSB0".into(),
            serial_number: None,
            manufacturer: None,
            model: None,
        });
        let mut s = StreamDecoder::new(framing);
        let now = Utc::now();
        let mut times: Vec<_> = s
            .feed(&[0xAA, 97, 0xAA, 96, 0xAA, 95], &device, now)
            .into_iter()
            .map(|r| r.unwrap().received_at)
            .collect();
        times.extend(
            s.feed(&[0xAA, 94], &device, now)
                .into_iter()
                .map(|r| r.unwrap().received_at),
        );
        assert_eq!(times.len(), 4);
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        assert_eq!(times[0], now);
    }
}
