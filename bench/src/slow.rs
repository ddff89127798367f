//! Issue 17's figures on a simulated slow link: round trips to a first answer, a small
//! immutable file's upload and download, and the goodput of a large one, each storage
//! server behind its own link from the client.
//!
//! | key (Tor; `_i2p` for I2P) | what is timed | reported as |
//! |---|---|---|
//! | `rtts_connect_first_answer` | a fresh Tub's `get` of a FURL and a first call on it, over a new TCP connection through a [`SlowProxy`] (which charges TCP's handshake) | elapsed ÷ RTT |
//! | `rtts_small_put` | `immutable::upload` of a file one byte above the LIT size (one segment), warm connections | elapsed ÷ RTT |
//! | `rtts_small_get` | `immutable::download` of such a file | elapsed ÷ RTT |
//! | `goodput_ratio_put` | `immutable::upload` of a large file (16 MiB) | the busiest link's share bytes ÷ its rate, ÷ elapsed |
//! | `goodput_ratio_get` | `immutable::download` of it | the same |
//!
//! The grid is in this process: 10 storage servers, each a Tub with the node's settings and
//! its own `Storage` (in a directory under `--grid-dir`), listening on 127.0.0.1 behind its
//! own [`SlowProxy`] (the FURL's hint is the proxy's), and one client Tub connected to all of
//! them before anything is timed. Files are 3-of-10 (`EncodingParams::default()`), each with
//! new contents, so no server already has a share.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use folio_handlers::{Registry, TcpListener};
use folio_node::broker::ConnectedServer;
use folio_node::immutable::{
    download, upload, EncodingParams, Geometry, Progress, ReadCap, ShareLayout,
};
use folio_node::node::node_tub_config;
use folio_node::storage::{Storage, StorageConfig, StorageServerRef};
use folio_rpc::{Furl, Hint, Host, Identity, Tub};

use crate::slowlink::{LinkProfile, SlowProxy};
use crate::{EchoImpl, EchoRef, Report};

/// The bound on any one timed operation: a hang is an error, not a figure.
const OP_TIMEOUT: Duration = Duration::from_secs(900);

/// What to measure on one link.
pub struct SlowOptions {
    /// Fresh connections timed for the connect figure.
    pub connects: usize,
    /// Small files uploaded, then downloaded, timed one at a time.
    pub small_files: usize,
    /// The large file's size, in MiB.
    pub bulk_mib: usize,
    /// Large files uploaded, then downloaded.
    pub bulk_runs: usize,
    /// Where the storage servers keep their shares (a fresh directory under it, removed).
    pub grid_dir: PathBuf,
}

