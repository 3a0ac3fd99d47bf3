//! A device's clock behind the Current Time Service (0x1805 / Current Time 0x2A2B), as a
//! cuff or glucose meter keeps it: a wall-clock time without zone that runs from where it
//! was set (true time plus an offset, or a reset date such as 2000-01-01 after a battery
//! change). Reading 0x2A2B gives the clock now (Exact Time 256 + Adjust Reason, 10 octets);
//! writing it, when the device allows writes, sets the clock.
//!
//! Toward the client it behaves as BlueZ does for any characteristic: a read emits
//! `PropertiesChanged(Value)` before replying; a write to a characteristic without the
//! `write` flag is `org.bluez.Error.NotPermitted`; a value the device refuses (not 10
//! octets, an impossible date) fails with the ATT error the device answers,
//! `org.bluez.Error.Failed: Operation failed with ATT error: 0x80` (CTS: "Data field
//! ignored").

use std::time::Instant;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, Timelike};

use super::{lock, CharState, SimBluez};

/// A device's clock: `base` when `since` was now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DevClock {
    base: NaiveDateTime,
    since: Instant,
    /// How many times a client set it.
    pub writes: u32,
}

impl DevClock {
    /// The clock's time now.
    fn now(&self) -> NaiveDateTime {
        let elapsed = Duration::from_std(self.since.elapsed()).unwrap_or_default();
        self.base + elapsed
    }

    /// The Current Time value now: Exact Time 256 + Adjust Reason 0.
    pub(crate) fn value(&self) -> Vec<u8> {
        let t = self.now();
        let [y0, y1] = u16::try_from(t.year()).unwrap_or(0).to_le_bytes();
        let fractions = u64::from(t.nanosecond().min(999_999_999)) * 256 / 1_000_000_000;
        vec![
            y0,
            y1,
            t.month() as u8,
            t.day() as u8,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
            t.weekday().number_from_monday() as u8,
            fractions as u8,
            0,
        ]
    }

    /// Sets the clock from a written Current Time value; `false` if the device refuses it.
    pub(crate) fn set(&mut self, v: &[u8]) -> bool {
        if v.len() != 10 {
            return false;
        }
        let year = i32::from(u16::from_le_bytes([v[0], v[1]]));
        let Some(t) = NaiveDate::from_ymd_opt(year, u32::from(v[2]), u32::from(v[3]))
            .and_then(|d| d.and_hms_opt(u32::from(v[4]), u32::from(v[5]), u32::from(v[6])))
        else {
            return false;
        };
        let nanos = i64::from(v[8]) * 1_000_000_000 / 256;
        self.base = t + Duration::nanoseconds(nanos);
        self.since = Instant::now();
        self.writes += 1;
        true
    }
}

/// Refreshes a Current Time characteristic's value from its device's clock (before a read).
pub(crate) fn refresh(clock: Option<&DevClock>, c: &mut CharState) {
    if let (Some(clock), 0x2A2B) = (clock, c.uuid) {
        c.value = clock.value();
    }
}

impl SimBluez {
    /// Gives the device a Current Time Service whose clock shows `now` at this moment and
    /// runs from there (pass the true local time plus an offset, or a reset date). With
    /// `writable`, clients may set it. Call it before the device's first connection (its
    /// GATT objects are exported then, once).
    pub fn add_current_time(&self, address: &str, now: NaiveDateTime, writable: bool) {
        const RW: &[&str] = &["read", "write", "notify"];
        const RO: &[&str] = &["read", "notify"];
        let mut st = lock(&self.state);
        let Some(d) = st.devices.get_mut(address) else {
            return;
        };
        d.services.push(0x1805);
        d.chars.push(CharState {
            uuid: 0x2A2B,
            service: d.services.len() - 1,
            flags: if writable { RW } else { RO },
            notifying: false,
            value: Vec::new(),
        });
        d.clock = Some(DevClock {
            base: now,
            since: Instant::now(),
            writes: 0,
        });
    }

    /// The device's clock now, if it has one.
    pub fn device_clock(&self, address: &str) -> Option<NaiveDateTime> {
        lock(&self.state)
            .devices
            .get(address)
            .and_then(|d| d.clock.as_ref().map(DevClock::now))
    }

    /// How many times a client set the device's clock.
    pub fn clock_writes(&self, address: &str) -> u32 {
        lock(&self.state)
            .devices
            .get(address)
            .and_then(|d| d.clock.as_ref().map(|c| c.writes))
            .unwrap_or(0)
    }
}
