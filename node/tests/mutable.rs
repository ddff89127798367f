//! Mutable files end to end: ten storage servers on their own Tubs, a client reaching them
//! over TCP on 127.0.0.1, creates, reads and updates through `folio_node::mutable`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use folio_node::caps::Cap;
use folio_node::dirnode::{Dir, Fs, FsError, Metadata, Name};
use folio_node::immutable::EncodingParams;
use folio_node::mutable::MutCap;
use folio_node::mutable::{
    create, max_mutable_size, publish, retrieve, Base, Mode, MutKind, MutWriteCap, MutableError,
    ServerMap, UcwPhase,
};
use folio_node::storage::{
    BucketReaderRef, BucketWriterRef, CanaryRef, LeaseSecret, Storage, StorageError, StorageIndex,
    StorageServer, StorageServerRef, StorageVersion, TestWriteVectors, WriteEnabler,
};
use folio_rpc::Bytes;

mod common;
use common::grid::{run, Grid};

const LEASE: [u8; 32] = [9; 32];
/// The tests' `SETTLE`: how long a writer waits on an unfinished newer version.
const SETTLE: Duration = Duration::from_millis(100);

fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

async fn read(grid: &Grid, cap: &MutWriteCap) -> Vec<u8> {
    retrieve(&grid.connected, &cap.read_cap())
        .await
        .expect("the file reads")
        .plaintext
}

async fn update(grid: &Grid, cap: &MutWriteCap, bytes: &[u8]) -> u64 {
    let params = EncodingParams::default();
    let r = publish(
        &grid.connected,
        &params,
        &LEASE,
        cap,
        bytes,
        Base::Current,
        SETTLE,
    )
    .await
    .expect("the update is published");
    assert!(r.happiness >= 7, "{r:?}");
    r.version.seqnum
}

#[test]
fn create_read_and_update_every_size() {
    run(async {
        let grid = Grid::new(10).await;
        let params = EncodingParams::default();
        for len in [0, 1, 55, 56, 100 << 10, 400 << 10] {
            let first = data(1, len);
            let (cap, report) = create(&grid.connected, &params, &LEASE, MutKind::File, &first)
                .await
                .unwrap();
            assert_eq!(report.version.seqnum, 1);
            assert_eq!(report.happiness, 10, "one share per server");
            assert_eq!(report.flights, 1, "a create is one round trip");
            assert_eq!(read(&grid, &cap).await, first, "len {len}");
            for round in 2..=4u8 {
                let next = data(round, len + usize::from(round));
                assert_eq!(update(&grid, &cap, &next).await, u64::from(round));
                assert_eq!(read(&grid, &cap).await, next, "len {len} round {round}");
            }
            // The read cap reads; it has no way to write (the type has no write method).
            let r = retrieve(&grid.connected, &cap.read_cap()).await.unwrap();
            assert_eq!(r.version.seqnum, 4);
        }
        grid.shutdown().await;
    });
}

#[test]
fn an_update_is_the_claim_and_one_flight() {
    run(async {
        let grid = Grid::new(10).await;
        let params = EncodingParams::default();
        let (cap, _) = create(&grid.connected, &params, &LEASE, MutKind::File, b"one")
            .await
            .unwrap();
        let r = publish(
            &grid.connected,
            &params,
            &LEASE,
            &cap,
            b"two",
            Base::Current,
            SETTLE,
        )
        .await
        .unwrap();
        assert_eq!(r.flights, 2, "the claim, then the other nine shares: {r:?}");
        assert_eq!(r.written.len(), 10);
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        grid.shutdown().await;
    });
}

#[test]
fn too_large_is_refused_before_any_call() {
    run(async {
        let grid = Grid::new(10).await;
        let params = EncodingParams::default();
        let max = max_mutable_size(&params) as usize;
        let err = create(
            &grid.connected,
            &params,
            &LEASE,
            MutKind::File,
            &vec![0; max + 1],
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, MutableError::TooLarge { size, maximum, needed: 3 }
                if size == max as u64 + 1 && maximum == max as u64),
            "{err}"
        );
        assert!(err.to_string().contains("store it immutable"), "{err}");
        for s in &grid.servers {
            assert!(common::files_under(&s.dir.join("shares")).is_empty());
        }
        grid.shutdown().await;
    });
}

