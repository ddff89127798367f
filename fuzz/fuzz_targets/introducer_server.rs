//! The introducer (`folio_node::introducer::IntroducerService`) as a node serves it: exported
//! on a Tub configured as a node's, with small limits (4 announcements, 2 subscriptions, a
//! 60 s delivery timeout) so that they are reached, on a current-thread runtime with paused
//! time. The first byte `m` of the input picks the mode, `m % 2`:
//!
//! - `0` **frames**: a real client handshake, then the rest is split at `f5 f5 f5 f5` and
//!   each piece is sent as one frame payload: the message decoder, the decoders of `publish`
//!   and `subscribe` (signed announcements, subscriber references), the signature check and
//!   the announcement decoder behind it. The client never answers the introducer's callbacks
//!   and finally goes away.
//! - `1` **operations**: the rest is read as a sequence of operations (see [`Op`]) made by a
//!   real client Tub with typed calls: announcements signed by three fixed keys, with chosen
//!   services, sequence numbers, nicknames and FURLs, some tampered with; subscriptions of
//!   three subscriber objects (one answers, one refuses, one takes longer than the delivery
//!   timeout); idle time; reconnections. Each answer is checked against a model.
//!
//! Invariants, beyond not panicking:
//! - every await is bounded in virtual time (a hang is a crash);
//! - the introducer holds at most its limits of announcements and subscriptions, and every
//!   announcement it holds verifies, one per (service, key);
//! - (operations) `publish` and `subscribe` answer as the model predicts (accepted, stale with
//!   the current sequence number, full, refused with the verifier's own error); the introducer
//!   holds exactly the model's announcements and subscriptions; a subscriber that answers
//!   has heard, for each service it is subscribed to, exactly the newest announcement of
//!   every key; nobody hears an announcement that does not verify or of a service it never
//!   subscribed to;
//! - once the client is gone, its subscriptions are dropped and no delivery is left in flight
//!   after the delivery timeout.
//!
//! Seeds (`seeds/introducer_server/`): hand-written operation sequences (`ops_*`) and, for
//! each, the frames a real client Tub sent while running it, recorded by a TLS-terminating
//! proxy (`frames_*`). Regenerate with (the fuzzer exits once they are written):
//!
//! ```sh
//! FOLIO_FUZZ_WRITE_SEEDS=$PWD/fuzz/seeds/introducer_server RUSTC_BOOTSTRAP=1 \
//!   cargo fuzz run --fuzz-dir fuzz introducer_server -- -runs=0
//! ```
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use folio_fuzz::{
    bounded, eventually, node_like_tub, runtime, settle, Capture, Input, MemConnector, RawClient,
    Seed, CLIENT_PEM, SERVER_PEM,
};
use folio_node::introducer::{
    Announcement, IntroducerError, IntroducerLimits, IntroducerRef, IntroducerService,
    PublishOutcome, SignedAnnouncement, Subscriber, SubscriberRef,
};
use folio_node::private::SigningKey;
use folio_rpc::{Bytes, CallError, Furl, NoConnector, Tub};
use libfuzzer_sys::fuzz_target;

/// The per-publisher limits equal the whole, so they never decide before it (one connection
/// and one key never hold more than the introducer does): the model stays the global one.
const LIMITS: IntroducerLimits = IntroducerLimits {
    max_announcements: 4,
    max_per_peer: 4,
    max_per_key: 4,
    max_subscribers: 2,
    delivery_timeout: Duration::from_secs(60),
};
/// The services operations name: three valid, one not.
const SERVICES: [&str; 4] = ["storage", "x-1", "other", "Not Valid"];
/// How long the slow subscriber takes to answer (longer than the delivery timeout).
const SLOW: Duration = Duration::from_secs(90);
const MAX_OPS: usize = 64;

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("FOLIO_FUZZ_WRITE_SEEDS") {
            seeds::write(Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let Some((&m, rest)) = data.split_first() else {
            return;
        };
        runtime().block_on(async {
            match m % 2 {
                0 => frames(rest).await,
                _ => ops(rest, None).await,
            }
        });
    }
);

struct Server {
    svc: IntroducerService,
    tub: Tub,
    furl: Furl,
}

