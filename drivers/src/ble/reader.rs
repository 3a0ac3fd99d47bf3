//! A bounds-checked little-endian reader over one GATT value.
//!
//! A measurement decoder starts with [`Reader::with_flags`], which reads the flags byte and
//! rejects a value shorter than the fields they announce *before* anything else is read;
//! the decoder then only says which fields its characteristic has, in wire order. The
//! reader still checks every read, so a mistake in a decoder's length table is a typed
//! error, never a panic.

use rust_decimal::Decimal;

use super::float::{self, Float11073};
use super::{require, Characteristic, GattError};
use crate::reading::{AbsentReason, Measurement};

/// Reads fields in wire order.
pub(crate) struct Reader<'a> {
    characteristic: Characteristic,
    bytes: &'a [u8],
    pos: usize,
    flags: u8,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`, for a value without a flags byte.
    pub(crate) fn new(characteristic: Characteristic, bytes: &'a [u8]) -> Self {
        Self {
            characteristic,
            bytes,
            pos: 0,
            flags: 0,
        }
    }

    /// A reader past the flags byte of `bytes`. The value must hold `base` bytes (the
    /// flags byte and the fields always present) plus, for each `(bit, size)` of
    /// `optional` whose bit is set in the flags, `size` bytes; a shorter one is
    /// [`GattError::Truncated`] with that required length.
    pub(crate) fn with_flags(
        characteristic: Characteristic,
        bytes: &'a [u8],
        base: usize,
        optional: &[(u8, usize)],
    ) -> Result<Self, GattError> {
        let mut r = Self::new(characteristic, bytes);
        let flags = r.u8()?;
        let required = optional
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .fold(base, |len, (_, size)| len.saturating_add(*size));
        require(characteristic, bytes, required)?;
        r.flags = flags;
        Ok(r)
    }

    /// The flags byte (0 for a value without one).
    pub(crate) fn flags(&self) -> u8 {
        self.flags
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], GattError> {
        let end = self.pos.checked_add(N);
        let slice =
            end.and_then(|end| self.bytes.get(self.pos..end))
                .ok_or(GattError::Truncated {
                    characteristic: self.characteristic,
                    len: self.bytes.len(),
                    required: self.pos.saturating_add(N),
                })?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.pos += N;
        Ok(out)
    }

    /// A `uint8`.
    pub(crate) fn u8(&mut self) -> Result<u8, GattError> {
        Ok(self.take::<1>()?[0])
    }

    /// A little-endian `uint16`.
    pub(crate) fn u16(&mut self) -> Result<u16, GattError> {
        Ok(u16::from_le_bytes(self.take::<2>()?))
    }

    /// A little-endian `sint16`.
    pub(crate) fn i16(&mut self) -> Result<i16, GattError> {
        Ok(i16::from_le_bytes(self.take::<2>()?))
    }

    /// A little-endian `uint24`.
    pub(crate) fn u24(&mut self) -> Result<u32, GattError> {
        let [a, b, c] = self.take::<3>()?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }

    /// Seven octets (a Date Time).
    pub(crate) fn bytes7(&mut self) -> Result<[u8; 7], GattError> {
        self.take::<7>()
    }

    /// An SFLOAT.
    pub(crate) fn sfloat(&mut self) -> Result<Float11073, GattError> {
        Ok(float::sfloat(self.u16()?))
    }

    /// A FLOAT; an exponent outside the decimal range is an error naming `field`.
    pub(crate) fn float(&mut self, field: &'static str) -> Result<Float11073, GattError> {
        let raw = u32::from_le_bytes(self.take::<4>()?);
        float::float(raw).map_err(|e| GattError::Invalid {
            characteristic: self.characteristic,
            reason: format!("field `{field}`: {e}"),
        })
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
}

/// "Not a number", for integer sentinels such as the Weight Scale's `FF FF`
/// (measurement unsuccessful).
pub(crate) fn not_a_number() -> Measurement {
    Measurement::Absent(AbsentReason::NotANumber)
}

/// An unsigned raw integer times `10^-decimals`, exactly.
pub(crate) fn fixed(raw: u32, decimals: u32) -> Decimal {
    Decimal::new(i64::from(raw), decimals)
}
