//! `tahoe demo`: the handshake layer on 127.0.0.1, end to end, with timings.
//!
//! 1. Two Tubs get fresh identities (saved `0600` in a temporary directory).
//! 2. One listens on TCP and publishes a FURL; the other parses it, asks the handler
//!    registry for a stream to its hint, and runs the handshake as `Side::Client`.
//! 3. Messages cross the authenticated connection both ways; round trips are timed.
//! 4. The Tahoe-LAFS #2861 situation: both sockets are outbound (joined by a relay, as a SAM
//!    bridge joins them); the accepting party is `Side::Server` and the handshake succeeds.
//!    The same sockets with both parties as `Side::Client` fail at once, with the reason.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use clap::Args;
use folio_handlers::Registry;
use folio_rpc::{Connector, Furl, HandshakeConfig, Handshaker, Hint, Host, Identity, Swissnum};
use folio_transports::tcp;
use tokio::net::{TcpListener, TcpStream};

/// Options of `tahoe demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Round trips to time over the connection.
    #[arg(long, default_value_t = 200)]
    pub round_trips: u32,
    /// Keep the identities here instead of a temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

struct TempDir(PathBuf, bool);

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let dir = match &args.dir {
        Some(d) => TempDir(d.clone(), false),
        None => TempDir(
            std::env::temp_dir().join(format!("folio-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;

    step(1, "identities");
    let t = Instant::now();
    let alice = Identity::load_or_generate(&dir.0.join("alice.pem")).context("alice's identity")?;
    let bob = Identity::load_or_generate(&dir.0.join("bob.pem")).context("bob's identity")?;
    println!("    alice  {}", alice.tubid());
    println!("    bob    {}", bob.tubid());
    println!(
        "    (keys and certificates in {}, mode 0600; {:.1?})",
        dir.0.display(),
        t.elapsed()
    );
    let alice = Arc::new(Handshaker::new(
        Arc::new(alice),
        HandshakeConfig::default(),
    )?);
    let bob = Arc::new(Handshaker::new(Arc::new(bob), HandshakeConfig::default())?);

    step(2, "bob listens on TCP; alice dials his FURL");
    let listener = tcp::listen(&"tcp:0:interface=127.0.0.1".parse()?).await?;
    let port = listener.local_addr()?.port();
    let furl = Furl::new(
        bob.tubid(),
        vec![Hint::Tcp {
            host: Host::Ipv4(std::net::Ipv4Addr::LOCALHOST),
            port,
        }],
        Swissnum::random(),
    );
    println!("    FURL   {furl}");
    let server = bob.clone();
    let echo = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        let mut conn = server.accept(stream).await?;
        while let Some(frame) = conn.reader.next_frame().await? {
            let frame = frame.to_vec();
            conn.writer.send_frame(&frame).await?;
        }
        anyhow::Ok(conn.info)
    });
    let parsed: Furl = furl.to_string().parse()?;
    let started = Instant::now();
    let stream = Registry::with_tcp()
        .connect(&parsed.hints()[0])
        .await
        .map_err(|e| anyhow!(e))?;
    let mut conn = alice.connect(stream, parsed.tubid()).await?;
    let connect_time = started.elapsed();
    println!(
        "    connected in {connect_time:.2?}: side {:?}, peer {}, protocol v{}",
        conn.info.side, conn.info.peer, conn.info.version
    );

    step(3, "round trips over the authenticated connection");
    let mut rtts = Vec::with_capacity(args.round_trips as usize);
    for i in 0..args.round_trips.max(1) {
        let t = Instant::now();
        conn.writer.send_message(&i).await?;
        let back: u32 = conn
            .reader
            .next_message()
            .await?
            .ok_or_else(|| anyhow!("bob closed the connection"))?;
        anyhow::ensure!(back == i, "echo mismatch");
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let pct = |p: usize| rtts[(rtts.len() - 1) * p / 100];
    println!(
        "    {} round trips: median {:.1?}, p99 {:.1?}",
        rtts.len(),
        pct(50),
        pct(99)
    );
    conn.writer.shutdown().await?;
    let server_info = tokio::time::timeout(Duration::from_secs(10), echo).await???;
    println!(
        "    bob saw side {:?}, peer {}",
        server_info.side, server_info.peer
    );

    step(
        4,
        "Tahoe-LAFS #2861: both sockets outbound, joined by a relay",
    );
    let (a, b, relay) = outbound_pair().await?;
    let t = Instant::now();
    let (accepted, dialed) = tokio::join!(bob.accept(a), alice.connect(b, bob.tubid()));
    let (accepted, dialed) = (accepted?, dialed?);
    println!(
        "    accepting party as Side::Server: handshake complete in {:.2?} ({:?} <-> {:?})",
        t.elapsed(),
        accepted.info.side,
        dialed.info.side
    );
    drop((accepted, dialed));
    relay.await?;
    let (a, b, relay) = outbound_pair().await?;
    let t = Instant::now();
    let (x, _) = tokio::join!(bob.connect(a, alice.tubid()), alice.connect(b, bob.tubid()));
    match x {
        Err(e) => println!(
            "    both parties as Side::Client: refused in {:.2?}: {e}",
            t.elapsed()
        ),
        Ok(_) => anyhow::bail!("two clients must not complete a handshake"),
    }
    relay.await?;
    println!("\ndone.");
    Ok(())
}

/// Two sockets opened by `connect()`, spliced by a relay task.
async fn outbound_pair() -> Result<(TcpStream, TcpStream, tokio::task::JoinHandle<()>)> {
    let relay = TcpListener::bind("127.0.0.1:0").await?;
    let addr = relay.local_addr()?;
    let task = tokio::spawn(async move {
        if let (Ok((mut x, _)), Ok((mut y, _))) = (relay.accept().await, relay.accept().await) {
            let _ = tokio::io::copy_bidirectional(&mut x, &mut y).await;
        }
    });
    let a = TcpStream::connect(addr).await?;
    let b = TcpStream::connect(addr).await?;
    Ok((a, b, task))
}
