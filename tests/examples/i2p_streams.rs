//! Streams over a private I2P network of embedded emissary routers on 127.0.0.1 (issue 18):
//! how long a fresh Folio connection takes to its first answer, the round trip of a small
//! call on an open connection, and the throughput of large calls, all through Folio's own
//! I2P handler and listener on the routers' SAM bridges ([`folio_tests::i2pnet::I2pNet`]:
//! 3 floodfills, a relay, 2 client routers, 1-hop tunnels). With `--raw`, the same bulk
//! sizes also go over bare SAM streams (no TLS, no Folio framing), written in chunks of
//! `--chunk` bytes, optionally paced to `--pace` KiB/s, to tell the router's part from
//! Folio's.
//!
//! ```sh
//! cargo run --release -p folio-tests --features i2p-embedded --example i2p_streams -- \
//!     [--fresh 10] [--rtt 200] [--sizes 65536,262144,1048576] [--reps 5] \
//!     [--raw] [--chunk 65536] [--pace 0] [--skip-folio] [--bandwidth 100000000]
//! ```
//!
//! `--bandwidth` sets every router's bandwidth limit (`RouterOptions::bandwidth`; emissary's
//! own default, 1000000, is what Folio ran with before it set one).
//!
//! It prints one line per measurement and a summary (medians and ranges), plus how many
//! times a router's stream retransmitted after a timeout ("routing path recreated" in
//! emissary's streaming log: each such event means a packet went unacknowledged for a whole
//! retransmission timeout) and the machine's load average. Every wait is bounded; the
//! network uses only 127.0.0.1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use folio_handlers::i2p::{I2pHandler, I2pListener};
use folio_handlers::Registry;
use folio_rpc::{interface, Bytes, Identity, Tub, TubConfig};
use folio_tests::i2pnet::I2pNet;
use folio_transports::i2p::{Destination, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The measured service.
#[interface(name = "test.i2pstreams.v1")]
pub trait Bulk {
    /// Returns `x`.
    async fn ping(&self, x: u64) -> Result<u64, String>;
    /// Takes `data`, returns its length.
    async fn sink(&self, data: Bytes) -> Result<u32, String>;
    /// Returns `len` bytes.
    async fn source(&self, len: u32) -> Result<Bytes, String>;
}

struct BulkImpl;

impl Bulk for BulkImpl {
    async fn ping(&self, x: u64) -> Result<u64, String> {
        Ok(x)
    }
    async fn sink(&self, data: Bytes) -> Result<u32, String> {
        Ok(data.len() as u32)
    }
    async fn source(&self, len: u32) -> Result<Bytes, String> {
        Ok(Bytes::from(sample(len as usize, 7)))
    }
}

struct Opts {
    fresh: usize,
    rtt: usize,
    sizes: Vec<usize>,
    reps: usize,
    raw: bool,
    skip_folio: bool,
    chunk: usize,
    pace_kib: u64,
    bandwidth: u64,
}

fn opts() -> Opts {
    let mut o = Opts {
        fresh: 10,
        rtt: 200,
        sizes: vec![64 * 1024, 256 * 1024, 1024 * 1024],
        reps: 5,
        raw: false,
        skip_folio: false,
        chunk: 64 * 1024,
        pace_kib: 0,
        bandwidth: folio_transports::i2p_embedded::DEFAULT_BANDWIDTH,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--fresh" => o.fresh = value().parse().expect("--fresh N"),
            "--rtt" => o.rtt = value().parse().expect("--rtt N"),
            "--reps" => o.reps = value().parse().expect("--reps N"),
            "--chunk" => o.chunk = value().parse().expect("--chunk BYTES"),
            "--pace" => o.pace_kib = value().parse().expect("--pace KIB_PER_S"),
            "--bandwidth" => o.bandwidth = value().parse().expect("--bandwidth BYTES_PER_S"),
            "--sizes" => {
                o.sizes = value()
                    .split(',')
                    .map(|s| s.parse().expect("--sizes BYTES,BYTES"))
                    .collect()
            }
            "--raw" => o.raw = true,
            "--skip-folio" => o.skip_folio = true,
            other => {
                panic!("unknown option {other} (see the header of tests/examples/i2p_streams.rs)")
            }
        }
    }
    assert!(o.chunk > 0 && o.reps > 0);
    o
}

/// `len` bytes that do not compress (xorshift64).
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
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

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Median, minimum and maximum of `v` (sorted here).
fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn kib(n: usize) -> String {
    format!("{} KiB", n / 1024)
}

