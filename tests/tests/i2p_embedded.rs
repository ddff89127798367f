//! Tubs over a private I2P network of embedded emissary routers on 127.0.0.1 (no i2pd):
//! a listener with a saved key on one client router (SAM `STREAM ACCEPT`, so its streams
//! arrive over sockets it opened, and it is still the TLS server) and a dialer on another,
//! both through Folio's own I2P handler and listener pointed at the routers' SAM bridges.
//!
//! Built and run only with the `i2p-embedded` feature:
//!
//! ```sh
//! cargo test -p folio-tests --features i2p-embedded --test i2p_embedded
//! ```
//!
//! Off in folio-tests' own defaults, so that building this crate alone does not compile the
//! router (it is generic over its runtime, so it is compiled inside folio-transports); a
//! workspace build compiles it anyway now, as folio-node turns the feature on (see
//! tests/README.md for the numbers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use folio_handlers::i2p::{I2pHandler, I2pListener};
use folio_handlers::Registry;
use folio_rpc::{Identity, Tub, TubConfig};
use folio_tests::echo::{calls_both_ways, reach_again, serve};
use folio_tests::i2pnet::I2pNet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tubs_talk_over_embedded_i2p() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let t0 = Instant::now();
    let net = tokio::task::spawn_blocking(|| I2pNet::start(2))
        .await
        .expect("the network starts");
    eprintln!(
        "[{:6.2}s] private I2P network up (6 routers, a SAM session on each client router)",
        t0.elapsed().as_secs_f64()
    );
    let outcome = tokio::time::timeout(Duration::from_secs(180), run(&net, t0)).await;
    if outcome.is_err() {
        panic!(
            "the embedded I2P test did not finish within 180 s\n{}",
            net.log_tails(15)
        );
    }
    // Each router's log is captured for failure reports (here, the last two lines each).
    let tails = net.log_tails(2);
    eprintln!("{tails}");
    assert_eq!(
        tails.matches("last 2 log lines").count(),
        6,
        "every router logged: {tails}"
    );
    let addresses = net.addresses();
    drop(net);
    // Every port the routers held is free again at once.
    for a in addresses {
        assert!(
            std::net::TcpListener::bind(a).is_ok(),
            "{a} is still held after the network stopped"
        );
    }
}

