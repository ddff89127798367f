//! The storage server end to end: a server Tub hosting it and a client Tub calling it through
//! the typed references, over TCP on 127.0.0.1, with the shares in a temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use folio_handlers::TcpListener;
use folio_node::storage::{
    si_b32, BucketWriterRef, CanaryRef, NullCanary, Storage, StorageConfig, StorageError,
    StorageServerRef, TestVector, TestWriteVectors, MAX_CHUNK,
};
use folio_rpc::{Bytes, CallError, Furl, Host, Tub, TubConfig};

mod common;
use common::files_under;

/// Runs a test body with a bound on the whole of it.
fn run(body: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(60), body)
                .await
                .expect("test timed out")
        })
}

fn tub() -> Tub {
    folio_tests::tubs::tcp_tub(TubConfig::default())
}

/// A storage server on a listening Tub, and a client Tub connected to it.
struct Grid {
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    storage: Storage,
    server: Tub,
    client: Tub,
    furl: Furl,
    ss: StorageServerRef,
}

impl Grid {
    async fn new() -> Grid {
        Grid::with(|_| {}).await
    }

    async fn with(adjust: impl FnOnce(&mut StorageConfig)) -> Grid {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = StorageConfig::new(tmp.path().join("storage"));
        adjust(&mut config);
        let mut grid = Grid::at(config).await;
        grid._tmp = Some(tmp);
        grid
    }