fn start() -> Server {
    let svc = IntroducerService::new(LIMITS);
    let tub = node_like_tub(SERVER_PEM, Arc::new(NoConnector));
    let furl = tub.register_as(svc.serve(), "introducer").unwrap();
    Server { svc, tub, furl }
}

/// What holds whatever the input did.
fn held_well_formed(s: &Server) {
    let held = s.svc.announcements();
    assert!(held.len() <= LIMITS.max_announcements);
    assert!(s.svc.subscriber_count() <= LIMITS.max_subscribers);
    let mut keys = BTreeSet::new();
    for v in &held {
        let again = v.signed.verify().expect("a held announcement verifies");
        assert_eq!(again.ann, v.ann);
        assert_eq!(again.key, v.key);
        assert!(
            keys.insert((v.ann.service.clone(), v.key)),
            "two for one key"
        );
    }
}

/// Mode 0: hostile frames.
async fn frames(input: &[u8]) {
    let s = start();
    let mut client = RawClient::connect(&s.tub).await;
    bounded("sending the input", 600, client.send(input)).await;
    settle().await;
    assert!(s.tub.connection_count() <= 1);
    held_well_formed(&s);
    client.close().await;
    eventually("dropping a client that closed", 600, || {
        s.tub.connection_count() == 0
    })
    .await;
    eventually(
        "dropping the subscriptions of a client that left",
        10,
        || s.svc.subscriber_count() == 0,
    )
    .await;
    let limit = LIMITS.delivery_timeout.as_secs() + 10;
    eventually("deliveries to end", limit, || {
        s.svc.deliveries_in_flight() == 0
    })
    .await;
    held_well_formed(&s);
    bounded("Tub::shutdown", 10, s.tub.shutdown()).await;
    bounded("the server closing its end", 60, client.server_closed()).await;
}

// ---------------------------------------------------------------------------------------
// Mode 1: operations, against a model.

#[derive(Debug, Clone)]
enum Op {
    Publish {
        key: u8,
        service: u8,
        seqnum: u64,
        nickname: Vec<u8>,
        furl: u8,
        tamper: u8,
    },
    Subscribe {
        sub: u8,
        service: u8,
    },
    Sleep {
        secs: u8,
    },
    Reconnect,
}

impl Op {
    fn read(i: &mut Input) -> Op {
        match i.u8() % 6 {
            0..=2 => Op::Publish {
                key: i.u8() % 3,
                service: i.u8(),
                seqnum: i.var(),
                nickname: i.data(100),
                furl: i.u8(),
                tamper: i.u8(),
            },
            3 => Op::Subscribe {
                sub: i.u8() % 3,
                service: i.u8(),
            },
            4 => Op::Sleep { secs: i.u8() },
            _ => Op::Reconnect,
        }
    }
}

fn service(b: u8) -> &'static str {
    SERVICES[usize::from(b) % SERVICES.len()]
}

fn key(k: u8) -> SigningKey {
    SigningKey::from_seed([0x30 + k; 32])
}

/// The announcement an operation publishes, signed and then perhaps tampered with.
fn announcement(
    server: &Furl,
    k: u8,
    svc: u8,
    seqnum: u64,
    nickname: &[u8],
    furl: u8,
    tamper: u8,
) -> SignedAnnouncement {
    let ann = Announcement {
        service: service(svc).to_string(),
        nickname: String::from_utf8_lossy(nickname).into_owned(),
        version: "folio-fuzz/0".to_string(),
        seqnum,
        nonce: [furl; 16],
        furl: match furl % 3 {
            0 => None,
            1 => Some(server.to_string()),
            _ => Some("pb://not-a-furl".to_string()),
        },
        permutation_seed: (furl & 4 != 0).then_some([k; 32]),
    };
    let mut signed = ann.sign(&key(k));
    match tamper % 8 {
        1 => signed.signature.0[usize::from(tamper) % 64] ^= 0x10,
        2 => {
            let n = signed.body.len();
            signed.body.0[usize::from(tamper) % n] ^= 1;
        }
        3 => signed.key = key((k + 1) % 3).public(),
        4 => signed.signature = Bytes(signed.signature.0[..63].to_vec()),
        5 => {
            // Trailing bytes after the announcement, signed: still one announcement.
            signed.body.0.extend_from_slice(&[tamper; 3]);
            let mut msg = folio_node::introducer::SIGNATURE_CONTEXT.to_vec();
            msg.extend_from_slice(&signed.body);
            signed.signature = Bytes(key(k).sign(&msg).to_vec());
        }
        _ => {}
    }
    signed
}

