//! Immutable files end to end: storage servers on their own Tubs, a client Tub reaching them
//! over TCP on 127.0.0.1, uploads and downloads through `folio_node::immutable`.

use std::io::{Read, Write};
use std::path::Path;

use std::time::{Duration, Instant};

use folio_node::immutable::{
    download, upload, CapError, ChkCap, DownloadError, EncodingParams, FileSource, Phase, Progress,
    ReadCap, ShareFront, UploadError, UploadReport, LIT_MAX,
};
use folio_node::storage::{
    si_b32, BucketWriter, BucketWriterRef, CanaryRef, LeaseSecret, Storage, StorageError,
    StorageIndex, StorageServer, StorageServerRef, StorageVersion, TestWriteVectors, WriteEnabler,
};
use folio_rpc::{Bytes, CallError};

mod common;
use common::files_under;
use common::grid::{run, run_for, Grid};

/// A [`Grid`] of `n` servers, each server's service wrapped in a [`Recording`] that keeps
/// every byte string the client sends it.
async fn recording_grid(n: usize) -> (Grid, Received) {
    let received = Received::default();
    let r = received.clone();
    let grid = Grid::build(
        n,
        |_, _| {},
        move |storage| {
            StorageServerRef::serve(Recording {
                storage: storage.clone(),
                received: r.clone(),
            })
        },
    )
    .await;
    (grid, received)
}

/// Deterministic, incompressible-looking bytes (xorshift64*), from `seed` at `offset`.
fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut x = (seed ^ (offset / 8 + i as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(seed, 0, &mut v);
    v
}

const CONVERGENCE: [u8; 32] = [0x11; 32];
const LEASE: [u8; 32] = [0x22; 32];

async fn put(grid: &Grid, params: &EncodingParams, bytes: &[u8]) -> UploadReport {
    tokio::time::timeout(
        Duration::from_secs(60),
        upload(
            &grid.connected,
            params,
            &CONVERGENCE,
            &LEASE,
            bytes.to_vec(),
            Progress::new(),
        ),
    )
    .await
    .expect("upload timed out")
    .unwrap()
}

async fn get(grid: &Grid, cap: &ReadCap) -> Result<Vec<u8>, DownloadError> {
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(60),
        download(&grid.connected, cap, &mut out, Progress::new()),
    )
    .await
    .expect("download timed out")?;
    Ok(out)
}

/// 3-of-10, happy 7, with small segments (960 bytes: 1000 rounded down to 64 * 3).
fn small_segments() -> EncodingParams {
    EncodingParams {
        max_segment_size: 1000,
        ..EncodingParams::default()
    }
}

#[test]
fn round_trips_of_every_size() {
    run(async {
        let grid = Grid::new(10).await;
        let params = small_segments();
        let seg = params.segment_size_for(1 << 20);
        assert_eq!(seg, 960);
        let cases: Vec<(&str, usize, EncodingParams, bool)> = vec![
            ("empty", 0, params, false),
            ("one byte, inline", 1, params, false),
            (
                "one byte, on the grid",
                1,
                EncodingParams {
                    max_inline: 0,
                    ..params
                },
                true,
            ),
            ("inline limit", LIT_MAX, params, false),
            ("just above the inline limit", LIT_MAX + 1, params, true),
            ("exactly one segment", seg as usize, params, true),
            ("one segment and a byte", seg as usize + 1, params, true),
            (
                "many segments, short tail",
                seg as usize * 37 + 123,
                params,
                true,
            ),
            (
                "default segments",
                3 * 131_072 + 5,
                EncodingParams::default(),
                true,
            ),
        ];
        for (what, len, params, chk) in cases {
            let bytes = data(len as u64, len);
            let progress = Progress::new();
            let report = upload(
                &grid.connected,
                &params,
                &CONVERGENCE,
                &LEASE,
                bytes.clone(),
                progress.clone(),
            )
            .await
            .unwrap();
            let snap = progress.snapshot();
            assert_eq!(snap.phase, Phase::Done, "{what}");
            assert_eq!(
                (snap.bytes_total, snap.bytes_done),
                (len as u64, len as u64)
            );
            assert_eq!(matches!(report.cap, ReadCap::Chk(_)), chk, "{what}");
            assert_eq!(report.cap.size(), len as u64);
            if chk {
                assert_eq!(report.happiness, 10, "{what}");
                assert_eq!(report.shares_placed, 10, "{what}");
                assert_eq!(report.servers.len(), 10, "{what}: one share per server");
            } else {
                assert!(
                    report.servers.is_empty(),
                    "{what}: a LIT cap touches no server"
                );
            }
            // The cap survives being written out and read back.
            let cap: ReadCap = report.cap.to_string().parse().unwrap();
            assert_eq!(cap, report.cap);
            let progress = Progress::new();
            let mut out = Vec::new();
            let dl = download(&grid.connected, &cap, &mut out, progress.clone())
                .await
                .unwrap();
            assert!(out == bytes, "{what}: the download differs");
            assert_eq!(dl.size, len as u64);
            assert!(dl.corrupt.is_empty());
            assert_eq!(progress.snapshot().bytes_done, len as u64);
            if chk {
                // The three primary shares, from three servers.
                let mut shares: Vec<u16> = dl
                    .servers_used
                    .iter()
                    .flat_map(|(_, v)| v.clone())
                    .collect();
                shares.sort();
                assert_eq!(shares, vec![0, 1, 2], "{what}");
            }
        }
        grid.shutdown().await;
    })
}

