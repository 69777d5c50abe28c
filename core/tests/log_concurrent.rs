//! SharedLogStore: transactions from several threads at once.
//!
//! - disjoint logs: 4 threads, many transactions each (create, append, seal,
//!   delete, read back, commit or abort), then the store and its reopened
//!   image equal the merged per-thread models;
//! - conflicts: same-log transactions, exactly one commits, the others get
//!   `ErrorKind::Conflict` and abort;
//! - appends racing on one log: its contents are the committed appends in
//!   commit-counter order;
//! - reads of sealed logs while other threads append and commit;
//! - crashes while 4 threads commit: the reopened state is a prefix of the
//!   commit order that holds every acknowledged commit;
//! - chunk accounting: aborted transactions return their chunks, no chunk
//!   has two owners.
//!
//! `MLSDISK_LONG_TESTS=1` runs more transactions and crash points.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier, Mutex};

use mlsdisk_core::bio::{BlockRange, BlockSet, CrashDisk, MemDisk, BLOCK_SIZE};
use mlsdisk_core::log::{LogId, LogStoreConfig, SharedLogStore, StoreRoot, TxHandle, TxLogStore};
use mlsdisk_core::platform::{StdCrypto, StdSync};
use mlsdisk_core::{CryptoRef, ErrorKind, Result};

const KEY: &[u8] = &[0x5au8; 32];
const JOURNAL: u64 = 2048;
const CHUNK_BLOCKS: u32 = 4;
const NCHUNKS: u64 = 1024;
const DISK_BLOCKS: u64 = JOURNAL + CHUNK_BLOCKS as u64 * NCHUNKS;
const THREADS: usize = 4;

fn long() -> bool {
    std::env::var("MLSDISK_LONG_TESTS").is_ok_and(|v| v == "1")
}

fn crypto() -> CryptoRef {
    Arc::new(StdCrypto)
}

fn regions<D: BlockSet + Clone>(d: &D) -> (BlockRange<D>, BlockRange<D>) {
    (
        BlockRange::new(d.clone(), 0, JOURNAL).unwrap(),
        BlockRange::new(d.clone(), JOURNAL, DISK_BLOCKS - JOURNAL).unwrap(),
    )
}

fn format<D: BlockSet + Clone>(d: &D, snapshot_every: u32) -> TxLogStore<D> {
    let (j, c) = regions(d);
    let cfg = LogStoreConfig {
        chunk_blocks: CHUNK_BLOCKS,
        key_len: 16,
        snapshot_every,
    };
    TxLogStore::format(j, c, crypto(), KEY, cfg).unwrap()
}

fn open<D: BlockSet + Clone>(d: &D, root: &StoreRoot) -> Result<TxLogStore<D>> {
    let (j, c) = regions(d);
    TxLogStore::open(j, c, crypto(), KEY, root)
}

type Shared<D> = SharedLogStore<D, StdSync>;
/// Reads blocks of a log (a store's or a transaction's `read`).
type ReadFn<'a> = &'a dyn Fn(LogId, u64, &mut [u8]) -> Result<()>;
/// A transaction's logs and their block seeds.
type TxLogs = BTreeMap<u64, Vec<u64>>;

/// Block `i` of a log appended with `seed`.
fn content(seed: u64, i: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    let x = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i.wrapping_mul(0x1234_5679));
    for (j, c) in b.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&(x ^ j as u64).to_le_bytes());
    }
    b
}

fn blocks_of(seeds: &[u64], first: u64) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, &s) in seeds.iter().enumerate() {
        v.extend_from_slice(&content(s, first + k as u64));
    }
    v
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A log in a model: tag, the seed of each block, sealed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MLog {
    tag: u64,
    seeds: Vec<u64>,
    sealed: bool,
}

fn append_seeds<D: BlockSet>(
    h: &mut TxHandle<'_, D, StdSync>,
    log: LogId,
    m: &mut MLog,
    seeds: &[u64],
) -> Result<()> {
    let first = m.seeds.len() as u64;
    h.append(log, &blocks_of(seeds, first))?;
    m.seeds.extend_from_slice(seeds);
    Ok(())
}

