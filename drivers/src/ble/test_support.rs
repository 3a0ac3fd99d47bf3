//! What the decoders' unit tests share.

use crate::reading::{DeviceTime, Measurement};

/// A measurement as text: the value with the precision the device sent, or why it is
/// absent.
pub(crate) fn text(m: Measurement) -> String {
    match m {
        Measurement::Value(v) => v.to_string(),
        Measurement::Absent(r) => format!("{r:?}"),
    }
}

/// A device time without zone, as decoded from a GATT time stamp.
pub(crate) fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<DeviceTime> {
    Some(DeviceTime::Local(
        chrono::NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_opt(h, mi, s)
            .unwrap(),
    ))
}