async fn run(net: &I2pNet, t0: Instant) {
    let step = |what: &str| eprintln!("[{:6.2}s] {what}", t0.elapsed().as_secs_f64());
    let dir = std::env::temp_dir().join(format!("folio-i2p-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("listener.i2p.key");

    // The listener on client router 0 (a new saved key), the dialer on client router 1.
    let listen_cfg = net.sam_config(0);
    let dial_cfg = net.sam_config(1);
    assert_eq!(
        (listen_cfg.inbound_length, listen_cfg.outbound_length),
        (1, 1)
    );
    let handler = Arc::new(I2pHandler::new(dial_cfg.clone()));
    let mut registry = Registry::private();
    registry.set("i2p", handler.clone()).unwrap();
    let (listener, prepared) =
        tokio::join!(I2pListener::start(&listen_cfg, &key), handler.prepare());
    let listener = listener.expect("the I2P listener starts on the embedded router");
    prepared.expect("the dialing session starts on the other embedded router");
    step("listening and dialing sessions ready");
    let address = listener.address().to_string();
    assert!(
        address.ends_with(".b32.i2p") && address.len() == 60,
        "{address}"
    );

    let pem = Identity::generate().unwrap().to_pem();
    let hint = listener.hint();
    let (server, furl) = serve(&pem, listener, hint);
    let client = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(registry),
        TubConfig::default()
            .keepalive(Some(Duration::from_secs(1)))
            .disconnect_timeout(Some(Duration::from_secs(6))),
    )
    .unwrap();

    // A typed call over I2P (the first CONNECT is retried while the new destination's
    // LeaseSet spreads), one back over the same connection, and the listener's end is the
    // TLS server although its socket to the SAM bridge was outbound (Tahoe-LAFS #2861).
    let first = Instant::now();
    let echo = calls_both_ways(&client, &server, &furl).await;
    step(&format!(
        "first call answered ({:.2}s after the sessions were ready)",
        first.elapsed().as_secs_f64()
    ));
    let status = client.connection_status();
    let s = status.iter().find(|s| s.tubid == server.tubid()).unwrap();
    assert_eq!(
        s.winning_hint.as_deref(),
        Some(format!("i2p:{address}").as_str())
    );
    assert!(
        s.handler
            .as_deref()
            .unwrap_or("")
            .contains(&format!("SAM bridge at {}", dial_cfg.bridge)),
        "{s:?}"
    );
    // Round trips on the open connection.
    let mut rtts = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        assert_eq!(
            echo.echo(format!("{i}")).await.unwrap(),
            format!("server: {i}")
        );
        rtts.push(t.elapsed());
    }
    rtts.sort();
    step(&format!(
        "20 calls: median round trip {:.1} ms, slowest {:.1} ms",
        rtts[10].as_secs_f64() * 1e3,
        rtts[19].as_secs_f64() * 1e3
    ));

    client.shutdown().await;
    server.shutdown().await;
    drop((client, server, echo));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Restart reachability (issue 18): a listener restarted with its saved key is reached again
/// at the same `.b32.i2p` address by a dialer that had talked to its previous instance —
/// first with its session re-created on the same running router (the bridge answers
/// `DUPLICATE_DEST` until the old session is gone), then with its router restarted. The
/// dialer's old session cannot reach the new instance (recipes/emissary-spike §5); the
/// handler retires it after `CANT_REACH_PEER` and dials from a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_listener_is_reached_again_over_embedded_i2p() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let t0 = Instant::now();
    let mut net = tokio::task::spawn_blocking(|| I2pNet::start(2))
        .await
        .expect("the network starts");
    let step = move |what: &str| eprintln!("[{:6.2}s] {what}", t0.elapsed().as_secs_f64());
    step("private I2P network up");
    let dir = std::env::temp_dir().join(format!("folio-i2p-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("listener.i2p.key");
    let listen_cfg = net.sam_config(0);
    let handler = Arc::new(I2pHandler::new(net.sam_config(1)));
    let mut registry = Registry::private();
    registry.set("i2p", handler.clone()).unwrap();
    let client = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(registry),
        TubConfig::default()
            .keepalive(Some(Duration::from_secs(1)))
            .disconnect_timeout(Some(Duration::from_secs(6))),
    )
    .unwrap();
    let pem = Identity::generate().unwrap().to_pem();

    let outcome = tokio::time::timeout(Duration::from_secs(420), async {
        // The first instance, reached and talked to.
        let listener = I2pListener::start(&listen_cfg, &key)
            .await
            .expect("listener");
        let address = listener.address().to_string();
        let hint = listener.hint();
        let (server, furl) = serve(&pem, listener, hint);
        let echo = calls_both_ways(&client, &server, &furl).await;
        step(&format!("first instance reached at {address}"));
        assert_eq!(handler.sessions_made(), 1);

        // (a) Its session closed and made again on the same running router.
        server.shutdown().await;
        drop((server, echo));
        let t = Instant::now();
        let listener = I2pListener::start(&listen_cfg, &key)
            .await
            .expect("the listener's session is made again (DUPLICATE_DEST waited out)");
        let session_again = t.elapsed();
        assert_eq!(
            listener.address(),
            address,
            "the saved key keeps the address"
        );
        let hint = listener.hint();
        let (server, again) = serve(&pem, listener, hint);
        assert_eq!(again, furl);
        let (echo, took, failures) = reach_again(&client, &furl, Duration::from_secs(120)).await;
        assert!(
            took < Duration::from_secs(45),
            "(a) reached again after {took:?}"
        );
        assert!(
            handler.sessions_made() >= 2,
            "the dialing session was made again"
        );
        step(&format!(
            "(a) session re-created on the same router in {:.2}s; reached again {:.2}s later \
             ({} dialing sessions made so far); failures on the way: {failures:?}",
            session_again.as_secs_f64(),
            took.as_secs_f64(),
            handler.sessions_made()
        ));

        // (b) Its router restarted (same router id, keys and ports).
        server.shutdown().await;
        drop((server, echo));
        let id = net.router_id(0);
        let restart = tokio::task::block_in_place(|| net.restart_client(0));
        assert_eq!(net.router_id(0), id, "the restarted router keeps its id");
        let t = Instant::now();
        let listener = I2pListener::start(&net.sam_config(0), &key)
            .await
            .expect("the listener starts on the restarted router");
        let session_again = t.elapsed();
        assert_eq!(listener.address(), address);
        let hint = listener.hint();
        let (server, _) = serve(&pem, listener, hint);
        let (echo, took, failures) = reach_again(&client, &furl, Duration::from_secs(120)).await;
        assert!(
            took < Duration::from_secs(45),
            "(b) reached again after {took:?}"
        );
        assert!(
            handler.sessions_made() >= 3,
            "the dialing session was made again"
        );
        step(&format!(
            "(b) router restarted in {:.2}s, listener session in {:.2}s; reached again {:.2}s \
             later ({} dialing sessions made so far); failures on the way: {failures:?}",
            restart.as_secs_f64(),
            session_again.as_secs_f64(),
            took.as_secs_f64(),
            handler.sessions_made()
        ));
        server.shutdown().await;
        drop((server, echo));
    })
    .await;
    if outcome.is_err() {
        panic!(
            "the restart test did not finish within 420 s\n{}",
            net.log_tails(15)
        );
    }
    client.shutdown().await;
    drop(client);
    drop(net);
    let _ = std::fs::remove_dir_all(&dir);
}
