//! FileDisk: round trip, bounds, reopen, O_DIRECT where the file system has it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mlsdisk_core::bio::{BlockSet, FileDisk, BLOCK_SIZE};
use mlsdisk_core::platform::{Job, Parallel, StdParallel};
use mlsdisk_core::ErrorKind;

/// A runner four jobs wide that counts its calls and the jobs they ran.
#[derive(Default)]
struct Counting {
    calls: AtomicUsize,
    jobs: AtomicUsize,
}

impl Parallel for Counting {
    fn width(&self) -> usize {
        4
    }
    fn run(&self, jobs: &mut [Job<'_>]) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.jobs.fetch_add(jobs.len(), Ordering::Relaxed);
        StdParallel::new(4).run(jobs)
    }
}

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

/// The same round trip with O_DIRECT, in the target directory (a real file
/// system; `$TMPDIR` may be a tmpfs, which refuses O_DIRECT). Fails, never
/// skips, when O_DIRECT or its flush is refused there.
#[test]
fn direct_io_round_trip() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bio-direct-rt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = FileDisk::create(&dir.join("disk.img"), 8, true)
        .unwrap_or_else(|e| panic!("O_DIRECT refused in {}: {e}", dir.display()));
    assert!(d.is_direct());
    d.flush()
        .unwrap_or_else(|e| panic!("O_DIRECT flush failed in {}: {e}", dir.display()));
    exercise(&d);
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_missing_file_is_io_error() {
    let e = FileDisk::open(std::path::Path::new("/nonexistent/mlsdisk.img"), false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
}

/// The page-aligned window of `v` of `len` bytes (what an `O_DIRECT` call
/// can take as it is).
fn aligned_window(v: &mut [u8], len: usize) -> &mut [u8] {
    let off = (4096 - v.as_ptr() as usize % 4096) % 4096;
    &mut v[off..off + len]
}

/// O_DIRECT with every kind of caller buffer: page-aligned (no bounce),
/// unaligned small and large (the thread's kept bounce buffer, grown and
/// reused), and above the kept size (a buffer of its own), in an order that
/// reuses a grown buffer for a smaller request. Runs in the target
/// directory (a real file system); fails if O_DIRECT is refused there.
#[test]
fn direct_io_with_aligned_unaligned_and_large_buffers() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bio-direct-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("disk.img");
    let nblocks = 2048u64; // 8 MiB: room for a request above 4 MiB
    let d = FileDisk::create(&p, nblocks, true)
        .unwrap_or_else(|e| panic!("O_DIRECT refused in {}: {e}", dir.display()));
    let pattern = |seed: usize, n: usize| -> Vec<u8> {
        (0..n).map(|i| ((i * 7 + seed * 13) % 253) as u8).collect()
    };
    // (position in blocks, blocks, aligned?)
    let cases = [
        (0u64, 1usize, true),
        (1, 3, false),
        (4, 256, false),    // grows the kept buffer to 1 MiB
        (300, 2, false),    // reuses it for less
        (310, 256, true),   // aligned: no bounce at all
        (600, 1200, false), // 4.7 MiB: above the kept size
        (1900, 5, false),
    ];
    for (seed, &(pos, n, aligned)) in cases.iter().enumerate() {
        let len = n * BLOCK_SIZE;
        let w = pattern(seed, len);
        let mut store = vec![0u8; len + 4096 + 1];
        let wbuf: &mut [u8] = if aligned {
            aligned_window(&mut store, len)
        } else {
            // Deliberately one byte past an aligned window.
            let off = (4096 - store.as_ptr() as usize % 4096) % 4096 + 1;
            &mut store[off..off + len]
        };
        wbuf.copy_from_slice(&w);
        d.write(pos, wbuf).unwrap();
        let mut rstore = vec![0u8; len + 4096 + 1];
        let rbuf: &mut [u8] = if aligned {
            aligned_window(&mut rstore, len)
        } else {
            let off = (4096 - rstore.as_ptr() as usize % 4096) % 4096 + 1;
            &mut rstore[off..off + len]
        };
        d.read(pos, rbuf).unwrap();
        assert!(
            rbuf == &w[..],
            "case {seed}: {n} blocks at {pos} read back differently"
        );
    }
    d.flush().unwrap();
    // Everything is still there after all the buffer reuse.
    for (seed, &(pos, n, _)) in cases.iter().enumerate() {
        let mut r = vec![0u8; n * BLOCK_SIZE];
        d.read(pos, &mut r).unwrap();
        assert!(
            r == pattern(seed, n * BLOCK_SIZE),
            "case {seed} after flush"
        );
    }
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `read_ranges` reads each range into its own buffer: one range, two (in
/// turn on the caller's thread), and many (on threads started for the
/// call, or on the runner given to `set_readers`: one call of it, as many
/// jobs as it is wide), of different lengths and out of device order, into
/// aligned and unaligned buffers, with and without O_DIRECT; a range past
/// the end fails the call with `InvalidArgument`.
#[test]
fn read_ranges_fills_every_range_in_place() {
    for (direct, readers) in [(false, false), (true, false), (false, true), (true, true)] {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "bio-ranges-{}-{direct}-{readers}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let nblocks = 256u64;
        let mut d = FileDisk::create(&dir.join("disk.img"), nblocks, direct)
            .unwrap_or_else(|e| panic!("O_DIRECT refused in {}: {e}", dir.display()));
        let counting = Arc::new(Counting::default());
        if readers {
            d.set_readers(counting.clone());
        }
        let byte = |blk: u64, i: usize| (blk as usize * 31 + i % 97) as u8;
        let mut all = vec![0u8; nblocks as usize * BLOCK_SIZE];
        for (blk, b) in all.chunks_exact_mut(BLOCK_SIZE).enumerate() {
            for (i, x) in b.iter_mut().enumerate() {
                *x = byte(blk as u64, i);
            }
        }
        d.write(0, &all).unwrap();
        for n in [1usize, 2, 3, 8, 40] {
            // Range k: (k % 3) + 1 blocks at a position that walks the disk
            // backwards, in one shared buffer with a one-byte gap between
            // ranges (so every buffer but the first is unaligned).
            let lens: Vec<usize> = (0..n).map(|k| k % 3 + 1).collect();
            let poss: Vec<u64> = (0..n).map(|k| nblocks - 4 - (k as u64 * 5) % 250).collect();
            let total: usize = lens.iter().map(|l| l * BLOCK_SIZE + 1).sum();
            let mut store = vec![0u8; total];
            let mut ranges: Vec<(u64, &mut [u8])> = Vec::new();
            let mut rest: &mut [u8] = &mut store;
            for (k, &len) in lens.iter().enumerate() {
                let (buf, tail) = rest.split_at_mut(len * BLOCK_SIZE);
                ranges.push((poss[k], buf));
                rest = &mut tail[1..];
            }
            let before = (
                counting.calls.load(Ordering::Relaxed),
                counting.jobs.load(Ordering::Relaxed),
            );
            d.read_ranges(&mut ranges).unwrap();
            let calls = counting.calls.load(Ordering::Relaxed) - before.0;
            let jobs = counting.jobs.load(Ordering::Relaxed) - before.1;
            match (readers, n) {
                (true, 3..) => assert_eq!((calls, jobs), (1, n.min(4)), "{n} ranges"),
                _ => assert_eq!((calls, jobs), (0, 0), "{n} ranges, readers {readers}"),
            }
            for (k, (pos, buf)) in ranges.iter().enumerate() {
                assert_eq!(*pos, poss[k]);
                let want = &all[*pos as usize * BLOCK_SIZE..][..buf.len()];
                assert!(
                    *buf == want,
                    "direct {direct}, {n} ranges: range {k} read wrong"
                );
            }
        }
        let mut a = vec![0u8; BLOCK_SIZE];
        let mut b = vec![0u8; 2 * BLOCK_SIZE];
        let mut c = vec![0u8; BLOCK_SIZE];
        let mut bad = [
            (0u64, &mut a[..]),
            (nblocks - 1, &mut b[..]),
            (3, &mut c[..]),
        ];
        assert_eq!(
            d.read_ranges(&mut bad).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        drop(d);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
