//! A daemon that offers one capability over a Tor onion service, and a client that keeps
//! a subscription to it alive across restarts. Both halves use a system tor.
//!
//! ```text
//! terminal 1:  cargo run -p folio-handlers --example tor_daemon -- \
//!                  serve --tor-control-port 127.0.0.1:9051 --state ./feed-state
//!              (prints a FURL, also saved in ./feed-state/feed.furl; the Tub identity, the
//!              onion key and the swissnum live in that directory, so the FURL stays the same
//!              across restarts)
//! terminal 2:  cargo run -p folio-handlers --example tor_daemon -- \
//!                  call --tor-control-port 127.0.0.1:9051 --count 5 'folio://…'
//!              (or --socks 127.0.0.1:9050 for a tor with no control port)
//! ```
//!
//! The daemon exports a `StatusFeed`. Its `subscribe` method takes a reference to an object
//! of the *client's* (a `StatusObserver`), and the daemon calls that reference back with a
//! status update every few seconds, over the connection the client opened: the client
//! needs no listener and no onion service of its own. When the client goes away, the
//! daemon learns it from the reference (`ObjectRef::on_disconnect`) and drops the
//! subscription.
//!
//! The client keeps the connection up with `Tub::connect_to` (a `Reconnector`), subscribes
//! again after every reconnection, and says what the reconnector is doing while the link is
//! down. It exits after `--count` updates; every wait is bounded by `--timeout`.
//!
//! Logs go to stderr (`RUST_LOG=debug` for more); what a user reads goes to stdout.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand};
use folio_handlers::tor::{OnionListener, TorHandler};
use folio_handlers::{Handler, Registry};
use folio_rpc::{
    interface, CallError, Disconnect, Furl, Identity, ReconnectPolicy, ReconnectorState,
    ReconnectorStatus, Swissnum, Tub, TubConfig, TypedRef,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

// ---------------------------------------------------------------------------------------
// The interface, as both halves see it.

/// One status update.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// Counts the updates sent to this subscription, from 1.
    pub seq: u64,
    /// How long the daemon has been running.
    pub uptime_secs: u64,
    /// Subscriptions the daemon holds now (all clients).
    pub subscribers: u32,
}

/// Why the daemon refuses a subscription.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum FeedError {
    /// Updates that often would cost the daemon (and Tor) too much.
    #[error("updates can be at most one every {min_ms} ms")]
    TooFrequent {
        /// The shortest interval the daemon accepts.
        min_ms: u32,
    },
    /// The daemon holds as many subscriptions as it will.
    #[error("the daemon holds {max} subscriptions already")]
    Full {
        /// Its limit.
        max: u32,
    },
}

/// What a subscriber can answer an update with.
#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
pub enum ObserverError {
    /// The subscriber wants no more updates: the daemon drops the subscription.
    #[error("no more updates, thanks")]
    Enough,
}

/// The daemon's service.
#[interface(name = "example.status-feed.v1")]
pub trait StatusFeed {
    /// Calls `observer.notify` every `every_ms` milliseconds until the observer answers
    /// `Enough` or its connection is lost. Returns the subscription's number.
    async fn subscribe(&self, observer: StatusObserverRef, every_ms: u32)
        -> Result<u64, FeedError>;
}

/// Implemented by the subscriber, called by the daemon.
#[interface(name = "example.status-observer.v1")]
pub trait StatusObserver {
    /// One update.
    async fn notify(&self, status: Status) -> Result<(), ObserverError>;
}

// ---------------------------------------------------------------------------------------
// Command line.

#[derive(Parser)]
#[command(about = "A Folio daemon on a Tor onion service, and its client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the daemon: prints its FURL, serves until SIGINT or SIGTERM.
    Serve {
        /// A system tor's control port (ControlPort in its torrc); NULL, SAFECOOKIE (cookie)
        /// or no authentication.
        #[arg(long, value_name = "HOST:PORT", value_parser = socket_addr)]
        tor_control_port: SocketAddr,
        /// Where the Tub identity, the onion service key and the swissnum are kept.
        #[arg(long, value_name = "DIR", default_value = "tor-daemon-state")]
        state: PathBuf,
        /// The onion service's port (the one in the FURL's `tor:` hint).
        #[arg(long, default_value_t = 3457)]
        virtual_port: u16,
    },
    /// Subscribes to a daemon's status feed and prints the updates.
    Call {
        /// A system tor's control port (its SOCKS port is asked for there).
        #[arg(long, value_name = "HOST:PORT", value_parser = socket_addr,
              required_unless_present = "socks", conflicts_with = "socks")]
        tor_control_port: Option<SocketAddr>,
        /// A system tor's SOCKS port, for a tor without a control port.
        #[arg(long, value_name = "HOST:PORT", value_parser = socket_addr)]
        socks: Option<SocketAddr>,
        /// Exit after this many updates.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
        count: u64,
        /// Ask for an update every this many seconds.
        #[arg(long, default_value_t = 2.0)]
        every: f64,
        /// Give up when no update has come for this many seconds (connecting, reconnecting
        /// and subscribing included).
        #[arg(long, default_value_t = 180)]
        timeout: u64,
        /// The daemon's FURL.
        furl: Furl,
    },
}

