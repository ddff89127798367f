//! `folio-tor-grid`: issue 17's real-daemon check, the measuring side. Run by
//! `scripts/tor-grid-rtts.sh` against a running `--listen=tor --hide-ip` grid on a private
//! Tor network: a client node (no storage) and storage nodes, each a `tahoe run` process.
//!
//! It measures, through interfaces the code before issue 17 has too (so the same source
//! builds against both):
//!
//! - the onion circuits' round trip: this process's own Tub reaches each storage server's
//!   FURL through the network's tor (SOCKS, the tor the nodes use) and times
//!   `get_version` calls on the warm connection (the median is the RTT); the first call on
//!   a fresh connection (onion-service rendezvous, TLS, hello, first answer) is timed apart,
//!   as Tor's circuit setup;
//! - a small file (one segment, one byte above the LIT size) uploaded and downloaded by this
//!   process itself (`folio_node::immutable::{upload, download}`, the node's own code,
//!   in-process) over those same warm onion connections, whose RTT is the one measured;
//! - the same uploaded and downloaded by the client node, through its control port (`folio_node::transfer::{put, get}`, what
//!   `tahoe put` and `tahoe get` call). The figure is the node's own `TransferReport::seconds`:
//!   the grid part alone, over the node's storage connections, which are up (warm) before
//!   anything is timed; the control connection on 127.0.0.1 is not in it. One untimed upload
//!   and download come first.
//!
//! Prints one JSON object (samples in seconds) on stdout; progress on stderr.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use folio_handlers::tor::TorHandler;
use folio_handlers::Registry;
use folio_node::broker::ConnectedServer;
use folio_node::immutable::{download, upload, EncodingParams, Progress, ReadCap};
use folio_node::node::node_tub_config;
use folio_node::storage::StorageServerRef;
use folio_node::transfer::{self, ProgressLine};
use folio_rpc::{Furl, Identity, Tub};

/// The bound on any one operation: a hang is an error, not a figure.
const OP_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Parser)]
#[command(about = "Times a small file's upload and download on a running hidden Tor grid")]
struct Args {
    /// The client node's directory (a running `tahoe run`).
    #[arg(long)]
    client: PathBuf,
    /// The storage servers' FURLs (each node's `private/storage.furl`), for the RTT.
    #[arg(long = "storage-furl", required = true)]
    storage_furls: Vec<String>,
    /// The tor's SOCKS port (`127.0.0.1:PORT`).
    #[arg(long)]
    socks: std::net::SocketAddr,
    /// Shares needed (k) of the files this process uploads itself.
    #[arg(long, default_value_t = 2)]
    needed: u16,
    /// Timed uploads and downloads.
    #[arg(long, default_value_t = 7)]
    files: usize,
    /// Warm `get_version` calls per server.
    #[arg(long, default_value_t = 7)]
    pings: usize,
    /// A scratch directory (files written and read back there).
    #[arg(long)]
    scratch: PathBuf,
}

fn tor_tub(socks: std::net::SocketAddr) -> Result<Tub> {
    let mut r = Registry::private();
    r.set("tor", Arc::new(TorHandler::new(socks)))
        .map_err(|e| anyhow::anyhow!("the tor handler: {e}"))?;
    Ok(Tub::new(
        Identity::generate()?,
        Arc::new(r),
        node_tub_config(),
    )?)
}

async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => bail!("{what}: {e}"),
        Err(_) => bail!("{what}: no answer within {OP_TIMEOUT:?}"),
    }
}

