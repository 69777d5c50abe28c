//! MacChain: round trips, attacks (flip, replay, swap, truncate, fork),
//! crashes at every write/flush boundary, IV uniqueness, ring wrap, NoSpace,
//! I/O errors.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use mlsdisk_core::bio::{
    Adversary, BlockRange, BlockSet, CrashDisk, FaultDisk, IoKind, MemDisk, BLOCK_SIZE,
};
use mlsdisk_core::crypto::mac_chain::{HEADER_LEN, PAYLOAD_CAP};
use mlsdisk_core::crypto::{ChainPos, MacChain};
use mlsdisk_core::platform::{AeadKey, StdCrypto};
use mlsdisk_core::{CryptoRef, ErrorKind, Result};
use proptest::prelude::*;

/// The region starts at this block of the device, so offsets are exercised.
const OFF: u64 = 3;

fn long() -> bool {
    std::env::var("MLSDISK_LONG_TESTS").is_ok_and(|v| v == "1")
}

fn crypto() -> CryptoRef {
    Arc::new(StdCrypto)
}

fn key(c: &CryptoRef) -> AeadKey {
    AeadKey::random(&**c, 16).unwrap()
}

/// A record of `len` bytes whose contents name it.
fn rec(id: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u32 ^ id.wrapping_mul(131)) as u8)
        .collect();
    if len >= 4 {
        v[..4].copy_from_slice(&id.to_le_bytes());
    }
    v
}

type Chain = MacChain<BlockRange<Arc<MemDisk>>>;

struct Fixture {
    mem: Arc<MemDisk>,
    adv: Adversary,
    crypto: CryptoRef,
    key: AeadKey,
    n: u64,
}

impl Fixture {
    fn new(n: u64) -> Self {
        let mem = Arc::new(MemDisk::new(n + OFF + 2).unwrap());
        let crypto = crypto();
        let key = key(&crypto);
        Self {
            adv: Adversary::new(mem.clone()),
            mem,
            crypto,
            key,
            n,
        }
    }

    fn region(&self) -> BlockRange<Arc<MemDisk>> {
        BlockRange::new(self.mem.clone(), OFF, self.n).unwrap()
    }

    fn create(&self) -> MacChain<BlockRange<Arc<MemDisk>>> {
        MacChain::create(self.region(), self.crypto.clone(), self.key.clone()).unwrap()
    }

    fn open(&self, start: ChainPos, trusted: ChainPos) -> Result<(Chain, Vec<Vec<u8>>)> {
        MacChain::open(
            self.region(),
            self.crypto.clone(),
            self.key.clone(),
            start,
            trusted,
        )
    }

    /// Device block of chain sequence number `seq`.
    fn dev_block(&self, seq: u64) -> u64 {
        OFF + seq % self.n
    }
}

/// Commits `commits` (each a list of records) and returns the tail after each.
fn run_commits<D: BlockSet>(c: &mut MacChain<D>, commits: &[Vec<Vec<u8>>]) -> Vec<ChainPos> {
    commits
        .iter()
        .map(|recs| {
            for r in recs {
                c.append(r).unwrap();
            }
            c.commit().unwrap()
        })
        .collect()
}

/// A workload of 4 commits over 6 blocks: small records, a record spanning
/// two blocks, a block exactly full, an empty record.
fn workload() -> Vec<Vec<Vec<u8>>> {
    vec![
        vec![rec(1, 10), rec(2, 0), rec(3, 100)],
        vec![rec(4, PAYLOAD_CAP + 500)],
        vec![rec(5, PAYLOAD_CAP - 4)],
        vec![rec(6, 7), rec(7, PAYLOAD_CAP), rec(8, 1)],
    ]
}

fn flat(commits: &[Vec<Vec<u8>>]) -> Vec<Vec<u8>> {
    commits.iter().flatten().cloned().collect()
}