fn tub_config() -> TubConfig {
    let mut c = TubConfig::default()
        .keepalive(Some(Duration::from_secs(5)))
        .disconnect_timeout(Some(Duration::from_secs(120)))
        .call_timeout(Some(Duration::from_secs(240)));
    // Room for a 1 MiB argument and its framing.
    c.handshake.max_frame_len = 2 * 1024 * 1024;
    c
}

fn main() {
    let o = opts();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    if std::env::var_os("FOLIO_I2PNET_LOG").is_none() {
        // Count emissary's stream retransmissions (debug lines of its streaming code).
        std::env::set_var("FOLIO_I2PNET_LOG", "info,emissary::streaming::active=debug");
    }
    println!("# i2p_streams: {} UTC, load {}", chrono_like_now(), load());
    let t0 = Instant::now();
    let net = I2pNet::start_with(2, o.bandwidth);
    println!("routers' bandwidth limit: {} bytes/s", o.bandwidth);
    println!(
        "network up in {:.2} s (6 routers; a SAM session on each client router)",
        net.started_in.as_secs_f64()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(1800), async {
            if !o.skip_folio {
                folio(&net, &o).await;
            }
            if o.raw {
                raw(&net, &o).await;
            }
        })
        .await
    });
    if outcome.is_err() {
        eprintln!("{}", net.log_tails(20));
        panic!("the measurements did not finish within 30 min");
    }
    println!(
        "done in {:.1} s; stream retransmission timeouts in the routers: {}; load {}",
        t0.elapsed().as_secs_f64(),
        net.stream_resends(),
        load()
    );
}

