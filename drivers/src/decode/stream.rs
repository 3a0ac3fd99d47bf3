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
                        ScanEvent::Unit(unit) => out.push(
                            decoder
                                .decode(&unit, device.clone(), received_at)
                                .map_err(|error| StreamProblem::Undecodable { error, raw: unit }),
                        ),
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
