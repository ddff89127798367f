//! The web gateway: the welcome page a person reads and the web API scripts use.
//!
//! A node with `[node] web.port` set (`create-node` writes `tcp:3456:interface=127.0.0.1`)
//! serves HTTP/1.1 there, with axum on hyper. It writes its URL to `BASEDIR/node.url` once
//! it listens (the port the system picked, for `tcp:0`), which `tahoe webopen` reads.
//!
//! - `GET /` is the welcome page: the node, its handlers (with Tor bootstrap and I2P session
//!   state), introducers, storage servers and recent transfers. It refreshes itself every
//!   two seconds without a reload. `GET /?t=json` and `GET /status/?t=json` give the same
//!   data as JSON.
//! - `/uri` is the web API, with Tahoe-LAFS's paths and semantics where Folio has the
//!   operation (see [`api`]).
//!
//! # Security
//!
//! The gateway holds capabilities in its URLs and has no login: whoever can send it a
//! request can use every capability it is given. So:
//!
//! - it listens on loopback by default, and a node that hides its IP address refuses any
//!   other interface ([`crate::config::PrivacyViolation::PublicWebPort`]);
//! - on loopback it answers only requests whose `Host` is a loopback name with its port,
//!   so a web page cannot reach it through DNS rebinding;
//! - state-changing requests (`PUT`, `POST`, `DELETE`) from another origin are refused: a
//!   request with an `Origin` other than the gateway's own, or that a browser marks
//!   `Sec-Fetch-Site: cross-site`/`same-site`, is answered 403 before anything happens;
//! - reading requests that a browser marks as another site's are refused too, but for a
//!   link a person follows (`Sec-Fetch-Mode: navigate` with `Sec-Fetch-User: ?1`): a page
//!   elsewhere cannot make the node fetch a cap from the grid (and so tie its visitor to
//!   the node through storage servers its author runs), nor probe for the gateway
//!   (browsers send `Sec-Fetch-*` only to origins they trust, loopback among them: beyond
//!   loopback over plain HTTP, only the `Origin` check on writes remains);
//! - every response carries `Referrer-Policy: no-referrer` (a cap in a URL never leaves in
//!   a `Referer`), `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`,
//!   `Cross-Origin-Resource-Policy: same-origin`; file contents are served under a
//!   sandboxing `Content-Security-Policy` (no script, form or window; nothing loaded from
//!   beyond the gateway), so an HTML or SVG file read through the gateway can neither act
//!   nor send its URL away on its own (a link in it that the reader clicks may ask for a
//!   `Referer` of its own, as on any page);
//! - request paths and queries are never logged (`/uri/…` is logged as `/uri/[cap]`), and
//!   refused requests are warned of at most once per 10 s.

pub mod api;
mod html;
pub mod welcome;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use folio_transports::tcp::ListenSpec;
use tracing::{debug, info, warn, Instrument};

use crate::broker::StorageBroker;
use crate::control::{ControlError, NodeStatus};
use crate::files::Files;

/// What the gateway serves from: the node's status and its file side.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

struct GatewayInner {
    status: Box<dyn Fn() -> Option<NodeStatus> + Send + Sync>,
    files: Option<Files>,
    broker: Option<Arc<StorageBroker>>,
    /// The `Host` values accepted, set when it starts serving (see [`HostRule`]).
    hosts: std::sync::OnceLock<HostRule>,
    /// Whether a free-space refresh is running.
    refreshing: AtomicBool,
    /// When a refused request was last logged as a warning (any web page can send many).
    refusal_warned: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Gateway {
    /// A gateway for a node: `status` says what the node sees (`None` once it is shutting
    /// down), `files` is its file side (`None` for an introducer).
    pub fn new(
        status: Box<dyn Fn() -> Option<NodeStatus> + Send + Sync>,
        files: Option<Files>,
        broker: Option<Arc<StorageBroker>>,
    ) -> Gateway {
        Gateway {
            inner: Arc::new(GatewayInner {
                status,
                files,
                broker,
                hosts: std::sync::OnceLock::new(),
                refreshing: AtomicBool::new(false),
                refusal_warned: std::sync::Mutex::new(None),
            }),
        }
    }

    fn status(&self) -> Result<NodeStatus, ControlError> {
        let s = (self.inner.status)().ok_or(ControlError::ShuttingDown)?;
        self.refresh_space();
        Ok(s)
    }

    fn files(&self) -> Result<&Files, ControlError> {
        self.inner.files.as_ref().ok_or(ControlError::NotAClient)
    }

    /// Asks the storage servers for their free space in the background, at most every 30 s
    /// per server and one round at a time.
    fn refresh_space(&self) {
        let Some(broker) = self.inner.broker.clone() else {
            return;
        };
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            broker
                .refresh_space(std::time::Duration::from_secs(30))
                .await;
            me.inner.refreshing.store(false, Ordering::Release);
        });
    }
}

