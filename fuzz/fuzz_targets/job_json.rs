#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ezthrottle_fuzz::job_json(data));
