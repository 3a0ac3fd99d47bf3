//! Binary frame decoding for serial devices: a declarative layout of sync patterns, frame
//! size, checksum and fields, configured from a profile's `[serial.frame]` table.
//!
//! Two pure parts, no IO:
//!
//! - [`FrameScanner`] turns a byte stream that starts anywhere (mid-frame after the port
//!   opens, with line noise, with frames split across reads) into whole, checked frames.
//!   A candidate frame is accepted only when every sync pattern matches and its checksum
//!   is right; otherwise one byte is dropped and the scan resumes at the next byte, so a
//!   corrupt frame never costs the valid frame that follows it. When the profile groups
//!   frames into packets (Nonin's 25-frame packets), the scanner also assembles packets,
//!   starting at a frame matching the packet-start pattern and discarding a packet that
//!   lost a frame.
//! - [`FrameDecoder`] reads fields (offset, integer type, endianness, mask and shift, or
//!   bits gathered from several bytes), "no reading" raw values, status flags and an
//!   optional timestamp out of one frame or packet, giving a [`Reading`].
//!
//! Every read is bounds-checked: no layout, however wrong, makes the decoder panic.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

use super::{scale_keeping_precision, DecodeError, FieldSpec};
use crate::reading::{AbsentReason, DeviceIdentity, DeviceTime, Quantity, Reading, ReadingFlag};

/// An integer type of a field or length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntType {
    /// Unsigned 8-bit.
    U8,
    /// Signed 8-bit.
    I8,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit.
    U32,
    /// Signed 32-bit.
    I32,
}

impl IntType {
    /// The size in bytes.
    pub fn size(self) -> usize {
        match self {
            IntType::U8 | IntType::I8 => 1,
            IntType::U16 | IntType::I16 => 2,
            IntType::U32 | IntType::I32 => 4,
        }
    }

    /// Whether the type is signed (two's complement).
    pub fn signed(self) -> bool {
        matches!(self, IntType::I8 | IntType::I16 | IntType::I32)
    }

    /// Parses a profile's type name (`u8`, `i16`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "u8" => IntType::U8,
            "i8" => IntType::I8,
            "u16" => IntType::U16,
            "i16" => IntType::I16,
            "u32" => IntType::U32,
            "i32" => IntType::I32,
            _ => return None,
        })
    }
}

/// Byte order of a multi-byte value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// Most significant byte first.
    Big,
    /// Least significant byte first.
    Little,
}

/// Reads `n` bytes at `offset` as an unsigned integer, or `None` when out of bounds.
fn read_uint(bytes: &[u8], offset: usize, n: usize, endian: Endian) -> Option<u64> {
    let slice = bytes.get(offset..offset.checked_add(n)?)?;
    let mut v: u64 = 0;
    match endian {
        Endian::Big => slice.iter().for_each(|b| v = (v << 8) | u64::from(*b)),
        Endian::Little => slice
            .iter()
            .rev()
            .for_each(|b| v = (v << 8) | u64::from(*b)),
    }
    Some(v)
}

/// Bits `high..=low` of one byte; several ranges are concatenated, most significant first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitRange {
    /// The byte offset in the frame (or packet).
    pub byte: usize,
    /// The highest bit taken (7 is the most significant bit of the byte).
    pub high: u8,
    /// The lowest bit taken.
    pub low: u8,
}

impl BitRange {
    /// The number of bits taken.
    pub fn width(&self) -> u32 {
        u32::from(self.high.saturating_sub(self.low)) + 1
    }

    /// Parses `BYTE[HIGH:LOW]` or `BYTE[BIT]`, e.g. `0[1:0]`, `2[6]`.
    pub fn parse(text: &str) -> Option<Self> {
        let (byte, rest) = text.trim().split_once('[')?;
        let bits = rest.strip_suffix(']')?;
        let byte: usize = byte.trim().parse().ok()?;
        let (high, low) = match bits.split_once(':') {
            Some((h, l)) => (h.trim().parse().ok()?, l.trim().parse().ok()?),
            None => {
                let b: u8 = bits.trim().parse().ok()?;
                (b, b)
            }
        };
        (high <= 7 && low <= high).then_some(BitRange { byte, high, low })
    }
}

/// Where and how a value sits in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueLayout {
    /// An integer at a byte offset; `mask` and `shift` extract a bit field from its
    /// unsigned bits: `(raw & mask) >> shift`.
    Int {
        /// Byte offset in the frame (or packet).
        offset: usize,
        /// The integer type.
        ty: IntType,
        /// Byte order (for types wider than one byte).
        endian: Endian,
        /// Bits kept, if any (applied before the shift).
        mask: Option<u64>,
        /// Right shift applied after the mask.
        shift: u32,
    },
    /// Bit ranges of several bytes concatenated, most significant first (Nonin's 9-bit
    /// heart rate is `0[1:0]` then `1[6:0]`).
    Bits(Vec<BitRange>),
}

