#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ezthrottle_fuzz::chunk_tracker(data));