/// A running gateway; stopped by [`Web::stop`] (or when dropped, without waiting).
pub struct Web {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Why the gateway could not listen.
#[derive(Debug, thiserror::Error)]
#[error("web.port {spec}: {source}")]
pub struct WebError {
    spec: ListenSpec,
    #[source]
    source: std::io::Error,
}

/// A bound web port, not yet serving (so a node can fail before it starts anything else).
pub struct WebListener {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
}

impl WebListener {
    /// Binds `spec`.
    pub async fn bind(spec: &ListenSpec) -> Result<WebListener, WebError> {
        let err = |source| WebError {
            spec: *spec,
            source,
        };
        let listener = tokio::net::TcpListener::bind(spec.addr)
            .await
            .map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        Ok(WebListener { listener, addr })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `gateway` until stopped.
    pub fn serve(self, gateway: Gateway) -> Web {
        let WebListener { listener, addr } = self;
        let _ = gateway.inner.hosts.set(allowed_hosts(addr));
        spawn(listener, gateway, url_for(addr))
    }
}

fn spawn(listener: tokio::net::TcpListener, gateway: Gateway, url: String) -> Web {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let app = router(gateway);
    info!(url = %url, "web gateway listening");
    let task = tokio::spawn(
        async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            let mut conns = tokio::task::JoinSet::new();
            loop {
                // A place first: past MAX_CONNECTIONS, new connections wait in the backlog.
                let permit = tokio::select! {
                    _ = &mut stopped => break,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let io = tokio::select! {
                    _ = &mut stopped => break,
                    a = listener.accept() => match a {
                        Ok((io, _)) => io,
                        Err(e) => {
                            // Out of file descriptors, most likely: wait, do not spin.
                            warn!(error = %e, "the web gateway could not accept a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                while conns.try_join_next().is_some() {}
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                conns.spawn(async move {
                    let served = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        // One request per connection: an idle connection holds no place.
                        .keep_alive(false)
                        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                        .await;
                    if let Err(e) = served {
                        debug!(error = %e, "a web connection ended with an error");
                    }
                    drop(permit);
                });
            }
            drop(listener);
            // Requests under way get STOP_GRACE to end; then they are dropped.
            let drain = async { while conns.join_next().await.is_some() {} };
            if tokio::time::timeout(STOP_GRACE, drain).await.is_err() {
                conns.abort_all();
            }
        }
        .instrument(tracing::info_span!("web")),
    );
    Web {
        url,
        stop: Some(stop),
        task: Some(task),
    }
}

/// How long a connection may take to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long requests under way may run once the gateway is asked to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// The most connections the gateway holds at once; one more waits for one to close.
pub const MAX_CONNECTIONS: usize = 256;

impl Web {
    /// The gateway's URL (`http://127.0.0.1:3456/`), as written to `node.url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops listening, lets requests under way end for up to [`STOP_GRACE`], then drops
    /// them (their downloads stop with their connections).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(mut t) = self.task.take() {
            if tokio::time::timeout(STOP_GRACE + Duration::from_secs(1), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// The URL a browser on this host uses for a gateway bound to `addr`.
fn url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    match ip {
        IpAddr::V4(v4) => format!("http://{v4}:{}/", addr.port()),
        IpAddr::V6(v6) => format!("http://[{v6}]:{}/", addr.port()),
    }
}

/// The `Host` values the gateway answers to. Never any DNS name but `localhost`: a web page
/// can point a name of its own at this host (DNS rebinding) and would then be of the same
/// origin as the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    /// On loopback: `127.0.0.1`, `localhost`, `[::1]` (and the address bound), with the port.
    Exact(Vec<String>),
    /// Beyond loopback: `localhost` or any IP address literal, with the port.
    Literal(u16),
}

impl HostRule {
    fn allows(&self, host: &str) -> bool {
        // No port: the default one.
        let host = if host.ends_with(']') || !host.contains(':') {
            format!("{host}:80")
        } else {
            host.to_string()
        };
        match self {
            HostRule::Exact(v) => v.contains(&host),
            HostRule::Literal(port) => {
                let Some((name, p)) = host.rsplit_once(':') else {
                    return false;
                };
                p == port.to_string()
                    && (name == "localhost"
                        || name.parse::<Ipv4Addr>().is_ok()
                        || name
                            .strip_prefix('[')
                            .and_then(|n| n.strip_suffix(']'))
                            .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok()))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            HostRule::Exact(v) => v.first().cloned().unwrap_or_default(),
            HostRule::Literal(p) => format!("localhost or an IP address, with port {p}"),
        }
    }
}

/// The `Host` values a gateway bound to `addr` answers to.
fn allowed_hosts(addr: SocketAddr) -> HostRule {
    let p = addr.port();
    if !addr.ip().is_loopback() {
        return HostRule::Literal(p);
    }
    let mut hosts = vec![
        format!("127.0.0.1:{p}"),
        format!("localhost:{p}"),
        format!("[::1]:{p}"),
    ];
    match addr.ip() {
        IpAddr::V4(v4) => hosts.push(format!("{v4}:{p}")),
        IpAddr::V6(v6) => hosts.push(format!("[{v6}]:{p}")),
    }
    HostRule::Exact(hosts)
}

fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/", get(welcome::root))
        .route("/status", get(welcome::status))
        .route("/status/", get(welcome::status))
        .route("/static/welcome.js", get(welcome::script))
        .route("/static/welcome.css", get(welcome::style))
        .route(
            "/uri",
            get(api::uri_query).put(api::put_uri).post(api::post_uri),
        )
        .route(
            "/uri/{*rest}",
            get(api::get_path)
                .put(api::put_path)
                .post(api::post_path)
                .delete(api::delete_path),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(gateway.clone(), guard))
        .with_state(gateway)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such page")
}

/// The path as it may be logged: one of the gateway's fixed pages, `/uri/[cap]`, or
/// `[other]`, never what a request typed (a cap in another spelling, `/file/CAP`, a LIT cap
/// holding a file's contents).
fn censored(path: &str) -> &'static str {
    const FIXED: [&str; 6] = [
        "/",
        "/status",
        "/status/",
        "/static/welcome.js",
        "/static/welcome.css",
        "/uri",
    ];
    if let Some(p) = FIXED.iter().find(|p| **p == path) {
        p
    } else if path.starts_with("/uri/") {
        "/uri/[cap]"
    } else {
        "[other]"
    }
}

/// Host and origin checks before every request, security headers after.
async fn guard(State(gw): State<Gateway>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = censored(req.uri().path());
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let refused = match gw.inner.hosts.get() {
        Some(rule) if !rule.allows(&host) => Some(format!(
            "this gateway answers only to {} (the request named host {:?})",
            rule.describe(),
            host.chars().take(80).collect::<String>()
        )),
        _ if changes_state(&method) => cross_origin(&req, &host),
        _ => cross_site_read(&req),
    };
    let mut resp = match refused {
        Some(why) => {
            if gw.warn_of_refusal() {
                warn!(%method, path, "refused: {why} (more refusals within {REFUSALS_QUIET:?} are logged at debug level)");
            } else {
                debug!(%method, path, "refused: {why}");
            }
            error(StatusCode::FORBIDDEN, &why)
        }
        None => next.run(req).await,
    };
    debug!(%method, path, status = resp.status().as_u16(), "web request");
    let h = resp.headers_mut();
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert("x-dns-prefetch-control", HeaderValue::from_static("off"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ));
    resp
}

fn changes_state(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// How long after a refusal logged as a warning others are logged at debug level only.
const REFUSALS_QUIET: Duration = Duration::from_secs(10);

impl Gateway {
    /// Whether a refusal now should be a warning (at most one per [`REFUSALS_QUIET`]).
    fn warn_of_refusal(&self) -> bool {
        let mut last = crate::broker::lock(&self.inner.refusal_warned);
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFUSALS_QUIET) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Why a reading request looks like another site's doing, if it does: a page elsewhere
/// may not make the node fetch from the grid (an `<img>` naming a cap whose storage
/// servers its author watches would tie the visitor to the node), nor probe the gateway.
/// Only a link a person follows (`Sec-Fetch-Mode: navigate`, `Sec-Fetch-User: ?1`) may come
/// from elsewhere. Clients that are not browsers send no `Sec-Fetch-*` headers; browsers
/// send them only to origins they trust (loopback, HTTPS), so a gateway reached over plain
/// HTTP beyond loopback has this check from no browser.
fn cross_site_read(req: &Request) -> Option<String> {
    let h = req.headers();
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    let site = get("sec-fetch-site")?;
    if matches!(site, "same-origin" | "none") {
        return None;
    }
    // A link a person follows, into a window of its own (not a frame: a frame of the
    // gateway is never shown, but the node would have fetched the cap first).
    if get("sec-fetch-mode") == Some("navigate")
        && get("sec-fetch-user") == Some("?1")
        && !matches!(
            get("sec-fetch-dest"),
            Some("iframe" | "frame" | "object" | "embed")
        )
    {
        return None;
    }
    Some(format!(
        "a {} page may not make this gateway fetch anything (only a link a person follows)",
        site.chars().take(20).collect::<String>()
    ))
}

/// Why a state-changing request looks cross-origin, if it does.
fn cross_origin(req: &Request, host: &str) -> Option<String> {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!(
                "a {site} request may not change anything here (no cross-origin writes)"
            ));
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let own = format!("http://{host}");
        if origin.as_bytes() != own.as_bytes() {
            return Some(format!(
                "a request from origin {:?} may not change anything here (no cross-origin \
                 writes)",
                String::from_utf8_lossy(origin.as_bytes())
                    .chars()
                    .take(80)
                    .collect::<String>()
            ));
        }
    }
    None
}

/// A plain-text error a person can read.
pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    let mut r = (status, format!("{message}\n")).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The status for a failed operation.
pub(crate) fn status_of(e: &ControlError) -> StatusCode {
    match e {
        ControlError::BadCap(_) | ControlError::Path(_) => StatusCode::BAD_REQUEST,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Exists(_) | ControlError::Uncoordinated(_) => StatusCode::CONFLICT,
        ControlError::ReadOnly(_) => StatusCode::FORBIDDEN,
        ControlError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        ControlError::Download(_) => StatusCode::GONE,
        ControlError::Upload(_) | ControlError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ControlError::NotAClient => StatusCode::NOT_IMPLEMENTED,
        ControlError::Io(_) | ControlError::Finished => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failed operation as a response.
pub(crate) fn failed(e: &ControlError) -> Response {
    error(status_of(e), &e.to_string())
}

/// A response of `body` with `content_type`.
pub(crate) fn typed(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Body>,
) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hosts() {
        let a: SocketAddr = "127.0.0.1:3456".parse().unwrap();
        assert_eq!(url_for(a), "http://127.0.0.1:3456/");
        let rule = allowed_hosts(a);
        for ok in ["localhost:3456", "127.0.0.1:3456", "[::1]:3456"] {
            assert!(rule.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:3456",
            "127.0.0.1:3457",
            "10.0.0.1:3456",
            "127.0.0.1",
            "",
        ] {
            assert!(!rule.allows(bad), "{bad}");
        }
        let any: SocketAddr = "0.0.0.0:80".parse().unwrap();
        assert_eq!(url_for(any), "http://127.0.0.1:80/");
        let rule = allowed_hosts(any);
        for ok in [
            "192.168.1.5",
            "192.168.1.5:80",
            "localhost",
            "[fe80::1]:80",
            "[::1]",
        ] {
            assert!(rule.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:80",
            "192.168.1.5:81",
            "1.2.3.4.nip.io:80",
        ] {
            assert!(!rule.allows(bad), "{bad}");
        }
        let v6: SocketAddr = "[::1]:8".parse().unwrap();
        assert_eq!(url_for(v6), "http://[::1]:8/");
    }

    #[test]
    fn caps_are_not_logged() {
        assert_eq!(censored("/uri/folio:CHK:abc/x"), "/uri/[cap]");
        assert_eq!(censored("/"), "/");
        assert_eq!(censored("/named/folio:LIT:abc"), "[other]");
        assert_eq!(censored("/URI/folio:LIT:abc"), "[other]");
    }
}