/// 100 MiB streamed from a file on disk to a file on disk, 3-of-4 with 1 MiB segments.
#[test]
fn hundred_mib_file_streams() {
    run_for(300, async {
        let grid = Grid::new(4).await;
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("input");
        let output = tmp.path().join("output");
        const LEN: u64 = 100 << 20;
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
            let mut buf = vec![0u8; 1 << 20];
            for i in 0..LEN / buf.len() as u64 {
                fill(42, i * buf.len() as u64, &mut buf);
                f.write_all(&buf).unwrap();
            }
            f.flush().unwrap();
        }
        let params = EncodingParams {
            max_segment_size: 1 << 20,
            ..EncodingParams::new(3, 4, 4).unwrap()
        };
        let started = Instant::now();
        let report = tokio::time::timeout(
            Duration::from_secs(200),
            upload(
                &grid.connected,
                &params,
                &CONVERGENCE,
                &LEASE,
                FileSource::open(&input).unwrap(),
                Progress::new(),
            ),
        )
        .await
        .expect("upload timed out")
        .unwrap();
        let up = started.elapsed();
        assert_eq!(report.happiness, 4);
        let started = Instant::now();
        let mut out = tokio::fs::File::create(&output).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(200),
            download(&grid.connected, &report.cap, &mut out, Progress::new()),
        )
        .await
        .expect("download timed out")
        .unwrap();
        drop(out);
        let down = started.elapsed();
        eprintln!("100 MiB: upload {up:?}, download {down:?}");
        // Compare the files a chunk at a time.
        let (mut a, mut b) = (
            std::fs::File::open(&input).unwrap(),
            std::fs::File::open(&output).unwrap(),
        );
        assert_eq!(b.metadata().unwrap().len(), LEN);
        let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
        for _ in 0..LEN / x.len() as u64 {
            a.read_exact(&mut x).unwrap();
            b.read_exact(&mut y).unwrap();
            assert!(x == y, "the downloaded file differs");
        }
        grid.shutdown().await;
    })
}

/// With 3-of-10 on ten servers (one share each), any seven may be down.
#[test]
fn download_survives_seven_servers_down_and_not_eight() {
    run(async {
        let params = small_segments();
        let bytes = data(7, 960 * 12 + 500);
        // Keep the holders of: recovery shares only; primary shares only; a mix.
        for keep in [[7u16, 8, 9], [0, 1, 2], [1, 5, 9]] {
            let mut grid = Grid::new(10).await;
            let report = put(&grid, &params, &bytes).await;
            let holders = grid.holders(&report);
            assert_eq!(holders.len(), 10);
            for &(shnum, server) in &holders {
                if !keep.contains(&shnum) {
                    grid.stop(server).await;
                }
            }
            let out = get(&grid, &report.cap).await.unwrap();
            assert!(out == bytes, "kept shares {keep:?}: the download differs");

            // An eighth server down: two shares left, three needed.
            let (_, eighth) = holders.iter().find(|(n, _)| *n == keep[0]).unwrap();
            grid.stop(*eighth).await;
            let err = get(&grid, &report.cap).await.unwrap_err();
            match &err {
                DownloadError::NotEnoughShares {
                    found,
                    total,
                    needed,
                    servers,
                    failed,
                    ..
                } => {
                    assert_eq!((*found, *total, *needed), (2, 10, 3));
                    assert_eq!(*servers, 2);
                    assert_eq!(*failed, 8);
                }
                other => panic!("expected NotEnoughShares, got {other:?}"),
            }
            let text = err.to_string();
            assert!(
                text.starts_with("found 2 shares of 10 (need 3) on 2 servers"),
                "{text}"
            );
            grid.shutdown().await;
        }
    })
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x04;
    std::fs::write(path, bytes).unwrap();
}