/// Every log of `model` reads back through `read` exactly.
fn check_log(read: ReadFn<'_>, len: u64, id: u64, m: &MLog) {
    assert_eq!(len, m.seeds.len() as u64, "log {id} length");
    let mut buf = vec![0u8; BLOCK_SIZE];
    for (i, &s) in m.seeds.iter().enumerate() {
        read(LogId(id), i as u64, &mut buf).unwrap();
        assert!(buf == content(s, i as u64), "log {id} block {i} differs");
    }
}

fn check_reopened<D: BlockSet + Clone>(d: &D, root: &StoreRoot, model: &BTreeMap<u64, MLog>) {
    let s = open(d, root).unwrap();
    let mut got = BTreeSet::new();
    for tag in 0..THREADS as u64 + 10 {
        for id in s.logs_with_tag(tag) {
            got.insert(id.0);
        }
    }
    assert_eq!(
        got,
        model.keys().copied().collect::<BTreeSet<_>>(),
        "reopened log set"
    );
    for (&id, m) in model {
        assert_eq!(s.log_tag(LogId(id)).unwrap(), m.tag);
        assert_eq!(s.is_sealed(LogId(id)).unwrap(), m.sealed, "log {id} sealed");
        check_log(
            &|l, p, b| s.read(l, p, b),
            s.log_len(LogId(id)).unwrap(),
            id,
            m,
        );
    }
}

/// One thread's share of the disjoint workload: transactions on its own
/// logs only (tag = thread number), each committed or aborted at random.
/// Returns its committed model and (commits, aborts).
fn disjoint_worker<D: BlockSet>(
    s: &Shared<D>,
    t: u64,
    txs: usize,
) -> (BTreeMap<u64, MLog>, usize, usize) {
    let mut rng = Rng(0x1234_5678_9abc_def1 ^ (t + 1).wrapping_mul(0x9e37_79b9));
    let mut model: BTreeMap<u64, MLog> = BTreeMap::new();
    let (mut commits, mut aborts) = (0, 0);
    let mut seed = t << 40;
    for _ in 0..txs {
        let mut h = s.begin().unwrap();
        let mut m = model.clone();
        for _ in 0..1 + rng.below(3) {
            let open: Vec<u64> = m
                .iter()
                .filter(|(_, l)| !l.sealed)
                .map(|(&id, _)| id)
                .collect();
            match rng.below(10) {
                0..=2 => {
                    let id = h.create_log(t).unwrap();
                    assert!(m
                        .insert(
                            id.0,
                            MLog {
                                tag: t,
                                ..MLog::default()
                            }
                        )
                        .is_none());
                    let n = 1 + rng.below(6) as usize;
                    let seeds: Vec<u64> = (0..n)
                        .map(|_| {
                            seed += 1;
                            seed
                        })
                        .collect();
                    append_seeds(&mut h, id, m.get_mut(&id.0).unwrap(), &seeds).unwrap();
                }
                3..=5 if !open.is_empty() => {
                    let id = open[rng.below(open.len() as u64) as usize];
                    let n = 1 + rng.below(5) as usize;
                    let seeds: Vec<u64> = (0..n)
                        .map(|_| {
                            seed += 1;
                            seed
                        })
                        .collect();
                    append_seeds(&mut h, LogId(id), m.get_mut(&id).unwrap(), &seeds).unwrap();
                }
                6 if !open.is_empty() => {
                    let id = open[rng.below(open.len() as u64) as usize];
                    h.seal(LogId(id)).unwrap();
                    m.get_mut(&id).unwrap().sealed = true;
                }
                7 if !m.is_empty() => {
                    let ids: Vec<u64> = m.keys().copied().collect();
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    h.delete_log(LogId(id)).unwrap();
                    m.remove(&id);
                }
                _ if !m.is_empty() => {
                    // Read back one log of the transaction's view.
                    let ids: Vec<u64> = m.keys().copied().collect();
                    let id = ids[rng.below(ids.len() as u64) as usize];
                    let l = &m[&id];
                    check_log(
                        &|l, p, b| h.read(l, p, b),
                        h.log_len(LogId(id)).unwrap(),
                        id,
                        l,
                    );
                    assert_eq!(h.is_sealed(LogId(id)).unwrap(), l.sealed);
                }
                _ => {}
            }
        }
        if rng.below(5) == 0 {
            h.abort();
            aborts += 1;
        } else {
            h.commit(Some(&t.to_le_bytes())).unwrap();
            model = m;
            commits += 1;
        }
    }
    (model, commits, aborts)
}