/// Two writers that read the same version race to update it: exactly one wins, the other is
/// told its write was uncoordinated and wrote nothing, and the file reads as the winner's.
#[test]
fn racing_writers_one_wins_the_other_is_told() {
    run(async {
        let grid = Grid::new(10).await;
        let params = EncodingParams::default();
        let (cap, _) = create(&grid.connected, &params, &LEASE, MutKind::File, b"base")
            .await
            .unwrap();
        for round in 0..10u8 {
            let base = retrieve(&grid.connected, &cap.read_cap()).await.unwrap();
            let map = ServerMap::update(
                &grid.connected,
                &cap.verify_cap(),
                Mode::Write,
                &BTreeSet::new(),
            )
            .await;
            let (a, b) = (data(round, 3000), data(round + 100, 4000));
            let write = |bytes: Vec<u8>| {
                let base = Base::Read(base.version, Box::new(map.clone()));
                let (servers, cap, params) = (&grid.connected, &cap, &params);
                async move { publish(servers, params, &LEASE, cap, &bytes, base, SETTLE).await }
            };
            let (ra, rb) = tokio::join!(write(a.clone()), write(b.clone()));
            let (winner, loser) = match (&ra, &rb) {
                (Ok(_), Err(e)) => (&a, e),
                (Err(e), Ok(_)) => (&b, e),
                other => panic!("round {round}: not one winner: {other:?}"),
            };
            match loser {
                MutableError::Uncoordinated(u) => {
                    assert_eq!(u.phase, UcwPhase::Claim, "{u}");
                    assert_eq!(u.written, 0, "{u}");
                    assert!(u.to_string().starts_with("uncoordinated write"), "{u}");
                }
                e => panic!("round {round}: the loser failed otherwise: {e}"),
            }
            assert_eq!(&read(&grid, &cap).await, winner, "round {round}");
        }
        grid.shutdown().await;
    });
}

/// A write based on a version that someone has since replaced is refused, not applied.
#[test]
fn a_write_from_a_stale_read_is_uncoordinated() {
    run(async {
        let grid = Grid::new(10).await;
        let params = EncodingParams::default();
        let (cap, _) = create(&grid.connected, &params, &LEASE, MutKind::File, b"v1")
            .await
            .unwrap();
        let stale = retrieve(&grid.connected, &cap.read_cap()).await.unwrap();
        update(&grid, &cap, b"v2 by someone else").await;
        let err = publish(
            &grid.connected,
            &params,
            &LEASE,
            &cap,
            b"v2 from a stale read",
            Base::Read(stale.version, Box::new(stale.map)),
            SETTLE,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, MutableError::Uncoordinated(u) if u.written == 0),
            "{err}"
        );
        assert_eq!(read(&grid, &cap).await, b"v2 by someone else");
        grid.shutdown().await;
    });
}

/// A writer killed after any number of its share writes leaves the old version or the new
/// one readable, never neither; the next writer finishes the job.
#[test]
fn a_writer_killed_at_any_point_leaves_old_or_new() {
    run(async {
        let gate = Gate::default();
        let g = gate.clone();
        let grid = Grid::build(10, |_, _| {}, move |storage| g.serve(storage)).await;
        gate.thaw();
        let params = EncodingParams::default();
        let (cap, _) = create(&grid.connected, &params, &LEASE, MutKind::File, b"old")
            .await
            .unwrap();
        let mut old = b"old".to_vec();
        for j in 0..=10usize {
            let new = data(j as u8, 500 + j);
            gate.allow(j);
            let r = tokio::time::timeout(
                Duration::from_secs(1),
                publish(
                    &grid.connected,
                    &params,
                    &LEASE,
                    &cap,
                    &new,
                    Base::Current,
                    SETTLE,
                ),
            )
            .await;
            gate.thaw();
            let now = read(&grid, &cap).await;
            assert!(
                now == old || now == new,
                "killed after {j} writes: neither version"
            );
            if j == 10 {
                assert!(matches!(r, Ok(Ok(_))), "all ten writes went through: {r:?}");
            }
            // The next writer (over an unfinished newer version, after SETTLE) succeeds.
            let next = data(200 + j as u8, 700);
            update(&grid, &cap, &next).await;
            assert_eq!(read(&grid, &cap).await, next);
            old = next;
        }
        grid.shutdown().await;
    });
}