#[test]
fn round_trip_across_reopen() {
    let f = Fixture::new(16);
    let mut c = f.create();
    let start = c.start();
    assert_eq!(start, c.tail());
    let w = workload();
    let tails = run_commits(&mut c, &w);
    assert_eq!(
        tails.iter().map(|t| t.seq).collect::<Vec<_>>(),
        vec![1, 3, 4, 6]
    );
    assert_eq!(c.free_blocks(), 10);
    let (mut c2, recs) = f.open(start, c.tail()).unwrap();
    assert_eq!(recs, flat(&w));
    assert_eq!(c2.tail(), c.tail());
    // Appends continue after reopen.
    c2.append(&rec(9, 3000)).unwrap();
    let t = c2.commit().unwrap();
    // An empty commit writes nothing.
    assert_eq!(c2.commit().unwrap(), t);
    let (_, recs) = f.open(start, t).unwrap();
    let mut all = flat(&w);
    all.push(rec(9, 3000));
    assert_eq!(recs, all);
    // Opening with an older trusted tail still finds everything after it.
    let (c3, recs) = f.open(start, tails[1]).unwrap();
    assert_eq!(recs.len(), all.len());
    assert_eq!(c3.tail(), t);
    // Opening at a later start gives the records from there.
    let (_, recs) = f.open(tails[1], t).unwrap();
    assert_eq!(recs, all[4..].to_vec());
}

#[test]
fn records_spanning_many_blocks() {
    let f = Fixture::new(8);
    let mut c = f.create();
    let start = c.start();
    let big = rec(1, 3 * PAYLOAD_CAP + 17);
    c.append(&big).unwrap();
    c.append(&rec(2, 5)).unwrap();
    let t = c.commit().unwrap();
    assert_eq!(t.seq, 4);
    let (_, recs) = f.open(start, t).unwrap();
    assert_eq!(recs, vec![big, rec(2, 5)]);
}

#[test]
fn wrong_key_or_wrong_start_is_integrity() {
    let f = Fixture::new(8);
    let mut c = f.create();
    let start = c.start();
    let t = run_commits(&mut c, &workload())[3];
    let other = key(&f.crypto);
    let e = MacChain::open(f.region(), f.crypto.clone(), other, start, t).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Integrity);
    let mut bad_start = start;
    bad_start.mac[0] ^= 1;
    assert_eq!(
        f.open(bad_start, t).unwrap_err().kind(),
        ErrorKind::Integrity
    );
    // A trusted tail before the start is a caller error.
    assert_eq!(
        f.open(t, start).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    // A trusted tail in the middle of a commit is never reached.
    let mid = ChainPos { seq: 2, mac: t.mac };
    assert_eq!(f.open(start, mid).unwrap_err().kind(), ErrorKind::Integrity);
}

/// Byte offsets of a block to flip: every header byte, and payload bytes at a
/// stride (every byte in the long mode).
fn offsets() -> Vec<usize> {
    if long() {
        (0..BLOCK_SIZE).collect()
    } else {
        (0..HEADER_LEN)
            .chain((HEADER_LEN..BLOCK_SIZE).step_by(251))
            .chain([BLOCK_SIZE - 1])
            .collect()
    }
}

#[test]
fn flip_any_byte_of_any_block() {
    let f = Fixture::new(8);
    let mut c = f.create();
    let start = c.start();
    let w = workload();
    let tails = run_commits(&mut c, &w);
    let tail = *tails.last().unwrap();
    let mut cases = 0u64;
    for seq in 0..tail.seq {
        let blk = f.dev_block(seq);
        for &off in &offsets() {
            let masks: &[u8] = if long() { &[0x01, 0x80] } else { &[0x01] };
            for &mask in masks {
                let old = f.adv.snapshot_block(blk).unwrap();
                f.adv.flip_byte(blk, off, mask).unwrap();
                // Before the trusted tail: Integrity.
                let e = f.open(start, tail).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Integrity, "seq {seq} off {off}");
                // With the trusted tail at the start: the chain stops before
                // the commit holding the flipped block.
                let (c2, recs) = f.open(start, start).unwrap();
                let whole = tails.iter().filter(|t| t.seq <= seq).count();
                assert_eq!(recs, flat(&w[..whole]), "seq {seq} off {off}");
                assert_eq!(
                    c2.tail().seq,
                    if whole == 0 { 0 } else { tails[whole - 1].seq }
                );
                f.adv.replay(&old).unwrap();
                cases += 2;
            }
        }
    }
    let (_, recs) = f.open(start, tail).unwrap();
    assert_eq!(recs, flat(&w));
    println!("mac_chain flip cases: {cases}");
}