/// Measures every slow-link figure on `profile`; JSON keys end in `suffix`.
pub async fn figures(
    report: &mut Report,
    profile: LinkProfile,
    name: &str,
    suffix: &str,
    opts: &SlowOptions,
) -> Result<()> {
    let rtt = profile.rtt().as_secs_f64();
    let key = |k: &str| format!("{k}{suffix}");
    let mib_s = profile.bytes_per_sec as f64 / (1024.0 * 1024.0);
    report.note(format!(
        "{name}-like link: RTT {:.0} ms, {mib_s:.0} MiB/s, each direction, per server",
        rtt * 1e3
    ));
    report.json(key("slow_rtt_ms"), rtt * 1e3);
    report.json(key("slow_mib_s"), mib_s);

    // 1. A fresh connection to a first answer.
    let connects = connect_figure(profile, opts.connects.max(1)).await?;
    let (med, lo, hi) = spread(&connects);
    report.figure_range(
        key("rtts_connect_first_answer"),
        "fresh TCP connection → first answer",
        med / rtt,
        (lo / rtt, hi / rtt),
        "RTT",
    );

    // The grid, its connections made before anything is timed.
    let dir = opts.grid_dir.join(format!(
        "folio-bench-grid-{}-{}",
        std::process::id(),
        name.to_lowercase()
    ));
    let grid = match Grid::start(profile, 10, &dir).await {
        Ok(grid) => grid,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let r = grid_figures(report, &grid, profile, suffix, opts).await;
    grid.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    r
}

async fn grid_figures(
    report: &mut Report,
    grid: &Grid,
    profile: LinkProfile,
    suffix: &str,
    opts: &SlowOptions,
) -> Result<()> {
    let key = |k: &str| format!("{k}{suffix}");
    let rtt = profile.rtt().as_secs_f64();
    let params = EncodingParams::default();
    let mut seed = std::process::id() as u64 * 0x1000_0000 + 1;

    // 2. A small file: one segment, one byte above the LIT limit. One untimed upload and
    //    download first (the first of their calls on each connection).
    let small = params.max_inline as usize + 1;
    {
        seed += 1;
        let cap = grid.put(&params, sample(small, seed)).await?.0;
        grid.get(&cap, small).await?;
    }
    let mut puts = Vec::new();
    let mut caps = Vec::new();
    for _ in 0..opts.small_files.max(1) {
        seed += 1;
        let (cap, took, _) = grid.put(&params, sample(small, seed)).await?;
        puts.push(took.as_secs_f64());
        caps.push(cap);
    }
    let mut gets = Vec::new();
    for cap in &caps {
        let (took, _) = grid.get(cap, small).await?;
        gets.push(took.as_secs_f64());
    }
    let (med, lo, hi) = spread(&puts);
    report.figure_range(
        key("rtts_small_put"),
        "upload, small file (one segment)",
        med / rtt,
        (lo / rtt, hi / rtt),
        "RTT",
    );
    let (med, lo, hi) = spread(&gets);
    report.figure_range(
        key("rtts_small_get"),
        "download, small file",
        med / rtt,
        (lo / rtt, hi / rtt),
        "RTT",
    );

    // 3. A large file: the busiest link's share bytes at the link's rate, against the time.
    if opts.bulk_mib == 0 || opts.bulk_runs == 0 {
        return Ok(());
    }
    let size = opts.bulk_mib * 1024 * 1024;
    let share_len = ShareLayout::new(Geometry::new(
        params.needed,
        params.total,
        size as u64,
        params.segment_size_for(size as u64),
    )?)
    .end as f64;
    let rate = profile.bytes_per_sec as f64;
    let (mut put_ratios, mut get_ratios) = (Vec::new(), Vec::new());
    // The same with one round trip added to the limit: nothing finishes sooner than its
    // bytes' time on the link plus a round trip (the last byte's way there and the answer's
    // way back, or the request's and the last byte's), so that ratio can reach 1 and the
    // plain one only `limit / (limit + RTT)`.
    let (mut put_ratios_rtt, mut get_ratios_rtt) = (Vec::new(), Vec::new());
    let (mut put_secs, mut get_secs) = (Vec::new(), Vec::new());
    let (mut put_limits, mut get_limits) = (Vec::new(), Vec::new());
    for _ in 0..opts.bulk_runs {
        seed += 1;
        let (cap, took, busiest) = grid.put(&params, sample(size, seed)).await?;
        let limit = busiest as f64 * share_len / rate;
        put_ratios.push(limit / took.as_secs_f64());
        put_ratios_rtt.push((limit + rtt) / took.as_secs_f64());
        put_secs.push(took.as_secs_f64());
        put_limits.push(limit);
        let (took, busiest) = grid.get(&cap, size).await?;
        let limit = busiest as f64 * share_len / rate;
        get_ratios.push(limit / took.as_secs_f64());
        get_ratios_rtt.push((limit + rtt) / took.as_secs_f64());
        get_secs.push(took.as_secs_f64());
        get_limits.push(limit);
    }
    let label_put: &'static str = if opts.bulk_mib == 16 {
        "upload 16 MiB: link limit ÷ time"
    } else {
        "upload, large file: link limit ÷ time"
    };
    let label_get: &'static str = if opts.bulk_mib == 16 {
        "download 16 MiB: link limit ÷ time"
    } else {
        "download, large file: link limit ÷ time"
    };
    let (med, lo, hi) = spread(&put_ratios);
    report.figure_range(key("goodput_ratio_put"), label_put, med, (lo, hi), "×");
    let (med, lo, hi) = spread(&get_ratios);
    report.figure_range(key("goodput_ratio_get"), label_get, med, (lo, hi), "×");
    let ceiling = spread(&put_limits).0 / (spread(&put_limits).0 + rtt);
    report.note(format!(
        "  with one RTT added to the limit: upload {:.2}, download {:.2} (without it, at \
         best {ceiling:.2})",
        spread(&put_ratios_rtt).0,
        spread(&get_ratios_rtt).0,
    ));
    report.json(key("goodput_ratio_put_rtt"), spread(&put_ratios_rtt).0);
    report.json(key("goodput_ratio_get_rtt"), spread(&get_ratios_rtt).0);
    report.json(key("goodput_ratio_best"), ceiling);
    report.note(format!(
        "  large file {} MiB: upload {:.2} s (limit {:.2} s), download {:.2} s (limit {:.2} s)",
        opts.bulk_mib,
        spread(&put_secs).0,
        spread(&put_limits).0,
        spread(&get_secs).0,
        spread(&get_limits).0,
    ));
    report.json(key("slow_bulk_mib"), opts.bulk_mib as f64);
    report.json(key("s_bulk_put"), spread(&put_secs).0);
    report.json(key("s_bulk_get"), spread(&get_secs).0);
    report.json(key("s_bulk_limit_put"), spread(&put_limits).0);
    report.json(key("s_bulk_limit_get"), spread(&get_limits).0);
    Ok(())
}