/// A write based on a stale read is refused even when the newest version on the grid is
/// an unfinished one (a killed writer's) above a complete one the reader never saw: the
/// complete one must not be overwritten unseen.
#[test]
fn a_stale_write_under_an_unfinished_version_is_uncoordinated() {
    run(async {
        let gate = Gate::default();
        let g = gate.clone();
        let grid = Grid::build(10, |_, _| {}, move |storage| g.serve(storage)).await;
        gate.thaw();
        let params = EncodingParams::default();
        let (cap, _) = create(&grid.connected, &params, &LEASE, MutKind::File, b"v1")
            .await
            .unwrap();
        let stale = retrieve(&grid.connected, &cap.read_cap()).await.unwrap();
        update(&grid, &cap, b"v2, complete").await;
        // v3: only its claim lands, then its writer is dropped.
        gate.allow(1);
        let frozen = tokio::time::timeout(
            Duration::from_secs(1),
            publish(
                &grid.connected,
                &params,
                &LEASE,
                &cap,
                b"v3",
                Base::Current,
                SETTLE,
            ),
        )
        .await;
        assert!(frozen.is_err(), "the frozen writer finished: {frozen:?}");
        gate.thaw();
        // The read's map is too old to reuse: the write maps again and sees v2 and v3.
        let mut old_map = stale.map;
        old_map.made = tokio::time::Instant::now() - Duration::from_secs(60);
        let started = std::time::Instant::now();
        let err = publish(
            &grid.connected,
            &params,
            &LEASE,
            &cap,
            b"from the stale read",
            Base::Read(stale.version, Box::new(old_map)),
            Duration::from_secs(30),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, MutableError::Uncoordinated(u) if u.written == 0),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "it waited for SETTLE"
        );
        assert_eq!(read(&grid, &cap).await, b"v2, complete");
        grid.shutdown().await;
    });
}

/// With 7 of 10 servers stopped the file still reads; an update cannot be happy, says so,
/// and the version before it stays readable.
#[test]
fn seven_servers_down_reads_and_refuses_writes() {
    run(async {
        let mut grid = Grid::new(10).await;
        let params = EncodingParams::default();
        let content = data(7, 20_000);
        let (cap, _) = create(&grid.connected, &params, &LEASE, MutKind::File, &content)
            .await
            .unwrap();
        for i in 0..7 {
            grid.stop(i).await;
        }
        assert_eq!(read(&grid, &cap).await, content);
        let err = publish(
            &grid.connected,
            &params,
            &LEASE,
            &cap,
            b"x",
            Base::Current,
            SETTLE,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, MutableError::NotHappy { .. }), "{err}");
        // Three new shares on three servers are a recoverable version 2: readers get it.
        let r = retrieve(&grid.connected, &cap.read_cap()).await.unwrap();
        assert!(r.plaintext == content || r.plaintext == b"x");
        grid.shutdown().await;
    });
}

/// A corrupt share is reported and skipped by readers, and rewritten by the next update.
#[test]
fn a_corrupt_share_is_skipped_and_repaired() {
    run(async {
        let grid = Grid::new(10).await;
        let params = EncodingParams::default();
        let content = data(3, 50_000);
        let (cap, _) = create(&grid.connected, &params, &LEASE, MutKind::File, &content)
            .await
            .unwrap();
        // Damage the body of every share that a reader tries first (the primaries 0..3).
        let si = cap.storage_index();
        let mut damaged = 0;
        for i in 0..10 {
            for shnum in 0..3u16 {
                let path = grid.share_path(i, &si, shnum);
                if let Ok(mut bytes) = std::fs::read(&path) {
                    let at = bytes.len() - 100;
                    bytes[at] ^= 1;
                    std::fs::write(&path, bytes).unwrap();
                    damaged += 1;
                }
            }
        }
        assert_eq!(damaged, 3);
        let r = retrieve(&grid.connected, &cap.read_cap()).await.unwrap();
        assert_eq!(r.plaintext, content);
        assert_eq!(r.corrupt.len(), 3, "{:?}", r.corrupt);
        update(&grid, &cap, b"repaired").await;
        let r = retrieve(&grid.connected, &cap.read_cap()).await.unwrap();
        assert!(r.corrupt.is_empty(), "{:?}", r.corrupt);
        assert_eq!(r.plaintext, b"repaired");
        grid.shutdown().await;
    });
}

fn fs(grid: &Grid) -> Fs<'_> {
    let mut fs = Fs::new(&grid.connected, EncodingParams::default(), LEASE);
    fs.settle = SETTLE;
    fs.retry_wait = Duration::from_millis(50);
    fs
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn names(d: &Dir) -> Vec<&str> {
    d.entries.keys().map(Name::as_str).collect()
}

