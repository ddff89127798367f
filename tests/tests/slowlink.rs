//! Tubs over the slow link (folio_tests::slowlink): a fresh connection to a FURL and its first
//! answer (with and without the call pipelined behind the hello), and a warm call, counted in
//! round trips of a Tor-like link. Prints the figures;
//! asserts only what physics allows (never fewer round trips than the protocol needs) and a
//! generous bound against hangs. The benchmark figures of issue 17 come from folio-bench.

use std::time::{Duration, Instant};

use folio_rpc::{interface, Furl, TubConfig};
use folio_tests::slowlink::{LinkProfile, SlowProxy};
use folio_tests::tubs::{listening_tub, tcp_tub};

#[interface(name = "test.slowlink.echo.v1")]
pub trait Echo {
    async fn echo(&self, n: u64) -> Result<u64, ()>;
}

struct EchoImpl;

impl Echo for EchoImpl {
    async fn echo(&self, n: u64) -> Result<u64, ()> {
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_connection_and_a_warm_call_over_a_tor_like_link() {
    // Tor's round trip, at a tenth of Tor's 300 ms so the test stays short.
    let profile = LinkProfile::custom(Duration::from_millis(30), 8 << 20);
    let rtt = profile.rtt();
    let (server, addr) = listening_tub(TubConfig::default()).await;
    let proxy = SlowProxy::start(addr, profile).await.unwrap();
    server.set_location(vec![proxy.hint().parse().unwrap()]);
    let furl: Furl = server.register(EchoRef::serve(EchoImpl)).unwrap();
    assert_eq!(furl.hints()[0].to_string(), proxy.hint());

    let client = tcp_tub(TubConfig::default());
    let t = Instant::now();
    let echo: EchoRef = client.get(&furl).await.unwrap();
    assert_eq!(echo.echo(1).await.unwrap(), 1);
    let fresh = t.elapsed();
    let t = Instant::now();
    assert_eq!(echo.echo(2).await.unwrap(), 2);
    let warm = t.elapsed();
    let in_rtts = |d: Duration| d.as_secs_f64() / rtt.as_secs_f64();
    eprintln!(
        "over a link of {rtt:?} round trip: fresh connection to a FURL and its first answer \
         {fresh:?} ({:.2} round trips); a warm call {warm:?} ({:.2})",
        in_rtts(fresh),
        in_rtts(warm)
    );
    // TCP's handshake, TLS 1.3's, and the hello with the resolution behind it: never fewer
    // than 3 round trips; a warm call, never less than one.
    assert!(in_rtts(fresh) >= 3.0, "{fresh:?}");
    assert!(in_rtts(warm) >= 1.0, "{warm:?}");
    assert!(fresh < 20 * rtt && warm < 10 * rtt, "{fresh:?} {warm:?}");

    // The same first answer with the call pipelined on the FURL's resolution, behind the
    // hello (protocol.md §8): TCP, TLS, and the hello with both calls: three round trips,
    // one fewer than above. The saving is a whole round trip by construction, so the
    // comparison holds with room for any scheduling noise (half a round trip).
    let client = tcp_tub(TubConfig::default());
    let t = Instant::now();
    let echo: EchoRef = client.get_promised(&furl);
    assert_eq!(echo.echo(3).await.unwrap(), 3);
    let pipelined = t.elapsed();
    eprintln!(
        "the same, pipelined behind the hello: {pipelined:?} ({:.2} round trips)",
        in_rtts(pipelined)
    );
    assert!(in_rtts(pipelined) >= 3.0, "{pipelined:?}");
    assert!(
        in_rtts(pipelined) + 0.5 < in_rtts(fresh),
        "pipelined {pipelined:?} saves no round trip over {fresh:?}"
    );
}
