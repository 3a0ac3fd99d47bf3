//! Fuzzes the decoder of characteristic 0x2A2B (Current Time): no input may panic, and an
//! accepted value must be consistent.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iomt_fuzz::check(0x2A2B, data);
    // A decoded time that gives an instant encodes back to the same instant (to 1/256 s).
    if let Ok(t) = iomt_drivers::ble::CurrentTime::decode(data) {
        if let Ok(now) = t.device_now() {
            let again = iomt_drivers::ble::CurrentTime::encode(now)
                .and_then(|b| iomt_drivers::ble::CurrentTime::decode(&b).ok())
                .and_then(|t| t.device_now().ok());
            assert_eq!(again, Some(now));
        }
    }
});