/// mkdir, link, list, rename, unlink; a nested path resolves; a read-only cap lists and
/// reads but cannot change anything and yields no write cap.
#[test]
fn directories_link_list_rename_unlink() {
    run(async {
        let grid = Grid::new(10).await;
        let fs = fs(&grid);
        let root = Cap::Mutable(MutCap::Write(fs.create_dir(&Dir::new()).await.unwrap()));
        let docs = fs.mkdir(&root, &name("docs")).await.unwrap();
        let docs = Cap::Mutable(MutCap::Write(docs));
        let (file, _) = create(
            &grid.connected,
            &EncodingParams::default(),
            &LEASE,
            MutKind::File,
            b"hi",
        )
        .await
        .unwrap();
        let meta = Metadata {
            size: Some(2),
            ..Metadata::default()
        };
        fs.link(
            &docs,
            &name("a.txt"),
            &Cap::Mutable(MutCap::Write(file.clone())),
            meta,
            false,
        )
        .await
        .unwrap();
        let lit: Cap = "folio:LIT:nbswy3dp".parse().unwrap();
        fs.link(&docs, &name("hello"), &lit, Metadata::default(), false)
            .await
            .unwrap();
        let err = fs
            .link(&docs, &name("hello"), &lit, Metadata::default(), false)
            .await
            .unwrap_err();
        assert!(matches!(err, FsError::Exists(_)), "{err}");
        assert_eq!(names(&fs.list(&docs).await.unwrap()), ["a.txt", "hello"]);
        // The path resolves to the write cap through write caps.
        let got = fs
            .resolve(&root, &[name("docs"), name("a.txt")])
            .await
            .unwrap();
        assert_eq!(got.to_string(), file.to_string());
        fs.rename(&docs, &name("a.txt"), &name("b.txt"))
            .await
            .unwrap();
        assert_eq!(names(&fs.list(&docs).await.unwrap()), ["b.txt", "hello"]);
        let removed = fs.unlink(&docs, &name("hello")).await.unwrap();
        assert_eq!(removed, lit);
        assert_eq!(names(&fs.list(&docs).await.unwrap()), ["b.txt"]);
        assert!(matches!(
            fs.unlink(&docs, &name("hello")).await,
            Err(FsError::NotFound(_))
        ));
        // Read-only: lists and reads, every cap below is read-only, nothing changes.
        let ro = root.read_only().unwrap();
        let below = fs
            .resolve(&ro, &[name("docs"), name("b.txt")])
            .await
            .unwrap();
        assert_eq!(below.to_string(), file.read_cap().to_string());
        let docs_ro = fs.resolve(&ro, &[name("docs")]).await.unwrap();
        assert!(!docs_ro.is_write());
        assert!(matches!(
            fs.link(&docs_ro, &name("x"), &lit, Metadata::default(), false)
                .await,
            Err(FsError::ReadOnly)
        ));
        let err = fs
            .resolve(&root, &[name("docs"), name("b.txt"), name("x")])
            .await
            .unwrap_err();
        assert!(
            matches!(err, FsError::NotADirectory(ref p) if p == "docs/b.txt"),
            "{err}"
        );
        grid.shutdown().await;
    });
}

/// Two clients linking different names into one directory at once both succeed: the loser
/// of the race retries on the winner's version.
#[test]
fn concurrent_links_into_one_directory_both_land() {
    run(async {
        let grid = Grid::new(10).await;
        let fs = fs(&grid);
        let dir = Cap::Mutable(MutCap::Write(fs.create_dir(&Dir::new()).await.unwrap()));
        let lit: Cap = "folio:LIT:nbswy3dp".parse().unwrap();
        for round in 0..5 {
            let (a, b) = (name(&format!("a{round}")), name(&format!("b{round}")));
            let (ra, rb) = tokio::join!(
                fs.link(&dir, &a, &lit, Metadata::default(), false),
                fs.link(&dir, &b, &lit, Metadata::default(), false)
            );
            ra.unwrap();
            rb.unwrap();
            let d = fs.list(&dir).await.unwrap();
            assert!(
                d.entries.contains_key(&a) && d.entries.contains_key(&b),
                "{:?}",
                names(&d)
            );
        }
        assert_eq!(fs.list(&dir).await.unwrap().entries.len(), 10);
        grid.shutdown().await;
    });
}