impl ValueLayout {
    /// The number of bytes a frame needs for this value to be readable.
    pub fn end(&self) -> usize {
        match self {
            ValueLayout::Int { offset, ty, .. } => offset.saturating_add(ty.size()),
            ValueLayout::Bits(ranges) => ranges
                .iter()
                .map(|r| r.byte.saturating_add(1))
                .max()
                .unwrap_or(0),
        }
    }

    /// The raw value, or `None` when the frame is too short.
    pub fn read(&self, bytes: &[u8]) -> Option<i64> {
        match self {
            ValueLayout::Int {
                offset,
                ty,
                endian,
                mask,
                shift,
            } => {
                let raw = read_uint(bytes, *offset, ty.size(), *endian)?;
                if mask.is_none() && *shift == 0 && ty.signed() {
                    let bits = 64 - 8 * ty.size() as u32;
                    return Some(((raw << bits) as i64) >> bits);
                }
                let masked = raw & mask.unwrap_or(u64::MAX);
                Some(masked.checked_shr(*shift).unwrap_or(0) as i64)
            }
            ValueLayout::Bits(ranges) => {
                let mut v: u64 = 0;
                for r in ranges {
                    let byte = *bytes.get(r.byte)?;
                    let width = r.width();
                    let part = (u64::from(byte) >> r.low) & ((1u64 << width) - 1);
                    v = v.checked_shl(width).unwrap_or(0) | part;
                }
                Some((v & (i64::MAX as u64)) as i64)
            }
        }
    }
}

/// A test on one byte: `byte & mask == value`. Sync bytes are patterns with mask `0xFF`;
/// "bit 7 set" is mask `0x80`, value `0x80`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BytePattern {
    /// Byte offset; negative offsets count from the end of the frame (`-1` is the last).
    pub offset: isize,
    /// The bits compared.
    pub mask: u8,
    /// Their expected value.
    pub value: u8,
}

/// Resolves a possibly negative offset within a frame of `len` bytes.
fn resolve(offset: isize, len: usize) -> Option<usize> {
    if offset >= 0 {
        let o = offset as usize;
        (o < len).then_some(o)
    } else {
        len.checked_sub(offset.unsigned_abs())
    }
}

/// Resolves a range bound (`0..=len`; negative counts from the end).
fn resolve_bound(offset: isize, len: usize) -> Option<usize> {
    if offset >= 0 {
        let o = offset as usize;
        (o <= len).then_some(o)
    } else {
        len.checked_sub(offset.unsigned_abs())
    }
}

impl BytePattern {
    /// Whether the pattern holds in `frame`; `None` when the byte is not there.
    pub fn matches(&self, frame: &[u8]) -> Option<bool> {
        let i = resolve(self.offset, frame.len())?;
        Some(frame[i] & self.mask == self.value & self.mask)
    }
}

/// How long a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSize {
    /// Every frame has this many bytes.
    Fixed(usize),
    /// A length field in the header: frame size = its value + `add`, at most `max`.
    Prefixed {
        /// Byte offset of the length field.
        offset: usize,
        /// Its type (unsigned).
        ty: IntType,
        /// Its byte order.
        endian: Endian,
        /// Bytes added to the length field's value to get the whole frame's size
        /// (header and trailer not counted by the device).
        add: i64,
        /// The largest frame accepted, in bytes.
        max: usize,
    },
}

impl FrameSize {
    /// The most bytes a frame can have.
    pub fn max(&self) -> usize {
        match self {
            FrameSize::Fixed(n) => *n,
            FrameSize::Prefixed { max, .. } => *max,
        }
    }
}

/// A checksum algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    /// Sum of the bytes modulo 256 (Nonin).
    Sum8,
    /// XOR of the bytes.
    Xor8,
    /// CRC-8/SMBUS (poly 0x07).
    Crc8,
    /// CRC-16/CCITT-FALSE, also called CRC-16/IBM-3740 (poly 0x1021, init 0xFFFF).
    Crc16CcittFalse,
    /// CRC-16/XMODEM (poly 0x1021, init 0).
    Crc16Xmodem,
    /// CRC-16/KERMIT (CCITT, reflected).
    Crc16Kermit,
    /// CRC-16/MODBUS (poly 0x8005 reflected, init 0xFFFF).
    Crc16Modbus,
    /// CRC-16/ARC (poly 0x8005 reflected, init 0).
    Crc16Arc,
    /// CRC-32/ISO-HDLC (the zlib/Ethernet CRC-32).
    Crc32,
}

const CRC8: crc::Crc<u8> = crc::Crc::<u8>::new(&crc::CRC_8_SMBUS);
const CRC16_CCITT_FALSE: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);
const CRC16_XMODEM: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);
const CRC16_KERMIT: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_KERMIT);
const CRC16_MODBUS: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_MODBUS);
const CRC16_ARC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_ARC);
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