/// What a subscriber object does when called.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Behavior {
    Answers,
    Refuses,
    Slow,
}

const BEHAVIORS: [Behavior; 3] = [Behavior::Answers, Behavior::Refuses, Behavior::Slow];

#[derive(Clone)]
struct Recorder {
    behavior: Behavior,
    heard: Arc<Mutex<Vec<SignedAnnouncement>>>,
}

impl Subscriber for Recorder {
    async fn announce(&self, anns: Vec<SignedAnnouncement>) -> Result<(), IntroducerError> {
        self.heard.lock().unwrap().extend(anns);
        match self.behavior {
            Behavior::Answers => Ok(()),
            Behavior::Refuses => Err(IntroducerError::BadService),
            Behavior::Slow => {
                tokio::time::sleep(SLOW).await;
                Ok(())
            }
        }
    }
}

struct Client {
    tub: Tub,
    intro: IntroducerRef,
    subs: Vec<(Recorder, SubscriberRef)>,
}

async fn connect(s: &Server, capture: Option<&Arc<Capture>>) -> Client {
    let connector = match capture {
        Some(c) => MemConnector::recording(s.tub.clone(), c.clone()),
        None => MemConnector::new(s.tub.clone()),
    };
    let tub = node_like_tub(CLIENT_PEM, connector);
    let intro: IntroducerRef = bounded("Tub::get", 10, tub.get(&s.furl))
        .await
        .expect("a real client reaches the introducer");
    let subs = BEHAVIORS
        .iter()
        .map(|&behavior| {
            let r = Recorder {
                behavior,
                heard: Arc::default(),
            };
            (r.clone(), SubscriberRef::serve(r))
        })
        .collect();
    Client { tub, intro, subs }
}

#[derive(Default)]
struct Model {
    /// The newest announcement per (service, key), with its sequence number.
    held: BTreeMap<(String, [u8; 32]), (u64, SignedAnnouncement)>,
    /// This client's subscription per service: which subscriber object.
    subs: BTreeMap<String, usize>,
    /// The services each subscriber object was ever subscribed to (this connection).
    ever: [BTreeSet<String>; 3],
    /// Per subscriber object: how much of what it heard is checked, and the newest sequence
    /// number it heard per (service, key).
    heard: [Heard; 3],
}

/// How much of what a subscriber heard is checked, and the newest sequence number per
/// (service, key) in it.
type Heard = (usize, BTreeMap<(String, [u8; 32]), u64>);

fn app<T>(r: Result<T, CallError<IntroducerError>>) -> Result<T, IntroducerError> {
    match r {
        Ok(v) => Ok(v),
        Err(CallError::App(e)) => Err(e),
        Err(e) => panic!("a well-formed call failed: {e}"),
    }
}

impl Model {
    fn check(&mut self, s: &Server, c: &Client) {
        held_well_formed(s);
        let held: BTreeSet<Vec<u8>> = s
            .svc
            .announcements()
            .iter()
            .map(|v| encoded(&v.signed))
            .collect();
        let want: BTreeSet<Vec<u8>> = self.held.values().map(|(_, a)| encoded(a)).collect();
        assert!(
            held == want,
            "the introducer holds other announcements than the model"
        );
        assert_eq!(s.svc.subscriber_count(), self.subs.len(), "subscriptions");
        for (k, (r, _)) in c.subs.iter().enumerate() {
            let heard = r.heard.lock().unwrap();
            // What each subscriber heard verifies and is of a service it subscribed to.
            let (seen, newest) = &mut self.heard[k];
            for a in &heard[*seen..] {
                let v = a
                    .verify()
                    .expect("a subscriber heard an unverifiable announcement");
                assert!(
                    self.ever[k].contains(&v.ann.service),
                    "subscriber {k} heard of service {:?}",
                    v.ann.service
                );
                let e = newest.entry((v.ann.service.clone(), v.key)).or_default();
                *e = (*e).max(v.ann.seqnum);
            }
            *seen = heard.len();
            let newest = &self.heard[k].1;
            // One that answers has heard the newest of everything in its services.
            if r.behavior != Behavior::Answers {
                continue;
            }
            for (service, &who) in &self.subs {
                if who != k {
                    continue;
                }
                let want: BTreeMap<_, u64> = self
                    .held
                    .iter()
                    .filter(|(key, _)| &key.0 == service)
                    .map(|(key, (seq, _))| (key.clone(), *seq))
                    .collect();
                let got: BTreeMap<_, u64> = newest
                    .iter()
                    .filter(|(key, _)| &key.0 == service)
                    .map(|(key, seq)| (key.clone(), *seq))
                    .collect();
                assert_eq!(got, want, "what subscriber {k} heard of {service:?}");
            }
        }
    }
}