fn chrono_like_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn folio(net: &I2pNet, o: &Opts) {
    let dir = std::env::temp_dir().join(format!("folio-i2p-streams-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let listen_cfg = net.sam_config(0);
    let dial_cfg = net.sam_config(1);
    let listener = I2pListener::start(&listen_cfg, &dir.join("listener.key"))
        .await
        .expect("the listener's session");
    let hint = listener.hint();
    let server = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(Registry::private()),
        tub_config(),
    )
    .unwrap();
    server.set_location(vec![hint]);
    server.listen(listener);
    let furl = server
        .register_as(BulkRef::serve(BulkImpl), "bulk")
        .unwrap();
    let handler = Arc::new(I2pHandler::new(dial_cfg));
    handler.prepare().await.expect("the dialing session");
    let mut registry = Registry::private();
    registry.set("i2p", handler.clone()).unwrap();
    let registry = Arc::new(registry);
    let new_client = || {
        Tub::new(
            Identity::generate().unwrap(),
            registry.clone(),
            tub_config(),
        )
        .unwrap()
    };

    // 1. Fresh connections: a new Tub (new identity), so a new SAM stream, TLS handshake
    //    and first call each time. The first includes the LeaseSet lookup (retried).
    let mut fresh = Vec::new();
    for i in 0..o.fresh.max(1) {
        let client = new_client();
        let t = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(120);
        let bulk = loop {
            match client.get::<BulkRef>(&furl).await {
                Ok(b) => break b,
                Err(e) if Instant::now() < deadline => {
                    println!(
                        "  (fresh {i}: not yet after {:.2} s: {e})",
                        t.elapsed().as_secs_f64()
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => panic!("never reached: {e}"),
            }
        };
        assert_eq!(bulk.ping(i as u64).await.unwrap(), i as u64);
        let took = t.elapsed().as_secs_f64();
        println!("fresh connection {i}: first answer in {:.1} ms", took * 1e3);
        if i > 0 {
            fresh.push(took * 1e3);
        }
        client.shutdown().await;
    }

    // 2. Warm round trips of a small call, and 3. bulk calls, on one connection.
    let client = new_client();
    let bulk = client.get::<BulkRef>(&furl).await.expect("reached");
    let mut rtts = Vec::new();
    for i in 0..o.rtt {
        let t = Instant::now();
        assert_eq!(bulk.ping(i as u64).await.unwrap(), i as u64);
        rtts.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (fm, fl, fh) = stats(&mut fresh);
    println!(
        "SUMMARY fresh connection to first answer (after the first): median {fm:.1} ms, range {fl:.1}-{fh:.1} ms ({} runs)",
        fresh.len()
    );
    let (rm, rl, rh) = stats(&mut rtts);
    println!(
        "SUMMARY warm round trip (ping u64): median {rm:.2} ms, range {rl:.2}-{rh:.2} ms ({} calls)",
        rtts.len()
    );
    for &size in &o.sizes {
        for (what, up) in [
            ("sink (client->server)", true),
            ("source (server->client)", false),
        ] {
            let before = net.stream_resends();
            let mut rates = Vec::new();
            let mut secs = Vec::new();
            for r in 0..o.reps {
                let data = Bytes::from(sample(size, r as u64));
                let t = Instant::now();
                if up {
                    assert_eq!(bulk.sink(data).await.unwrap() as usize, size);
                } else {
                    assert_eq!(bulk.source(size as u32).await.unwrap().len(), size);
                }
                let s = t.elapsed().as_secs_f64();
                println!("  {what} {}: {s:.3} s", kib(size));
                secs.push(s);
                rates.push(size as f64 / 1024.0 / s);
            }
            let (sm, sl, sh) = stats(&mut secs);
            let (qm, ql, qh) = stats(&mut rates);
            println!(
                "SUMMARY {what} {}: median {sm:.3} s ({qm:.0} KiB/s), range {sl:.3}-{sh:.3} s ({ql:.0}-{qh:.0} KiB/s), {} calls over 4 s, {} retransmission timeouts",
                kib(size),
                secs.iter().filter(|&&s| s > 4.0).count(),
                net.stream_resends() - before
            );
        }
    }
    client.shutdown().await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bare SAM streams: on one stream (warmed up by a first transfer, so that its window has
/// grown, as a Folio connection's has), the client writes a 4-byte length and that many
/// bytes (in `--chunk` writes, paced to `--pace` KiB/s if set); the server reads them all and
/// answers one byte; repeated `--reps` times per size.
async fn raw(net: &I2pNet, o: &Opts) {
    let server = Arc::new(
        Session::create(&net.sam_config(0), Destination::Transient)
            .await
            .expect("server session"),
    );
    let address = server.address().to_string();
    let acceptor = {
        let server = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = server.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let mut len = [0u8; 4];
                        if s.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut left = u32::from_be_bytes(len) as usize;
                        while left > 0 {
                            match s.read(&mut buf[..left.min(64 * 1024)]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => left -= n,
                            }
                        }
                        if s.write_all(b"k").await.is_err() {
                            return;
                        }
                    }
                });
            }
        })
    };
    // The first stream, retried (from a new session each time, as Folio's handler does)
    // while the LeaseSet spreads.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut s = loop {
        let client = Session::create(&net.sam_config(1), Destination::Transient)
            .await
            .expect("client session");
        match client.connect(&address).await {
            Ok(s) => break (s, client),
            Err(e) if Instant::now() < deadline => {
                println!("  (raw: not yet: {e})");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("raw: never reached: {e}"),
        }
    };
    let pace = if o.pace_kib > 0 {
        format!(", paced to {} KiB/s", o.pace_kib)
    } else {
        String::new()
    };
    let warm = transfer(&mut s.0, o, 256 * 1024, 99).await;
    println!("  raw warm-up 256 KiB on a new stream: {warm:.3} s");
    for &size in &o.sizes {
        let before = net.stream_resends();
        let mut secs = Vec::new();
        let mut rates = Vec::new();
        for r in 0..o.reps {
            let took = transfer(&mut s.0, o, size, r as u64).await;
            println!(
                "  raw {} in {}-byte writes{pace}: {took:.3} s",
                kib(size),
                o.chunk
            );
            secs.push(took);
            rates.push(size as f64 / 1024.0 / took);
        }
        let (sm, sl, sh) = stats(&mut secs);
        let (qm, ql, qh) = stats(&mut rates);
        println!(
            "SUMMARY raw SAM stream {} in {}-byte writes{pace}: median {sm:.3} s ({qm:.0} KiB/s), range {sl:.3}-{sh:.3} s ({ql:.0}-{qh:.0} KiB/s), {} over 4 s, {} retransmission timeouts",
            kib(size),
            o.chunk,
            secs.iter().filter(|&&s| s > 4.0).count(),
            net.stream_resends() - before
        );
    }
    acceptor.abort();
}

/// One raw transfer of `size` bytes on `s`, as [`raw`] describes; returns its seconds.
async fn transfer(s: &mut tokio::net::TcpStream, o: &Opts, size: usize, seed: u64) -> f64 {
    let data = sample(size, seed);
    let t = Instant::now();
    s.write_all(&(size as u32).to_be_bytes()).await.unwrap();
    let mut sent = 0usize;
    for chunk in data.chunks(o.chunk) {
        s.write_all(chunk).await.unwrap();
        sent += chunk.len();
        if o.pace_kib > 0 {
            let due = Duration::from_secs_f64(sent as f64 / (o.pace_kib as f64 * 1024.0));
            if let Some(wait) = due.checked_sub(t.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    let mut k = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(300), s.read_exact(&mut k))
        .await
        .expect("raw: the answer within 300 s")
        .expect("raw: the answer");
    t.elapsed().as_secs_f64()
}