#[test]
fn disjoint_threads_match_model_and_reopen() {
    let txs = if long() { 300 } else { 60 };
    let d = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
    // Snapshots every 16 commits: some commits write a snapshot while other
    // transactions run.
    let mut store = format(&d, 16);
    store.set_rotate_after(60);
    let s: Shared<_> = SharedLogStore::new(store).unwrap();
    let c0 = s.commit_count();
    let results: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..THREADS as u64)
            .map(|t| {
                let s = &s;
                sc.spawn(move || disjoint_worker(s, t, txs))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut model = BTreeMap::new();
    let (mut commits, mut aborts) = (0, 0);
    for (m, c, a) in results {
        model.extend(m);
        commits += c;
        aborts += a;
    }
    assert_eq!(
        s.commit_count() - c0,
        commits as u64,
        "every commit counted once"
    );
    s.check_chunks().unwrap();
    let st = s.stats();
    assert_eq!(st.active, 0);
    assert_eq!(st.logs, model.len());
    assert_eq!(st.chunks_total - st.chunks_free, st.chunks_committed);
    // The live store agrees with the model too.
    let h = s.begin().unwrap();
    for (&id, m) in &model {
        check_log(
            &|l, p, b| h.read(l, p, b),
            h.log_len(LogId(id)).unwrap(),
            id,
            m,
        );
    }
    drop(h);
    let root = s.root();
    let last_us = s.user_state().unwrap();
    drop(s);
    check_reopened(&d, &root, &model);
    let re = open(&d, &root).unwrap();
    assert_eq!(re.user_state(), &last_us[..]);
    eprintln!(
        "disjoint: {THREADS} threads, {} transactions: {commits} committed, {aborts} aborted, {} logs at the end, journal half {}",
        THREADS * txs,
        model.len(),
        root.journal_half()
    );
}

/// Pairs of transactions on one log, in every kind of overlap.
#[test]
fn conflicting_transactions_one_wins() {
    let d = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
    let s: Shared<_> = SharedLogStore::new(format(&d, 256)).unwrap();
    let mut h = s.begin().unwrap();
    let logs: Vec<LogId> = (0..6).map(|_| h.create_log(9).unwrap()).collect();
    for &l in &logs {
        h.append(l, &content(l.0, 0)).unwrap();
    }
    h.commit(None).unwrap();
    drop(h);
    let mut conflicts = 0;
    let is_conflict = |e: mlsdisk_core::Error| {
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e:?}");
    };

    {
        // Two appenders: the second fails at its append.
        let (mut a, mut b) = (s.begin().unwrap(), s.begin().unwrap());
        a.append(logs[0], &content(100, 1)).unwrap();
        is_conflict(b.append(logs[0], &content(200, 1)).unwrap_err());
        conflicts += 1;
        b.abort();
        a.commit(None).unwrap();

        // Two sealers: first committer wins.
        let (mut a, mut b) = (s.begin().unwrap(), s.begin().unwrap());
        a.seal(logs[1]).unwrap();
        b.seal(logs[1]).unwrap();
        b.commit(None).unwrap();
        is_conflict(a.commit(None).unwrap_err());
        conflicts += 1;
        a.abort();

        // A delete while another transaction appends: the delete cannot commit.
        let (mut a, mut b) = (s.begin().unwrap(), s.begin().unwrap());
        a.append(logs[2], &content(300, 1)).unwrap();
        b.delete_log(logs[2]).unwrap();
        is_conflict(b.commit(None).unwrap_err());
        conflicts += 1;
        drop(b); // dropping aborts
        a.commit(None).unwrap();

        // Two deleters.
        let (mut a, mut b) = (s.begin().unwrap(), s.begin().unwrap());
        a.delete_log(logs[3]).unwrap();
        b.delete_log(logs[3]).unwrap();
        a.commit(None).unwrap();
        is_conflict(b.commit(None).unwrap_err());
        conflicts += 1;
        b.abort();

        // A stale copy: b sealed-copied the log, a appended and committed, then
        // b's append (and its commit) must fail.
        let (mut a, mut b) = (s.begin().unwrap(), s.begin().unwrap());
        b.seal(logs[4]).unwrap();
        a.append(logs[4], &content(400, 1)).unwrap();
        a.commit(None).unwrap();
        is_conflict(b.commit(None).unwrap_err());
        conflicts += 1;
        b.abort();

        // Disjoint logs never conflict; a transaction that only reads neither.
        let (mut a, mut b, r) = (s.begin().unwrap(), s.begin().unwrap(), s.begin().unwrap());
        a.append(logs[5], &content(500, 1)).unwrap();
        b.append(logs[4], &content(501, 2)).unwrap();
        let mut buf = vec![0u8; BLOCK_SIZE];
        r.read(logs[5], 0, &mut buf).unwrap();
        a.commit(None).unwrap();
        b.commit(None).unwrap();
        r.abort();
    }
    let mut model = BTreeMap::new();
    let ml = |seeds: Vec<u64>, sealed| MLog {
        tag: 9,
        seeds,
        sealed,
    };
    model.insert(logs[0].0, ml(vec![logs[0].0, 100], false));
    model.insert(logs[1].0, ml(vec![logs[1].0], true));
    model.insert(logs[2].0, ml(vec![logs[2].0, 300], false));
    model.insert(logs[4].0, ml(vec![logs[4].0, 400, 501], false));
    model.insert(logs[5].0, ml(vec![logs[5].0, 500], false));
    s.check_chunks().unwrap();
    let root = s.root();
    drop(s);
    check_reopened(&d, &root, &model);

    // Four threads delete the same log, each in its own transaction, all
    // holding their copies before anyone commits: exactly one commits.
    let d = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
    let s: Shared<_> = SharedLogStore::new(format(&d, 256)).unwrap();
    let rounds = if long() { 50 } else { 10 };
    let mut h = s.begin().unwrap();
    let targets: Vec<LogId> = (0..rounds)
        .map(|i| {
            let l = h.create_log(1).unwrap();
            h.append(l, &content(i, 0)).unwrap();
            l
        })
        .collect();
    h.commit(None).unwrap();
    drop(h);
    let barrier = Barrier::new(THREADS);
    let wins = Mutex::new(vec![0usize; rounds as usize]);
    let lost = Mutex::new(0usize);
    let odd = Mutex::new(0usize);
    std::thread::scope(|sc| {
        for _ in 0..THREADS {
            sc.spawn(|| {
                // No panics between barriers (a panicking thread would leave
                // the others waiting): unexpected errors are counted.
                for (r, &l) in targets.iter().enumerate() {
                    let mut h = s.begin();
                    let del = match &mut h {
                        Ok(h) => h.delete_log(l).is_ok(),
                        Err(_) => false,
                    };
                    barrier.wait();
                    match (h, del) {
                        (Ok(mut h), true) => match h.commit(None) {
                            Ok(_) => wins.lock().unwrap()[r] += 1,
                            Err(e) if e.kind() == ErrorKind::Conflict => {
                                *lost.lock().unwrap() += 1;
                                h.abort();
                            }
                            Err(_) => *odd.lock().unwrap() += 1,
                        },
                        _ => *odd.lock().unwrap() += 1,
                    }
                    barrier.wait();
                }
            });
        }
    });
    assert_eq!(*odd.lock().unwrap(), 0, "unexpected errors");
    assert!(
        wins.lock().unwrap().iter().all(|&w| w == 1),
        "{:?}",
        wins.lock().unwrap()
    );
    assert_eq!(*lost.lock().unwrap(), (THREADS - 1) * rounds as usize);
    s.check_chunks().unwrap();
    assert_eq!(s.stats().logs, 0);
    conflicts += *lost.lock().unwrap();
    eprintln!("conflicts: {conflicts} conflicting commits refused, {rounds} four-way delete races each with one winner");
}

