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

mod decoder;
mod scanner;

pub use decoder::{FlagKind, FrameDecoder, FrameField, FrameFlag, FrameTimestamp};
pub use scanner::{FrameRejection, FrameScanner, ScanEvent, ScanStats};

#[cfg(doc)]
use crate::reading::Reading;

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

#[cfg(test)]
mod tests;
