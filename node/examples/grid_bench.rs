//! Immutable-file throughput on a local grid, next to what the disk and the CPU allow.
//!
//! ```text
//! cargo run --release -p folio-node --example grid_bench            # 64 MiB, 3-of-5, 5 servers
//! cargo run --release -p folio-node --example grid_bench -- 32 3 10 # 32 MiB, 3-of-10, 10 servers
//! ```
//!
//! Storage servers run in this process, each on its own Tub listening on 127.0.0.1, in a
//! temporary directory; the client reaches them over TCP (TLS), as on a real grid. Measured
//! in the same run, on the same bytes:
//!
//! - **disk**: writing the file to the same filesystem in 1 MiB writes, then fsync;
//! - **encode**: hashing, encrypting, erasure coding and hashing the blocks (both passes of
//!   an upload, with the share writes dropped);
//! - **upload** and **download** through the grid (download into a sink that drops bytes),
//!   and a download without the servers of shares 0 and 1, which must erasure-decode.
//!
//! Throughputs are of file bytes; an upload writes `N / k` times as many share bytes.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use folio_handlers::{Registry, TcpListener};
use folio_node::broker::ConnectedServer;
use folio_node::immutable::{download, encode_shares, upload, EncodingParams, Progress};
use folio_node::storage::{Storage, StorageConfig, StorageServerRef};
use folio_rpc::{Host, Identity, Tub, TubConfig};

fn tub() -> Tub {
    Tub::new(
        Identity::generate().expect("an identity"),
        Arc::new(Registry::with_tcp()),
        TubConfig::default(),
    )
    .expect("a Tub")
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

/// Deterministic incompressible bytes.
fn data(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn peak_rss_mib() -> f64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let mib = args.first().copied().unwrap_or(64);
    let k = args.get(1).copied().unwrap_or(3) as u16;
    let n = args.get(2).copied().unwrap_or(5) as u16;
    let params = EncodingParams::new(k, n, n)?;
    let size = mib << 20;
    let tmp = tempfile::tempdir()?;
    let bytes: Arc<[u8]> = data(size as usize).into();
    println!(
        "file {mib} MiB, {k}-of-{n} on {n} servers, segments of {} bytes (shares: {:.2} x the file)",
        params.segment_size_for(size),
        n as f64 / k as f64
    );

    // Raw disk: the same bytes, written and fsynced.
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(tmp.path().join("raw"))?;
        for c in bytes.chunks(1 << 20) {
            f.write_all(c)?;
        }
        f.sync_all()?;
    }
    let disk = t.elapsed();
    std::fs::remove_file(tmp.path().join("raw"))?;

    // Encode only: both passes, writes dropped.
    let t = Instant::now();
    let mut share_bytes = 0u64;
    let cap_only = encode_shares(&params, &[7; 32], &bytes, &mut |_, _, b| {
        share_bytes += b.len() as u64
    })?;
    let encode = t.elapsed();

    // The grid.
    let client = tub();
    let mut servers = Vec::new();
    let mut connected = Vec::new();
    for i in 0..n {
        let storage = Storage::open(StorageConfig::new(tmp.path().join(format!("s{i}"))))?;
        let server = tub();
        let listener = TcpListener::bind(&"tcp:0:interface=127.0.0.1".parse()?).await?;
        server.set_location(vec![listener.hint_for(Host::Ipv4([127, 0, 0, 1].into()))]);
        server.listen(listener);
        let furl = server.register_as(storage.serve(), "storage")?;
        let ss: StorageServerRef = client.get(&furl).await?;
        connected.push(ConnectedServer {
            key: [i as u8 + 1; 32],
            nickname: format!("s{i}"),
            permutation_seed: [i as u8 + 100; 32],
            server: ss,
        });
        servers.push((server, storage));
    }

    let t = Instant::now();
    let report = upload(
        &connected,
        &params,
        &[7; 32],
        &[8; 32],
        bytes.clone(),
        Progress::new(),
    )
    .await?;
    let up = t.elapsed();
    assert_eq!(report.cap, cap_only, "encode-only and upload agree");

    let t = Instant::now();
    let mut sink = tokio::io::sink();
    download(&connected, &report.cap, &mut sink, Progress::new()).await?;
    let down = t.elapsed();

    // Degraded: without the servers of shares 0 and 1, so every segment is erasure-decoded.
    let without: Vec<ConnectedServer> = connected
        .iter()
        .filter(|c| {
            !report
                .servers
                .iter()
                .any(|s| s.key == c.key && s.uploaded.iter().any(|&n| n < 2))
        })
        .cloned()
        .collect();
    let t = Instant::now();
    download(&without, &report.cap, &mut sink, Progress::new()).await?;
    let degraded = t.elapsed();

    let (d, e, u, w) = (
        mib_s(size, disk),
        mib_s(size, encode),
        mib_s(size, up),
        mib_s(size, down),
    );
    println!("disk write+fsync  {d:8.1} MiB/s  ({disk:.2?})");
    println!(
        "encode only       {e:8.1} MiB/s  ({encode:.2?}; {:.1} MiB of shares)",
        share_bytes as f64 / 1048576.0
    );
    println!(
        "upload            {u:8.1} MiB/s  ({up:.2?}: hash {:.2?}, placement {:.2?}, push {:.2?})",
        report.hash_time, report.placement_time, report.push_time
    );
    println!("download          {w:8.1} MiB/s  ({down:.2?}; primary shares, no decoding)");
    println!(
        "download, decoding{:8.1} MiB/s  ({degraded:.2?}; shares 0 and 1 missing)",
        mib_s(size, degraded)
    );
    println!(
        "ratios: upload/disk {:.2}, upload/encode {:.2}, download/disk {:.2}, download/encode {:.2}",
        u / d,
        u / e,
        w / d,
        w / e
    );
    println!(
        "peak RSS {:.0} MiB (the file itself is {mib} MiB, held by the benchmark)",
        peak_rss_mib()
    );
    for (server, _) in &servers {
        server.shutdown().await;
    }
    client.shutdown().await;
    Ok(())
}
