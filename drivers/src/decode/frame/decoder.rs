//! [`FrameDecoder`]: the fields, flags and timestamp of one frame or packet, as a
//! [`Reading`].

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

use super::{BytePattern, FrameScanner, FrameSpec, ValueLayout};
use crate::decode::{scale_keeping_precision, DecodeError, FieldSpec};
use crate::reading::{AbsentReason, DeviceIdentity, DeviceTime, Quantity, Reading, ReadingFlag};

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
            clock: None,
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
