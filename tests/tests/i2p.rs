//! Tubs over a real i2pd router on 127.0.0.1 (started by the test, stopped after it).
//! i2pd 2.45 takes 20 s to create each SAM session, so the sessions are made in parallel.

use std::sync::Arc;
use std::time::Duration;

use folio_handlers::i2p::{I2pHandler, I2pListener};
use folio_handlers::Registry;
use folio_rpc::{Furl, Hint, Identity, Swissnum, Tub, TubConfig};
use folio_tests::echo::{calls_both_ways, serve, EchoRef};
use folio_tests::i2pd::I2pd;
use folio_transports::i2p::SamConfig;

fn i2p_registry(cfg: &SamConfig) -> (Registry, Arc<I2pHandler>) {
    let handler = Arc::new(I2pHandler::new(cfg.clone()));
    // Privacy mode: I2P never reveals our address, so a private registry takes it.
    let mut registry = Registry::private();
    registry
        .set("i2p", handler.clone())
        .expect("i2p is allowed in privacy mode");
    (registry, handler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tubs_talk_over_a_real_i2pd() {
    tokio::time::timeout(Duration::from_secs(240), run())
        .await
        .expect("the I2P test finished in time");
}

async fn run() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:6.2}s] {what}", t0.elapsed().as_secs_f64());
    let router = I2pd::start();
    step("router up");
    let cfg = SamConfig::zero_hop(router.sam);
    let dir = std::env::temp_dir().join(format!("folio-i2p-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("listener.i2p.key");

    // The listener's session (with a new saved key) and the dialer's, in parallel.
    let (registry, handler) = i2p_registry(&cfg);
    let (listener, prepared) = tokio::join!(I2pListener::start(&cfg, &key), handler.prepare());
    let listener = listener.expect("the I2P listener starts");
    prepared.expect("the dialing session starts");
    step("sessions ready");
    let address = listener.address().to_string();
    assert!(
        address.ends_with(".b32.i2p") && address.len() == 60,
        "{address}"
    );
    let key_mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(key_mode & 0o777, 0o600, "the destination key is private");

    let server_pem = Identity::generate().unwrap().to_pem();
    let hint = listener.hint();
    let (server, furl) = serve(&server_pem, listener, hint);
    assert!(
        furl.to_string().contains(&format!("@i2p:{address}/echo")),
        "{furl}"
    );
    // Over I2P a peer that goes away may leave the stream open on our side: the keepalive
    // and disconnect timeout notice (the node sets these for tor and i2p too).
    let lively = TubConfig::default()
        .keepalive(Some(Duration::from_secs(1)))
        .disconnect_timeout(Some(Duration::from_secs(6)));
    let client = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(registry),
        lively.clone(),
    )
    .unwrap();

    // A call over I2P, and a call back the other way over the same connection.
    step("dialing");
    // The listener's end of the stream comes over a socket it opened to the SAM bridge, and
    // it is still the TLS server (Tahoe-LAFS #2861): calls_both_ways checks the side.
    let echo = calls_both_ways(&client, &server, &furl).await;
    step("connected");
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
            .contains(&format!("SAM bridge at {}", router.sam)),
        "{s:?}"
    );

    step("calls done");
    // Restarted with its saved key, the listener is at the same address, and reachable there.
    server.shutdown().await;
    drop(server);
    // A restarted node is a new process, seconds later. Give the router a moment to retire
    // the old session: i2pd 2.45 hands a new session on the same key the old session's
    // destination if it is still there, and then loses it when the old session goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listener = I2pListener::start(&cfg, &key)
        .await
        .expect("the listener restarts");
    assert_eq!(listener.address(), address);
    let hint = listener.hint();
    let (server, again) = serve(&server_pem, listener, hint);
    assert_eq!(again, furl, "the same FURL after a restart");
    // Not asserted yet: that the restarted listener is *reachable* there. On i2pd 2.45, a
    // SESSION CREATE with the key of a destination the router still holds reuses that
    // destination, and once streams have flowed through the old session, streams to the new
    // one are never delivered (reproduced with raw SAM, without Folio). Reachability after a
    // restart is shown below, across a router restart.
    step("listener restarted at the same address");

    // An unknown destination fails with a clear error, and the status says so.
    let nowhere = Furl::new(
        Identity::generate().unwrap().tubid(),
        vec![Hint::I2p {
            addr: format!("{}.b32.i2p", "a".repeat(52)),
            port: None,
        }],
        Swissnum::random(),
    );
    let e = client
        .get_reference(&nowhere)
        .await
        .unwrap_err()
        .to_string();
    step("unknown destination refused");
    assert!(
        e.contains("i2p:")
            && (e.contains("cannot be reached") || e.contains("SAM bridge answered")),
        "{e}"
    );

    // A bridge that is not running: the handler says what to check.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (dead_registry, _) = i2p_registry(&SamConfig::zero_hop(closed));
    let lonely = Tub::new(
        Identity::generate().unwrap(),
        Arc::new(dead_registry),
        TubConfig::default(),
    )
    .unwrap();
    let e = lonely.get_reference(&furl).await.unwrap_err().to_string();
    assert!(e.contains("is i2pd") && e.contains("running"), "{e}");
    let hint_status = &lonely.connection_status()[0].hints[0].status;
    assert!(
        hint_status.contains(&format!("SAM bridge at {closed} refused the connection")),
        "{hint_status}"
    );

    // Close every SAM client before the router stops (i2pd 2.45 can hang otherwise).
    client.shutdown().await;
    server.shutdown().await;
    drop((client, server, lonely, echo));
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(router);
    step("router stopped");

    // The machine restarts: a new router, and the listener with its saved key. It is at the
    // same address and reachable there, by a client of the new router. (What is still not
    // shown is the same on a router that held the old session: see above.)
    let router = I2pd::start();
    let cfg = SamConfig::zero_hop(router.sam);
    let (registry, handler) = i2p_registry(&cfg);
    let (listener, prepared) = tokio::join!(I2pListener::start(&cfg, &key), handler.prepare());
    let listener = listener.expect("the listener restarts on the new router");
    prepared.expect("the dialing session starts on the new router");
    assert_eq!(
        listener.address(),
        address,
        "the saved key gives the same address"
    );
    let hint = listener.hint();
    let (server, again) = serve(&server_pem, listener, hint);
    assert_eq!(again, furl);
    let client = Tub::new(Identity::generate().unwrap(), Arc::new(registry), lively).unwrap();
    let echo = client
        .get::<EchoRef>(&furl)
        .await
        .expect("the restarted listener is reachable at its saved address");
    assert_eq!(echo.echo("again".into()).await.unwrap(), "server: again");
    step("restarted listener reached at the same address");
    client.shutdown().await;
    server.shutdown().await;
    drop((client, server, echo));
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(router);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Restart reachability on one running i2pd (issue 18): the listener's session closed and
/// made again with its saved key on the same router, and a dialer that had talked to the
/// previous instance tries to reach it again (its handler retires its dialing session after
/// `CANT_REACH_PEER`, as for emissary); then a dialer with a session of its own, new.
///
/// Ignored because it fails on i2pd 2.45 (Debian bookworm), as handlers/src/i2p.rs
/// describes: the new `SESSION CREATE` answers at once (i2pd hands back the destination it
/// still holds), `STREAM CONNECT` to it succeeds, so no `CANT_REACH_PEER` ever comes, and no
/// byte reaches the new listener: every handshake times out in its prelude (30 s), from the
/// old dialing session and from a new one alike. Run it with `--ignored` to check a newer
/// i2pd. Across a restart of the router itself, the listener is reached again
/// (`tubs_talk_over_a_real_i2pd`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "i2pd 2.45: a listener restarted on the same running router is not reached again"]
async fn a_listener_restarted_on_the_same_i2pd() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:6.2}s] {what}", t0.elapsed().as_secs_f64());
    let router = I2pd::start();
    let cfg = SamConfig::zero_hop(router.sam);
    let dir = std::env::temp_dir().join(format!("folio-i2pd-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("listener.i2p.key");
    let lively = TubConfig::default()
        .keepalive(Some(Duration::from_secs(1)))
        .disconnect_timeout(Some(Duration::from_secs(6)));
    let dialer = |lively: TubConfig| {
        let (registry, handler) = i2p_registry(&cfg);
        let tub = Tub::new(Identity::generate().unwrap(), Arc::new(registry), lively).unwrap();
        (tub, handler)
    };
    let (client, handler) = dialer(lively.clone());
    let (fresh, fresh_handler) = dialer(lively);
    let pem = Identity::generate().unwrap().to_pem();
    let outcome = tokio::time::timeout(Duration::from_secs(300), async {
        let (listener, prepared, fresh_prepared) = tokio::join!(
            I2pListener::start(&cfg, &key),
            handler.prepare(),
            fresh_handler.prepare()
        );
        let listener = listener.expect("the I2P listener starts");
        prepared.expect("the dialing session starts");
        fresh_prepared.expect("the second dialing session starts");
        let hint = listener.hint();
        let (server, furl) = serve(&pem, listener, hint);
        let echo = calls_both_ways(&client, &server, &furl).await;
        step("first instance reached");
        server.shutdown().await;
        drop((server, echo));
        let t = std::time::Instant::now();
        let listener = I2pListener::start(&cfg, &key)
            .await
            .expect("the listener's session is made again");
        step(&format!(
            "listener session made again in {:.2}s",
            t.elapsed().as_secs_f64()
        ));
        let hint = listener.hint();
        let (server, _) = serve(&pem, listener, hint);
        let mut unreached = Vec::new();
        for (who, tub, handler) in [
            ("the old dialer", &client, &handler),
            ("a dialer that never talked to it", &fresh, &fresh_handler),
        ] {
            let t = std::time::Instant::now();
            let got =
                tokio::time::timeout(Duration::from_secs(40), tub.get::<EchoRef>(&furl)).await;
            step(&format!(
                "{who}: {} after {:.1}s ({} dialing sessions made)",
                match &got {
                    Ok(Ok(_)) => "reached".to_string(),
                    Ok(Err(e)) => format!("{e}"),
                    Err(_) => "no answer within 40 s".to_string(),
                },
                t.elapsed().as_secs_f64(),
                handler.sessions_made()
            ));
            if !matches!(got, Ok(Ok(_))) {
                unreached.push(who);
            }
        }
        assert!(
            unreached.is_empty(),
            "{unreached:?} did not reach the restarted listener"
        );
        server.shutdown().await;
    })
    .await;
    client.shutdown().await;
    fresh.shutdown().await;
    drop((client, fresh));
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(router);
    let _ = std::fs::remove_dir_all(&dir);
    outcome.expect("the i2pd restart test finished within 300 s");
}