/// `SignedAnnouncement` has no order of its own: compare encodings.
fn encoded(a: &SignedAnnouncement) -> Vec<u8> {
    postcard::to_allocvec(a).unwrap()
}

async fn ops(input: &[u8], capture: Option<Arc<Capture>>) {
    let s = start();
    let mut m = Model::default();
    let mut c = connect(&s, capture.as_ref()).await;
    let mut i = Input::new(input);
    for _ in 0..MAX_OPS {
        if i.is_empty() {
            break;
        }
        match Op::read(&mut i) {
            Op::Publish {
                key,
                service,
                seqnum,
                nickname,
                furl,
                tamper,
            } => {
                let signed = announcement(&s.furl, key, service, seqnum, &nickname, furl, tamper);
                let got = app(bounded("publish", 10, c.intro.publish(signed.clone())).await);
                let want = match signed.verify() {
                    Err(e) => Err(IntroducerError::Announcement(e)),
                    Ok(v) => {
                        let k = (v.ann.service.clone(), v.key);
                        match m.held.get(&k) {
                            Some(&(cur, _)) if v.ann.seqnum <= cur => {
                                Ok(PublishOutcome::Stale { current: cur })
                            }
                            None if m.held.len() >= LIMITS.max_announcements => {
                                Err(IntroducerError::Full(String::new()))
                            }
                            _ => {
                                m.held.insert(k, (v.ann.seqnum, signed.clone()));
                                Ok(PublishOutcome::Accepted)
                            }
                        }
                    }
                };
                match (&got, &want) {
                    (Err(IntroducerError::Full(_)), Err(IntroducerError::Full(_))) => {}
                    _ => assert_eq!(got, want, "publish"),
                }
            }
            Op::Subscribe { sub, service: svc } => {
                let name = service(svc);
                let r = c.subs[usize::from(sub)].1.clone();
                let got = app(bounded("subscribe", 10, c.intro.subscribe(r, name.into())).await);
                let want = if name == SERVICES[3] {
                    Err(IntroducerError::BadService)
                } else {
                    // A new subscription replaces this peer's one for the service, even when
                    // the introducer is then too full to take the new one.
                    m.subs.remove(name);
                    if m.subs.len() >= LIMITS.max_subscribers {
                        Err(IntroducerError::Full(String::new()))
                    } else {
                        m.subs.insert(name.to_string(), usize::from(sub));
                        m.ever[usize::from(sub)].insert(name.to_string());
                        Ok(())
                    }
                };
                match (&got, &want) {
                    (Err(IntroducerError::Full(_)), Err(IntroducerError::Full(_))) => {}
                    _ => assert_eq!(got, want, "subscribe"),
                }
            }
            Op::Sleep { secs } => {
                tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
                assert_eq!(
                    s.tub.connection_count(),
                    1,
                    "the connection survives idling"
                );
            }
            Op::Reconnect => {
                bounded("Tub::shutdown (client)", 10, c.tub.shutdown()).await;
                eventually("dropping a client that left", 600, || {
                    s.tub.connection_count() == 0
                })
                .await;
                eventually(
                    "dropping the subscriptions of a client that left",
                    10,
                    || s.svc.subscriber_count() == 0,
                )
                .await;
                c = connect(&s, capture.as_ref()).await;
                m.subs.clear();
                m.ever = Default::default();
                m.heard = Default::default();
            }
        }
        // Deliveries run: to a subscriber that answers, they are done in no time.
        settle().await;
        m.check(&s, &c);
    }
    bounded("Tub::shutdown (client)", 10, c.tub.shutdown()).await;
    eventually("dropping a client that left", 600, || {
        s.tub.connection_count() == 0
    })
    .await;
    eventually(
        "dropping the subscriptions of a client that left",
        10,
        || s.svc.subscriber_count() == 0,
    )
    .await;
    let limit = LIMITS.delivery_timeout.as_secs() + 10;
    eventually("deliveries to end", limit, || {
        s.svc.deliveries_in_flight() == 0
    })
    .await;
    held_well_formed(&s);
    bounded("Tub::shutdown", 10, s.tub.shutdown()).await;
}