/// Four threads append to one shared log in racing transactions, each at
/// the length it read: exactly one commits per round, and the log ends up
/// as the successful appends in commit order.
#[test]
fn racing_appends_follow_commit_order() {
    let rounds = if long() { 100 } else { 25 };
    let d = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
    let s: Shared<_> = SharedLogStore::new(format(&d, 8)).unwrap();
    let mut h = s.begin().unwrap();
    let log = h.create_log(0).unwrap();
    h.commit(None).unwrap();
    drop(h);
    let done = Mutex::new(Vec::new());
    let barrier = Barrier::new(THREADS);
    let conflicts = Mutex::new(0usize);
    let odd: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for t in 0..THREADS as u64 {
            let (s, done, barrier, conflicts, odd) = (&s, &done, &barrier, &conflicts, &odd);
            sc.spawn(move || {
                // No panics between barriers: odd outcomes are recorded.
                for r in 0..rounds as u64 {
                    let seed = (t << 32) | r;
                    let Ok(mut h) = s.begin() else {
                        odd.lock().unwrap().push("begin failed".into());
                        barrier.wait();
                        barrier.wait();
                        continue;
                    };
                    barrier.wait();
                    // Every thread reads the length, then all append the
                    // block for that position: the transactions act on what
                    // they read, so exactly one may commit.
                    let len = h.log_len(log);
                    barrier.wait();
                    let res = len.and_then(|len| {
                        h.append(log, &content(seed, len))?;
                        let now = h.log_len(log)?;
                        if now != len + 1 {
                            odd.lock().unwrap().push(format!("length {len} then {now}"));
                        }
                        h.commit(None)
                    });
                    match res {
                        Ok(info) => done.lock().unwrap().push((info.counter, seed)),
                        Err(e) if e.kind() == ErrorKind::Conflict => {
                            *conflicts.lock().unwrap() += 1;
                            h.abort();
                        }
                        Err(e) => odd.lock().unwrap().push(format!("{e:?}")),
                    }
                }
            });
        }
    });
    assert!(odd.lock().unwrap().is_empty(), "{:?}", odd.lock().unwrap());
    let mut done = done.into_inner().unwrap();
    done.sort();
    let conflicts = conflicts.into_inner().unwrap();
    assert_eq!(
        done.len() + conflicts,
        THREADS * rounds,
        "every attempt accounted for"
    );
    assert_eq!(done.len(), rounds, "not exactly one commit per round");
    let seeds: Vec<u64> = done.iter().map(|&(_, s)| s).collect();
    assert!(!seeds.is_empty());
    // A block's content depends on its position: the append at position p
    // read the length p before appending, so a wrong order would not read
    // back.
    let mut model = BTreeMap::new();
    model.insert(
        log.0,
        MLog {
            tag: 0,
            seeds: seeds.clone(),
            sealed: false,
        },
    );
    let h = s.begin().unwrap();
    check_log(
        &|l, p, b| h.read(l, p, b),
        h.log_len(log).unwrap(),
        log.0,
        &model[&log.0],
    );
    drop(h);
    s.check_chunks().unwrap();
    let root = s.root();
    drop(s);
    check_reopened(&d, &root, &model);
    eprintln!(
        "racing appends: {} committed, {conflicts} conflicts",
        seeds.len()
    );
}

