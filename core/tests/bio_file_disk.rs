//! FileDisk: round trip, bounds, reopen, O_DIRECT where the file system has it.

use mlsdisk_core::bio::{BlockSet, FileDisk, BLOCK_SIZE};
use mlsdisk_core::ErrorKind;

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mlsdisk-bio-{}-{}", std::process::id(), name));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("disk.img")
}

fn exercise(d: &FileDisk) {
    assert_eq!(d.nblocks(), 8);
    let mut w = vec![0u8; 3 * BLOCK_SIZE];
    for (i, b) in w.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    d.write(5, &w).unwrap();
    d.flush().unwrap();
    let mut r = vec![0u8; 3 * BLOCK_SIZE];
    d.read(5, &mut r).unwrap();
    assert_eq!(r, w);
    // Unaligned caller buffer: a sub-slice at an odd offset.
    let mut big = vec![0u8; BLOCK_SIZE + 1];
    d.read(6, &mut big[1..]).unwrap();
    assert_eq!(&big[1..], &w[BLOCK_SIZE..2 * BLOCK_SIZE]);
    assert_eq!(
        d.read(6, &mut r).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        d.write(0, &w[..100]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[test]
fn buffered_round_trip_and_reopen() {
    let p = tmp("buffered");
    {
        let d = FileDisk::create(&p, 8, false).unwrap();
        exercise(&d);
    }
    let d = FileDisk::open(&p, false).unwrap();
    assert_eq!(d.nblocks(), 8);
    let mut r = vec![0u8; BLOCK_SIZE];
    d.read(7, &mut r).unwrap();
    assert_eq!(r[0], ((2 * BLOCK_SIZE) % 251) as u8);
    std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
}

#[test]
fn direct_io_when_supported() {
    let p = tmp("direct");
    // tmpfs refuses O_DIRECT; then there is nothing to test here.
    match FileDisk::create(&p, 8, true) {
        Ok(d) => {
            assert!(d.is_direct());
            match d.flush() {
                Ok(()) => exercise(&d),
                Err(e) => eprintln!("O_DIRECT flush failed here ({e}); skipped"),
            }
        }
        Err(e) => eprintln!("O_DIRECT not supported here ({e}); skipped"),
    }
    std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
}

#[test]
fn open_missing_file_is_io_error() {
    let e = FileDisk::open(std::path::Path::new("/nonexistent/mlsdisk.img"), false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
}