/// `HOST:PORT`, resolved now (`localhost:9051` as well as `127.0.0.1:9051`).
fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s}: no address"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve {
            tor_control_port,
            state,
            virtual_port,
        } => serve(tor_control_port, &state, virtual_port).await,
        Command::Call {
            tor_control_port,
            socks,
            count,
            every,
            timeout,
            furl,
        } => {
            let every_ms = (every * 1000.0).round().clamp(0.0, u32::MAX as f64) as u32;
            let handler = match (tor_control_port, socks) {
                (Some(control), _) => TorHandler::from_control(control)
                    .await
                    .with_context(|| format!("asking the tor at {control} for its SOCKS port"))?,
                (None, Some(socks)) => TorHandler::new(socks),
                (None, None) => unreachable!("clap requires one of them"),
            };
            call(handler, furl, count, every_ms, Duration::from_secs(timeout)).await
        }
    }
}

// ---------------------------------------------------------------------------------------
// The daemon.

/// The shortest update interval the daemon accepts.
const MIN_EVERY_MS: u32 = 500;
/// The most subscriptions it holds (every peer together): a bound on what callers can make
/// it spend.
const MAX_SUBSCRIPTIONS: usize = 64;
/// How long one `notify` may take before the daemon stops waiting for it.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);

type Subscriptions = Arc<Mutex<HashMap<u64, AbortHandle>>>;

