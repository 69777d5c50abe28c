//! Fuzz target `dm_table`: the kernel module's table-line parser
//! (`linux/table.rs`, plain `core` Rust), on the input split at spaces as
//! device-mapper splits the line into its argument vector.
#![no_main]
// `linux/table.rs` names a cfg of the kernel build (`mlsdisk_passthrough`).
#![allow(unexpected_cfgs)]

// Formatted with the kernel tree's rules, not this workspace's.
#[rustfmt::skip]
#[allow(dead_code)]
#[path = "../../linux/table.rs"]
mod table;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let args: Vec<&[u8]> = data
        .split(|&c| c == b' ')
        .filter(|a| !a.is_empty())
        .collect();
    if let Ok(line) = table::parse(&args) {
        // The status line writes the options back; they must parse to the
        // same options (with the same device and key).
        let mut s = String::new();
        let _ = line.options.emit(&mut s);
        let _ = line.options.anchor.as_ref().map(|a| a.kind());
        let mut again: Vec<&[u8]> = args.iter().take(2).copied().collect();
        again.extend(s.as_bytes().split(|&c| c == b' ').filter(|a| !a.is_empty()));
        match table::parse(&again) {
            Ok(l) => assert_eq!(l.options, line.options, "options round trip"),
            Err(e) => panic!("emitted options do not parse: {e}"),
        }
    }
    if let Err(e) = table::parse(&args) {
        let _ = format!("{e}");
        let _ = e.summary();
    }
});
