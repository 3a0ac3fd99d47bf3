//! Fuzzes the decoders of characteristics 0x2AA8 (CGM Feature), 0x2AAA (CGM Session Start
//! Time) and 0x2AAB (CGM Session Run Time): no input may panic, none is a reading, and a
//! session start places any time offset without panicking.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iomt_fuzz::check(0x2AA8, data);
    iomt_fuzz::check(0x2AAA, data);
    iomt_fuzz::check(0x2AAB, data);
    if let Ok(start) = iomt_drivers::ble::SessionStartTime::decode(data) {
        let _ = start.time_at(u16::MAX);
        let _ = start.time_at(0);
    }
});
