//! A bounds-checked little-endian reader over one GATT value.
//!
//! Decoders compute the length their flags require and reject a short value *before*
//! reading; the reader still checks every read, so a mistake in that computation is a
//! typed error, never a panic.

use rust_decimal::Decimal;

use super::float::{self, Float11073};
use super::{Characteristic, GattError};
use crate::reading::{AbsentReason, Measurement};

/// Reads fields in wire order.
pub(crate) struct Reader<'a> {
    characteristic: Characteristic,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub(crate) fn new(characteristic: Characteristic, bytes: &'a [u8]) -> Self {
        Self {
            characteristic,
            bytes,
            pos: 0,
        }
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
