// SPDX-License-Identifier: MPL-2.0 OR GPL-2.0

//! Unit tests of `table.rs` (userspace: `rustc --test linux/table.rs`).

use super::*;

const KEY64: &[u8] = b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY32: &[u8] = b"00112233445566778899AABBCCDDEEFF";

fn err(args: &[&[u8]]) -> String {
    match parse(args) {
        Ok(line) => panic!("accepted: {line:?}"),
        Err(e) => {
            // device-mapper prefixes `ti->error` with the target name.
            assert!(!e.summary().is_empty() && !e.summary().to_bytes().starts_with(b"mlsdisk"));
            e.to_string()
        }
    }
}

/// The line's hex key, decoded.
fn raw(line: &TableLine<'_>) -> RawKey {
    match &line.key {
        KeySpec::Hex(h) => {
            let mut key = RawKey::empty();
            key.set_hex(*h);
            key
        }
        KeySpec::Keyring(r) => panic!("a keyring reference: {r:?}"),
    }
}

#[test]
fn accepts_hex_keys_and_options() {
    let line = parse(&[b"/dev/vdb", KEY64]).unwrap();
    assert_eq!(line.device, b"/dev/vdb");
    assert_eq!(raw(&line).bits(), 256);
    assert_eq!(raw(&line).as_bytes()[31], 0x1f);
    assert_eq!(line.options, Options::default());

    let line = parse(&[b"253:1", KEY32, b"2", b"create", b"anchor=dev:/dev/vdc"]).unwrap();
    assert_eq!(raw(&line).bits(), 128);
    assert_eq!(raw(&line).as_bytes()[10], 0xaa);
    assert_eq!(line.options.mode, Some(Mode::Create));
    assert_eq!(line.options.anchor.unwrap().as_bytes(), b"dev:/dev/vdc");
    assert_eq!(
        line.options.anchor.unwrap().kind(),
        AnchorKind::Dev(b"/dev/vdc")
    );
    let mut s = String::new();
    line.options.emit(&mut s).unwrap();
    assert_eq!(s, " 2 create anchor=dev:/dev/vdc");

    let line = parse(&[b"/dev/vdb", KEY64, b"0"]).unwrap();
    assert_eq!(line.options.count(), 0);
    assert!(!line.options.force);

    // `force_create` is `create` with `force`, and is never shown.
    let line = parse(&[b"/dev/vdb", KEY64, b"1", b"force_create"]).unwrap();
    assert_eq!(line.options.mode, Some(Mode::Create));
    assert!(line.options.force);
    let line = parse(&[b"/dev/vdb", KEY64, b"1", b"create"]).unwrap();
    assert!(!line.options.force);
    let mut opts = parse(&[b"/dev/vdb", KEY64, b"1", b"force_create"])
        .unwrap()
        .options;
    opts.mode = Some(Mode::Open);
    let mut s = String::new();
    opts.emit(&mut s).unwrap();
    assert_eq!(s, " 1 open");
}

#[test]
fn anchor_kinds() {
    let kind = |a: &[u8]| {
        parse(&[b"/dev/vdb", KEY64, b"1", a])
            .unwrap()
            .options
            .anchor
            .unwrap()
    };
    assert_eq!(kind(b"anchor=none").kind(), AnchorKind::None);
    assert_eq!(
        kind(b"anchor=dev:252:32").kind(),
        AnchorKind::Dev(b"252:32")
    );
    assert_eq!(
        anchor_kind(b"dev:/dev/vdc"),
        Ok(AnchorKind::Dev(b"/dev/vdc"))
    );
    assert_eq!(anchor_kind(b"tpm"), Err(TableError::UnknownAnchor(b"tpm")));
}

#[test]
fn key_debug_is_redacted() {
    let line = parse(&[b"/dev/vdb", KEY64]).unwrap();
    let s = format!("{line:?}");
    assert!(s.contains("redacted"));
    assert!(!s.contains("1f") && !s.contains("31"), "{s}");
}