/// Two threads read sealed logs block by block while two threads append to
/// and commit their own logs.
#[test]
fn sealed_reads_during_appends() {
    let iters = if long() { 200 } else { 40 };
    let d = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
    let s: Shared<_> = SharedLogStore::new(format(&d, 32)).unwrap();
    let mut h = s.begin().unwrap();
    let mut sealed = BTreeMap::new();
    for k in 0..4u64 {
        let l = h.create_log(5).unwrap();
        let seeds: Vec<u64> = (0..10).map(|i| 1000 * (k + 1) + i).collect();
        h.append(l, &blocks_of(&seeds, 0)).unwrap();
        h.seal(l).unwrap();
        sealed.insert(
            l.0,
            MLog {
                tag: 5,
                seeds,
                sealed: true,
            },
        );
    }
    h.commit(None).unwrap();
    drop(h);
    let reads = Mutex::new(0usize);
    let written = Mutex::new(BTreeMap::new());
    std::thread::scope(|sc| {
        for t in 0..2u64 {
            let (s, sealed, reads) = (&s, &sealed, &reads);
            sc.spawn(move || {
                let mut rng = Rng(77 + t);
                let ids: Vec<u64> = sealed.keys().copied().collect();
                let mut buf = vec![0u8; BLOCK_SIZE];
                for _ in 0..iters {
                    let h = s.begin().unwrap();
                    for _ in 0..8 {
                        let id = ids[rng.below(ids.len() as u64) as usize];
                        let i = rng.below(10);
                        h.read(LogId(id), i, &mut buf).unwrap();
                        assert!(buf == content(sealed[&id].seeds[i as usize], i));
                        *reads.lock().unwrap() += 1;
                    }
                    h.abort();
                }
            });
        }
        for t in 0..2u64 {
            let (s, written) = (&s, &written);
            sc.spawn(move || {
                let mut h = s.begin().unwrap();
                let l = h.create_log(6).unwrap();
                h.commit(None).unwrap();
                drop(h);
                let mut m = MLog {
                    tag: 6,
                    ..MLog::default()
                };
                for i in 0..iters as u64 {
                    let mut h = s.begin().unwrap();
                    append_seeds(&mut h, l, &mut m, &[(t << 32) | i]).unwrap();
                    h.commit(None).unwrap();
                }
                written.lock().unwrap().insert(l.0, m);
            });
        }
    });
    let mut model = sealed;
    model.extend(written.into_inner().unwrap());
    s.check_chunks().unwrap();
    let root = s.root();
    drop(s);
    check_reopened(&d, &root, &model);
    eprintln!(
        "sealed reads: {} verified reads during {} append commits",
        reads.into_inner().unwrap(),
        2 * iters
    );
}

