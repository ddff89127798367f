//! Tubs over a real private Tor network on 127.0.0.1 through the embedded arti client: an
//! arti onion service reached from a system tor and from arti, and a system tor's onion
//! service reached from arti.

use std::sync::Arc;
use std::time::Duration;

use folio_handlers::arti::{ArtiHandler, ArtiOnionListener, ArtiOptions, ArtiTor};
use folio_handlers::tor::{OnionListener, TorHandler};
use folio_handlers::{Handler, Registry, TcpPolicy};
use folio_rpc::{Furl, Identity, Tub, TubConfig};
use folio_tests::echo::{calls_both_ways, serve};
use folio_tests::tornet::TorNet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tubs_talk_through_embedded_arti() {
    let net = TorNet::start();
    tokio::time::timeout(Duration::from_secs(300), run(&net))
        .await
        .expect("the arti test finished in time");
    drop(net);
}

/// A Tub in privacy mode whose only way out is `handler`, `tcp:` hints over Tor too.
fn tor_only_tub(handler: Arc<dyn Handler>) -> Tub {
    let mut registry = Registry::private();
    registry.set("tor", handler).unwrap();
    registry.set_tcp_policy(TcpPolicy::Tor).unwrap();
    Tub::new(
        Identity::generate().unwrap(),
        Arc::new(registry),
        TubConfig::default(),
    )
    .unwrap()
}

async fn run(net: &TorNet) {
    let dir = std::env::temp_dir().join(format!("folio-arti-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // arti refuses state that others could write to.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let mut opts = ArtiOptions::new(dir.join("arti"));
    opts.network = Some(net.arti_network());

    // The address is known before arti has touched the network, and stays.
    let onion = folio_transports::arti::onion_address(&opts, "folio").unwrap();

    let tor = ArtiTor::start(&opts).expect("arti starts");
    let started = std::time::Instant::now();
    tor.wait_bootstrapped(Duration::from_secs(120))
        .await
        .expect("arti bootstraps from the private network");
    eprintln!("arti bootstrapped in {:?}", started.elapsed());
    assert_eq!(tor.status(), "bootstrapped");

    // 1. An arti onion service, reached from a system tor.
    let listener = ArtiOnionListener::start(&tor, "folio", 3457).expect("the service starts");
    assert_eq!(listener.onion(), onion);
    let pem = Identity::generate().unwrap().to_pem();
    let hint = listener.hint();
    let (server, furl) = serve(&pem, listener, hint);
    assert!(
        furl.to_string()
            .contains(&format!("@tor:{onion}:3457/echo")),
        "{furl}"
    );
    let ctor_client = tor_only_tub(Arc::new(TorHandler::new(net.socks())));
    calls_both_ways(&ctor_client, &server, &furl).await;
    eprintln!("system tor -> arti onion: ok");

    // 2. The same service, reached through arti itself; the status names the handler.
    let arti_client = tor_only_tub(Arc::new(ArtiHandler::new(tor.clone())));
    calls_both_ways(&arti_client, &server, &furl).await;
    let status = arti_client.connection_status();
    let s = status.iter().find(|s| s.tubid == server.tubid()).unwrap();
    assert_eq!(
        s.winning_hint.as_deref(),
        Some(format!("tor:{onion}:3457").as_str())
    );
    assert_eq!(
        s.handler.as_deref(),
        Some("tor (embedded arti, bootstrapped)"),
        "{s:?}"
    );
    eprintln!("arti -> arti onion: ok");

    // 3. A system tor's onion service, reached through arti.
    let key = dir.join("ctor-onion.key");
    let ctor_listener = OnionListener::start(net.control(), &key, 3456)
        .await
        .expect("the system tor's onion service starts");
    let ctor_pem = Identity::generate().unwrap().to_pem();
    let ctor_hint = ctor_listener.hint();
    let (ctor_server, ctor_furl) = serve(&ctor_pem, ctor_listener, ctor_hint);
    calls_both_ways(&arti_client, &ctor_server, &ctor_furl).await;
    eprintln!("arti -> system tor onion: ok");

    // A loopback tcp: hint routed over arti is refused, never sent to an exit. (A Tub
    // nobody is connected to: a FURL for a connected TubId would reuse that connection.)
    let stranger = Identity::generate().unwrap().tubid();
    let local: Furl = format!("folio://{stranger}@tcp:127.0.0.1:3456/echo")
        .parse()
        .unwrap();
    let e = arti_client
        .get_reference(&local)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot be reached through Tor"), "{e}");

    // A service that does not exist: a clear failure naming the onion, within the timeout.
    let missing = folio_transports::arti::onion_address(&opts, "nobody").unwrap();
    let nowhere: Furl = format!("folio://{stranger}@tor:{missing}:3457/echo")
        .parse()
        .unwrap();
    let t = std::time::Instant::now();
    let e = arti_client
        .get_reference(&nowhere)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&missing) && e.contains("embedded arti"), "{e}");
    eprintln!("missing service: {e} (after {:?})", t.elapsed());

    for t in [&arti_client, &ctor_client, &server, &ctor_server] {
        t.shutdown().await;
    }
    drop((server, arti_client, ctor_client, ctor_server, tor));

    // The key is on disk, under arti's state: the same address after a restart.
    assert_eq!(
        folio_transports::arti::onion_address(&opts, "folio").unwrap(),
        onion
    );
    let _ = std::fs::remove_dir_all(&dir);
}