#[test]
fn swap_two_blocks() {
    let f = Fixture::new(8);
    let mut c = f.create();
    let start = c.start();
    let tail = *run_commits(&mut c, &workload()).last().unwrap();
    let mut cases = 0;
    for a in 0..tail.seq {
        for b in a + 1..tail.seq {
            f.adv.swap(f.dev_block(a), f.dev_block(b)).unwrap();
            assert_eq!(
                f.open(start, tail).unwrap_err().kind(),
                ErrorKind::Integrity
            );
            f.adv.swap(f.dev_block(a), f.dev_block(b)).unwrap();
            cases += 1;
        }
        // Also: a copy of a block in place of another.
        let other = (a + 1) % tail.seq;
        let old = f.adv.snapshot_block(f.dev_block(other)).unwrap();
        f.adv
            .copy_block(f.dev_block(a), f.dev_block(other))
            .unwrap();
        assert_eq!(
            f.open(start, tail).unwrap_err().kind(),
            ErrorKind::Integrity
        );
        f.adv.replay(&old).unwrap();
        cases += 1;
    }
    assert!(f.open(start, tail).is_ok());
    println!("mac_chain swap/splice cases: {cases}");
}

#[test]
fn truncation_and_rollback_before_trusted_tail() {
    let f = Fixture::new(8);
    let mut c = f.create();
    let start = c.start();
    let before = f.adv.snapshot().unwrap();
    let w = workload();
    let mut images = vec![before];
    let mut tails = Vec::new();
    for commit in &w {
        tails.extend(run_commits(&mut c, std::slice::from_ref(commit)));
        images.push(f.adv.snapshot().unwrap());
    }
    let tail = *tails.last().unwrap();
    let mut cases = 0;
    // Roll the image back to after each earlier commit.
    for img in &images[..images.len() - 1] {
        f.adv.restore(img).unwrap();
        assert_eq!(
            f.open(start, tail).unwrap_err().kind(),
            ErrorKind::Integrity
        );
        cases += 1;
    }
    f.adv.restore(images.last().unwrap()).unwrap();
    // Zero (erase) any one block.
    for seq in 0..tail.seq {
        let old = f.adv.snapshot_block(f.dev_block(seq)).unwrap();
        f.adv
            .write_block(f.dev_block(seq), &vec![0u8; BLOCK_SIZE])
            .unwrap();
        assert_eq!(
            f.open(start, tail).unwrap_err().kind(),
            ErrorKind::Integrity
        );
        f.adv.replay(&old).unwrap();
        cases += 1;
    }
    // After the trusted tail, a rollback only loses the newer commits.
    f.adv.restore(&images[2]).unwrap();
    let (_, recs) = f.open(start, tails[0]).unwrap();
    assert_eq!(recs, flat(&w[..2]));
    println!("mac_chain truncation/rollback cases: {cases}");
}

#[test]
fn replay_from_earlier_lap_and_from_abandoned_fork() {
    // Earlier lap: a ring of 4, written twice round.
    let f = Fixture::new(4);
    let mut c = f.create();
    let mut olds = Vec::new();
    for i in 0..4u32 {
        c.append(&rec(i, 100)).unwrap();
        c.commit().unwrap();
        olds.push(f.adv.snapshot_block(f.dev_block(i as u64)).unwrap());
    }
    c.reset_start(c.tail()).unwrap();
    let start = c.start();
    for i in 4..7u32 {
        c.append(&rec(i, 100)).unwrap();
        c.commit().unwrap();
    }
    let tail = c.tail();
    let (_, recs) = f.open(start, tail).unwrap();
    assert_eq!(recs.len(), 3);
    let mut cases = 0;
    for old in &olds[..3] {
        let cur = f.adv.snapshot_block(old.pos).unwrap();
        f.adv.replay(old).unwrap();
        assert_eq!(
            f.open(start, tail).unwrap_err().kind(),
            ErrorKind::Integrity
        );
        f.adv.replay(&cur).unwrap();
        cases += 1;
    }

    // Abandoned fork: the same sequence number written twice (after a
    // rollback that the owner's trusted tail did not yet cover).
    let f = Fixture::new(8);
    let mut c = f.create();
    let start = c.start();
    c.append(b"c1").unwrap();
    let t1 = c.commit().unwrap();
    let after_c1 = f.adv.snapshot().unwrap();
    c.append(b"c2").unwrap();
    c.commit().unwrap();
    let c2_block = f.adv.snapshot_block(f.dev_block(1)).unwrap();
    f.adv.restore(&after_c1).unwrap();
    let (mut c, recs) = f.open(start, t1).unwrap();
    assert_eq!(recs, vec![b"c1".to_vec()]);
    c.append(b"c3").unwrap();
    let t3 = c.commit().unwrap();
    f.adv.replay(&c2_block).unwrap();
    // c2's block chains correctly after c1, but not to the trusted tail.
    assert_eq!(f.open(start, t3).unwrap_err().kind(), ErrorKind::Integrity);
    cases += 1;
    println!("mac_chain replay cases: {cases}");
}