/// Median, lowest and highest of the samples.
fn spread(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (s[(s.len() - 1) / 2], s[0], s[s.len() - 1])
}

/// `len` bytes that do not compress, different for every `seed` (xorshift64).
fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
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

/// A Tub with a new identity, dialing `tcp:` hints, with the node's settings.
fn node_tub() -> Result<Tub> {
    Ok(Tub::new(
        Identity::generate()?,
        Arc::new(Registry::with_tcp()),
        node_tub_config(),
    )?)
}

/// A Tub listening on 127.0.0.1 behind a [`SlowProxy`]: its FURLs name the proxy.
async fn tub_behind(profile: LinkProfile) -> Result<(Tub, SlowProxy)> {
    let tub = node_tub()?;
    let listener = TcpListener::bind(&"tcp:0:interface=127.0.0.1".parse()?).await?;
    let proxy = SlowProxy::start(listener.local_spec().addr, profile).await?;
    tub.set_location(vec![Hint::Tcp {
        host: Host::Ipv4([127, 0, 0, 1].into()),
        port: proxy.addr().port(),
    }]);
    tub.listen(listener);
    Ok((tub, proxy))
}

/// Fresh Tubs, each dialing the echo object's FURL through the link and timing its first
/// answer: `tub.get(furl)` then a call, or with promise pipelining `tub.get_promised(furl)`
/// and the call at once.
async fn connect_figure(profile: LinkProfile, n: usize) -> Result<Vec<f64>> {
    let (server, _proxy) = tub_behind(profile).await?;
    let furl = server.register_as(EchoRef::serve(EchoImpl), "echo")?;
    let mut samples = Vec::new();
    for i in 0..n {
        let fresh = node_tub()?;
        let t = Instant::now();
        tokio::time::timeout(OP_TIMEOUT, first_answer(&fresh, &furl, i as u64))
            .await
            .context("a first answer timed out")??;
        samples.push(t.elapsed().as_secs_f64());
        fresh.shutdown().await;
    }
    server.shutdown().await;
    Ok(samples)
}

#[cfg(feature = "pipelining")]
async fn first_answer(tub: &Tub, furl: &Furl, x: u64) -> Result<()> {
    let echo: EchoRef = tub.get_promised::<EchoRef>(furl);
    let y = echo.ping(x).await?;
    anyhow::ensure!(y == x, "ping({x}) answered {y}");
    Ok(())
}

