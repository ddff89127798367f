//! `tahoe demo`: a whole grid on 127.0.0.1, in a temporary directory, in one command.
//!
//! 1. `create-introducer`, ten `create-node`s and a `create-client`, exactly as a person
//!    would make them, then every node started in this process.
//! 2. The client finds the ten storage servers through the introducer.
//! 3. A file is uploaded 3-of-10 (the defaults), encrypted and erasure-coded.
//! 4. Seven storage nodes are stopped; the file comes back intact from the other three.
//! 5. An eighth is stopped; the download now fails, saying how many shares it found.
//! 6. The client's status table and the timings; then everything is stopped and removed.
//!
//! With `--network=i2p` (cargo feature `i2p-embedded`) the same grid runs over a private I2P
//! network on 127.0.0.1, in this process too: 3 floodfills and a relay
//! (`folio_transports::i2p_embedded::PrivateNetwork`), and every node made with
//! `--listen=i2p --hide-ip` and no SAM port, so each runs its own embedded router that joins
//! that network (`[i2p] router.network`) and is reachable only as a `.b32.i2p` destination.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use folio_node::control::TransferProgress;
use folio_node::create::{self, CreateArgs, Kind};
use folio_node::node::Node;
use folio_node::transfer::human;

/// The network the demo grid runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoNetwork {
    /// TCP on 127.0.0.1.
    Tcp,
    /// A private I2P network of embedded routers on 127.0.0.1; every node hidden behind a
    /// `.b32.i2p` destination.
    I2p,
}

/// Options of `tahoe demo`.
#[derive(Debug, Args)]
pub struct DemoGridArgs {
    /// Storage nodes to run (at least 10: the file is stored 3-of-10).
    #[arg(long, default_value_t = 10)]
    pub servers: usize,
    /// Size of the file to upload, in MiB (default 16 over TCP, 1 over I2P).
    #[arg(long, conflicts_with = "size_kib")]
    pub size_mib: Option<u64>,
    /// Size of the file to upload, in KiB (instead of `--size-mib`; for quick runs).
    #[arg(long)]
    pub size_kib: Option<u64>,
    /// The network: tcp, or i2p (a private I2P network of embedded routers, nothing
    /// installed).
    #[arg(long, value_enum, default_value_t = DemoNetwork::Tcp)]
    pub network: DemoNetwork,
    /// At the end, keep the grid running (until Ctrl-C) so a person can look at the
    /// client's welcome page, and keep its directory.
    #[arg(long)]
    pub keep: bool,
}