/// Aborted and dropped transactions give back their chunks; committed
/// deletes free theirs.
#[test]
fn chunk_accounting() {
    let d = Arc::new(MemDisk::new(DISK_BLOCKS).unwrap());
    let s: Shared<_> = SharedLogStore::new(format(&d, 256)).unwrap();
    let free0 = s.stats().chunks_free;
    let mut h = s.begin().unwrap();
    let l = h.create_log(0).unwrap();
    h.append(l, &blocks_of(&[1; 20], 0)).unwrap();
    assert!(
        s.stats().chunks_free <= free0 - 5,
        "20 blocks take 5+ chunks"
    );
    h.abort();
    assert_eq!(s.stats().chunks_free, free0);
    {
        let mut h = s.begin().unwrap();
        let l = h.create_log(0).unwrap();
        h.append(l, &blocks_of(&[2; 9], 0)).unwrap();
        assert_eq!(s.stats().active, 1);
    }
    assert_eq!(s.stats().chunks_free, free0, "drop aborts");
    assert_eq!(s.stats().active, 0);
    let mut h = s.begin().unwrap();
    let l = h.create_log(0).unwrap();
    h.append(l, &blocks_of(&[3; 9], 0)).unwrap();
    h.commit(None).unwrap();
    drop(h);
    let used = free0 - s.stats().chunks_free;
    assert!(used >= 3);
    assert_eq!(s.stats().chunks_committed, used);
    s.check_chunks().unwrap();
    // Four threads fill and abort concurrently, then everything is back.
    std::thread::scope(|sc| {
        for t in 0..THREADS as u64 {
            let s = &s;
            sc.spawn(move || {
                for i in 0..20u64 {
                    let mut h = s.begin().unwrap();
                    let l = h.create_log(t).unwrap();
                    h.append(l, &blocks_of(&[i; 7], 0)).unwrap();
                    h.abort();
                }
            });
        }
    });
    s.check_chunks().unwrap();
    assert_eq!(s.stats().chunks_free, free0 - used);
    let mut h = s.begin().unwrap();
    h.delete_log(l).unwrap();
    h.commit(None).unwrap();
    drop(h);
    assert_eq!(s.stats().chunks_free, free0);
    s.check_chunks().unwrap();
}

/// What a crash-test thread attempted: per transaction (tag), its logs'
/// seeds, and the commit counter if its commit returned.
#[derive(Default)]
struct Attempts {
    txs: BTreeMap<u64, (TxLogs, Option<u64>)>,
}