/// The storage server's share file has a 40-byte header before the share.
const SERVER_HEADER: u64 = 40;

#[test]
fn corrupt_shares_are_detected_reported_and_replaced() {
    run(async {
        let grid = Grid::new(10).await;
        let params = small_segments();
        let bytes = data(9, 960 * 20 + 17);
        let report = put(&grid, &params, &bytes).await;
        let ReadCap::Chk(chk) = &report.cap else {
            panic!("a CHK cap")
        };
        let si = chk.storage_index();
        let holders = grid.holders(&report);
        let holder = |shnum: u16| holders.iter().find(|(n, _)| *n == shnum).unwrap().1;

        // Share 0: a bit of segment 5's block. Share 1: a bit of its UEB copy.
        let p0 = grid.share_path(holder(0), &si, 0);
        let share0 = std::fs::read(&p0).unwrap();
        let front = ShareFront::decode_for(&share0[SERVER_HEADER as usize..], chk, 0).unwrap();
        let (block5, _) = front.layout.block_range(5);
        flip(&p0, SERVER_HEADER + block5 + 100);
        let p1 = grid.share_path(holder(1), &si, 1);
        flip(&p1, SERVER_HEADER + 64 + 20);

        let mut out = Vec::new();
        let dl = tokio::time::timeout(
            Duration::from_secs(60),
            download(&grid.connected, &report.cap, &mut out, Progress::new()),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(out == bytes, "the download differs");
        let mut corrupt: Vec<u16> = dl.corrupt.iter().map(|c| c.shnum).collect();
        corrupt.sort();
        assert_eq!(corrupt, vec![0, 1], "{:?}", dl.corrupt);
        assert!(dl.corrupt.iter().any(|c| c.reason.contains("block 5")));
        assert!(dl.corrupt.iter().any(|c| c.reason.contains("UEB")));

        // Both servers were told.
        for shnum in [0u16, 1] {
            let log = grid.servers[holder(shnum)]
                .dir
                .join("corruption-advisories/advisories.log");
            let text = std::fs::read_to_string(&log).unwrap();
            let line = text.lines().next().unwrap();
            let fields: Vec<&str> = line.splitn(5, ' ').collect();
            assert_eq!(fields[1], "immutable", "{line}");
            assert_eq!(fields[2], si_b32(&si), "{line}");
            assert_eq!(fields[3], shnum.to_string(), "{line}");
        }
        // Nobody else was.
        for (shnum, server) in &holders {
            if *shnum > 1 {
                let log = grid.servers[*server]
                    .dir
                    .join("corruption-advisories/advisories.log");
                assert!(!log.exists() || std::fs::read(&log).unwrap().is_empty());
            }
        }
        grid.shutdown().await;
    })
}

#[test]
fn convergence_same_secret_same_cap() {
    run(async {
        let grid = Grid::new(10).await;
        let params = small_segments();
        let bytes = data(3, 5000);
        let first = put(&grid, &params, &bytes).await;
        let again = put(&grid, &params, &bytes).await;
        assert_eq!(first.cap, again.cap);
        assert_eq!(first.cap.to_string(), again.cap.to_string());
        // The second upload found every share in place and wrote none.
        assert_eq!(again.shares_placed, 10);
        assert!(again.servers.iter().all(|s| s.uploaded.is_empty()));
        assert_eq!(
            again
                .servers
                .iter()
                .map(|s| s.already_had.len())
                .sum::<usize>(),
            10
        );

        let other = upload(
            &grid.connected,
            &params,
            &[0x33; 32],
            &LEASE,
            bytes.clone(),
            Progress::new(),
        )
        .await
        .unwrap();
        assert_ne!(other.cap, first.cap);
        assert_ne!(other.storage_index, first.storage_index);
        // Other parameters, another cap too.
        let wider = put(
            &grid,
            &EncodingParams {
                needed: 4,
                ..params
            },
            &bytes,
        )
        .await;
        assert_ne!(wider.cap, first.cap);
        // Every one reads back.
        for cap in [&first.cap, &other.cap, &wider.cap] {
            assert!(get(&grid, cap).await.unwrap() == bytes);
        }
        grid.shutdown().await;
    })
}

fn assert_nothing_stored(grid: &Grid) {
    for i in 0..grid.servers.len() {
        assert!(
            grid.share_files(i).is_empty(),
            "server {i} kept shares: {:?}",
            grid.share_files(i)
        );
        assert!(
            grid.incoming_files(i).is_empty(),
            "server {i} kept partial uploads: {:?}",
            grid.incoming_files(i)
        );
    }
}

/// A file whose shares' first read (guessed for the default segment size) holds every
/// block window: the reads sent beside it are dropped, and no range is computed for a
/// window past the last (that overflowed, a panic in debug builds).
#[test]
fn a_head_that_holds_every_window_downloads() {
    run(async {
        let grid = Grid::new(10).await;
        let bytes = data(8, 300_000);
        let report = put(&grid, &small_segments(), &bytes).await;
        assert_eq!(get(&grid, &report.cap).await.unwrap(), bytes);
        grid.shutdown().await;
    });
}

/// A large file's writes go out behind its allocations; when some servers of that first
/// round refuse (read-only here), what was sent is aborted, the file is placed the ordinary
/// way on the others, and no partial upload is left anywhere.
#[test]
fn refused_pipelined_allocations_fall_back_to_placing_first() {
    run(async {
        let grid = Grid::with(10, |i, c| c.readonly = i < 3).await;
        let bytes = data(9, 300_000);
        let report = put(&grid, &small_segments(), &bytes).await;
        assert_eq!(report.happiness, 7, "{report:?}");
        assert_eq!(report.shares_placed, 10);
        for i in 0..10 {
            assert!(
                grid.incoming_files(i).is_empty(),
                "server {i} kept a partial upload"
            );
            if i < 3 {
                assert!(
                    grid.share_files(i).is_empty(),
                    "read-only server {i} holds a share"
                );
            }
        }
        assert_eq!(get(&grid, &report.cap).await.unwrap(), bytes);
        // The same file again: every server already holds its share (the first round
        // answers "already have"); nothing is written twice.
        let again = put(&grid, &small_segments(), &bytes).await;
        assert_eq!(again.cap, report.cap);
        assert!(
            again.servers.iter().all(|s| s.uploaded.is_empty()),
            "{again:?}"
        );
        grid.shutdown().await;
    });
}

#[test]
fn upload_refused_below_happiness_leaves_nothing() {
    run(async {
        // Four of ten servers down: six can take shares, happy is seven.
        let mut grid = Grid::new(10).await;
        for i in [1, 4, 6, 8] {
            grid.stop(i).await;
        }
        let err = upload(
            &grid.connected,
            &small_segments(),
            &CONVERGENCE,
            &LEASE,
            data(5, 10_000),
            Progress::new(),
        )
        .await
        .unwrap_err();
        match &err {
            UploadError::NotHappy {
                found,
                happy,
                failed,
                ..
            } => assert_eq!((*found, *happy, *failed), (6, 7, 4)),
            other => panic!("expected NotHappy, got {other:?}"),
        }
        assert!(
            err.to_string()
                .starts_with("found 6 servers that can take shares, need happy=7"),
            "{err}"
        );
        assert_nothing_stored(&grid);
        grid.shutdown().await;

        // Five of ten servers read-only: they allocate nothing.
        let grid = Grid::with(10, |i, c| c.readonly = i % 2 == 0).await;
        let err = upload(
            &grid.connected,
            &small_segments(),
            &CONVERGENCE,
            &LEASE,
            data(5, 10_000),
            Progress::new(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                UploadError::NotHappy {
                    found: 5,
                    happy: 7,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_nothing_stored(&grid);
        // With happy = 5 the same grid takes the file: two shares on some servers.
        let params = EncodingParams {
            happy: 5,
            ..small_segments()
        };
        let report = put(&grid, &params, &data(5, 10_000)).await;
        assert_eq!(report.happiness, 5);
        assert_eq!(report.shares_placed, 10);
        assert!(get(&grid, &report.cap).await.unwrap() == data(5, 10_000));
        grid.shutdown().await;
    })
}

/// A small file (one segment) is allocated, written and closed in one flight per share.
/// When servers refuse (read-only), already hold a share, or are down, the upload falls
/// back correctly: refused shares go to the servers that accepted, held shares count as
/// placed, and nothing is written twice.
#[test]
fn small_files_in_one_flight_fall_back_when_servers_refuse() {
    run(async {
        let bytes = data(21, 3000); // one segment with the default parameters
        let params = EncodingParams {
            happy: 5,
            ..EncodingParams::default()
        };
        // Five of ten servers read-only: each accepting server takes a second share.
        let grid = Grid::with(10, |i, c| c.readonly = i % 2 == 0).await;
        let report = put(&grid, &params, &bytes).await;
        assert_eq!(report.happiness, 5);
        assert_eq!(report.shares_placed, 10);
        assert!(report
            .servers
            .iter()
            .all(|s| s.uploaded.len() == 2 && s.already_had.is_empty()));
        for i in (0..10).step_by(2) {
            assert!(grid.share_files(i).is_empty(), "read-only server {i}");
        }
        assert!(get(&grid, &report.cap).await.unwrap() == bytes);
        // Again: every share is already there; nothing is written.
        let again = put(&grid, &params, &bytes).await;
        assert_eq!(again.cap, report.cap);
        assert_eq!(again.shares_placed, 10);
        assert!(again.servers.iter().all(|s| s.uploaded.is_empty()));
        for i in 0..10 {
            assert!(grid.incoming_files(i).is_empty(), "server {i}");
        }
        grid.shutdown().await;

        // Some shares already on the grid (one server of ten has share files, from a
        // grid where it held them), others not: the held ones count, the rest are written.
        let mut grid = Grid::new(10).await;
        let first = put(&grid, &EncodingParams::default(), &bytes).await;
        let holder = grid.index(&first.servers[0].nickname);
        for i in (0..10).filter(|&i| i != holder) {
            for f in grid.share_files(i) {
                std::fs::remove_file(f).unwrap();
            }
        }
        let second = put(&grid, &EncodingParams::default(), &bytes).await;
        assert_eq!(second.shares_placed, 10);
        assert_eq!(
            second
                .servers
                .iter()
                .map(|s| s.already_had.len())
                .sum::<usize>(),
            1
        );
        assert!(get(&grid, &second.cap).await.unwrap() == bytes);
        // Four servers down, happy is seven: refused. The shares the live servers took
        // in the one flight stay (see `upload`'s docs): complete, and enough to read.
        for i in 0..4 {
            grid.stop(i).await;
        }
        let other = data(22, 3000);
        let err = upload(
            &grid.connected,
            &EncodingParams::default(),
            &CONVERGENCE,
            &LEASE,
            other.clone(),
            Progress::new(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                err,
                UploadError::NotHappy {
                    found: 6,
                    happy: 7,
                    failed: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        for i in 4..10 {
            assert!(grid.incoming_files(i).is_empty(), "server {i}");
        }
        grid.shutdown().await;
    })
}

#[test]
fn servers_failing_mid_upload() {
    run(async {
        // One server of ten dies while shares are being written: happiness holds (9 >= 7).
        let mut grid = Grid::new(10).await;
        let params = EncodingParams {
            max_segment_size: 4096,
            ..EncodingParams::default()
        };
        let bytes = data(11, 6 << 20);
        let progress = Progress::new();
        let victim_key = {
            // The first server in permuted order holds share 0; any server will do.
            grid.connected[3].key
        };
        let upload_fut = upload(
            &grid.connected,
            &params,
            &CONVERGENCE,
            &LEASE,
            bytes.clone(),
            progress.clone(),
        );
        let watcher = async {
            while !(progress.snapshot().phase == Phase::Pushing
                && progress.snapshot().bytes_done > 0)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            grid.servers[3].tub.shutdown().await;
        };
        let (report, ()) = tokio::join!(upload_fut, watcher);
        let report = report.unwrap();
        assert!(
            report.failed_servers.iter().any(|(n, _)| n == "server3"),
            "{:?}",
            report.failed_servers
        );
        assert_eq!(report.happiness, 9);
        assert!(report.servers.iter().all(|s| s.key != victim_key));
        grid.servers[3].running = false;
        assert!(get(&grid, &report.cap).await.unwrap() == bytes);
        grid.shutdown().await;

        // Four die: six left, happy is seven. The upload fails and aborts every writer.
        let mut grid = Grid::new(10).await;
        let progress = Progress::new();
        let upload_fut = upload(
            &grid.connected,
            &params,
            &CONVERGENCE,
            &LEASE,
            bytes.clone(),
            progress.clone(),
        );
        let watcher = async {
            while !(progress.snapshot().phase == Phase::Pushing
                && progress.snapshot().bytes_done > 0)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for i in [0, 2, 5, 7] {
                grid.servers[i].tub.shutdown().await;
            }
        };
        let (result, ()) = tokio::join!(upload_fut, watcher);
        match result {
            Err(UploadError::LostServers { found, happy, .. }) => {
                assert!(found < 7, "{found}");
                assert_eq!(happy, 7);
            }
            // The writes start behind the allocations: servers that die before answering
            // theirs send the upload back to placing first, which finds six.
            Err(UploadError::NotHappy {
                found: 6,
                happy: 7,
                failed: 4,
                ..
            }) => {}
            other => panic!("expected LostServers or NotHappy, got {other:?}"),
        }
        for i in [0, 2, 5, 7] {
            grid.servers[i].running = false;
        }
        // The live servers were told to abort: nothing of the file is kept.
        for i in [1, 3, 4, 6, 8, 9] {
            assert!(grid.share_files(i).is_empty(), "server {i}");
            assert!(grid.incoming_files(i).is_empty(), "server {i}");
        }
        grid.shutdown().await;
    })
}

#[test]
fn cap_strings() {
    let cap = ReadCap::Chk(ChkCap {
        key: [0xab; 32],
        ueb_hash: [0xcd; 32],
        needed: 3,
        total: 10,
        size: 1_000_000,
    });
    let text = cap.to_string();
    let fields: Vec<&str> = text.split(':').collect();
    assert_eq!(&fields[..2], ["folio", "CHK"]);
    assert_eq!(fields[2].len(), 52);
    assert_eq!(fields[3].len(), 52);
    assert_eq!(&fields[4..], ["3", "10", "1000000"]);
    assert_eq!(text.parse::<ReadCap>().unwrap(), cap);
    let lit = ReadCap::Lit(b"hi".to_vec());
    assert_eq!(lit.to_string().parse::<ReadCap>().unwrap(), lit);

    let with = |i: usize, v: &str| {
        let mut f = fields.clone();
        f[i] = v;
        f.join(":")
    };
    let refused = [
        ("wrong prefix", text.replacen("folio:CHK:", "URI:CHK:", 1)),
        ("lowercase type", text.replacen("CHK", "chk", 1)),
        ("extra field", format!("{text}:7")),
        ("missing field", fields[..6].join(":")),
        ("trailing newline", format!("{text}\n")),
        ("uppercase base32", with(2, &fields[2].to_ascii_uppercase())),
        ("bad base32", with(3, &"1".repeat(52))),
        ("short key", with(2, &fields[2][..26])),
        ("k > N", with(4, "11")),
        ("k = 0", with(4, "0")),
        ("N > 256", with(5, "300")),
        ("leading zero", with(6, "01000000")),
        ("negative size", with(6, "-5")),
        ("size 0", with(6, "0")),
        ("size too large", with(6, "281474976710657")),
        ("LIT too long", format!("folio:LIT:{}", "a".repeat(100))),
    ];
    for (what, s) in refused {
        let e = s.parse::<ReadCap>();
        assert!(e.is_err(), "{what}: {s} was accepted");
    }
    assert_eq!(
        with(4, "11").parse::<ReadCap>().unwrap_err(),
        CapError::Shares {
            needed: 11,
            total: 10
        }
    );
    assert_eq!(
        format!("{text}:7").parse::<ReadCap>().unwrap_err(),
        CapError::FieldCount(6)
    );
    assert_eq!(
        "URI:CHK:x".parse::<ReadCap>().unwrap_err(),
        CapError::UnknownPrefix
    );
}

/// Every byte string clients sent to a grid's storage services, one entry per argument.
#[derive(Clone, Default)]
struct Received(std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl Received {
    fn keep(&self, parts: &[&[u8]]) {
        let mut all = self.0.lock().unwrap();
        all.extend(parts.iter().map(|p| p.to_vec()));
    }

    fn all(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().clone()
    }
}

/// A storage service that records what the client sends (every argument that carries bytes)
/// and passes the call on to the real server. Its bucket writers record their writes.
struct Recording {
    storage: Storage,
    received: Received,
}

fn unwrap_call(e: CallError<StorageError>) -> StorageError {
    match e {
        CallError::App(e) => e,
        other => StorageError::Io(other.to_string()),
    }
}

impl StorageServer for Recording {
    async fn get_version(&self) -> Result<StorageVersion, StorageError> {
        self.storage.get_version().await
    }

    async fn allocate_buckets(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
        sharenums: std::collections::BTreeSet<u16>,
        allocated_size: u64,
        canary: CanaryRef,
    ) -> Result<
        (
            std::collections::BTreeSet<u16>,
            std::collections::BTreeMap<u16, BucketWriterRef>,
        ),
        StorageError,
    > {
        self.received
            .keep(&[&storage_index, &renew_secret, &cancel_secret]);
        let (have, writers) = self
            .storage
            .allocate_buckets(
                storage_index,
                renew_secret,
                cancel_secret,
                sharenums,
                allocated_size,
                canary,
            )
            .await?;
        let writers = writers
            .into_iter()
            .map(|(n, inner)| {
                let w = RecordingWriter {
                    inner,
                    received: self.received.clone(),
                };
                (n, BucketWriterRef::serve(w))
            })
            .collect();
        Ok((have, writers))
    }

    async fn add_lease(
        &self,
        storage_index: StorageIndex,
        renew_secret: LeaseSecret,
        cancel_secret: LeaseSecret,
    ) -> Result<(), StorageError> {
        self.received
            .keep(&[&storage_index, &renew_secret, &cancel_secret]);
        self.storage
            .add_lease(storage_index, renew_secret, cancel_secret)
            .await
    }

    async fn get_buckets(
        &self,
        storage_index: StorageIndex,
    ) -> Result<std::collections::BTreeMap<u16, folio_node::storage::BucketReaderRef>, StorageError>
    {
        self.received.keep(&[&storage_index]);
        self.storage.get_buckets(storage_index).await
    }

    async fn advise_corrupt_share(
        &self,
        share_type: String,
        storage_index: StorageIndex,
        shnum: u16,
        reason: String,
    ) -> Result<(), StorageError> {
        self.received
            .keep(&[share_type.as_bytes(), &storage_index, reason.as_bytes()]);
        self.storage
            .advise_corrupt_share(share_type, storage_index, shnum, reason)
            .await
    }

    async fn slot_readv(
        &self,
        storage_index: StorageIndex,
        shares: Vec<u16>,
        readv: Vec<(u64, u64)>,
    ) -> Result<std::collections::BTreeMap<u16, Vec<Bytes>>, StorageError> {
        self.received.keep(&[&storage_index]);
        self.storage.slot_readv(storage_index, shares, readv).await
    }

    async fn slot_testv_and_readv_and_writev(
        &self,
        storage_index: StorageIndex,
        secrets: (WriteEnabler, LeaseSecret, LeaseSecret),
        tw_vectors: std::collections::BTreeMap<u16, TestWriteVectors>,
        read_vector: Vec<(u64, u64)>,
    ) -> Result<(bool, std::collections::BTreeMap<u16, Vec<Bytes>>), StorageError> {
        self.received
            .keep(&[&storage_index, &secrets.0, &secrets.1, &secrets.2]);
        for tw in tw_vectors.values() {
            for t in &tw.test {
                self.received.keep(&[&t.specimen]);
            }
            for (_, data) in &tw.write {
                self.received.keep(&[data]);
            }
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
        self.received
            .keep(&[&storage_index, &renew_secret, &cancel_secret]);
        let inner = self
            .storage
            .allocate_share(
                storage_index,
                renew_secret,
                cancel_secret,
                shnum,
                allocated_size,
                canary,
            )
            .await?;
        Ok(BucketWriterRef::serve(RecordingWriter {
            inner,
            received: self.received.clone(),
        }))
    }
}

struct RecordingWriter {
    inner: BucketWriterRef,
    received: Received,
}

impl BucketWriter for RecordingWriter {
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), StorageError> {
        self.received.keep(&[&data]);
        self.inner.write(offset, data).await.map_err(unwrap_call)
    }
    async fn close(&self) -> Result<(), StorageError> {
        self.inner.close().await.map_err(unwrap_call)
    }
    async fn abort(&self) -> Result<(), StorageError> {
        self.inner.abort().await.map_err(unwrap_call)
    }
}

/// How many of `haystack`'s 32-byte windows are among `windows`.
fn shared_windows(windows: &std::collections::HashSet<&[u8]>, haystack: &[u8]) -> usize {
    haystack.windows(32).filter(|w| windows.contains(w)).count()
}

/// Nothing a storage server receives or stores reveals the plaintext: no 32-byte window of
/// a random file appears in any argument sent to the servers (share data, storage index,
/// lease secrets, ...) nor in any file under their storage directories.
///
/// How it fails: with a no-op cipher (or one that leaves any part of the file in clear),
/// blocks `0..k` of every segment are the plaintext cut in k pieces of at least 64 bytes,
/// so both the recorded writes and the share files contain plaintext windows.
#[test]
fn no_plaintext_reaches_a_storage_server() {
    use ring::rand::SecureRandom;
    run(async {
        let (grid, received) = recording_grid(4).await;
        let params = EncodingParams {
            max_segment_size: 4096,
            ..EncodingParams::new(2, 3, 4).unwrap()
        };
        let mut plaintext = vec![0u8; 40_000];
        ring::rand::SystemRandom::new()
            .fill(&mut plaintext)
            .unwrap();
        let windows: std::collections::HashSet<&[u8]> = plaintext.windows(32).collect();

        // The check itself can see plaintext: a window embedded in other bytes is found.
        let mut planted = vec![0u8; 100];
        planted.extend_from_slice(&plaintext[1000..1040]);
        planted.extend_from_slice(&[0u8; 100]);
        assert_eq!(shared_windows(&windows, &planted), 9);

        let report = put(&grid, &params, &plaintext).await;
        assert_eq!(report.shares_placed, 4);

        // What the servers were sent: at least every share's bytes went through the wrapper.
        let sent = received.all();
        let sent_bytes: usize = sent.iter().map(Vec::len).sum();
        assert!(
            sent_bytes as u64 >= 4 * plaintext.len() as u64 / 2,
            "the recording saw only {sent_bytes} bytes"
        );
        for (i, bytes) in sent.iter().enumerate() {
            assert_eq!(
                shared_windows(&windows, bytes),
                0,
                "argument {i} sent to a server ({} bytes) holds plaintext",
                bytes.len()
            );
        }

        // What the servers keep on disk.
        let mut files = 0;
        for s in &grid.servers {
            for f in files_under(&s.dir) {
                let bytes = std::fs::read(&f).unwrap();
                assert_eq!(
                    shared_windows(&windows, &bytes),
                    0,
                    "{} holds plaintext",
                    f.display()
                );
                files += 1;
            }
        }
        assert!(files >= 4, "no share files to check");
        // And the file is really there.
        assert!(get(&grid, &report.cap).await.unwrap() == plaintext);
        grid.shutdown().await;
    })
}

/// The upload path, end to end, stores the ciphertext an independent implementation
/// computes. The values were computed with Python 3's `hashlib` and `cryptography` from the
/// definitions in `immutable/mod.rs` (see `convergent_key_and_ciphertext_known_answers` in
/// `src/immutable/codec.rs` for the script): convergence secret `[0x11; 32]` (CONVERGENCE),
/// k = 1, N = 2, segment size 128, plaintext `i % 251` for `i` in `0..200`.
///
/// How it fails: a changed key derivation gives another key in the cap; a no-op or wrong
/// cipher, or a keystream restarted per segment (two segments: 128 + 72 bytes), gives other
/// bytes in share 0 on the server's disk (with k = 1, share 0's blocks are the ciphertext).
#[test]
fn stored_share_holds_the_known_ciphertext() {
    run(async {
        let grid = Grid::new(1).await;
        let params = EncodingParams {
            max_segment_size: 128,
            ..EncodingParams::new(1, 1, 2).unwrap()
        };
        let plaintext: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8).collect();
        let report = put(&grid, &params, &plaintext).await;
        let hex = |t: &str| data_encoding::HEXLOWER.decode(t.as_bytes()).unwrap();
        let ReadCap::Chk(cap) = &report.cap else {
            panic!("{:?}", report.cap)
        };
        assert_eq!(
            cap.key.to_vec(),
            hex("344a377f55efbbb53ded5a7d2b8f4226f6dc317b75d378fe5b3731da03ef8e75")
        );
        let si = report.storage_index.unwrap();
        assert_eq!(si.to_vec(), hex("d64b429292315ca743be4eca0771a936"));

        let expected_ct = hex(
            "067045b418edd91955b56f9fd220234bbef6d44b1dbf33721fdd3d28243c4c5f\
             9bb340860190512755cf5f70bb6b72df475b516e421e8a71956bb89d4b48feb1\
             fa7d660dc7687034ceeb88393d00813cdd6104fd2493eee6876a9384d9172bae\
             b8cdb442fe975a69e4aa02cdfa67a7844c6f7c22a878d6aaef4e983d4118f734\
             109b5009cd91b71dbb2b7f83cd7edc339a042514c908ed7a104b269b652cdb4f\
             b9fe2c2ae78b60e11bb1703c65eec7ed82ad8988494157f04b3d5b84dac23f54\
             e7dc9dd27c2e2510",
        );
        // The share file: the storage server's 40-byte header, then the share.
        let file = std::fs::read(grid.share_path(0, &si, 0)).unwrap();
        let share = &file[40..];
        let g = folio_node::immutable::Geometry::new(1, 2, 200, 128).unwrap();
        let layout = folio_node::immutable::ShareLayout::new(g);
        let mut stored = Vec::new();
        for i in 0..g.num_segments {
            let (at, _) = layout.block_range(i);
            let len = g.segment_len(i) as usize;
            stored.extend_from_slice(&share[at as usize..at as usize + len]);
        }
        assert_eq!(stored, expected_ct);
        assert!(get(&grid, &report.cap).await.unwrap() == plaintext);
        grid.shutdown().await;
    })
}
