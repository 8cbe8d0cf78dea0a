#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ezthrottle_fuzz::head_connect(data));
