//! The small service the transport tests (TCP, I2P, Tor) serve and call: an echo, and a call
//! back over the same connection, so that calls go both ways.

use std::sync::Arc;
use std::time::{Duration, Instant};

use folio_handlers::Registry;
use folio_rpc::{interface, Furl, Hint, Identity, Listener, Side, Tub, TubConfig};

/// Echoes, and calls back.
#[interface(name = "test.echo.v1")]
pub trait Echo {
    /// Returns `"<name>: <text>"`.
    async fn echo(&self, text: String) -> Result<String, String>;
    /// Calls `back` over the same connection and returns what it said.
    async fn call_back(&self, back: EchoRef, text: String) -> Result<String, String>;
}

/// An echo that prefixes its name.
pub struct EchoImpl(pub &'static str);

impl Echo for EchoImpl {
    async fn echo(&self, text: String) -> Result<String, String> {
        Ok(format!("{}: {text}", self.0))
    }
    async fn call_back(&self, back: EchoRef, text: String) -> Result<String, String> {
        back.echo(text).await.map_err(|e| e.to_string())
    }
}

/// A Tub with the identity in `pem`, reachable at `hint` through `listener`, exporting an
/// `EchoImpl("server")` under the name `echo`. It dials nothing (a private, empty registry).
pub fn serve(pem: &str, listener: impl Listener, hint: Hint) -> (Tub, Furl) {
    let tub = Tub::new(
        Identity::from_pem(pem).unwrap(),
        Arc::new(Registry::private()),
        TubConfig::default(),
    )
    .unwrap();
    tub.set_location(vec![hint]);
    tub.listen(listener);
    let furl = tub
        .register_as(EchoRef::serve(EchoImpl("server")), "echo")
        .unwrap();
    (tub, furl)
}

/// Gets the echo at `furl`, retrying for up to 90 s: the first connection to a new onion
/// service waits for its descriptor to spread (and a new I2P destination for its lease set).
pub async fn get_with_retries(tub: &Tub, furl: &Furl) -> EchoRef {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        match tub.get::<EchoRef>(furl).await {
            Ok(r) => return r,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("{furl} was never reached: {e}"),
        }
    }
}

/// Gets the echo at `furl` (retrying as [`get_with_retries`] does), calls it, has it call
/// back over the same connection, and checks that `server` accepted that connection as
/// [`Side::Server`]. Returns the echo.
pub async fn calls_both_ways(client: &Tub, server: &Tub, furl: &Furl) -> EchoRef {
    let echo = get_with_retries(client, furl).await;
    assert_eq!(echo.echo("hello".into()).await.unwrap(), "server: hello");
    let mine = EchoRef::serve(EchoImpl("client"));
    assert_eq!(
        echo.call_back(mine, "and back".into()).await.unwrap(),
        "client: and back"
    );
    assert_eq!(
        server.connection_info(&client.tubid()).unwrap().side,
        Side::Server
    );
    echo
}

/// Gets the echo at `furl` and calls it (`"again"`), retrying every 2 s (each try bounded
/// by 45 s) for up to `within`; returns the echo, the time it took and the failures seen on
/// the way (for the tests' report). Panics with those failures if `furl` is not reached.
pub async fn reach_again(
    client: &Tub,
    furl: &Furl,
    within: Duration,
) -> (EchoRef, Duration, Vec<String>) {
    let t = Instant::now();
    let mut failures = Vec::new();
    loop {
        let attempt =
            tokio::time::timeout(Duration::from_secs(45), client.get::<EchoRef>(furl)).await;
        match attempt {
            Ok(Ok(echo)) => match echo.echo("again".into()).await {
                Ok(answer) => {
                    assert_eq!(answer, "server: again");
                    return (echo, t.elapsed(), failures);
                }
                Err(e) => failures.push(format!("[{:5.1}s] call: {e}", t.elapsed().as_secs_f64())),
            },
            Ok(Err(e)) => failures.push(format!("[{:5.1}s] {e}", t.elapsed().as_secs_f64())),
            Err(_) => failures.push(format!(
                "[{:5.1}s] no answer within 45 s",
                t.elapsed().as_secs_f64()
            )),
        }
        if t.elapsed() > within {
            panic!(
                "{furl} was not reached again within {within:?}:\n{}",
                failures.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