struct Cleanup {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.keep {
            println!("(kept {})", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn step(t0: Instant, text: &str) {
    println!("\n[{:6.2}s] {text}", t0.elapsed().as_secs_f64());
}

/// Makes a node as `tahoe create-*` would; with `i2p_network` (a network file), as
/// `--listen=i2p --hide-ip` with no SAM port, its embedded router joining that network.
async fn make(
    kind: Kind,
    dir: &Path,
    nickname: &str,
    introducer: Option<&str>,
    i2p_network: Option<&Path>,
) -> Result<()> {
    let i2p = i2p_network.is_some();
    let args = CreateArgs {
        basedir: Some(dir.to_path_buf()),
        nickname: Some(nickname.to_string()),
        hostname: (kind != Kind::Client && !i2p).then(|| "127.0.0.1".to_string()),
        listen: i2p.then(|| "i2p".to_string()),
        hide_ip: i2p,
        introducers: introducer.map(|f| vec![f.to_string()]).unwrap_or_default(),
        shares_needed: 3,
        shares_happy: 7,
        shares_total: 10,
        // The client's welcome page, on a port the system picks; the others have none.
        webport: Some(
            if kind == Kind::Client {
                "tcp:0:interface=127.0.0.1"
            } else {
                "none"
            }
            .to_string(),
        ),
        ..CreateArgs::default()
    };
    let mut plan = create::plan(kind, &args)?;
    plan.config.i2p.router_network = i2p_network.map(Path::to_path_buf);
    create::create(plan).await?;
    Ok(())
}

/// The private I2P network of `tahoe demo --network=i2p`.
#[cfg(feature = "i2p-embedded")]
type I2pNetwork = folio_transports::i2p_embedded::PrivateNetwork;
#[cfg(not(feature = "i2p-embedded"))]
type I2pNetwork = std::convert::Infallible;

#[cfg(feature = "i2p-embedded")]
async fn start_i2p_network(dir: &Path) -> Result<(I2pNetwork, PathBuf)> {
    let dir = dir.to_path_buf();
    let net = tokio::task::spawn_blocking(move || I2pNetwork::start(&dir, 77))
        .await?
        .context("starting the private I2P network")?;
    let file = net.network_file().to_path_buf();
    Ok((net, file))
}

#[cfg(not(feature = "i2p-embedded"))]
async fn start_i2p_network(_dir: &Path) -> Result<(I2pNetwork, PathBuf)> {
    bail!("--network=i2p needs the embedded I2P router: this tahoe was built without it (cargo feature i2p-embedded)")
}

#[cfg(feature = "i2p-embedded")]
async fn stop_i2p_network(net: I2pNetwork) {
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || net.stop()).await {
        eprintln!("the private I2P network: {e}");
    }
}

#[cfg(not(feature = "i2p-embedded"))]
async fn stop_i2p_network(net: I2pNetwork) {
    match net {}
}

/// A deterministic file of `len` bytes that does not compress.
fn write_sample(path: &Path, len: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut left = len;
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        let n = left.min(8) as usize;
        f.write_all(&b[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(data_encoding::HEXLOWER.encode(ctx.finish().as_ref()))
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn quiet_progress() -> Arc<dyn Fn(TransferProgress) + Send + Sync> {
    Arc::new(|_| {})
}

/// Runs the demo.
pub async fn run(args: DemoGridArgs) -> Result<()> {
    if args.servers < 10 {
        bail!("--servers must be at least 10: the demo stores 3-of-10 and stops 7, then 8");
    }
    let i2p = args.network == DemoNetwork::I2p;
    let size = match (args.size_kib, args.size_mib) {
        (Some(kib), _) => kib * 1024,
        (None, Some(mib)) => mib * 1024 * 1024,
        (None, None) => (if i2p { 1 } else { 16 }) * 1024 * 1024,
    };
    if size == 0 {
        bail!("the file must not be empty");
    }
    // Over I2P, stream setup and failure detection take seconds, not milliseconds.
    let (connect_within, notice_within) = if i2p {
        (Duration::from_secs(240), Duration::from_secs(200))
    } else {
        (Duration::from_secs(60), Duration::from_secs(30))
    };
    let t0 = Instant::now();
    let dir = std::env::temp_dir().join(format!("folio-demo-grid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _cleanup = Cleanup {
        dir: dir.clone(),
        keep: args.keep,
    };
    println!("Folio demo grid in {}", dir.display());

    let mut i2p_net = None;
    let mut network_file = None;
    if i2p {
        step(
            t0,
            "a private I2P network on 127.0.0.1: 3 floodfills and a relay (embedded routers)",
        );
        let (net, file) = start_i2p_network(&dir.join("i2p-network")).await?;
        println!("  network file: {}", file.display());
        i2p_net = Some(net);
        network_file = Some(file);
    }
    let network = network_file.as_deref();

    step(
        t0,
        if i2p {
            "create-introducer --listen=i2p --hide-ip (its own embedded I2P router), start it"
        } else {
            "create-introducer, start it"
        },
    );
    let intro_dir = dir.join("introducer");
    make(Kind::Introducer, &intro_dir, "introducer", None, network).await?;
    let introducer = Node::start(&intro_dir).await?;
    let furl = std::fs::read_to_string(intro_dir.join("private/introducer.furl"))?
        .trim()
        .to_string();
    println!("  introducer FURL: {furl}");

    step(
        t0,
        &format!(
            "create-node x{} and create-client, start them",
            args.servers
        ),
    );
    let one = |i: usize| {
        let d = dir.join(format!("storage{i}"));
        let furl = furl.clone();
        async move {
            make(Kind::Node, &d, &format!("storage{i}"), Some(&furl), network).await?;
            Ok::<Node, anyhow::Error>(Node::start(&d).await?)
        }
    };
    let servers: Vec<Node> = if i2p {
        // Over I2P each node waits for its router's first session (a few seconds): all at
        // once. Over TCP one at a time, so that no node's outgoing connections take the
        // port another picked when it was made and has not bound yet.
        futures_util::future::try_join_all((1..=args.servers).map(one)).await?
    } else {
        let mut v = Vec::new();
        for i in 1..=args.servers {
            v.push(one(i).await?);
        }
        v
    };
    let client_dir = dir.join("client");
    make(Kind::Client, &client_dir, "client", Some(&furl), network).await?;
    let client = Node::start(&client_dir).await?;
    if let Ok(url) = std::fs::read_to_string(client_dir.join(folio_node::node::NODE_URL)) {
        println!("  the client's welcome page: {}", url.trim());
    }
    let broker = client.broker().expect("a client has a broker").clone();
    let t = Instant::now();
    let mut last_report = Instant::now();
    wait_for(
        "the client to connect to every server",
        connect_within,
        || {
            let n = broker.connected().len();
            if i2p && last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                println!(
                    "  [{:6.2}s] connected to {n} of {} storage servers",
                    t0.elapsed().as_secs_f64(),
                    args.servers
                );
            }
            n == args.servers
        },
    )
    .await?;
    println!(
        "  the client sees {} storage servers ({:.0} ms after it started)",
        args.servers,
        t.elapsed().as_secs_f64() * 1e3
    );

    step(
        t0,
        &format!(
            "upload a {} file (3-of-10, AES-CTR, Merkle trees)",
            human(size)
        ),
    );
    let input = dir.join("input.bin");
    write_sample(&input, size)?;
    let digest = sha256_file(&input)?;
    let t = Instant::now();
    let up = client.upload_path(&input, quiet_progress()).await?;
    let up_secs = t.elapsed().as_secs_f64();
    println!("  cap: {}", up.cap);
    println!(
        "  {} shares on {} servers in {:.2} s ({}/s)",
        up.shares,
        up.servers.len(),
        up_secs,
        human((size as f64 / up_secs) as u64)
    );

    step(
        t0,
        "a directory: mkdir, store the file in it by name, list it",
    );
    let files = client.files()?;
    let name = vec!["sample.bin".to_string()];
    let t = Instant::now();
    let dircap = files.mkdir(None, &[]).await?;
    files.link(&dircap, &name, &up.cap, false).await?;
    let listing = files.list(&dircap, &[]).await?;
    let dir_secs = t.elapsed().as_secs_f64();
    println!("  directory: {}", dircap);
    for e in &listing.entries {
        println!("  {}", folio_node::fscmd::long_line(e));
    }
    println!(
        "  made, linked and listed in {:.2} s (a mutable file: signed versions, \
         test-and-set writes)",
        dir_secs
    );

    step(t0, "stop 7 storage nodes");
    let stopped: Vec<String> = (0..7).map(|i| format!("storage{}", i + 1)).collect();
    // All at once: each waits out its own goodbye grace (2 s over I2P).
    futures_util::future::join_all(servers[..7].iter().map(Node::shutdown)).await;
    println!("  stopped: {}", stopped.join(", "));
    wait_for("the client to notice", notice_within, || {
        broker.connected().len() == args.servers - 7
    })
    .await?;

    step(
        t0,
        "download with 3 of 10 servers left, by its name in the directory",
    );
    let output = dir.join("output.bin");
    let t = Instant::now();
    let found = files.list(&dircap, &name).await?;
    let cap = &found.entries[0].ro_uri;
    println!("  sample.bin -> {cap}");
    let out = tokio::fs::File::create(&output).await?;
    let down = client.download_to(cap, out, quiet_progress()).await?;
    let down_secs = t.elapsed().as_secs_f64();
    let same = sha256_file(&output)? == digest;
    println!(
        "  {} in {:.2} s ({}/s) from {}; identical to the original: {}",
        human(down.size),
        down_secs,
        human((size as f64 / down_secs) as u64),
        down.servers.join(", "),
        if same { "yes" } else { "NO" }
    );
    if !same {
        bail!("the downloaded file differs from the original");
    }

    step(t0, "stop an 8th: only 2 of the 3 needed shares remain");
    servers[7].shutdown().await;
    wait_for("the client to notice", notice_within, || {
        broker.connected().len() == args.servers - 8
    })
    .await?;
    let out = tokio::fs::File::create(dir.join("output2.bin")).await?;
    match client.download_to(&up.cap, out, quiet_progress()).await {
        Ok(_) => bail!("the download should have failed with 2 servers"),
        Err(e) => println!("  refused, as it must be: {e}"),
    }

    step(t0, "the client's view of the grid (tahoe status)");
    print!("{}", folio_node::control::render(&client.status()));

    step(t0, "timings");
    println!(
        "  upload    {:>8.2} s  {:>12}/s",
        up_secs,
        human((size as f64 / up_secs) as u64)
    );
    println!(
        "  download  {:>8.2} s  {:>12}/s",
        down_secs,
        human((size as f64 / down_secs) as u64)
    );

    if args.keep {
        let url = std::fs::read_to_string(client_dir.join(folio_node::node::NODE_URL))
            .unwrap_or_default();
        println!(
            "\nThe grid stays up (the servers stopped above stay down): the client's welcome \
             page is {}. Press Ctrl-C to stop.",
            url.trim()
        );
        tokio::signal::ctrl_c().await?;
    }
    futures_util::future::join_all(servers[8..].iter().map(Node::shutdown)).await;
    client.shutdown().await;
    introducer.shutdown().await;
    if let Some(net) = i2p_net {
        stop_i2p_network(net).await;
    }
    println!("\ndone in {:.2} s.", t0.elapsed().as_secs_f64());
    Ok(())
}