impl ChecksumKind {
    /// All kinds with their profile names.
    pub const ALL: &'static [(&'static str, ChecksumKind)] = &[
        ("sum8", ChecksumKind::Sum8),
        ("xor8", ChecksumKind::Xor8),
        ("crc8", ChecksumKind::Crc8),
        ("crc16-ccitt-false", ChecksumKind::Crc16CcittFalse),
        ("crc16-xmodem", ChecksumKind::Crc16Xmodem),
        ("crc16-kermit", ChecksumKind::Crc16Kermit),
        ("crc16-modbus", ChecksumKind::Crc16Modbus),
        ("crc16-arc", ChecksumKind::Crc16Arc),
        ("crc32", ChecksumKind::Crc32),
    ];

    /// Parses a profile's checksum name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
    }

    /// The size of the checksum in the frame, in bytes.
    pub fn size(self) -> usize {
        match self {
            ChecksumKind::Sum8 | ChecksumKind::Xor8 | ChecksumKind::Crc8 => 1,
            ChecksumKind::Crc32 => 4,
            _ => 2,
        }
    }

    /// Computes the checksum of `data`.
    pub fn compute(self, data: &[u8]) -> u64 {
        match self {
            ChecksumKind::Sum8 => u64::from(data.iter().fold(0u8, |a, b| a.wrapping_add(*b))),
            ChecksumKind::Xor8 => u64::from(data.iter().fold(0u8, |a, b| a ^ b)),
            ChecksumKind::Crc8 => u64::from(CRC8.checksum(data)),
            ChecksumKind::Crc16CcittFalse => u64::from(CRC16_CCITT_FALSE.checksum(data)),
            ChecksumKind::Crc16Xmodem => u64::from(CRC16_XMODEM.checksum(data)),
            ChecksumKind::Crc16Kermit => u64::from(CRC16_KERMIT.checksum(data)),
            ChecksumKind::Crc16Modbus => u64::from(CRC16_MODBUS.checksum(data)),
            ChecksumKind::Crc16Arc => u64::from(CRC16_ARC.checksum(data)),
            ChecksumKind::Crc32 => u64::from(CRC32.checksum(data)),
        }
    }
}

/// Where a frame's checksum is and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub kind: ChecksumKind,
    /// First byte covered (negative: from the end).
    pub from: isize,
    /// End of the covered bytes, exclusive (negative: from the end; `-1` stops before the
    /// last byte).
    pub to: isize,
    /// Offset of the checksum itself (negative: from the end).
    pub at: isize,
    /// Byte order of a multi-byte checksum.
    pub endian: Endian,
}

impl Checksum {
    /// Whether `frame` carries a right checksum; `false` when the ranges fall outside it.
    pub fn verify(&self, frame: &[u8]) -> bool {
        let len = frame.len();
        let (Some(from), Some(to), Some(at)) = (
            resolve_bound(self.from, len),
            resolve_bound(self.to, len),
            resolve(self.at, len),
        ) else {
            return false;
        };
        let (Some(data), Some(stored)) = (
            frame.get(from..to),
            read_uint(frame, at, self.kind.size(), self.endian),
        ) else {
            return false;
        };
        self.kind.compute(data) == stored
    }
}

/// Frames grouped into packets whose fields span several frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Frames per packet.
    pub frames: usize,
    /// Patterns (offsets within a frame) marking the first frame of a packet.
    pub start: Vec<BytePattern>,
}

/// How to find frames in a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameSpec {
    /// The frame size.
    pub size: FrameSize,
    /// Byte patterns every frame matches (sync bytes, bit-7 rules, trailers).
    pub sync: Vec<BytePattern>,
    /// The checksum, if the device sends one.
    pub checksum: Option<Checksum>,
    /// Packet assembly, if fields span several frames.
    pub packet: Option<Packet>,
}

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

/// A status fact read from a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// Every field is "no reading" while the pattern holds (CMS50 finger out, Nonin "no
    /// measurement").
    NoReading,
    /// The reading was replayed from the device's memory.
    FromStorage,
    /// The device's clock is not set.
    ClockNotSet,
    /// Test or demonstration data: never a patient value.
    TestData,
}

impl FlagKind {
    /// All kinds with their profile names.
    pub const ALL: &'static [(&'static str, FlagKind)] = &[
        ("no_reading", FlagKind::NoReading),
        ("from_storage", FlagKind::FromStorage),
        ("clock_not_set", FlagKind::ClockNotSet),
        ("test_data", FlagKind::TestData),
    ];
}

/// A status flag: when `pattern` holds in a frame, `kind` applies to its reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFlag {
    /// The bits tested.
    pub pattern: BytePattern,
    /// What it means.
    pub kind: FlagKind,
}