/// Seeds: hand-written operation sequences, and the frames a real client sent for each.
mod seeds {
    use super::*;

    fn publish(s: &mut Seed, key: u8, svc: u8, seq: u64, nick: &[u8], furl: u8, tamper: u8) {
        s.u8(0)
            .u8(key)
            .u8(svc)
            .var(seq)
            .lit(nick)
            .u8(furl)
            .u8(tamper);
    }

    fn subscribe(s: &mut Seed, sub: u8, svc: u8) {
        s.u8(3).u8(sub).u8(svc);
    }

    fn scenarios() -> Vec<(&'static str, Seed)> {
        let mut out = Vec::new();

        let mut s = Seed::new(1);
        publish(&mut s, 0, 0, 1, b"alpha", 1, 0);
        subscribe(&mut s, 0, 0);
        publish(&mut s, 1, 0, 1, b"beta", 4, 0);
        publish(&mut s, 0, 0, 2, b"alpha", 1, 0); // newer
        publish(&mut s, 0, 0, 2, b"alpha", 1, 0); // replayed: stale
        publish(&mut s, 0, 0, 1, b"alpha", 1, 0); // older: stale
        out.push(("publish_subscribe", s));

        let mut s = Seed::new(1);
        subscribe(&mut s, 0, 0);
        for tamper in 1..=5 {
            publish(&mut s, 2, 0, 7, b"tampered", 0, tamper);
        }
        publish(&mut s, 2, 3, 1, b"bad service", 0, 0);
        publish(&mut s, 2, 0, 1, b"bell\x07", 0, 0);
        publish(&mut s, 2, 0, 1, b"bad furl", 2, 0);
        subscribe(&mut s, 1, 3); // invalid service
        out.push(("refusals", s));

        let mut s = Seed::new(1);
        for (k, svc) in [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)] {
            publish(&mut s, k, svc, 1, b"n", 0, 0); // the fifth: full
        }
        subscribe(&mut s, 0, 0);
        subscribe(&mut s, 1, 1);
        subscribe(&mut s, 2, 2); // full
        subscribe(&mut s, 2, 0); // replaces 0's
        publish(&mut s, 0, 0, 5, b"newer", 0, 0);
        s.u8(4).u8(100); // the slow delivery times out
        out.push(("limits", s));

        let mut s = Seed::new(1);
        subscribe(&mut s, 0, 0);
        publish(&mut s, 0, 0, 1, b"before", 0, 0);
        s.u8(5); // reconnect
        publish(&mut s, 0, 0, 2, b"after", 0, 0);
        subscribe(&mut s, 0, 0);
        s.u8(4).u8(250);
        out.push(("reconnect", s));
        out
    }

    pub fn write(dir: &Path) {
        for (name, seed) in scenarios() {
            seed.write(dir, &format!("ops_{name}"));
            let capture = Arc::new(Capture::default());
            runtime().block_on(ops(&seed.0[1..], Some(capture.clone())));
            let mut frames = vec![0];
            frames.extend_from_slice(&capture.joined());
            folio_fuzz::write_seed(dir, &format!("frames_{name}"), &frames);
            eprintln!("{name}: {} frames", capture.frames.lock().unwrap().len());
        }
        eprintln!("seeds written to {}", dir.display());
    }
}