/// `len` bytes, different for every `seed` (xorshift64).
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Warm round trips to every server: `pings` calls each, one at a time.
async fn pings(servers: &[StorageServerRef], pings: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for s in servers {
        for _ in 0..pings {
            let t = Instant::now();
            bounded("get_version", s.get_version()).await?;
            out.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}

/// Two `get_version` calls sent together on each server's warm connection, `pings` times:
/// one flight of two calls and two answers (compare with [`pings`]).
async fn pairs(servers: &[StorageServerRef], pings: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for s in servers {
        for _ in 0..pings {
            let t = Instant::now();
            bounded("two get_version calls", async {
                let (a, b) = tokio::join!(s.get_version(), s.get_version());
                a.and(b)
            })
            .await?;
            out.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}

/// Uploads `data` through the client node: (cap, the node's grid seconds).
async fn put(args: &Args, data: &[u8], i: usize) -> Result<(String, f64)> {
    let path = args.scratch.join(format!("in-{i}"));
    std::fs::write(&path, data)?;
    let f = tokio::fs::File::open(&path).await?;
    let r = bounded(
        "upload",
        transfer::put(
            &args.client,
            f,
            Some(data.len() as u64),
            ProgressLine::new(),
        ),
    )
    .await?;
    Ok((r.cap, r.seconds))
}

/// Downloads `cap` through the client node and checks it: (the node's grid seconds, this
/// process's wall-clock seconds, control connection included).
async fn get(args: &Args, cap: &str, want: &[u8], i: usize) -> Result<(f64, f64)> {
    let path = args.scratch.join(format!("out-{i}"));
    let f = tokio::fs::File::create(&path).await?;
    let t = Instant::now();
    let r = bounded(
        "download",
        transfer::get(&args.client, cap, f, ProgressLine::new()),
    )
    .await?;
    let wall = t.elapsed().as_secs_f64();
    let got = std::fs::read(&path)?;
    if got != want {
        bail!(
            "download {i}: {} bytes back, not the {} uploaded",
            got.len(),
            want.len()
        );
    }
    Ok((r.seconds, wall))
}

async fn run(args: Args) -> Result<serde_json::Value> {
    std::fs::create_dir_all(&args.scratch)?;
    // 1. This process's own onion connections: Tor's circuit setup, then warm RTTs.
    let tub = tor_tub(args.socks)?;
    let mut fresh = Vec::new();
    let mut servers = Vec::new();
    for text in &args.storage_furls {
        let furl: Furl = text.trim().parse().context("a storage FURL")?;
        let t = Instant::now();
        let s: StorageServerRef = bounded("reaching a storage server", tub.get(&furl)).await?;
        bounded("first get_version", s.get_version()).await?;
        fresh.push(t.elapsed().as_secs_f64());
        servers.push(s);
    }
    eprintln!("folio-tor-grid: fresh onion connections to a first answer: {fresh:.3?} s");
    let mut rtts = pings(&servers, args.pings).await?;
    let two = pairs(&servers, args.pings).await?;

    let small = EncodingParams::default().max_inline as usize + 1;
    let seed = std::process::id() as u64 * 0x1_0000;

    // 2. The small file, in this process, over the connections just timed.
    let connected: Vec<ConnectedServer> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| ConnectedServer {
            key: [i as u8 + 1; 32],
            nickname: format!("s{}", i + 1),
            permutation_seed: [i as u8 + 101; 32],
            server: s.clone(),
        })
        .collect();
    let n = connected.len() as u16;
    let params = EncodingParams {
        needed: args.needed.min(n),
        happy: n,
        total: n,
        ..EncodingParams::default()
    };
    let (mut own_puts, mut own_gets) = (Vec::new(), Vec::new());
    for i in 0..=args.files {
        let data = sample(small, seed + 0x8000 + i as u64);
        let convergence: [u8; 32] = sample(32, seed + 0x9000 + i as u64).try_into().unwrap();
        let t = Instant::now();
        let r = bounded(
            "in-process upload",
            upload(
                &connected,
                &params,
                &convergence,
                &[9u8; 32],
                data.clone(),
                Progress::new(),
            ),
        )
        .await?;
        let put_s = t.elapsed().as_secs_f64();
        let cap: ReadCap = r.cap;
        let mut sink: Vec<u8> = Vec::with_capacity(small);
        let t = Instant::now();
        bounded(
            "in-process download",
            download(&connected, &cap, &mut sink, Progress::new()),
        )
        .await?;
        let get_s = t.elapsed().as_secs_f64();
        if sink != data {
            bail!("in-process download {i}: not the bytes uploaded");
        }
        // The first of each: untimed (the first calls of their kinds on each connection).
        if i > 0 {
            own_puts.push(put_s);
            own_gets.push(get_s);
        }
    }
    eprintln!("folio-tor-grid: in-process downloads {own_gets:.3?} s, uploads {own_puts:.3?} s");
    rtts.extend(pings(&servers, args.pings).await?);

    // 3. The small file, through the client node.
    let first = sample(small, seed);
    let (cap, _) = put(&args, &first, 0).await?;
    get(&args, &cap, &first, 0).await?;
    let (mut puts, mut gets, mut walls) = (Vec::new(), Vec::new(), Vec::new());
    let mut files = Vec::new();
    for i in 1..=args.files {
        let data = sample(small, seed + i as u64);
        let (cap, secs) = put(&args, &data, i).await?;
        puts.push(secs);
        files.push((cap, data));
    }
    for (i, (cap, data)) in files.iter().enumerate() {
        let (secs, wall) = get(&args, cap, data, i + 1).await?;
        gets.push(secs);
        walls.push(wall);
    }
    // The RTT again, after the transfers, so that it spans the time they were measured in.
    rtts.extend(pings(&servers, args.pings).await?);
    eprintln!("folio-tor-grid: downloads {gets:.3?} s, uploads {puts:.3?} s");
    tub.shutdown().await;
    Ok(serde_json::json!({
        "file_bytes": small,
        "storage_servers": servers.len(),
        "s_fresh_first_answer": fresh,
        "s_rtt": rtts,
        "s_two_calls": two,
        "s_small_put": puts,
        "s_small_get": gets,
        "s_small_get_wall": walls,
        "s_own_put": own_puts,
        "s_own_get": own_gets,
    }))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let v = rt.block_on(run(args))?;
    println!("{v}");
    Ok(())
}
