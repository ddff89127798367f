//! Tubs for tests over real TCP on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;

use folio_handlers::{Registry, TcpListener};
use folio_rpc::{Host, Identity, Tub, TubConfig};

/// A Tub with a new identity that dials `tcp:` hints directly and listens nowhere.
pub fn tcp_tub(cfg: TubConfig) -> Tub {
    Tub::new(
        Identity::generate().expect("an identity"),
        Arc::new(Registry::with_tcp()),
        cfg,
    )
    .expect("a Tub")
}

/// Like [`tcp_tub`], also listening on 127.0.0.1 at a free port, with that as its location.
/// Returns the Tub and the address it listens on.
pub async fn listening_tub(cfg: TubConfig) -> (Tub, SocketAddr) {
    let tub = tcp_tub(cfg);
    let listener = TcpListener::bind(&"tcp:0:interface=127.0.0.1".parse().expect("a listen spec"))
        .await
        .expect("a listener on 127.0.0.1");
    let addr = listener.local_spec().addr;
    tub.set_location(vec![listener.hint_for(Host::Ipv4([127, 0, 0, 1].into()))]);
    tub.listen(listener);
    (tub, addr)
}
