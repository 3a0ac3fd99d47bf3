//! Fuzzes the decoder of characteristic 0x2A9C: no input may panic, and an accepted value
//! must make a consistent reading.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    iomt_fuzz::check(0x2A9C, data);
});