    async fn at(config: StorageConfig) -> Grid {
        let dir = config.dir.clone();
        let storage = Storage::open(config).unwrap();
        let server = tub();
        let listener = TcpListener::bind(&"tcp:0:interface=127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        server.set_location(vec![listener.hint_for(Host::Ipv4([127, 0, 0, 1].into()))]);
        server.listen(listener);
        let furl = server.register_as(storage.serve(), "storage").unwrap();
        let client = tub();
        let ss: StorageServerRef = client.get(&furl).await.unwrap();
        assert!(!ss.object_ref().is_local());
        Grid {
            _tmp: None,
            dir,
            storage,
            server,
            client,
            furl,
            ss,
        }
    }

    async fn allocate(
        &self,
        si: [u8; 16],
        shares: &[u16],
        size: u64,
    ) -> Result<(BTreeSet<u16>, BTreeMap<u16, BucketWriterRef>), CallError<StorageError>> {
        self.ss
            .allocate_buckets(
                si,
                [1; 32],
                [2; 32],
                shares.iter().copied().collect(),
                size,
                CanaryRef::serve(NullCanary),
            )
            .await
    }

    fn bucket(&self, si: &[u8; 16]) -> PathBuf {
        let b = si_b32(si);
        self.dir.join("shares").join(&b[..2]).join(&b)
    }

    fn incoming_files(&self) -> Vec<PathBuf> {
        files_under(&self.dir.join("shares").join("incoming"))
    }

    async fn shutdown(self) {
        self.client.shutdown().await;
        self.server.shutdown().await;
    }
}

/// Polls `cond` every 10 ms, failing after 10 seconds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

/// Deterministic share contents.
fn data(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn write_all(w: &BucketWriterRef, bytes: &[u8], chunk: usize) {
    for (i, c) in bytes.chunks(chunk).enumerate() {
        w.write((i * chunk) as u64, Bytes(c.to_vec()))
            .await
            .unwrap();
    }
}

async fn upload(grid: &Grid, si: [u8; 16], shares: &[(u16, Vec<u8>)]) {
    let size = shares[0].1.len() as u64;
    let nums: Vec<u16> = shares.iter().map(|(n, _)| *n).collect();
    let (have, writers) = grid.allocate(si, &nums, size).await.unwrap();
    assert!(have.is_empty());
    assert_eq!(writers.keys().copied().collect::<Vec<_>>(), nums);
    for (n, bytes) in shares {
        write_all(&writers[n], bytes, 100_000).await;
        writers[n].close().await.unwrap();
    }
}

#[test]
fn upload_close_and_read_back() {
    run(async {
        let grid = Grid::new().await;
        let version = grid.ss.get_version().await.unwrap();
        assert_eq!(version.max_read_per_call, MAX_CHUNK);
        assert_eq!(version.max_write_per_call, MAX_CHUNK);
        assert!(version.available_space.unwrap() > 0);
        assert!(version.application_version.starts_with("folio-node/"));

        let si = [0x42; 16];
        // Bigger than one call can carry: the writes and the reads are chunked.
        let shares: Vec<(u16, Vec<u8>)> = (0..3u16)
            .map(|n| (n * 4, data(n as u8, 1_234_567)))
            .collect();
        upload(&grid, si, &shares).await;

        let readers = grid.ss.get_buckets(si).await.unwrap();
        assert_eq!(readers.keys().copied().collect::<Vec<_>>(), vec![0, 4, 8]);
        for (n, bytes) in &shares {
            let r = &readers[n];
            assert_eq!(r.size().await.unwrap(), bytes.len() as u64);
            let mut got = Vec::new();
            while (got.len() as u64) < r.size().await.unwrap() {
                let chunk = r.read(got.len() as u64, MAX_CHUNK).await.unwrap();
                assert!(!chunk.is_empty());
                got.extend_from_slice(&chunk);
            }
            assert_eq!(&got, bytes);
            // Short read at the end, empty past it.
            let tail = r.read(bytes.len() as u64 - 10, 100).await.unwrap();
            assert_eq!(&tail[..], &bytes[bytes.len() - 10..]);
            assert!(r
                .read(bytes.len() as u64 + 5, 100)
                .await
                .unwrap()
                .is_empty());
            // More than one call may carry is refused.
            assert!(matches!(
                r.read(0, MAX_CHUNK + 1).await,
                Err(CallError::App(StorageError::ReadTooLarge { .. }))
            ));
        }

        // On disk: shares/<2 chars>/<base32 si>/<shnum>, with a lease file; incoming is empty.
        let b32 = si_b32(&si);
        assert_eq!(b32.len(), 26);
        assert_eq!(b32, b32.to_lowercase());
        let bucket = grid.bucket(&si);
        for (n, bytes) in &shares {
            let len = std::fs::metadata(bucket.join(n.to_string())).unwrap().len();
            assert_eq!(len, 40 + bytes.len() as u64);
            let leases: serde_json::Value =
                serde_json::from_slice(&std::fs::read(bucket.join(format!("{n}.leases"))).unwrap())
                    .unwrap();
            assert_eq!(leases["leases"].as_array().unwrap().len(), 1);
        }
        assert!(grid.incoming_files().is_empty());
        assert_eq!(grid.storage.uploads_in_progress(), 0);
        // Nothing for an index never uploaded.
        assert!(grid.ss.get_buckets([9; 16]).await.unwrap().is_empty());
        grid.shutdown().await;
    })
}

#[test]
fn existing_and_in_progress_shares_are_not_allocated_again() {
    run(async {
        let grid = Grid::new().await;
        let si = [7; 16];
        upload(&grid, si, &[(0, data(0, 1000)), (1, data(1, 1000))]).await;

        let (have, writers) = grid.allocate(si, &[0, 1, 2, 3], 1000).await.unwrap();
        assert_eq!(have, BTreeSet::from([0, 1]));
        assert_eq!(writers.keys().copied().collect::<Vec<_>>(), vec![2, 3]);

        // Shares 2 and 3 are being uploaded by the first allocation: neither had nor given.
        let (have2, writers2) = grid.allocate(si, &[1, 2, 3, 4], 1000).await.unwrap();
        assert_eq!(have2, BTreeSet::from([1]));
        assert_eq!(writers2.keys().copied().collect::<Vec<_>>(), vec![4]);
        assert_eq!(grid.storage.uploads_in_progress(), 3);

        // Aborting frees the share number for another allocation.
        writers[&3].abort().await.unwrap();
        assert!(matches!(
            writers[&3].write(0, Bytes(vec![1])).await,
            Err(CallError::App(StorageError::AlreadyClosed))
        ));
        let (_, writers3) = grid.allocate(si, &[3], 1000).await.unwrap();
        assert_eq!(writers3.keys().copied().collect::<Vec<_>>(), vec![3]);

        // The second allocation's lease went onto the existing shares.
        let leases: serde_json::Value =
            serde_json::from_slice(&std::fs::read(grid.bucket(&si).join("0.leases")).unwrap())
                .unwrap();
        assert_eq!(leases["leases"].as_array().unwrap().len(), 1); // same renew secret: renewed
        grid.ss.add_lease(si, [5; 32], [6; 32]).await.unwrap();
        let leases: serde_json::Value =
            serde_json::from_slice(&std::fs::read(grid.bucket(&si).join("0.leases")).unwrap())
                .unwrap();
        assert_eq!(leases["leases"].as_array().unwrap().len(), 2);
        // A lease on an index without shares is not an error.
        grid.ss.add_lease([8; 16], [5; 32], [6; 32]).await.unwrap();
        grid.shutdown().await;
    })
}

#[test]
fn write_rules() {
    run(async {
        let grid = Grid::new().await;
        let si = [3; 16];
        let (_, writers) = grid.allocate(si, &[0], 100).await.unwrap();
        let w = &writers[&0];
        let bytes = data(9, 100);

        w.write(10, Bytes(bytes[10..30].to_vec())).await.unwrap();
        // An overlapping rewrite with the same bytes is fine.
        w.write(0, Bytes(bytes[0..20].to_vec())).await.unwrap();
        w.write(10, Bytes(bytes[10..30].to_vec())).await.unwrap();
        // Different bytes over written ones are refused, and nothing of the write lands.
        let mut bad = bytes[25..40].to_vec();
        bad[2] ^= 0xff; // offset 27
        match w.write(25, Bytes(bad)).await {
            Err(CallError::App(StorageError::ConflictingWrite { offset })) => {
                assert_eq!(offset, 25)
            }
            other => panic!("expected ConflictingWrite, got {other:?}"),
        }
        // Past the allocated size.
        match w.write(90, Bytes(vec![0; 11])).await {
            Err(CallError::App(StorageError::WritePastEnd { allocated_size, .. })) => {
                assert_eq!(allocated_size, 100)
            }
            other => panic!("expected WritePastEnd, got {other:?}"),
        }
        assert!(matches!(
            w.write(u64::MAX, Bytes(vec![0; 2])).await,
            Err(CallError::App(StorageError::WritePastEnd { .. }))
        ));
        // A chunk bigger than one call may carry.
        let (_, big) = grid.allocate([4; 16], &[0], 2 * MAX_CHUNK).await.unwrap();
        assert!(matches!(
            big[&0]
                .write(0, Bytes(vec![0; MAX_CHUNK as usize + 1]))
                .await,
            Err(CallError::App(StorageError::WriteTooLarge { .. }))
        ));

        // Holes: close is refused, the writer stays open.
        match w.close().await {
            Err(CallError::App(StorageError::Incomplete { missing })) => assert_eq!(missing, 70),
            other => panic!("expected Incomplete, got {other:?}"),
        }
        assert!(grid.ss.get_buckets(si).await.unwrap().is_empty());
        w.write(30, Bytes(bytes[30..].to_vec())).await.unwrap();
        w.close().await.unwrap();
        // Closed: no more writes, no second close.
        assert!(matches!(
            w.write(0, Bytes(bytes[0..1].to_vec())).await,
            Err(CallError::App(StorageError::AlreadyClosed))
        ));
        assert!(matches!(
            w.close().await,
            Err(CallError::App(StorageError::AlreadyClosed))
        ));
        let readers = grid.ss.get_buckets(si).await.unwrap();
        assert_eq!(readers[&0].read(0, 100).await.unwrap().0, bytes);
        grid.shutdown().await;
    })
}

/// Writes and `close()` sent in one flight, none waiting for an answer: the server runs
/// them in arrival order, so the close sees every write and the share is whole. Before,
/// the calls ran concurrently once started, and a close could overtake the last writes
/// (and be refused as incomplete, or worse, lose a write sent before it).
#[test]
fn close_right_behind_writes_never_loses_a_write() {
    type Call = std::pin::Pin<Box<dyn Future<Output = Result<(), CallError<StorageError>>> + Send>>;
    run(async {
        let grid = Grid::new().await;
        for round in 0..20u8 {
            let si = [round; 16];
            // Many small writes, so several are running when the close arrives; the last
            // ones are the largest, so they take longest.
            let mut chunks: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut at = 0u64;
            for i in 0..40usize {
                let len = if i < 30 { 997 } else { 64 * 1024 };
                chunks.push((at, data(round.wrapping_add(i as u8), len)));
                at += len as u64;
            }
            let size = at;
            let (_, writers) = grid.allocate(si, &[0], size).await.unwrap();
            let w = writers[&0].clone();
            // `join_all` polls each call once, in order, before any answer can arrive: the
            // calls go out in this order, back to back.
            let mut calls: Vec<Call> = Vec::new();
            for (o, d) in &chunks {
                let (w, o, d) = (w.clone(), *o, d.clone());
                calls.push(Box::pin(async move { w.write(o, Bytes(d)).await }));
            }
            let c = w.clone();
            calls.push(Box::pin(async move { c.close().await }));
            for (i, r) in futures_util::future::join_all(calls)
                .await
                .into_iter()
                .enumerate()
            {
                r.unwrap_or_else(|e| panic!("round {round}, call {i}: {e}"));
            }
            let readers = grid.ss.get_buckets(si).await.unwrap();
            let r = &readers[&0];
            assert_eq!(r.size().await.unwrap(), size);
            let mut got = Vec::new();
            while (got.len() as u64) < size {
                got.extend_from_slice(&r.read(got.len() as u64, MAX_CHUNK).await.unwrap());
            }
            let want: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.clone()).collect();
            assert!(got == want, "round {round}: the share differs");
        }

        // In process: every call starts at once (no frames to read in between), so the
        // writes' filesystem work and the close's all compete; the order still holds.
        use folio_node::storage::StorageServer;
        for round in 0..50u8 {
            let si = [round; 16];
            let sizes: Vec<usize> = (0..64).map(|i| 1000 + 37 * i).collect();
            let size: u64 = sizes.iter().map(|&l| l as u64).sum();
            let w = grid
                .storage
                .allocate_share(si, [3; 32], [4; 32], 1, size, CanaryRef::serve(NullCanary))
                .await
                .unwrap();
            let mut calls: Vec<Call> = Vec::new();
            let mut at = 0u64;
            for (i, &len) in sizes.iter().enumerate() {
                let (w, o, d) = (w.clone(), at, data(i as u8, len));
                calls.push(Box::pin(async move { w.write(o, Bytes(d)).await }));
                at += len as u64;
            }
            let c = w.clone();
            calls.push(Box::pin(async move { c.close().await }));
            for (i, r) in futures_util::future::join_all(calls)
                .await
                .into_iter()
                .enumerate()
            {
                r.unwrap_or_else(|e| panic!("in process, round {round}, call {i}: {e}"));
            }
        }
        grid.shutdown().await;
    })
}

/// `allocate_share` gives the writer of exactly the share asked for, or a typed refusal.
#[test]
fn allocate_share_types_every_refusal() {
    run(async {
        let grid = Grid::new().await;
        let si = [0x51; 16];
        let alloc = |shnum: u16, size: u64| {
            grid.ss.allocate_share(
                si,
                [1; 32],
                [2; 32],
                shnum,
                size,
                CanaryRef::serve(NullCanary),
            )
        };
        upload(&grid, si, &[(0, data(0, 1000))]).await;
        match alloc(0, 1000).await {
            Err(CallError::App(StorageError::AlreadyHave { shnum: 0 })) => {}
            other => panic!("expected AlreadyHave, got {:?}", other.map(|_| ())),
        }
        let w = alloc(1, 1000).await.unwrap();
        match alloc(1, 1000).await {
            Err(CallError::App(StorageError::UploadInProgress { shnum: 1 })) => {}
            other => panic!("expected UploadInProgress, got {:?}", other.map(|_| ())),
        }
        assert!(matches!(
            alloc(256, 1000).await,
            Err(CallError::App(StorageError::BadShareNumber(256)))
        ));
        write_all(&w, &data(1, 1000), 300).await;
        w.close().await.unwrap();
        let readers = grid.ss.get_buckets(si).await.unwrap();
        assert_eq!(readers.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(readers[&1].read(0, 1000).await.unwrap().0, data(1, 1000));
        grid.shutdown().await;

        let full = Grid::with(|c| c.reserved_space = u64::MAX).await;
        let r = full
            .ss
            .allocate_share(si, [1; 32], [2; 32], 0, 1000, CanaryRef::serve(NullCanary))
            .await;
        assert!(
            matches!(r, Err(CallError::App(StorageError::NoSpace))),
            "{:?}",
            r.map(|_| ())
        );
        assert!(full.incoming_files().is_empty());
        full.shutdown().await;

        let ro = Grid::with(|c| c.readonly = true).await;
        let r = ro
            .ss
            .allocate_share(si, [1; 32], [2; 32], 0, 1000, CanaryRef::serve(NullCanary))
            .await;
        assert!(
            matches!(r, Err(CallError::App(StorageError::ReadOnly))),
            "{:?}",
            r.map(|_| ())
        );
        ro.shutdown().await;
    })
}

#[test]
fn share_is_invisible_until_closed() {
    run(async {
        let grid = Grid::new().await;
        let si = [5; 16];
        let bytes = data(5, 5000);
        let (_, writers) = grid.allocate(si, &[1], 5000).await.unwrap();
        write_all(&writers[&1], &bytes, 1000).await;
        assert!(grid.ss.get_buckets(si).await.unwrap().is_empty());
        assert!(!grid.bucket(&si).join("1").exists());
        assert_eq!(grid.incoming_files().len(), 1);
        writers[&1].close().await.unwrap();
        let readers = grid.ss.get_buckets(si).await.unwrap();
        assert_eq!(readers.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(readers[&1].read(0, 5000).await.unwrap().0, bytes);
        assert!(grid.incoming_files().is_empty());
        grid.shutdown().await;
    })
}

#[test]
fn lost_connection_aborts_unclosed_uploads() {
    run(async {
        let grid = Grid::new().await;
        let si = [6; 16];
        let (_, writers) = grid.allocate(si, &[0, 1], 3000).await.unwrap();
        // Share 0 is finished before the connection goes; share 1 is not.
        write_all(&writers[&0], &data(0, 3000), 1000).await;
        writers[&0].close().await.unwrap();
        writers[&1].write(0, Bytes(data(1, 1000))).await.unwrap();
        assert_eq!(grid.incoming_files().len(), 1);

        grid.client.disconnect(&grid.server.tubid());
        let storage = grid.storage.clone();
        eventually("the unclosed upload is aborted", || {
            storage.uploads_in_progress() == 0
        })
        .await;
        assert!(grid.incoming_files().is_empty());
        assert!(!grid.bucket(&si).join("1").exists());
        // The writer's reference died with the connection.
        assert!(writers[&1].write(1000, Bytes(vec![0; 10])).await.is_err());

        // A new connection sees the closed share only, and may upload share 1 again.
        let ss: StorageServerRef = grid.client.get(&grid.furl).await.unwrap();
        let readers = ss.get_buckets(si).await.unwrap();
        assert_eq!(readers.keys().copied().collect::<Vec<_>>(), vec![0]);
        assert_eq!(readers[&0].read(0, 3000).await.unwrap().0, data(0, 3000));
        let (have, again) = ss
            .allocate_buckets(
                si,
                [1; 32],
                [2; 32],
                BTreeSet::from([0, 1]),
                3000,
                CanaryRef::serve(NullCanary),
            )
            .await
            .unwrap();
        assert_eq!(have, BTreeSet::from([0]));
        assert_eq!(again.keys().copied().collect::<Vec<_>>(), vec![1]);
        grid.shutdown().await;
    })
}

#[test]
fn released_writer_aborts_its_upload() {
    run(async {
        let grid = Grid::new().await;
        let si = [10; 16];
        let (_, mut writers) = grid.allocate(si, &[0, 1], 100).await.unwrap();
        writers[&0].write(0, Bytes(vec![1; 50])).await.unwrap();
        assert_eq!(grid.incoming_files().len(), 2);
        // The client lets go of share 0's writer without closing it; the connection stays.
        drop(writers.remove(&0));
        let storage = grid.storage.clone();
        eventually("the released writer is aborted", || {
            storage.uploads_in_progress() == 1
        })
        .await;
        let left = grid.incoming_files();
        assert_eq!(left.len(), 1);
        assert!(left[0].ends_with("1"));
        // The other writer still works.
        writers[&1].write(0, Bytes(vec![2; 100])).await.unwrap();
        writers[&1].close().await.unwrap();
        let readers = grid.ss.get_buckets(si).await.unwrap();
        assert_eq!(readers.keys().copied().collect::<Vec<_>>(), vec![1]);
        grid.shutdown().await;
    })
}

fn tw(
    test: Vec<(u64, u64, &[u8])>,
    write: Vec<(u64, &[u8])>,
    new_length: Option<u64>,
) -> TestWriteVectors {
    TestWriteVectors {
        test: test
            .into_iter()
            .map(|(offset, length, s)| TestVector {
                offset,
                length,
                specimen: Bytes(s.to_vec()),
            })
            .collect(),
        write: write
            .into_iter()
            .map(|(o, d)| (o, Bytes(d.to_vec())))
            .collect(),
        new_length,
    }
}

fn strings(v: &[Bytes]) -> Vec<String> {
    v.iter()
        .map(|b| String::from_utf8(b.0.clone()).unwrap())
        .collect()
}

#[test]
fn mutable_slots() {
    run(async {
        let grid = Grid::new().await;
        let si = [0x11; 16];
        let we = [0xee; 32];
        let secrets = (we, [1; 32], [2; 32]);
        let ss = &grid.ss;
        let readv = |shares: Vec<u16>, v: Vec<(u64, u64)>| ss.slot_readv(si, shares, v);

        assert!(readv(vec![], vec![(0, 10)]).await.unwrap().is_empty());

        // Create two shares; the test of a missing share against empty passes.
        let (ok, reads) = ss
            .slot_testv_and_readv_and_writev(
                si,
                secrets,
                BTreeMap::from([
                    (0, tw(vec![(0, 5, b"")], vec![(0, b"hello world")], None)),
                    (1, tw(vec![], vec![(0, b"second")], None)),
                ]),
                vec![(0, 5)],
            )
            .await
            .unwrap();
        assert!(ok);
        assert!(reads.is_empty(), "reads happen before writes");
        let got = readv(vec![], vec![(0, 5), (5, 6)]).await.unwrap();
        assert_eq!(strings(&got[&0]), ["hello", " world"]);
        assert_eq!(strings(&got[&1]), ["secon", "d"]);
        let got = readv(vec![1, 9], vec![(0, 100)]).await.unwrap();
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![1]);

        // Right test vector: the write happens; the reads show the data before it, for
        // every share.
        let (ok, reads) = ss
            .slot_testv_and_readv_and_writev(
                si,
                secrets,
                BTreeMap::from([(0, tw(vec![(0, 5, b"hello")], vec![(0, b"HELLO")], None))]),
                vec![(0, 11)],
            )
            .await
            .unwrap();
        assert!(ok);
        assert_eq!(strings(&reads[&0]), ["hello world"]);
        assert_eq!(strings(&reads[&1]), ["second"]);

        // Wrong test vector on one share: nothing is written to any share.
        let (ok, reads) = ss
            .slot_testv_and_readv_and_writev(
                si,
                secrets,
                BTreeMap::from([
                    (0, tw(vec![(0, 5, b"hello")], vec![(0, b"xxxxx")], None)),
                    (1, tw(vec![(0, 6, b"second")], vec![(0, b"zzz")], None)),
                ]),
                vec![(0, 5)],
            )
            .await
            .unwrap();
        assert!(!ok);
        assert_eq!(strings(&reads[&0]), ["HELLO"]);
        let got = readv(vec![], vec![(0, 100)]).await.unwrap();
        assert_eq!(strings(&got[&0]), ["HELLO world"]);
        assert_eq!(strings(&got[&1]), ["second"]);
        // A missing share does not equal a non-empty specimen.
        let (ok, _) = ss
            .slot_testv_and_readv_and_writev(
                si,
                secrets,
                BTreeMap::from([(5, tw(vec![(0, 1, b"x")], vec![(0, b"new")], None))]),
                vec![],
            )
            .await
            .unwrap();
        assert!(!ok);
        assert!(!readv(vec![5], vec![(0, 1)]).await.unwrap().contains_key(&5));

        // Wrong write enabler: refused with the typed error, nothing written, nothing created.
        let wrong = ([0xaa; 32], [1; 32], [2; 32]);
        for shnum in [0, 7] {
            match ss
                .slot_testv_and_readv_and_writev(
                    si,
                    wrong,
                    BTreeMap::from([(shnum, tw(vec![], vec![(0, b"evil")], None))]),
                    vec![],
                )
                .await
            {
                Err(CallError::App(StorageError::BadWriteEnabler)) => {}
                other => panic!("expected BadWriteEnabler, got {other:?}"),
            }
        }
        let got = readv(vec![], vec![(0, 100)]).await.unwrap();
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(strings(&got[&0]), ["HELLO world"]);

        // Truncation, extension with a zero gap, and deletion with new_length = 0.
        let (ok, _) = ss
            .slot_testv_and_readv_and_writev(
                si,
                secrets,
                BTreeMap::from([
                    (0, tw(vec![], vec![], Some(5))),
                    (1, tw(vec![], vec![], Some(0))),
                ]),
                vec![],
            )
            .await
            .unwrap();
        assert!(ok);
        let got = readv(vec![], vec![(0, 100)]).await.unwrap();
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![0]);
        assert_eq!(strings(&got[&0]), ["HELLO"]);
        assert!(!grid.bucket(&si).join("1").exists());
        assert!(!grid.bucket(&si).join("1.leases").exists());
        let (ok, _) = ss
            .slot_testv_and_readv_and_writev(
                si,
                secrets,
                BTreeMap::from([(0, tw(vec![(0, 5, b"HELLO")], vec![(8, b"!")], None))]),
                vec![],
            )
            .await
            .unwrap();
        assert!(ok);
        let got = readv(vec![0], vec![(0, 100)]).await.unwrap();
        assert_eq!(got[&0][0].0, b"HELLO\0\0\0!");
        // The container on disk: header + data, and a lease beside it.
        assert_eq!(
            std::fs::metadata(grid.bucket(&si).join("0")).unwrap().len(),
            72 + 9
        );
        assert!(grid.bucket(&si).join("0.leases").exists());

        // Deleting the last share removes the bucket.
        let (ok, _) = ss
            .slot_testv_and_readv_and_writev(
                si,
                secrets,
                BTreeMap::from([(0, tw(vec![], vec![], Some(0)))]),
                vec![],
            )
            .await
            .unwrap();
        assert!(ok);
        assert!(readv(vec![], vec![(0, 1)]).await.unwrap().is_empty());
        assert!(!grid.bucket(&si).exists());

        // Calls carrying or returning more than MAX_CHUNK bytes are refused.
        let both = BTreeMap::from([
            (0, tw(vec![], vec![(0, &[1; 300_000])], None)),
            (1, tw(vec![], vec![(0, &[2; 300_000])], None)),
        ]);
        assert!(matches!(
            ss.slot_testv_and_readv_and_writev(si, secrets, both.clone(), vec![])
                .await,
            Err(CallError::App(StorageError::WriteTooLarge { .. }))
        ));
        assert!(readv(vec![], vec![(0, 1)]).await.unwrap().is_empty());
        for (n, share) in both {
            let one = BTreeMap::from([(n, share)]);
            let (ok, _) = ss
                .slot_testv_and_readv_and_writev(si, secrets, one, vec![])
                .await
                .unwrap();
            assert!(ok);
        }
        assert!(matches!(
            readv(vec![], vec![(0, 300_000)]).await,
            Err(CallError::App(StorageError::ReadTooLarge { .. }))
        ));
        assert_eq!(
            readv(vec![0], vec![(0, 300_000)]).await.unwrap()[&0][0].len(),
            300_000
        );
        grid.shutdown().await;
    })
}

#[test]
fn reserved_space_refuses_new_shares() {
    run(async {
        let grid = Grid::with(|c| c.reserved_space = u64::MAX).await;
        let (have, writers) = grid.allocate([1; 16], &[0, 1, 2], 1000).await.unwrap();
        assert!(have.is_empty());
        assert!(writers.is_empty());
        assert!(grid.incoming_files().is_empty());
        let version = grid.ss.get_version().await.unwrap();
        assert_eq!(version.available_space, Some(0));
        assert_eq!(version.maximum_immutable_share_size, 0);
        // Mutable writes that need room are refused too, and leave nothing.
        match grid
            .ss
            .slot_testv_and_readv_and_writev(
                [1; 16],
                ([3; 32], [1; 32], [2; 32]),
                BTreeMap::from([(0, tw(vec![], vec![(0, b"data")], None))]),
                vec![],
            )
            .await
        {
            Err(CallError::App(StorageError::NoSpace)) => {}
            other => panic!("expected NoSpace, got {other:?}"),
        }
        assert!(files_under(&grid.dir.join("shares")).is_empty());
        grid.shutdown().await;
    })
}

/// One client (one peer TubId) cannot have more than `max_space_per_client` promised to its
/// unfinished uploads plus grown in slots; finishing or aborting uploads gives the space
/// back, and another client has its own quota. (Before, one connection could take all free
/// space.)
#[test]
fn a_client_holds_at_most_its_quota() {
    run(async {
        // Each share costs its size plus a 40-byte header; a new slot share its data plus 72.
        let grid = Grid::with(|c| c.max_space_per_client = 3_000).await;
        let me = grid.client.tubid();
        let (_, w1) = grid.allocate([1; 16], &[0, 1], 1000).await.unwrap();
        assert_eq!(w1.len(), 2);
        assert_eq!(grid.storage.client_usage(&me), 2_080);
        // Two more shares of 1000 would pass 3000: the whole call is refused, typed.
        match grid.allocate([2; 16], &[0, 1], 1000).await {
            Err(CallError::App(StorageError::QuotaExceeded {
                held,
                requested,
                maximum,
            })) => assert_eq!((held, requested, maximum), (2_080, 1_040, 3_000)),
            other => panic!("expected QuotaExceeded, got {other:?}"),
        }
        assert_eq!(grid.storage.client_usage(&me), 2_080);
        assert_eq!(grid.storage.uploads_in_progress(), 2);
        let msg = StorageError::QuotaExceeded {
            held: 1,
            requested: 2,
            maximum: 3,
        }
        .to_string();
        assert!(msg.contains("quota"), "{msg}");

        // A slot write that would grow past the quota is refused too, and writes nothing.
        let big = vec![7u8; 1_000];
        match grid
            .ss
            .slot_testv_and_readv_and_writev(
                [3; 16],
                ([3; 32], [1; 32], [2; 32]),
                BTreeMap::from([(0, tw(vec![], vec![(0, &big)], None))]),
                vec![],
            )
            .await
        {
            Err(CallError::App(StorageError::QuotaExceeded { requested, .. })) => {
                assert_eq!(requested, 1_072)
            }
            other => panic!("expected QuotaExceeded, got {other:?}"),
        }
        assert!(!grid.bucket(&[3; 16]).exists());

        // Another client has a quota of its own.
        let other = tub();
        let ss2: StorageServerRef = other.get(&grid.furl).await.unwrap();
        let (_, w2) = ss2
            .allocate_buckets(
                [2; 16],
                [1; 32],
                [2; 32],
                [0, 1].into_iter().collect(),
                1000,
                CanaryRef::serve(NullCanary),
            )
            .await
            .unwrap();
        assert_eq!(w2.len(), 2);
        assert_eq!(grid.storage.client_usage(&other.tubid()), 2_080);

        // Finishing one upload and aborting the other gives the first client's space back.
        write_all(&w1[&0], &data(1, 1000), 1000).await;
        w1[&0].close().await.unwrap();
        w1[&1].abort().await.unwrap();
        assert_eq!(grid.storage.client_usage(&me), 0);
        // Slot growth counts until shrunk: 500 + 72, then deleting the share gives it back.
        grid.ss
            .slot_testv_and_readv_and_writev(
                [3; 16],
                ([3; 32], [1; 32], [2; 32]),
                BTreeMap::from([(0, tw(vec![], vec![(0, &big[..500])], None))]),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(grid.storage.client_usage(&me), 572);
        let (_, w3) = grid.allocate([4; 16], &[0, 1], 1000).await.unwrap();
        assert_eq!(w3.len(), 2);
        assert_eq!(grid.storage.client_usage(&me), 2_652);
        grid.ss
            .slot_testv_and_readv_and_writev(
                [3; 16],
                ([3; 32], [1; 32], [2; 32]),
                BTreeMap::from([(0, tw(vec![], vec![], Some(0)))]),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(grid.storage.client_usage(&me), 2_080);
        // A lost connection aborts its uploads, which gives their space back.
        other.shutdown().await;
        eventually("the other client's uploads to be aborted", || {
            grid.storage.client_usage(&other.tubid()) == 0
        })
        .await;
        grid.shutdown().await;
    })
}

/// `[storage] max_space_per_client` in tahoe.cfg reaches a running node's storage server.
#[test]
fn a_storage_node_takes_its_client_quota_from_tahoe_cfg() {
    run(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("node");
        common::create(&[
            "create-node",
            "--webport=tcp:0:interface=127.0.0.1",
            "--hostname",
            "127.0.0.1",
            dir.to_str().unwrap(),
        ]);
        let cfg = dir.join("tahoe.cfg");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = text.replace("[storage]\n", "[storage]\nmax_space_per_client = 5kB\n");
        std::fs::write(&cfg, text).unwrap();
        let node = folio_node::node::Node::start(&dir).await.unwrap();
        let furl = Furl::load(&dir.join("private/storage.furl")).unwrap();
        let client = tub();
        let ss: StorageServerRef = client.get(&furl).await.unwrap();
        let allocate = |size: u64| {
            ss.allocate_buckets(
                [5; 16],
                [1; 32],
                [2; 32],
                [0].into_iter().collect(),
                size,
                CanaryRef::serve(NullCanary),
            )
        };
        match allocate(5_000).await {
            Err(CallError::App(StorageError::QuotaExceeded { maximum, .. })) => {
                assert_eq!(maximum, 5_000)
            }
            other => panic!("expected QuotaExceeded, got {other:?}"),
        }
        assert_eq!(allocate(4_960).await.unwrap().1.len(), 1);
        client.shutdown().await;
        node.shutdown().await;
    })
}

#[test]
fn size_limits_are_enforced() {
    run(async {
        let grid = Grid::with(|c| {
            c.max_immutable_share_size = 1000;
            c.max_mutable_share_size = 100;
        })
        .await;
        match grid.allocate([1; 16], &[0], 1001).await {
            Err(CallError::App(StorageError::TooLarge { maximum, .. })) => {
                assert_eq!(maximum, 1000)
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(grid.allocate([1; 16], &[0], 1000).await.unwrap().1.len(), 1);
        assert!(matches!(
            grid.ss
                .slot_testv_and_readv_and_writev(
                    [2; 16],
                    ([3; 32], [1; 32], [2; 32]),
                    BTreeMap::from([(0, tw(vec![], vec![(95, b"0123456789")], None))]),
                    vec![],
                )
                .await,
            Err(CallError::App(StorageError::TooLarge { .. }))
        ));
        assert!(!grid.bucket(&[2; 16]).exists());
        // Too many read vector entries.
        assert!(matches!(
            grid.ss.slot_readv([2; 16], vec![], vec![(0, 1); 257]).await,
            Err(CallError::App(StorageError::LimitExceeded { .. }))
        ));
        grid.shutdown().await;
    })
}

#[test]
fn open_removes_abandoned_uploads() {
    run(async {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("storage");
        let si = [0x33; 16];
        let b32 = si_b32(&si);
        drop(Storage::open(StorageConfig::new(&dir)).unwrap());
        // As a crash mid-upload leaves it.
        let incoming = dir.join("shares/incoming").join(&b32[..2]).join(&b32);
        std::fs::create_dir_all(&incoming).unwrap();
        std::fs::write(incoming.join("3"), b"partial upload").unwrap();

        let grid = Grid::at(StorageConfig::new(&dir)).await;
        assert!(grid.incoming_files().is_empty());
        assert!(dir.join("shares/incoming").is_dir());
        assert!(grid.ss.get_buckets(si).await.unwrap().is_empty());
        // The share number is free for a new upload.
        let (have, writers) = grid.allocate(si, &[3], 10).await.unwrap();
        assert!(have.is_empty());
        assert_eq!(writers.len(), 1);
        grid.shutdown().await;
    })
}

#[test]
fn share_numbers_above_255_are_refused() {
    run(async {
        let grid = Grid::new().await;
        let si = [0x44; 16];
        for shares in [vec![256u16], vec![0, 1, 300], vec![u16::MAX]] {
            match grid.allocate(si, &shares, 10).await {
                Err(CallError::App(StorageError::BadShareNumber(n))) => assert!(n > 255),
                other => panic!("expected BadShareNumber, got {other:?}"),
            }
        }
        assert!(grid.incoming_files().is_empty());
        assert_eq!(grid.storage.uploads_in_progress(), 0);
        // 255 itself is fine.
        assert_eq!(grid.allocate(si, &[255], 10).await.unwrap().1.len(), 1);
        assert!(matches!(
            grid.ss.slot_readv(si, vec![256], vec![(0, 1)]).await,
            Err(CallError::App(StorageError::BadShareNumber(256)))
        ));
        assert!(matches!(
            grid.ss
                .slot_testv_and_readv_and_writev(
                    si,
                    ([3; 32], [1; 32], [2; 32]),
                    BTreeMap::from([(1000, tw(vec![], vec![(0, b"x")], None))]),
                    vec![],
                )
                .await,
            Err(CallError::App(StorageError::BadShareNumber(1000)))
        ));
        assert!(matches!(
            grid.ss
                .advise_corrupt_share("immutable".into(), si, 256, "bad".into())
                .await,
            Err(CallError::App(StorageError::BadShareNumber(256)))
        ));
        grid.shutdown().await;
    })
}

#[test]
fn corruption_advice_is_recorded() {
    run(async {
        let grid = Grid::new().await;
        let si = [0x55; 16];
        let long = format!("hash mismatch\nsecond line {}", "x".repeat(5000));
        grid.ss
            .advise_corrupt_share("immutable".into(), si, 3, long)
            .await
            .unwrap();
        grid.ss
            .advise_corrupt_share("mutable".into(), si, 4, "bad signature".into())
            .await
            .unwrap();
        assert!(matches!(
            grid.ss
                .advise_corrupt_share("../../etc".into(), si, 1, "x".into())
                .await,
            Err(CallError::App(StorageError::BadShareType))
        ));
        let log =
            std::fs::read_to_string(grid.dir.join("corruption-advisories/advisories.log")).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2);
        let b32 = si_b32(&si);
        assert!(lines[0].contains(&format!(" immutable {b32} 3 hash mismatch\\nsecond line x")));
        assert!(lines[0].len() < 1200, "the reason is bounded");
        assert!(lines[1].ends_with(&format!(" mutable {b32} 4 bad signature")));
        grid.shutdown().await;
    })
}