/// Four threads commit small transactions (each creates 1-2 logs with a
/// unique tag and appends 1-3 blocks, 1 in 4 aborts) until the disk dies
/// after `ops` writes/flushes.
fn crash_run(ops: u64, keep_seed: u64) -> (usize, usize, u64) {
    let d = Arc::new(CrashDisk::new(MemDisk::new(DISK_BLOCKS).unwrap()));
    let store = format(&d, u32::MAX);
    let root0 = store.root();
    let s: Shared<_> = SharedLogStore::new(store).unwrap();
    d.crash_after_ops(ops).unwrap();
    let att = Mutex::new(Attempts::default());
    std::thread::scope(|sc| {
        for t in 0..THREADS as u64 {
            let (s, att) = (&s, &att);
            sc.spawn(move || {
                let mut rng = Rng(keep_seed ^ ((t + 1) * 7919));
                for i in 0..10_000u64 {
                    let tag = 100 + t * 10_000 + i;
                    let Ok(mut h) = s.begin() else { return };
                    let mut logs = BTreeMap::new();
                    let mut ok = true;
                    for k in 0..1 + rng.below(2) {
                        let seeds: Vec<u64> = (0..1 + rng.below(3))
                            .map(|j| tag * 100 + k * 10 + j)
                            .collect();
                        let r = h
                            .create_log(tag)
                            .and_then(|l| h.append(l, &blocks_of(&seeds, 0)).map(|_| l));
                        match r {
                            Ok(l) => {
                                logs.insert(l.0, seeds);
                            }
                            Err(_) => ok = false,
                        }
                    }
                    if !ok || rng.below(4) == 0 {
                        h.abort();
                        if !ok {
                            return;
                        }
                        continue;
                    }
                    att.lock().unwrap().txs.insert(tag, (logs, None));
                    let r = h.commit_with(None, |info| {
                        att.lock().unwrap().txs.get_mut(&tag).unwrap().1 = Some(info.counter);
                        Ok(())
                    });
                    if r.is_err() {
                        return;
                    }
                }
            });
        }
    });
    drop(s);
    let mut rng = Rng(keep_seed | 1);
    let pending = d.pending_count();
    let keep: Vec<bool> = (0..pending).map(|_| rng.below(2) == 0).collect();
    d.crash(&|i| keep[i]).unwrap();
    let att = att.into_inner().unwrap();
    let acked: BTreeMap<u64, u64> = att
        .txs
        .iter()
        .filter_map(|(&tag, (_, c))| c.map(|c| (c, tag)))
        .collect();
    let max_ack = acked.keys().next_back().copied().unwrap_or(0);
    // Counters of acknowledged commits are exactly 1..=max_ack.
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=max_ack).collect::<Vec<_>>()
    );
    let re = open(&d, &root0).expect("reopen after crash");
    let c = re.commit_count();
    assert!(
        c == max_ack || c == max_ack + 1,
        "recovered {c}, acknowledged {max_ack}"
    );
    // Visible transactions: every acknowledged one, plus at most the one in
    // flight, complete.
    let mut visible: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for (&tag, (logs, _)) in &att.txs {
        let ids = re.logs_with_tag(tag);
        if !ids.is_empty() {
            visible.insert(tag, ids.iter().map(|l| l.0).collect());
            assert_eq!(
                ids.iter().map(|l| l.0).collect::<BTreeSet<_>>(),
                logs.keys().copied().collect::<BTreeSet<_>>(),
                "transaction {tag} partly visible"
            );
            for (&id, seeds) in logs {
                let m = MLog {
                    tag,
                    seeds: seeds.clone(),
                    sealed: false,
                };
                check_log(
                    &|l, p, b| re.read(l, p, b),
                    re.log_len(LogId(id)).unwrap(),
                    id,
                    &m,
                );
            }
        }
    }
    for &tag in acked.values() {
        assert!(
            visible.contains_key(&tag),
            "acknowledged transaction {tag} lost"
        );
    }
    let extra: Vec<u64> = visible
        .keys()
        .filter(|t| !acked.values().any(|a| a == *t))
        .copied()
        .collect();
    assert_eq!(
        extra.len() as u64,
        c - max_ack,
        "unacknowledged visible: {extra:?}"
    );
    // No other logs than attempted ones.
    assert_eq!(
        re.stats().logs,
        visible.values().map(|v| v.len()).sum::<usize>()
    );
    (acked.len(), extra.len(), ops)
}

#[test]
fn crash_while_threads_commit() {
    let points: Vec<u64> = if long() {
        (1..=40).map(|i| i * 37).collect()
    } else {
        vec![3, 40, 97, 180, 333, 500]
    };
    let (mut acked, mut inflight) = (0, 0);
    for (k, &ops) in points.iter().enumerate() {
        let (a, e, _) = crash_run(ops, 0xc0ffee + k as u64);
        acked += a;
        inflight += e;
    }
    eprintln!(
        "crash: {} crash points, {acked} acknowledged commits all recovered, {inflight} in-flight commits recovered whole",
        points.len()
    );
}