#[test]
fn ring_wrap_with_reset_start_and_nospace() {
    let f = Fixture::new(5);
    let mut c = f.create();
    let mut expect_start = c.start();
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for i in 0..40u32 {
        let r = rec(i, (i as usize * 1237) % (2 * PAYLOAD_CAP));
        match c.append(&r) {
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::NoSpace);
                // Free the ring up to the last commit, as an owner would
                // after a snapshot, then retry.
                expect_start = c.tail();
                c.reset_start(expect_start).unwrap();
                kept.clear();
                c.append(&r).unwrap();
            }
        }
        kept.push(r);
        let t = c.commit().unwrap();
        if i % 3 == 0 {
            let (c2, recs) = f.open(expect_start, t).unwrap();
            assert_eq!(recs, kept, "commit {i}");
            c = c2;
        }
    }
    assert!(c.tail().seq > 3 * f.n, "wrapped several times");
    // A record larger than the ring never fits.
    let e = c.append(&vec![0u8; 5 * PAYLOAD_CAP]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    assert_eq!(c.pending_bytes(), 0);
    // reset_start outside the chain is refused.
    let mut bogus = c.tail();
    bogus.seq += 1;
    assert_eq!(
        c.reset_start(bogus).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

/// A device wrapper that records the IV of every chain block written.
struct IvRecorder<D> {
    inner: D,
    ivs: Arc<Mutex<Vec<[u8; 12]>>>,
}

impl<D: BlockSet> BlockSet for IvRecorder<D> {
    fn read(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.inner.read(pos, buf)
    }
    fn write(&self, pos: u64, buf: &[u8]) -> Result<()> {
        self.inner.write(pos, buf)?;
        let mut ivs = self.ivs.lock().unwrap();
        for b in buf.chunks_exact(BLOCK_SIZE) {
            ivs.push(b[20..32].try_into().unwrap());
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
    fn nblocks(&self) -> u64 {
        self.inner.nblocks()
    }
}

type CrashDev = IvRecorder<BlockRange<Arc<CrashDisk<Arc<MemDisk>>>>>;

/// The scripted crash workload: commits of several sizes.
fn crash_workload() -> Vec<Vec<Vec<u8>>> {
    vec![
        vec![rec(1, 30)],
        vec![rec(2, PAYLOAD_CAP * 2 + 9), rec(3, 4)],
        vec![rec(4, 0), rec(5, 200), rec(6, 300)],
        vec![rec(7, PAYLOAD_CAP)],
        vec![rec(8, 50)],
    ]
}

/// A small deterministic RNG for choosing crash subsets.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Which pending writes the second crash of selector `sel` keeps.
fn bits2(sel: u64) -> u64 {
    [0u64, !0, 0b01, 0b10, 0b101][(sel % 5) as usize]
}

#[test]
fn crash_at_every_write_and_flush_boundary() {
    const N: u64 = 12;
    let crypto = crypto();
    let key = key(&crypto);
    let w = crash_workload();
    let ivs = Arc::new(Mutex::new(Vec::new()));
    let setup = |ivs: &Arc<Mutex<Vec<[u8; 12]>>>| {
        let mem = Arc::new(MemDisk::new(N + 1).unwrap());
        let crash = Arc::new(CrashDisk::new(mem));
        let dev: CrashDev = IvRecorder {
            inner: BlockRange::new(crash.clone(), 1, N).unwrap(),
            ivs: ivs.clone(),
        };
        (crash, dev)
    };
    // Dry run: count the I/O operations of the workload.
    let (crash, dev) = setup(&ivs);
    let mut c = MacChain::create(dev, crypto.clone(), key.clone()).unwrap();
    run_commits(&mut c, &w);
    let total_ops = crash.op_count();
    let selectors = if long() { 64 } else { 8 };
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut crash_points = 0u64;
    let mut reopens = 0u64;
    let mut saw_in_flight = 0u64;
    let mut second_crashes = 0u64;
    for n in 0..=total_ops {
        for sel in 0..selectors {
            let (crash, dev) = setup(&ivs);
            let mut c = MacChain::create(dev, crypto.clone(), key.clone()).unwrap();
            let start = c.start();
            crash.crash_after_ops(n).unwrap();
            let mut committed: Vec<Vec<u8>> = Vec::new();
            let mut trusted = start;
            let mut in_flight: Option<Vec<Vec<u8>>> = None;
            for commit in &w {
                for r in commit {
                    c.append(r).unwrap();
                }
                match c.commit() {
                    Ok(t) => {
                        trusted = t;
                        committed.extend(commit.iter().cloned());
                    }
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::Io);
                        in_flight = Some(commit.clone());
                        break;
                    }
                }
            }
            let pending = crash.pending_count();
            match sel {
                0 => crash.crash(&|_| false).unwrap(),
                1 => crash.crash(&|_| true).unwrap(),
                2 => {
                    // Every write lands, in reverse order.
                    let order: Vec<usize> = (0..pending).rev().collect();
                    crash.crash_in_order(&order).unwrap()
                }
                _ => {
                    let bits = rng.next();
                    crash.crash(&|i| bits >> (i % 64) & 1 == 1).unwrap()
                }
            }
            crash_points += 1;
            // Reopen from the trusted tail of the last successful commit.
            let dev: CrashDev = IvRecorder {
                inner: BlockRange::new(crash.clone(), 1, N).unwrap(),
                ivs: ivs.clone(),
            };
            let (mut c, recs) = MacChain::open(dev, crypto.clone(), key.clone(), start, trusted)
                .unwrap_or_else(|e| panic!("crash after {n} ops, selector {sel}: {e}"));
            let mut with_flight = committed.clone();
            with_flight.extend(in_flight.clone().unwrap_or_default());
            if in_flight.is_some() && recs == with_flight && recs != committed {
                saw_in_flight += 1;
            }
            assert!(
                recs == committed || (in_flight.is_some() && recs == with_flight),
                "crash after {n} ops, selector {sel}: got {} records, committed {}",
                recs.len(),
                committed.len()
            );
            // The chain goes on after recovery (new blocks get new IVs, and
            // overwrite what is left of the lost commit); crash again in the
            // middle of that commit half of the time.
            let trusted = c.tail();
            if sel % 2 == 0 {
                crash.crash_after_ops(rng.next() % 2).unwrap();
                second_crashes += 1;
            }
            c.append(&rec(99, (rng.next() % (2 * PAYLOAD_CAP as u64)) as usize))
                .unwrap();
            let second = c.commit();
            crash
                .crash(&|i| i < 64 && (bits2(sel) >> i) & 1 == 1)
                .unwrap();
            let dev: CrashDev = IvRecorder {
                inner: BlockRange::new(crash.clone(), 1, N).unwrap(),
                ivs: ivs.clone(),
            };
            let trusted = second.unwrap_or(trusted);
            let (_, recs2) = MacChain::open(dev, crypto.clone(), key.clone(), start, trusted)
                .unwrap_or_else(|e| panic!("second crash after {n} ops, selector {sel}: {e}"));
            assert!(recs2.len() == recs.len() || recs2.len() == recs.len() + 1);
            assert_eq!(recs2[..recs.len()], recs[..]);
            reopens += 2;
        }
    }
    let ivs = ivs.lock().unwrap();
    let distinct: HashSet<_> = ivs.iter().collect();
    assert_eq!(distinct.len(), ivs.len(), "an IV was used twice");
    assert!(saw_in_flight > 0, "no crash kept an in-flight commit");
    println!(
        "mac_chain crash: {} I/O boundaries x {selectors} subsets = {crash_points} crash points \
         ({saw_in_flight} recovered the in-flight commit) + {second_crashes} second crashes \
         in the first commit after recovery, {reopens} reopens, {} block IVs all distinct",
        total_ops + 1,
        ivs.len()
    );
}

#[test]
fn io_errors_come_back_and_chain_recovers() {
    let mem = Arc::new(MemDisk::new(40).unwrap());
    let fault = Arc::new(FaultDisk::new(mem));
    let crypto = crypto();
    let key = key(&crypto);
    let mut c = MacChain::create(fault.clone(), crypto.clone(), key.clone()).unwrap();
    let start = c.start();
    // 20 blocks: open needs two batched reads.
    c.append(&rec(1, 20 * PAYLOAD_CAP - 100)).unwrap();
    c.append(b"one").unwrap();
    let t1 = c.commit().unwrap();
    assert_eq!(t1.seq, 20);
    let mut cases = 0;
    let mut last = t1;
    for kind in [IoKind::Write, IoKind::Flush] {
        c.append(b"two").unwrap();
        fault.fail_nth(kind, 0, false).unwrap();
        assert_eq!(c.commit().unwrap_err().kind(), ErrorKind::Io);
        assert_eq!(c.tail(), last);
        // The failed commit is retried (fresh IVs) and succeeds.
        let t2 = c.commit().unwrap();
        let (c2, recs) =
            MacChain::open(fault.clone(), crypto.clone(), key.clone(), start, t2).unwrap();
        assert_eq!(recs.last().unwrap(), b"two");
        c = c2;
        last = t2;
        cases += 1;
    }
    // A read error while opening is an I/O error, not a short chain.
    for nth in 0..2 {
        fault.fail_nth(IoKind::Read, nth, false).unwrap();
        let e = MacChain::open(fault.clone(), crypto.clone(), key.clone(), start, t1).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        cases += 1;
    }
    fault.heal().unwrap();
    assert!(MacChain::open(fault, crypto, key, start, t1).is_ok());
    println!("mac_chain io error cases: {cases}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if long() { 256 } else { 16 }))]

    /// Random records in random commits, reopened at random moments, against
    /// a model list.
    #[test]
    fn prop_matches_model(
        ops in prop::collection::vec((0usize..3 * PAYLOAD_CAP, 0u8..4), 1..30),
    ) {
        let f = Fixture::new(64);
        let mut c = f.create();
        let start = c.start();
        let mut model: Vec<Vec<u8>> = Vec::new();
        let mut pending: Vec<Vec<u8>> = Vec::new();
        for (i, (len, op)) in ops.into_iter().enumerate() {
            let r = rec(i as u32, len);
            match c.append(&r) {
                Ok(()) => pending.push(r),
                Err(e) => {
                    prop_assert_eq!(e.kind(), ErrorKind::NoSpace);
                    break;
                }
            }
            if op == 0 {
                let t = c.commit().unwrap();
                model.append(&mut pending);
                let (c2, recs) = f.open(start, t).unwrap();
                prop_assert_eq!(&recs, &model);
                c = c2;
            } else if op == 1 {
                c.commit().unwrap();
                model.append(&mut pending);
            }
        }
        let t = c.commit().unwrap();
        model.append(&mut pending);
        let (_, recs) = f.open(start, t).unwrap();
        prop_assert_eq!(recs, model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if long() { 512 } else { 64 }))]

    /// Garbage on the disk (random blocks, or real blocks with random
    /// corruption) never makes open panic or return records that were not
    /// committed: it returns a prefix of the committed records, or an error.
    #[test]
    fn prop_garbage_never_panics(
        edits in prop::collection::vec((0u64..8, 0usize..BLOCK_SIZE, any::<u8>(), any::<bool>()), 1..6),
        trust_all in any::<bool>(),
    ) {
        let f = Fixture::new(8);
        let mut c = f.create();
        let start = c.start();
        let w = workload();
        let tail = *run_commits(&mut c, &w).last().unwrap();
        for (blk, off, byte, whole) in edits {
            if whole {
                let junk: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i as u8) ^ byte).collect();
                f.adv.write_block(OFF + blk, &junk).unwrap();
            } else {
                f.adv.modify(OFF + blk, &mut |b| b[off] = byte).unwrap();
            }
        }
        let trusted = if trust_all { tail } else { start };
        match f.open(start, trusted) {
            Ok((_, recs)) => {
                let all = flat(&w);
                prop_assert!(recs.len() <= all.len());
                prop_assert_eq!(&recs[..], &all[..recs.len()]);
            }
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Integrity),
        }
    }
}
