//! [`FrameScanner`]: a byte stream that starts anywhere into whole, checked frames and
//! packets.

use super::{read_uint, FrameSize, FrameSpec};

/// Why a candidate frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameRejection {
    /// The checksum did not match.
    #[error("bad checksum")]
    Checksum,
    /// A sync pattern at the end of the frame (a trailer) did not match.
    #[error("frame trailer does not match")]
    Trailer,
    /// The length field gave an impossible size.
    #[error("length field gives an impossible frame size of {0} bytes")]
    Length(i64),
}

/// What the scanner found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanEvent {
    /// A whole, checked frame (or a whole packet, when packets are configured).
    Unit(Vec<u8>),
    /// A candidate frame that failed a check, with its raw bytes; scanning resumed one
    /// byte after its start.
    Rejected {
        /// Why.
        reason: FrameRejection,
        /// The candidate's bytes.
        raw: Vec<u8>,
    },
}

/// Counters of a scanner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Valid frames found.
    pub frames: u64,
    /// Candidate frames rejected (checksum, trailer, length).
    pub rejected: u64,
    /// Bytes skipped while looking for a frame start (line noise, partial first frame).
    pub skipped_bytes: u64,
    /// Packets completed.
    pub packets: u64,
    /// Packets dropped because a frame was lost or a new packet started early.
    pub incomplete_packets: u64,
}

/// Finds checked frames (and packets) in a byte stream. See the module documentation.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    spec: FrameSpec,
    buf: Vec<u8>,
    start: usize,
    packet: Vec<u8>,
    packet_frames: usize,
    /// Counters since creation.
    pub stats: ScanStats,
}

impl FrameScanner {
    /// A scanner for `spec`.
    pub fn new(spec: FrameSpec) -> Self {
        Self {
            spec,
            buf: Vec::new(),
            start: 0,
            packet: Vec::new(),
            packet_frames: 0,
            stats: ScanStats::default(),
        }
    }

    /// Forgets partial data (after the port was reopened).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.drop_packet();
    }

    fn drop_packet(&mut self) {
        if self.packet_frames > 0 {
            self.stats.incomplete_packets += 1;
        }
        self.packet.clear();
        self.packet_frames = 0;
    }

    fn skip(&mut self, n: usize) {
        self.start += n;
        self.stats.skipped_bytes += n as u64;
        self.drop_packet();
    }

    /// Adds bytes read from the port and appends what they complete to `out`.
    ///
    /// The scanner keeps at most one maximal frame of unconsumed bytes between calls.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<ScanEvent>) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
        while let Some(step) = self.step() {
            if let Some(event) = step {
                out.push(event);
            }
        }
        self.buf.drain(..self.start);
        self.start = 0;
    }

    /// One scanning step: `None` when more bytes are needed, `Some(None)` when bytes were
    /// consumed without an event.
    fn step(&mut self) -> Option<Option<ScanEvent>> {
        let avail = &self.buf[self.start..];
        if avail.is_empty() {
            return None;
        }
        // Header patterns (non-negative offsets) are checked as soon as their byte is in.
        for p in &self.spec.sync {
            if p.offset >= 0 && (p.offset as usize) < avail.len() {
                let b = avail[p.offset as usize];
                if b & p.mask != p.value & p.mask {
                    self.skip(1);
                    return Some(None);
                }
            }
        }
        let len = match self.spec.size {
            FrameSize::Fixed(n) => n.max(1),
            FrameSize::Prefixed {
                offset,
                ty,
                endian,
                add,
                max,
            } => {
                let raw = read_uint(avail, offset, ty.size(), endian)?;
                let total = i64::try_from(raw).unwrap_or(i64::MAX).saturating_add(add);
                let header = offset + ty.size();
                if total < header as i64 || total > max as i64 {
                    let raw = avail[..header.min(avail.len())].to_vec();
                    self.stats.rejected += 1;
                    self.skip(1);
                    return Some(Some(ScanEvent::Rejected {
                        reason: FrameRejection::Length(total),
                        raw,
                    }));
                }
                total as usize
            }
        };
        if avail.len() < len {
            return None;
        }
        let frame = &avail[..len];
        let mut reason = None;
        if self
            .spec
            .sync
            .iter()
            .any(|p| p.matches(frame) != Some(true))
        {
            reason = Some(FrameRejection::Trailer);
        } else if self.spec.checksum.is_some_and(|c| !c.verify(frame)) {
            reason = Some(FrameRejection::Checksum);
        }
        if let Some(reason) = reason {
            let raw = frame.to_vec();
            self.stats.rejected += 1;
            self.skip(1);
            return Some(Some(ScanEvent::Rejected { reason, raw }));
        }
        let frame = frame.to_vec();
        self.start += len;
        self.stats.frames += 1;
        let Some(packet) = &self.spec.packet else {
            return Some(Some(ScanEvent::Unit(frame)));
        };
        let is_start = packet.start.iter().all(|p| p.matches(&frame) == Some(true));
        let frames = packet.frames;
        if is_start {
            self.drop_packet();
        } else if self.packet_frames == 0 {
            // Waiting for the first frame of a packet.
            return Some(None);
        }
        self.packet.extend_from_slice(&frame);
        self.packet_frames += 1;
        if self.packet_frames >= frames {
            self.packet_frames = 0;
            self.stats.packets += 1;
            return Some(Some(ScanEvent::Unit(std::mem::take(&mut self.packet))));
        }
        Some(None)
    }
}