/// A directory of 2,000 entries set at once lists back whole, and survives 7 of 10
/// servers stopping.
#[test]
fn a_large_directory_survives_seven_servers_down() {
    run(async {
        let mut grid = Grid::new(10).await;
        let fs = fs(&grid);
        let dir = Cap::Mutable(MutCap::Write(fs.create_dir(&Dir::new()).await.unwrap()));
        let lit: Cap = "folio:LIT:nbswy3dp".parse().unwrap();
        let children: Vec<(Name, Cap, Metadata)> = (0..2000)
            .map(|i| {
                (
                    name(&format!("file-{i:05}")),
                    lit.clone(),
                    Metadata::default(),
                )
            })
            .collect();
        fs.set_children(&dir, &children).await.unwrap();
        for i in 0..7 {
            grid.stop(i).await;
        }
        let fs = self::fs(&grid);
        assert_eq!(fs.list(&dir).await.unwrap().entries.len(), 2000);
        grid.shutdown().await;
    });
}

/// Lets a set number of test-and-set calls through (across every server), then holds the
/// rest, unapplied, until the test thaws it: a writer killed after that many writes (the
/// test drops it while its later calls are held). Thawed, the held calls are refused, never
/// applied, so that the server's later calls (answered in order) go on.
#[derive(Clone, Default)]
struct Gate {
    left: Arc<AtomicUsize>,
    frozen: Arc<AtomicBool>,
}

impl Gate {
    fn allow(&self, n: usize) {
        self.left.store(n, Ordering::SeqCst);
        self.frozen.store(true, Ordering::SeqCst);
    }

    fn thaw(&self) {
        self.left.store(usize::MAX, Ordering::SeqCst);
        self.frozen.store(false, Ordering::SeqCst);
    }

    fn serve(&self, storage: &Storage) -> StorageServerRef {
        StorageServerRef::serve(Gated {
            storage: storage.clone(),
            gate: self.clone(),
        })
    }
}

struct Gated {
    storage: Storage,
    gate: Gate,
}

impl StorageServer for Gated {
    async fn get_version(&self) -> Result<StorageVersion, StorageError> {
        self.storage.get_version().await
    }

    async fn allocate_buckets(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
        sharenums: BTreeSet<u16>,
        allocated_size: u64,
        canary: CanaryRef,
    ) -> Result<(BTreeSet<u16>, BTreeMap<u16, BucketWriterRef>), StorageError> {
        self.storage
            .allocate_buckets(
                storage_index,
                renew_secret,
                cancel_secret,
                sharenums,
                allocated_size,
                canary,
            )
            .await
    }

    async fn add_lease(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
    ) -> Result<(), StorageError> {
        self.storage
            .add_lease(storage_index, renew_secret, cancel_secret)
            .await
    }

    async fn get_buckets(
        &self,
        storage_index: StorageIndex,
    ) -> Result<BTreeMap<u16, BucketReaderRef>, StorageError> {
        self.storage.get_buckets(storage_index).await
    }

    async fn advise_corrupt_share(
        &self,
        share_type: String,
        storage_index: StorageIndex,
        shnum: u16,
        reason: String,
    ) -> Result<(), StorageError> {
        self.storage
            .advise_corrupt_share(share_type, storage_index, shnum, reason)
            .await
    }

    async fn slot_readv(
        &self,
        storage_index: StorageIndex,
        shares: Vec<u16>,
        readv: Vec<(u64, u64)>,
    ) -> Result<BTreeMap<u16, Vec<Bytes>>, StorageError> {
        self.storage.slot_readv(storage_index, shares, readv).await
    }

    async fn slot_testv_and_readv_and_writev(
        &self,
        storage_index: StorageIndex,
        secrets: (WriteEnabler, LeaseSecret, LeaseSecret),
        tw_vectors: BTreeMap<u16, TestWriteVectors>,
        read_vector: Vec<(u64, u64)>,
    ) -> Result<(bool, BTreeMap<u16, Vec<Bytes>>), StorageError> {
        let through = self
            .gate
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !through {
            while self.gate.frozen.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            return Err(StorageError::Io("held by the test's gate".into()));
        }
        self.storage
            .slot_testv_and_readv_and_writev(storage_index, secrets, tw_vectors, read_vector)
            .await
    }

    async fn allocate_share(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
        shnum: u16,
        allocated_size: u64,
        canary: CanaryRef,
    ) -> Result<BucketWriterRef, StorageError> {
        self.storage
            .allocate_share(
                storage_index,
                renew_secret,
                cancel_secret,
                shnum,
                allocated_size,
                canary,
            )
            .await
    }
}