#[test]
fn refuses_bad_lines_with_named_causes() {
    assert!(err(&[]).contains("got 0"));
    assert!(err(&[b"/dev/vdb"]).contains("got 1"));
    assert!(err(&[b"/dev/vdb", b"zz0102030405060708090a0b0c0d0e0f"]).contains("not a hex"));
    assert!(err(&[b"/dev/vdb", b"0001020304"]).contains("10 hex digits"));
    assert!(err(&[b"/dev/vdb", b"000102030"]).contains("9 hex digits"));
    assert!(err(&[b"/dev/vdb", b"00010203g"]).contains("malformed"));
    assert!(err(&[b"/dev/vdb", KEY64, b"1", b"no_such_option"])
        .contains("unknown option 'no_such_option'"));
    assert!(err(&[b"/dev/vdb", KEY64, b"3", b"a"]).contains("<#opts> is 3 but 1"));
    assert!(err(&[b"/dev/vdb", KEY64, b"create"]).contains("'create' is not a number"));
    assert!(err(&[b"/dev/vdb", KEY64, b"2", b"create", b"open"]).contains("conflict"));
    assert!(err(&[b"/dev/vdb", KEY64, b"2", b"open", b"open"]).contains("twice"));
    assert!(err(&[b"/dev/vdb", KEY64, b"2", b"create", b"force_create"]).contains("conflict"));
    assert!(err(&[b"/dev/vdb", KEY64, b"2", b"force_create", b"open"]).contains("conflict"));
    assert!(err(&[b"/dev/vdb", KEY64, b"2", b"force_create", b"force_create"]).contains("twice"));
    assert!(err(&[b"/dev/vdb", KEY64, b"1", b"anchor="]).contains("bad anchor"));
    assert!(
        err(&[b"/dev/vdb", KEY64, b"1", b"anchor=file:/x"]).contains("unknown anchor 'file:/x'")
    );
    assert!(err(&[b"/dev/vdb", KEY64, b"1", b"anchor=dev:"]).contains("unknown anchor"));
    assert!(err(&[b"/dev/vdb", KEY64, b"1", b"anchor=NONE"]).contains("unknown anchor"));
    assert!(err(&[b"/dev/vdb", KEY64, b"2", b"anchor=none", b"anchor=dev:8:0"]).contains("twice"));
    assert!(err(&[b"/dev/vdb", KEY64, b"1", b"\x01\xff"]).contains("'\\x01\\xff'"));
    assert!(err(&[b"/dev/vdb", KEY64, b"1", b"cache_mib="]).contains("bad cache_mib ''"));
    assert!(err(&[b"/dev/vdb", KEY64, b"1", b"cache_mib=3"]).contains("bad cache_mib '3'"));
    assert!(err(&[b"/dev/vdb", KEY64, b"1", b"cache_mib=16385"]).contains("from 4 to 16384"));
    assert!(err(&[b"/dev/vdb", KEY64, b"1", b"cache_mib=-1"]).contains("bad cache_mib"));
    assert!(err(&[b"/dev/vdb", KEY64, b"1", b"cache_mib=99999999999"]).contains("bad cache_mib"));
    assert!(err(&[b"/dev/vdb", KEY64, b"2", b"cache_mib=8", b"cache_mib=8"]).contains("twice"));
}

#[test]
fn cache_budget_option() {
    let line = parse(&[b"/dev/vdb", KEY64, b"2", b"cache_mib=128", b"open"]).unwrap();
    assert_eq!(line.options.cache_mib, Some(128));
    assert_eq!(line.options.mode, Some(Mode::Open));
    assert_eq!(line.options.count(), 2);
    let mut s = String::new();
    line.options.emit(&mut s).unwrap();
    assert_eq!(s, " 2 open cache_mib=128");
    // What emit writes parses back to the same options.
    let words: Vec<&[u8]> = s.split_whitespace().map(str::as_bytes).collect();
    let mut args: Vec<&[u8]> = vec![b"/dev/vdb", KEY64];
    args.extend(words);
    assert_eq!(parse(&args).unwrap().options, line.options);
    for (word, mib) in [(&b"cache_mib=4"[..], 4), (&b"cache_mib=16384"[..], 16384)] {
        let line = parse(&[b"/dev/vdb", KEY64, b"1", word]).unwrap();
        assert_eq!(line.options.cache_mib, Some(mib));
    }
    assert_eq!(
        parse(&[b"/dev/vdb", KEY64]).unwrap().options.cache_mib,
        None
    );
}

#[test]
fn cache_budget_alone() {
    // The same grammar for the blk-mq disks' `disk_cache_mib` items.
    assert_eq!(parse_cache_mib(b"4"), Some(CACHE_MIB_MIN));
    assert_eq!(parse_cache_mib(b"16384"), Some(CACHE_MIB_MAX));
    assert_eq!(parse_cache_mib(b"0064"), Some(64));
    let out_of_range: [&[u8]; 4] = [b"0", b"3", b"16385", b"999999999999"];
    let not_decimal: [&[u8]; 5] = [b"", b"-1", b"+8", b"8M", b" 8"];
    for s in out_of_range.into_iter().chain(not_decimal) {
        assert_eq!(parse_cache_mib(s), None, "{s:?}");
    }
}