#[cfg(not(feature = "pipelining"))]
async fn first_answer(tub: &Tub, furl: &Furl, x: u64) -> Result<()> {
    let echo: EchoRef = tub.get(furl).await?;
    let y = echo.ping(x).await?;
    anyhow::ensure!(y == x, "ping({x}) answered {y}");
    Ok(())
}

/// Storage servers behind their links and a client connected to them all.
struct Grid {
    client: Tub,
    connected: Vec<ConnectedServer>,
    tubs: Vec<Tub>,
    _storage: Vec<Storage>,
    _proxies: Vec<SlowProxy>,
}

impl Grid {
    async fn start(profile: LinkProfile, n: usize, dir: &Path) -> Result<Grid> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (mut tubs, mut storage, mut proxies, mut furls) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let s = Storage::open(StorageConfig::new(dir.join(format!("server{i}"))))
                .context("opening a storage directory")?;
            let (tub, proxy) = tub_behind(profile).await?;
            furls.push(tub.register_as(s.serve(), "storage")?);
            tubs.push(tub);
            storage.push(s);
            proxies.push(proxy);
        }
        let client = node_tub()?;
        // Every connection at once: the grid is warm before anything is timed.
        let refs = futures::future::join_all(furls.iter().map(|furl| {
            let client = &client;
            async move {
                let r: StorageServerRef = tokio::time::timeout(OP_TIMEOUT, client.get(furl))
                    .await
                    .context("connecting to a storage server timed out")??;
                anyhow::Ok(r)
            }
        }))
        .await;
        let mut connected = Vec::new();
        for (i, r) in refs.into_iter().enumerate() {
            connected.push(ConnectedServer {
                key: [i as u8 + 1; 32],
                nickname: format!("server{i}"),
                permutation_seed: [i as u8 + 101; 32],
                server: r?,
            });
        }
        // One call on each, so that every connection has carried a call and its answer.
        for c in &connected {
            tokio::time::timeout(OP_TIMEOUT, c.server.get_version())
                .await
                .context("get_version timed out")?
                .map_err(|e| anyhow::anyhow!("get_version: {e:?}"))?;
        }
        Ok(Grid {
            client,
            connected,
            tubs,
            _storage: storage,
            _proxies: proxies,
        })
    }

    /// Uploads `data`; its cap, the time, and the most shares any one server took.
    async fn put(
        &self,
        params: &EncodingParams,
        data: Vec<u8>,
    ) -> Result<(ReadCap, Duration, usize)> {
        let convergence = [7u8; 32];
        let lease = [9u8; 32];
        let t = Instant::now();
        let r = tokio::time::timeout(
            OP_TIMEOUT,
            upload(
                &self.connected,
                params,
                &convergence,
                &lease,
                data,
                Progress::new(),
            ),
        )
        .await
        .context("an upload timed out")??;
        let took = t.elapsed();
        let busiest = r
            .servers
            .iter()
            .map(|s| s.uploaded.len())
            .max()
            .unwrap_or(0);
        Ok((r.cap, took, busiest))
    }

    /// Downloads `cap` (of `len` bytes); the time and the most shares read from one server.
    async fn get(&self, cap: &ReadCap, len: usize) -> Result<(Duration, usize)> {
        let mut sink: Vec<u8> = Vec::with_capacity(len);
        let t = Instant::now();
        let r = tokio::time::timeout(
            OP_TIMEOUT,
            download(&self.connected, cap, &mut sink, Progress::new()),
        )
        .await
        .context("a download timed out")??;
        let took = t.elapsed();
        if sink.len() != len {
            bail!("downloaded {} bytes of {len}", sink.len());
        }
        let busiest = r
            .servers_used
            .iter()
            .map(|(_, shares)| shares.len())
            .max()
            .unwrap_or(0);
        Ok((took, busiest))
    }

    async fn stop(self) {
        self.client.shutdown().await;
        for t in &self.tubs {
            t.shutdown().await;
        }
    }
}
