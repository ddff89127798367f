//! Reseeding over HTTPS (issue 18): an embedded I2P router that knows no other router fetches
//! a signed reseed file (`i2pseeds.su3`) from a reseed server, joins the network it names and
//! works (a Tub on it is reached over I2P); restarted, it starts from the netDb it saved,
//! without reseeding.
//!
//! The network is the private one of `folio_tests::i2pnet` (embedded routers on 127.0.0.1);
//! its routers' RouterInfos are packed into an su3 file signed with the test signer key of
//! `transports/testdata/` and served by `ReseedServer`, an HTTPS server on 127.0.0.1 whose
//! certificate the test CA of `transports/testdata/` issued; the reseeding router trusts that
//! CA and that signer, and nothing else (no web PKI roots, no bundled signer). Built and run only with the `i2p-embedded` feature:
//!
//! ```sh
//! cargo test -p folio-tests --features i2p-embedded --test i2p_reseed
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use folio_handlers::i2p::{I2pHandler, I2pListener};
use folio_handlers::Registry;
use folio_rpc::{Identity, Tub, TubConfig};
use folio_tests::echo::{calls_both_ways, serve};
use folio_tests::i2pnet::I2pNet;
use folio_transports::i2p::{Destination, Session};
use folio_transports::i2p_embedded::reseed::{certificates_from_pem, Reseed, ReseedServer};
use folio_transports::i2p_embedded::su3::{write_reseed, TrustedSigners};
use folio_transports::i2p_embedded::{
    router_info_file_name, EmbeddedRouter, Network, RouterOptions,
};

const KEY: &[u8] = include_bytes!("../../transports/testdata/reseed-test-key.pem");
const CERT: &[u8] = include_bytes!("../../transports/testdata/test-reseed_at_folio.invalid.crt");
const SIGNER: &str = "test-reseed@folio.invalid";
const CA: &[u8] = include_bytes!("../../transports/testdata/reseed-test-ca.crt");
const SERVER_CERT: &[u8] = include_bytes!("../../transports/testdata/reseed-server.crt");
const SERVER_KEY: &[u8] = include_bytes!("../../transports/testdata/reseed-server-key.pem");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_router_reseeds_over_https_then_restarts_from_its_netdb() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let t0 = Instant::now();
    let step = move |what: &str| eprintln!("[{:6.2}s] {what}", t0.elapsed().as_secs_f64());
    let net = tokio::task::spawn_blocking(|| I2pNet::start(1))
        .await
        .expect("the network starts");
    step("private I2P network up (5 routers)");

    // The network's RouterInfos, as a reseed server would pack them.
    let Network::Private { net_id, seeds } =
        Network::from_file(&net.network_file()).expect("the network file reads")
    else {
        panic!("a private network")
    };
    let files: Vec<(String, Vec<u8>)> = seeds
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).expect("a RouterInfo file");
            let name = router_info_file_name(&bytes).expect("a RouterInfo");
            (name, bytes)
        })
        .collect();
    assert_eq!(files.len(), 5);
    let su3 = write_reseed(&files, SIGNER, KEY, "1765000000").expect("signed");
    let server = ReseedServer::start(200, su3, SERVER_CERT, SERVER_KEY)
        .await
        .expect("the reseed server");
    let mut signers = TrustedSigners::none();
    signers.add_pem(SIGNER, CERT).expect("the test signer");
    let mut reseed = Reseed::new(vec![server.url().to_string()], signers);
    reseed.extra_roots = certificates_from_pem(CA).expect("the test CA");
    reseed.min_routers = files.len();
    reseed.reseed_below = 3;
    reseed.max_servers = 1;
    reseed.connect_timeout = Duration::from_secs(5);
    reseed.server_timeout = Duration::from_secs(30);
    let dir = std::env::temp_dir().join(format!("folio-i2p-reseed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = move || {
        let mut o = RouterOptions::new(
            dir.join("router"),
            Network::Private {
                net_id,
                seeds: vec![],
            },
        );
        o.reseed = Some(reseed.clone());
        o.thread_name = "i2p-reseeded".into();
        o
    };
    let start = |o: RouterOptions| async move {
        tokio::task::spawn_blocking(move || EmbeddedRouter::start(o))
            .await
            .expect("the start thread")
            .expect("the reseeding router starts")
    };

    let outcome = tokio::time::timeout(Duration::from_secs(300), async {
        // First start: nothing known, so a reseed, kept in the netDb.
        let router = start(options()).await;
        assert_eq!(router.known_at_start(), 0);
        assert_eq!(router.reseeded(), Some(files.len()));
        assert_eq!(server.requests(), 1);
        let netdb = options().dir.join("netdb");
        let mut kept: Vec<String> = std::fs::read_dir(&netdb)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        kept.sort();
        let mut want: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        want.sort();
        assert_eq!(kept, want, "the reseed is kept in {}", netdb.display());
        step("reseeded from the HTTPS server: 5 RouterInfos, kept in the netDb");

        // It works: a Tub listening on it is reached from the network's client router.
        let key = options().dir.join("listener.i2p.key");
        let handler = Arc::new(I2pHandler::new(net.sam_config(0)));
        let mut registry = Registry::private();
        registry.set("i2p", handler.clone()).unwrap();
        let listener = I2pListener::start(&router.sam_config(), &key)
            .await
            .expect("a listener on the reseeded router");
        let hint = listener.hint();
        let (tub, furl) = serve(&Identity::generate().unwrap().to_pem(), listener, hint);
        let client = Tub::new(
            Identity::generate().unwrap(),
            Arc::new(registry),
            TubConfig::default(),
        )
        .unwrap();
        let echo = calls_both_ways(&client, &tub, &furl).await;
        step("a Tub on the reseeded router answered over I2P");
        client.shutdown().await;
        tub.shutdown().await;
        drop((client, tub, echo));
        tokio::task::spawn_blocking(move || router.stop())
            .await
            .unwrap()
            .expect("it stops");

        // Restarted: it starts from its netDb, and the reseed server is not asked again.
        let again = start(options()).await;
        assert_eq!(again.known_at_start(), files.len());
        assert_eq!(again.reseeded(), None);
        assert_eq!(server.requests(), 1, "no second reseed");
        let cfg = again.sam_config();
        let mut last = String::new();
        let mut session = None;
        for _ in 0..60 {
            match Session::create(&cfg, Destination::Transient).await {
                Ok(s) => {
                    session = Some(s);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            session.is_some(),
            "no SAM session after the restart: {last}"
        );
        step("restarted from its netDb (no reseed): a SAM session on it");
        drop(session);
        tokio::task::spawn_blocking(move || again.stop())
            .await
            .unwrap()
            .expect("it stops");
    })
    .await;
    if outcome.is_err() {
        panic!(
            "the reseed test did not finish within 300 s\n{}",
            net.log_tails(15)
        );
    }
    let _ = std::fs::remove_dir_all(options_dir());
}

fn options_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("folio-i2p-reseed-{}", std::process::id()))
}
