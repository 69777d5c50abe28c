//! Fuzz target `image`: a small valid disk image with the input's
//! (offset, byte) mutations is opened, read, written, synced and reopened;
//! see `mlsdisk_core::fuzz_api::image`. A read that returns bytes outside
//! the model is reported as a crash, like a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(violation) = mlsdisk_core::fuzz_api::image(data) {
        panic!("image model violation: {violation}");
    }
});
