//! Fuzz target `keyring_ref`: the key argument parser of the kernel module
//! (`linux/table.rs`): hex keys and `:<size>:<type>:<description>`
//! keyring references.
#![no_main]
// `linux/table.rs` names a cfg of the kernel build (`mlsdisk_passthrough`).
#![allow(unexpected_cfgs)]

// Formatted with the kernel tree's rules, not this workspace's.
#[rustfmt::skip]
#[allow(dead_code)]
#[path = "../../linux/table.rs"]
mod table;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    match table::parse_key(data) {
        Ok(table::KeySpec::Keyring(r)) => {
            let _ = format!("{r} {r:?} {}", r.kind_name());
            let _ = r.desc();
        }
        Ok(table::KeySpec::Hex(h)) => {
            let bits = h.bits();
            let mut k = table::RawKey::empty();
            k.set_hex(h);
            let _ = (bits, k.bits(), k.as_bytes().len());
        }
        Err(e) => {
            let _ = format!("{e}");
        }
    }
});
