//! A bounds-checked little-endian reader over one GATT value, and what every measurement
//! decoder reads the same way.
//!
//! A measurement decoder starts with [`Reader::with_flags`], which reads the flags byte and
//! rejects a value shorter than the fields they announce *before* anything else is read;
//! the decoder then only says which fields its characteristic has, in wire order. The
//! reader still checks every read, so a mistake in a decoder's length table is a typed
//! error, never a panic.
//!
//! The reader also keeps what the module's policies ask to record while reading: a
//! reserved SFLOAT/FLOAT mantissa (named by field), an unusable time stamp, and, when the
//! decoder [finishes](Reader::finish), reserved flag bits and trailing bytes.

use rust_decimal::Decimal;

use super::float;
use super::{Anomaly, Characteristic, GattDateTime, GattError, UserId};
use crate::reading::{AbsentReason, Measurement};

/// Reads fields in wire order and collects the anomalies it notices.
pub(crate) struct Reader<'a> {
    characteristic: Characteristic,
    bytes: &'a [u8],
    pos: usize,
    flags: u8,
    anomalies: Vec<Anomaly>,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`, for a value without a flags byte.
    pub(crate) fn new(characteristic: Characteristic, bytes: &'a [u8]) -> Self {
        Self {
            characteristic,
            bytes,
            pos: 0,
            flags: 0,
            anomalies: Vec::new(),
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
        if bytes.len() < required {
            return Err(GattError::Truncated {
                characteristic,
                len: bytes.len(),
                required,
            });
        }
        r.flags = flags;
        Ok(r)
    }

    /// The flags byte (0 for a value without one).
    pub(crate) fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether flag `bit` is set.
    pub(crate) fn has(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }

    /// The field `read` reads, if flag `bit` announces it.
    pub(crate) fn optional<T>(
        &mut self,
        bit: u8,
        read: impl FnOnce(&mut Self) -> Result<T, GattError>,
    ) -> Result<Option<T>, GattError> {
        if self.has(bit) {
            read(self).map(Some)
        } else {
            Ok(None)
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

    /// An SFLOAT; a reserved mantissa is recorded against `field`.
    pub(crate) fn sfloat(&mut self, field: &'static str) -> Result<Measurement, GattError> {
        let f = float::sfloat(self.u16()?);
        Ok(self.checked(f, field))
    }

    /// A FLOAT; an exponent outside the decimal range is an error naming `field`, and a
    /// reserved mantissa is recorded against it.
    pub(crate) fn float(&mut self, field: &'static str) -> Result<Measurement, GattError> {
        let raw = u32::from_le_bytes(self.take::<4>()?);
        let f = float::float(raw).map_err(|e| GattError::Invalid {
            characteristic: self.characteristic,
            reason: format!("field `{field}`: {e}"),
        })?;
        Ok(self.checked(f, field))
    }

    /// The measurement of a decoded float, recording a reserved mantissa against `field`.
    fn checked(&mut self, f: float::Float11073, field: &'static str) -> Measurement {
        if f.reserved_mantissa {
            self.note(Anomaly::ReservedMantissa { field });
        }
        f.measurement
    }

    /// An embedded time stamp (Date Time), as sent; why it is unusable, if it is, is
    /// recorded.
    pub(crate) fn timestamp(&mut self) -> Result<GattDateTime, GattError> {
        let t = GattDateTime::from_bytes(self.bytes7()?);
        if let Err(problem) = t.to_naive() {
            self.note(Anomaly::UnusableTimestamp { problem });
        }
        Ok(t)
    }

    /// A User ID (`0xFF`: the unknown user).
    pub(crate) fn user_id(&mut self) -> Result<UserId, GattError> {
        Ok(UserId::from_raw(self.u8()?))
    }

    /// Records something the decoder noticed.
    pub(crate) fn note(&mut self, anomaly: Anomaly) {
        self.anomalies.push(anomaly);
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// Everything noticed, after recording the set flag bits of `reserved` and the bytes
    /// left unread.
    pub(crate) fn finish(mut self, reserved: u8) -> Vec<Anomaly> {
        let bits = u32::from(self.flags & reserved);
        if bits != 0 {
            self.note(Anomaly::ReservedFlags { bits });
        }
        let trailing = self.remaining();
        if trailing != 0 {
            self.note(Anomaly::TrailingBytes { count: trailing });
        }
        self.anomalies
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
