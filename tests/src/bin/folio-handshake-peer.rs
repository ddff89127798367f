//! A tiny Folio peer for the two-process handshake test.
//!
//! `folio-handshake-peer listen IDENTITY.pem tcp:0:interface=127.0.0.1` prints
//! `FURL <furl>`, accepts one connection (as Side::Server), prints `PEER <tubid> SAID <text>`
//! and `FROM <address>`, answers one message and exits. The interface may be IPv6
//! (`tcp:0:interface=::1`): the FURL's hint is then `tcp:[::1]:PORT`.
//! `folio-handshake-peer dial IDENTITY.pem FURL` dials each hint (as Side::Client), sends a
//! message, prints `REPLY <text>` and exits. Errors go to stderr with exit status 1.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use folio_handlers::Registry;
use folio_rpc::{Connector, Furl, HandshakeConfig, Handshaker, Hint, Host, Identity, Swissnum};
use folio_transports::tcp;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["listen", identity, spec] => listen(Path::new(identity), spec).await,
        ["dial", identity, furl] => dial(Path::new(identity), furl).await,
        _ => bail!("usage: folio-handshake-peer listen IDENTITY SPEC | dial IDENTITY FURL"),
    }
}

fn handshaker(identity: &Path) -> Result<Handshaker> {
    let id = Identity::load_or_generate(identity).context("loading the Tub identity")?;
    Ok(Handshaker::new(Arc::new(id), HandshakeConfig::default())?)
}

async fn listen(identity: &Path, spec: &str) -> Result<()> {
    let hs = handshaker(identity)?;
    let spec: tcp::ListenSpec = spec.parse()?;
    let listener = tcp::listen(&spec).await?;
    let addr = listener.local_addr()?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() => bail!("give the peer one interface to listen on, not {ip}"),
        std::net::IpAddr::V4(v4) => Host::Ipv4(v4),
        std::net::IpAddr::V6(v6) => Host::Ipv6(v6),
    };
    let hint = Hint::Tcp {
        host,
        port: addr.port(),
    };
    let furl = Furl::new(hs.tubid(), vec![hint], Swissnum::random());
    println!("FURL {furl}");
    std::io::stdout().flush()?;

    let (stream, from) = listener.accept().await?;
    let mut conn = hs
        .accept(stream)
        .await
        .with_context(|| format!("handshake with {from}"))?;
    let msg: String = conn
        .reader
        .next_message()
        .await?
        .context("the peer closed before sending its message")?;
    println!("PEER {} SAID {msg}", conn.info.peer);
    println!("FROM {from}");
    conn.writer.send_message(&format!("pong: {msg}")).await?;
    conn.writer.shutdown().await?;
    Ok(())
}

async fn dial(identity: &Path, furl: &str) -> Result<()> {
    let hs = handshaker(identity)?;
    let furl: Furl = furl.parse().context("parsing the FURL")?;
    let registry = Registry::with_tcp();
    let mut errors = Vec::new();
    for hint in furl.hints() {
        let stream = match registry.connect(hint).await {
            Ok(s) => s,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let mut conn = hs.connect(stream, furl.tubid()).await?;
        conn.writer
            .send_message(&format!("ping from {}", hs.tubid()))
            .await?;
        let reply: String = conn
            .reader
            .next_message()
            .await?
            .context("the peer closed before replying")?;
        println!("REPLY {reply}");
        return Ok(());
    }
    bail!("no hint worked: {}", errors.join("; "))
}