#[test]
fn keyring_references_are_checked_and_kept() {
    let line = parse(&[b"/dev/vdb", b":32:logon:mlsdisk:test"]).unwrap();
    let KeySpec::Keyring(r) = line.key else {
        panic!("not a keyring reference");
    };
    assert_eq!(
        (r.size, r.kind, r.desc()),
        (32, KeyKind::Logon, &b"mlsdisk:test"[..])
    );
    assert_eq!(r.to_string(), ":32:logon:mlsdisk:test");
    let line = parse(&[b"/dev/vdb", b":16:user:k"]).unwrap();
    assert!(matches!(
        line.key,
        KeySpec::Keyring(KeyRef {
            size: 16,
            kind: KeyKind::User,
            ..
        })
    ));
    assert_eq!(
        parse(&[b"/dev/vdb", b":32:encrypted:x"]).unwrap_err(),
        TableError::KeyringNotSupported
    );
    assert!(err(&[b"/dev/vdb", b":32:trusted:x"]).contains("only 'logon' and 'user'"));
    assert!(err(&[
        b"/dev/vdb",
        &[b":32:logon:".as_slice(), &[b'a'; 129]].concat()
    ])
    .contains("1 to 128"));
    assert!(err(&[b"/dev/vdb", b":32:logon:a\x01"]).contains("printable"));
    assert!(err(&[b"/dev/vdb", b":31:logon:x"]).contains("16 or 32"));
    assert!(err(&[b"/dev/vdb", b":32:bogus:x"]).contains("unknown keyring"));
    assert!(err(&[b"/dev/vdb", b":32:logon:"]).contains("empty"));
    assert!(err(&[b"/dev/vdb", b":32"]).contains("keyring form"));
}

#[test]
fn errors_never_print_the_key() {
    // A key that is one digit short: the message gives the count only.
    let e = err(&[b"/dev/vdb", &KEY64[1..]]);
    assert!(!e.contains("0102"), "{e}");
}

#[test]
fn raw_key_is_filled_in_place() {
    let mut key = RawKey::empty();
    assert_eq!((key.bits(), key.as_bytes()), (0, &[][..]));
    key.fill(16).unwrap().copy_from_slice(&[7; 16]);
    assert_eq!((key.bits(), key.as_bytes()), (128, &[7; 16][..]));
    key.fill(32).unwrap().copy_from_slice(&[9; 32]);
    assert_eq!(key.as_bytes(), &[9; 32]);
    assert!(key.fill(24).is_none());
    key.clear();
    assert_eq!((key.bits(), key.as_bytes()), (0, &[][..]));
    // A shorter key over a longer one leaves none of the longer one.
    key.fill(32).unwrap().copy_from_slice(&[9; 32]);
    key.fill(16).unwrap().copy_from_slice(&[7; 16]);
    assert!(key.bytes[16..].iter().all(|&b| b == 0));
}

/// The parser copies no key byte: a hex key is the argument word itself
/// (wiped by the constructor), decoded only into the key's final place by
/// `RawKey::set_hex`. (Before, `parse` returned the decoded key by value,
/// and each move of the line left a copy of it behind.)
#[test]
fn the_parser_copies_no_key_byte() {
    let words: [&[u8]; 2] = [b"/dev/vdb", KEY64];
    let line = parse(&words).unwrap();
    let KeySpec::Hex(h) = line.key else {
        panic!("not a hex key");
    };
    assert!(core::ptr::eq(h.0, KEY64), "the hex key is not the word");
    assert_eq!(h.bits(), 256);
    let mut key = RawKey::empty();
    key.set_hex(h);
    assert_eq!(key.as_bytes()[..4], [0, 1, 2, 3]);
    // Nothing of the key in the line itself: a pointer and a length.
    assert_eq!(
        core::mem::size_of::<HexKey<'_>>(),
        core::mem::size_of::<&[u8]>()
    );
    // A 128-bit key over a 256-bit one leaves none of the longer one.
    key.set_hex(match parse(&[b"/dev/vdb", KEY32]).unwrap().key {
        KeySpec::Hex(h) => h,
        KeySpec::Keyring(_) => panic!("not a hex key"),
    });
    assert_eq!(key.bits(), 128);
    assert!(key.bytes[16..].iter().all(|&b| b == 0));
}

#[test]
fn wipe_zeroes() {
    let mut b = *b"secret";
    wipe(&mut b);
    assert_eq!(b, [0; 6]);
}
