//! Fuzz target `log_store`: see `mlsdisk_core::fuzz_api::log_store`. Any result is
//! fine; a panic (or a sanitizer report) is the finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mlsdisk_core::fuzz_api::log_store(data);
});