struct Feed {
    started: Instant,
    next_id: AtomicU64,
    /// Subscription number → the task that delivers its updates.
    subs: Subscriptions,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StatusFeed for Feed {
    async fn subscribe(
        &self,
        observer: StatusObserverRef,
        every_ms: u32,
    ) -> Result<u64, FeedError> {
        if every_ms < MIN_EVERY_MS {
            return Err(FeedError::TooFrequent {
                min_ms: MIN_EVERY_MS,
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let peer = observer.object_ref().tubid();
        {
            let mut subs = lock(&self.subs);
            if subs.len() >= MAX_SUBSCRIPTIONS {
                return Err(FeedError::Full {
                    max: MAX_SUBSCRIPTIONS as u32,
                });
            }
            // Spawned under the lock: the task removes itself when it ends, never before
            // it is in the table.
            let task = tokio::spawn(deliver(
                id,
                observer.with_timeout(Some(NOTIFY_TIMEOUT)),
                Duration::from_millis(every_ms.into()),
                self.started,
                self.subs.clone(),
            ));
            subs.insert(id, task.abort_handle());
        }
        // The observer lives on the client's side of the connection: when that connection
        // is lost, so is the subscription. Runs at once if it is lost already.
        let subs = self.subs.clone();
        observer
            .object_ref()
            .on_disconnect(move |why: &Disconnect| {
                if let Some(task) = lock(&subs).remove(&id) {
                    task.abort();
                    info!(id, %why, "subscriber disconnected: subscription dropped");
                }
            });
        info!(id, ?peer, every_ms, "subscribed");
        Ok(id)
    }
}

/// Sends subscription `id` its updates until the observer has had enough or is gone.
async fn deliver(
    id: u64,
    observer: StatusObserverRef,
    every: Duration,
    started: Instant,
    subs: Subscriptions,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 1.. {
        ticks.tick().await; // the first tick is at once
        let status = Status {
            seq,
            uptime_secs: started.elapsed().as_secs(),
            subscribers: lock(&subs).len() as u32,
        };
        match observer.notify(status).await {
            Ok(()) => debug!(id, seq, "update delivered"),
            Err(CallError::App(ObserverError::Enough)) => {
                info!(id, seq, "subscriber has had enough: subscription dropped");
                break;
            }
            // The on_disconnect observer removes the subscription (and aborts this task).
            Err(CallError::Disconnected(why)) => {
                debug!(id, %why, "update lost with the connection");
                return;
            }
            // A slow subscriber: skip this update, keep the subscription.
            Err(CallError::DeadlineExceeded(after)) => {
                warn!(id, seq, "no answer to an update within {after:?}")
            }
            // Refused (the client's object does not take `notify`), a protocol error, ...:
            // this subscriber cannot be served.
            Err(e) => {
                warn!(id, seq, error = %e, "update failed: subscription dropped");
                break;
            }
        }
    }
    lock(&subs).remove(&id);
}

async fn serve(control: SocketAddr, state: &Path, virtual_port: u16) -> anyhow::Result<()> {
    make_private_dir(state)?;
    let identity = Identity::load_or_generate(&state.join("identity.pem"))
        .with_context(|| format!("the Tub identity in {}", state.display()))?;

    // Dial through tor too, and never directly: a daemon on an onion service hides its IP.
    let mut registry = Registry::private();
    let tor = TorHandler::from_control(control)
        .await
        .with_context(|| format!("the tor control port at {control}"))?;
    info!(handler = %tor.describe());
    registry.set("tor", Arc::new(tor))?;
    let tub = Tub::new(identity, Arc::new(registry), TubConfig::default())?;

    // The onion service lives as long as this control connection (the listener holds it):
    // when the daemon exits, tor takes the service down.
    let listener = tokio::time::timeout(
        Duration::from_secs(60),
        OnionListener::start(control, &state.join("onion.key"), virtual_port),
    )
    .await
    .context("tor did not add the onion service within 60 s")?
    .context("adding the onion service")?;
    info!(onion = listener.onion(), local = ?listener.local_addr()?, "onion service added");
    tub.set_location(vec![listener.hint()]);
    tub.listen(listener);

    let feed = StatusFeedRef::serve(Feed {
        started: Instant::now(),
        next_id: AtomicU64::new(1),
        subs: Arc::default(),
    });
    let furl = tub.register_as(
        feed,
        load_or_make_swissnum(&state.join("feed.swissnum"))?.as_str(),
    )?;
    folio_rpc::identity::write_private(&state.join("feed.furl"), format!("{furl}\n").as_bytes())?;
    println!("{furl}");
    info!(tubid = %tub.tubid(), "serving; the onion service may take a few seconds to be reachable");

    let signal = shutdown_signal().await?;
    info!("{signal}: shutting down");
    shut_down(&tub).await;
    Ok(())
}

/// What a reconnector is doing, in words.
fn describe(status: &ReconnectorStatus) -> String {
    let last_error = status.last_error.as_deref().unwrap_or("none");
    match &status.state {
        ReconnectorState::Connecting => format!("connecting (attempt {})", status.attempts),
        ReconnectorState::Waiting { next_attempt } => format!(
            "attempt {} in {:.1} s (last error: {last_error})",
            status.attempts + 1,
            next_attempt
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .as_secs_f64(),
        ),
        ReconnectorState::Connected { since } => format!(
            "connected for {:.0} s",
            since.elapsed().unwrap_or_default().as_secs_f64()
        ),
        ReconnectorState::Stopped => "stopped".into(),
    }
}

/// Closes every connection with a goodbye, so that peers learn why
/// (`Disconnect::PeerGoodbye`) rather than see the stream cut.
async fn shut_down(tub: &Tub) {
    if tokio::time::timeout(Duration::from_secs(10), tub.shutdown())
        .await
        .is_err()
    {
        warn!("shutdown took over 10 s");
    }
}

/// The swissnum the feed is registered under: 160 random bits, made once and kept (like
/// the identity) so that the FURL outlives a restart. It is what makes the FURL a
/// capability, so it is kept `0600`.
fn load_or_make_swissnum(path: &Path) -> anyhow::Result<Swissnum> {
    match folio_rpc::identity::read_text_bounded(path, 1024) {
        Ok(text) => Swissnum::new(text.trim())
            .with_context(|| format!("{} does not hold a swissnum", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let swissnum = Swissnum::random();
            folio_rpc::identity::write_private(path, format!("{swissnum}\n").as_bytes())
                .with_context(|| format!("saving {}", path.display()))?;
            Ok(swissnum)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

async fn shutdown_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map(|()| "Ctrl-C")
    }
}

// ---------------------------------------------------------------------------------------
// The client.

/// What the client's tasks tell its main loop.
enum Event {
    /// An update arrived (the observer was called).
    Update(Status),
    /// A subscription was made on a new connection.
    Subscribed(u64),
    /// The connection the subscription was on is lost.
    Lost(Disconnect),
    /// Nothing more can be done.
    Fatal(String),
}

/// The client's observer: hands updates to the main loop, and answers `Enough` to the
/// last one it wants.
struct Printer {
    events: mpsc::Sender<Event>,
    received: AtomicU64,
    wanted: u64,
}

impl StatusObserver for Printer {
    async fn notify(&self, status: Status) -> Result<(), ObserverError> {
        let n = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.events.send(Event::Update(status)).await;
        if n >= self.wanted {
            Err(ObserverError::Enough)
        } else {
            Ok(())
        }
    }
}

async fn call(
    tor: TorHandler,
    furl: Furl,
    count: u64,
    every_ms: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    info!(handler = %tor.describe());
    let mut registry = Registry::private();
    registry.set("tor", Arc::new(tor))?;
    // A throwaway identity: the daemon needs no stable name for its subscribers.
    let tub = Tub::new(
        Identity::generate()?,
        Arc::new(registry),
        TubConfig::default().call_timeout(Some(timeout)),
    )?;

    let (events, mut inbox) = mpsc::channel(64);
    let observer = StatusObserverRef::serve(Printer {
        events: events.clone(),
        received: AtomicU64::new(0),
        wanted: count,
    });

    // After each (re)connection: subscribe the same observer again, then watch the
    // connection. The callback must not block the reconnector, so it spawns.
    let policy = ReconnectPolicy::default().max(Duration::from_secs(30));
    let reconnector = tub.connect_to(furl, policy, move |reference| {
        let (observer, events) = (observer.clone(), events.clone());
        tokio::spawn(async move {
            let feed = match StatusFeedRef::from_object_ref(reference) {
                Ok(feed) => feed,
                Err(refusal) => {
                    let _ = events
                        .send(Event::Fatal(format!("not a status feed: {refusal}")))
                        .await;
                    return;
                }
            };
            let event = match feed.subscribe(observer, every_ms).await {
                Ok(id) => Event::Subscribed(id),
                Err(CallError::App(FeedError::TooFrequent { min_ms })) => Event::Fatal(format!(
                    "the daemon sends at most one update every {min_ms} ms: try --every {}",
                    f64::from(min_ms) / 1000.0
                )),
                Err(CallError::App(e @ FeedError::Full { .. })) => {
                    Event::Fatal(format!("the daemon refused: {e}"))
                }
                // Lost again at once: the reconnector will call us back.
                Err(CallError::Disconnected(why)) => Event::Lost(why),
                // The link is up but the daemon does not answer: --timeout ends the run
                // unless the connection drops and the reconnector tries again.
                Err(CallError::DeadlineExceeded(after)) => {
                    warn!("subscribe got no answer within {after:?}");
                    return;
                }
                Err(e) => Event::Fatal(format!("subscribe failed: {e}")),
            };
            let subscribed = matches!(event, Event::Subscribed(_));
            let _ = events.send(event).await;
            if subscribed {
                let why = feed.object_ref().disconnected().await;
                let _ = events.send(Event::Lost(why)).await;
            }
        });
    });

    let mut received = 0;
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut lost_at: Option<Instant> = None;
    let mut last_report = None;
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let outcome = loop {
        tokio::select! {
            event = inbox.recv() => match event {
                Some(Event::Update(s)) => {
                    received += 1;
                    deadline = tokio::time::Instant::now() + timeout;
                    println!(
                        "update {received}/{count}: #{} from a daemon up {} s, {} subscriber(s)",
                        s.seq, s.uptime_secs, s.subscribers
                    );
                    if received >= count {
                        break Ok(());
                    }
                }
                Some(Event::Subscribed(id)) => match lost_at.take() {
                    Some(t) => println!(
                        "reconnected and subscribed again (subscription {id}), {:.1} s after the connection was lost",
                        t.elapsed().as_secs_f64()
                    ),
                    None => println!("connected; subscribed (subscription {id})"),
                },
                Some(Event::Lost(why)) => {
                    println!("connection lost: {why}");
                    lost_at.get_or_insert_with(Instant::now);
                }
                Some(Event::Fatal(why)) => break Err(anyhow::anyhow!(why)),
                None => unreachable!("the reconnector's callback holds a sender"),
            },
            // While not connected, say what the reconnector is doing (once per attempt
            // and state).
            _ = poll.tick() => {
                let status = reconnector.status();
                let key = (status.attempts, std::mem::discriminant(&status.state));
                if last_report != Some(key) && !matches!(status.state, ReconnectorState::Connected { .. }) {
                    println!("reconnector: {}", describe(&status));
                    last_report = Some(key);
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                break Err(anyhow::anyhow!(
                    "no update for {} s (reconnector: {})",
                    timeout.as_secs(),
                    describe(&reconnector.status()),
                ));
            }
        }
    };

    reconnector.stop();
    shut_down(&tub).await;
    if outcome.is_ok() {
        println!("received {received} updates; done");
    }
    outcome
}