/// One field of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameField {
    /// Name, unit and scale (its `source` and `no_reading` texts are unused).
    pub spec: FieldSpec,
    /// Where the raw value is.
    pub layout: ValueLayout,
    /// Raw values meaning "no reading" (Nonin: heart rate 511, SpO2 127).
    pub no_reading: Vec<i64>,
}

/// Where the date and time are in a frame. The time has no zone (device wall clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameTimestamp {
    /// The century (`20` for 2024), when the year is split in two.
    pub century: Option<ValueLayout>,
    /// The year (full, or within the century).
    pub year: ValueLayout,
    /// Added to the year (e.g. 2000 for a two-digit year without century).
    pub year_base: i64,
    /// Month 1-12.
    pub month: ValueLayout,
    /// Day 1-31.
    pub day: ValueLayout,
    /// Hour 0-23.
    pub hour: ValueLayout,
    /// Minute 0-59.
    pub minute: ValueLayout,
    /// Second 0-59.
    pub second: ValueLayout,
}

/// A compiled frame decoder: framing plus fields.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameDecoder {
    /// How frames are found.
    pub spec: FrameSpec,
    /// The fields.
    pub fields: Vec<FrameField>,
    /// Status flags.
    pub flags: Vec<FrameFlag>,
    /// The device timestamp, if frames carry one.
    pub timestamp: Option<FrameTimestamp>,
}

impl FrameDecoder {
    /// A scanner for this decoder's framing.
    pub fn scanner(&self) -> FrameScanner {
        FrameScanner::new(self.spec.clone())
    }

    /// Decodes one frame or packet (as given by the scanner) into a reading.
    ///
    /// An impossible date gives a reading without device time, flagged
    /// [`ReadingFlag::ClockNotSet`], so the gateway uses its receive time.
    pub fn decode(
        &self,
        unit: &[u8],
        device: Arc<DeviceIdentity>,
        received_at: DateTime<Utc>,
    ) -> Result<Reading, DecodeError> {
        let mut flags = Vec::new();
        let mut no_reading = false;
        for f in &self.flags {
            if f.pattern.matches(unit) == Some(true) {
                match f.kind {
                    FlagKind::NoReading => no_reading = true,
                    FlagKind::FromStorage => flags.push(ReadingFlag::FromStorage),
                    FlagKind::ClockNotSet => flags.push(ReadingFlag::ClockNotSet),
                    FlagKind::TestData => flags.push(ReadingFlag::TestData),
                }
            }
        }
        let mut quantities = Vec::with_capacity(self.fields.len());
        for field in &self.fields {
            let spec = &field.spec;
            let raw = field.layout.read(unit).ok_or_else(|| {
                DecodeError::Mismatch(format!(
                    "field `{}` lies beyond the frame of {} bytes",
                    spec.name,
                    unit.len()
                ))
            })?;
            if no_reading || field.no_reading.contains(&raw) {
                quantities.push(Quantity::absent(
                    spec.name.clone(),
                    AbsentReason::NotANumber,
                    spec.unit.clone(),
                ));
                continue;
            }
            let mut value = Decimal::from(raw);
            if let Some(scale) = spec.scale {
                value =
                    scale_keeping_precision(value, scale).ok_or_else(|| DecodeError::BadValue {
                        field: spec.name.clone(),
                        reason: "value out of range after scaling".into(),
                    })?;
            }
            quantities.push(Quantity::new(spec.name.clone(), value, spec.unit.clone()));
        }
        if quantities.is_empty() {
            return Err(DecodeError::Empty);
        }
        let device_time = match &self.timestamp {
            None => None,
            Some(ts) => match read_time(ts, unit) {
                Some(t) => Some(DeviceTime::Local(t)),
                None => {
                    flags.push(ReadingFlag::ClockNotSet);
                    None
                }
            },
        };
        Ok(Reading {
            device,
            device_time,
            received_at,
            sequence: None,
            quantities,
            flags,
        })
    }
}

/// The frame's date and time, or `None` when it is missing or impossible.
fn read_time(ts: &FrameTimestamp, unit: &[u8]) -> Option<chrono::NaiveDateTime> {
    let get = |l: &ValueLayout| l.read(unit);
    let mut year = get(&ts.year)?.checked_add(ts.year_base)?;
    if let Some(c) = &ts.century {
        year = year.checked_add(get(c)?.checked_mul(100)?)?;
    }
    let u = |v: i64| u32::try_from(v).ok();
    NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        u(get(&ts.month)?)?,
        u(get(&ts.day)?)?,
    )?
    .and_hms_opt(
        u(get(&ts.hour)?)?,
        u(get(&ts.minute)?)?,
        u(get(&ts.second)?)?,
    )
}

#[cfg(test)]
mod tests;
