//! Fuzzes the decoder of characteristic 0x2AA7 (CGM Measurement, with its Size and
//! E2E-CRC): no input may panic, and an accepted value must make a consistent reading;
//! splitting a notification into records must not panic either.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iomt_fuzz::check(0x2AA7, data);
    if let Ok(records) = iomt_drivers::ble::CgmMeasurement::decode_all(data, false) {
        for m in &records {
            iomt_fuzz::check_final(m);
        }
    }
});
