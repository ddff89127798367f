//! The introducer over real TCP on 127.0.0.1: refusals of forged, replayed and unsigned
//! announcements, fan-out to subscribers (late ones included), and the client's cache.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use folio_node::introducer::{
    Announcement, AnnouncementError, ClientOptions, IntroducerClient, IntroducerError,
    IntroducerLimits, IntroducerRef, IntroducerService, PublishOutcome, SignedAnnouncement,
    Subscriber, SubscriberRef, Verified, MAX_HELD_ANNOUNCEMENTS,
};
use folio_node::private::SigningKey;
use folio_rpc::{Bytes, CallError, Furl, ReconnectPolicy, Tub, TubConfig};

mod common;

async fn tub() -> Tub {
    folio_tests::tubs::tcp_tub(TubConfig::default())
}

async fn introducer() -> (Tub, IntroducerService, Furl) {
    introducer_with(IntroducerLimits::default()).await
}

async fn introducer_with(limits: IntroducerLimits) -> (Tub, IntroducerService, Furl) {
    let (t, _) = folio_tests::tubs::listening_tub(TubConfig::default()).await;
    let svc = IntroducerService::new(limits);
    let furl = t.register(svc.serve()).unwrap();
    (t, svc, furl)
}

fn ann(nickname: &str, seqnum: u64) -> Announcement {
    Announcement {
        service: "storage".into(),
        nickname: nickname.into(),
        version: "test".into(),
        seqnum,
        nonce: folio_node::private::random_bytes(),
        furl: None,
        permutation_seed: Some([9; 32]),
    }
}

/// A subscriber that records what it hears.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<SignedAnnouncement>>>);

impl Subscriber for Recorder {
    async fn announce(&self, anns: Vec<SignedAnnouncement>) -> Result<(), IntroducerError> {
        self.0.lock().unwrap().extend(anns);
        Ok(())
    }
}

impl Recorder {
    fn nicknames(&self) -> Vec<(String, u64)> {
        let mut v: Vec<_> = self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                let v = s.verify().unwrap();
                (v.ann.nickname, v.ann.seqnum)
            })
            .collect();
        v.sort();
        v
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn forged_replayed_and_unsigned_announcements_are_refused() {
    let (_it, svc, furl) = introducer().await;
    let client = tub().await;
    let intro: IntroducerRef = client.get(&furl).await.unwrap();
    let key = SigningKey::generate();

    assert_eq!(
        intro.publish(ann("a", 5).sign(&key)).await.unwrap(),
        PublishOutcome::Accepted
    );

    // Forged: the bytes changed after signing.
    let mut forged = ann("a", 6).sign(&key);
    let n = forged.body.len();
    forged.body[n - 1] ^= 0x40;
    match intro.publish(forged).await {
        Err(CallError::App(IntroducerError::Announcement(AnnouncementError::BadSignature))) => {}
        other => panic!("forged announcement: {other:?}"),
    }
    // Signed by another key than the one it names.
    let mut stolen = ann("a", 7).sign(&SigningKey::generate());
    stolen.key = key.public();
    assert!(matches!(
        intro.publish(stolen).await,
        Err(CallError::App(IntroducerError::Announcement(
            AnnouncementError::BadSignature
        )))
    ));
    // Unsigned.
    let mut unsigned = ann("a", 8).sign(&key);
    unsigned.signature = Bytes(Vec::new());
    assert!(matches!(
        intro.publish(unsigned).await,
        Err(CallError::App(IntroducerError::Announcement(
            AnnouncementError::Unsigned
        )))
    ));
    // Replayed (the same one again) and older: ignored, the held one stays.
    let older = ann("a-old", 4).sign(&key);
    assert_eq!(
        intro.publish(older).await.unwrap(),
        PublishOutcome::Stale { current: 5 }
    );
    let held = svc.announcements();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].ann.seqnum, 5);
    assert_eq!(held[0].ann.nickname, "a");

    // Newer wins.
    assert_eq!(
        intro.publish(ann("a-new", 9).sign(&key)).await.unwrap(),
        PublishOutcome::Accepted
    );
    assert_eq!(svc.announcements()[0].ann.nickname, "a-new");
    // The connection survived every refusal.
    assert_eq!(client.connection_count(), 1);
}

#[tokio::test]
async fn subscribers_hear_current_and_future_announcements_and_late_joiners_catch_up() {
    let (_it, _svc, furl) = introducer().await;
    let (k1, k2, k3) = (
        SigningKey::generate(),
        SigningKey::generate(),
        SigningKey::generate(),
    );

    let early_tub = tub().await;
    let early_intro: IntroducerRef = early_tub.get(&furl).await.unwrap();
    let early = Recorder::default();
    early_intro
        .subscribe(SubscriberRef::serve(early.clone()), "storage".into())
        .await
        .unwrap();

    let publisher = tub().await;
    let p: IntroducerRef = publisher.get(&furl).await.unwrap();
    p.publish(ann("one", 1).sign(&k1)).await.unwrap();
    p.publish(ann("two", 1).sign(&k2)).await.unwrap();
    let mut other_service = ann("helper", 1);
    other_service.service = "helper".into();
    p.publish(other_service.sign(&k3)).await.unwrap();
    p.publish(ann("two", 2).sign(&k2)).await.unwrap();

    eventually(
        "the early subscriber to hear three storage announcements",
        || early.nicknames().len() == 3,
    )
    .await;
    assert_eq!(
        early.nicknames(),
        vec![("one".into(), 1), ("two".into(), 1), ("two".into(), 2)]
    );

    // A late subscriber gets the current state at once: one per key, the newest.
    let late_tub = tub().await;
    let late_intro: IntroducerRef = late_tub.get(&furl).await.unwrap();
    let late = Recorder::default();
    late_intro
        .subscribe(SubscriberRef::serve(late.clone()), "storage".into())
        .await
        .unwrap();
    eventually("the late subscriber to catch up", || {
        late.nicknames().len() == 2
    })
    .await;
    assert_eq!(late.nicknames(), vec![("one".into(), 1), ("two".into(), 2)]);

    // A bad service name is refused.
    assert!(matches!(
        late_intro
            .subscribe(SubscriberRef::serve(Recorder::default()), "No Such".into())
            .await,
        Err(CallError::App(IntroducerError::BadService))
    ));
}

#[tokio::test]
async fn clients_publish_subscribe_and_fall_back_to_their_cache() {
    let (itub, svc, furl) = introducer().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("introducer_cache.json");
    let key = SigningKey::generate();
    let policy = ReconnectPolicy::default().initial(Duration::from_millis(100));

    let heard: Arc<Mutex<Vec<Verified>>> = Arc::default();
    let h = heard.clone();
    let t = tub().await;
    let client = IntroducerClient::start(
        &t,
        ClientOptions {
            introducers: vec![("default".into(), furl.clone())],
            publish: vec![ann("me", 1).sign(&key)],
            subscribe: vec!["storage".into()],
            cache: Some(cache.clone()),
            policy,
            max_announcements: MAX_HELD_ANNOUNCEMENTS,
        },
        Arc::new(move |v: &Verified| h.lock().unwrap().push(v.clone())),
    );
    // It published, subscribed, and heard its own announcement back.
    eventually("the client to hear its own announcement", || {
        heard.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(svc.announcements().len(), 1);
    assert!(client.connections()[0].status.connections >= 1);
    eventually("the cache to be written", || cache.exists()).await;
    client.stop();
    t.shutdown().await;

    // The introducer goes away; a restarted client still knows the server from its cache.
    itub.shutdown().await;
    let heard2: Arc<Mutex<Vec<Verified>>> = Arc::default();
    let h2 = heard2.clone();
    let t2 = tub().await;
    let client2 = IntroducerClient::start(
        &t2,
        ClientOptions {
            introducers: vec![("default".into(), furl)],
            publish: Vec::new(),
            subscribe: vec!["storage".into()],
            cache: Some(cache.clone()),
            policy,
            max_announcements: MAX_HELD_ANNOUNCEMENTS,
        },
        Arc::new(move |v: &Verified| h2.lock().unwrap().push(v.clone())),
    );
    assert_eq!(heard2.lock().unwrap().len(), 1, "the cache was not used");
    assert_eq!(heard2.lock().unwrap()[0].ann.nickname, "me");
    assert_eq!(client2.announcements().len(), 1);

    // A tampered cache entry is dropped, not trusted.
    client2.stop();
    let text = std::fs::read_to_string(&cache).unwrap();
    let tampered = text.replacen("\"body\": \"", "\"body\": \"00", 1);
    std::fs::write(&cache, tampered).unwrap();
    let heard3: Arc<Mutex<Vec<Verified>>> = Arc::default();
    let h3 = heard3.clone();
    let client3 = IntroducerClient::start(
        &t2,
        ClientOptions {
            introducers: Vec::new(),
            publish: Vec::new(),
            subscribe: vec!["storage".into()],
            cache: Some(cache),
            policy,
            max_announcements: MAX_HELD_ANNOUNCEMENTS,
        },
        Arc::new(move |v: &Verified| h3.lock().unwrap().push(v.clone())),
    );
    assert!(heard3.lock().unwrap().is_empty());
    client3.stop();
}

/// A subscriber that takes announcements and never answers.
struct Silent;

impl Subscriber for Silent {
    async fn announce(&self, _anns: Vec<SignedAnnouncement>) -> Result<(), IntroducerError> {
        std::future::pending().await
    }
}

/// A subscriber that never answers holds no introducer task past the delivery timeout, and
/// other subscribers keep hearing announcements meanwhile.
#[tokio::test]
async fn a_silent_subscriber_does_not_accumulate_deliveries() {
    let (_t, svc, furl) = introducer_with(IntroducerLimits {
        delivery_timeout: Duration::from_millis(300),
        max_per_peer: 20,
        ..IntroducerLimits::default()
    })
    .await;

    let silent_tub = tub().await;
    let silent_intro: IntroducerRef = silent_tub.get(&furl).await.unwrap();
    silent_intro
        .subscribe(SubscriberRef::serve(Silent), "storage".into())
        .await
        .unwrap();
    let good_tub = tub().await;
    let good_intro: IntroducerRef = good_tub.get(&furl).await.unwrap();
    let good = Recorder::default();
    good_intro
        .subscribe(SubscriberRef::serve(good.clone()), "storage".into())
        .await
        .unwrap();

    let publisher = tub().await;
    let p: IntroducerRef = publisher.get(&furl).await.unwrap();
    for i in 0..20 {
        p.publish(ann(&format!("n{i}"), 1).sign(&SigningKey::generate()))
            .await
            .unwrap();
    }
    // The deliveries to the silent subscriber are in flight, then dropped at the timeout.
    assert!(
        svc.deliveries_in_flight() >= 1,
        "{}",
        svc.deliveries_in_flight()
    );
    eventually("the good subscriber to hear all 20", || {
        good.nicknames().len() == 20
    })
    .await;
    eventually("the silent subscriber's deliveries to be dropped", || {
        svc.deliveries_in_flight() == 0
    })
    .await;
    assert_eq!(
        svc.subscriber_count(),
        2,
        "the silent subscriber is still subscribed"
    );
}

/// One publishing connection cannot fill the introducer with fresh keys: past
/// `max_per_peer` new announcements it is refused, while updates of those it holds, and
/// other publishers, are still taken. (Before, one connection could take every slot.)
#[tokio::test]
async fn one_publisher_cannot_fill_the_introducer() {
    let limits = IntroducerLimits {
        max_announcements: 10,
        max_per_peer: 4,
        max_per_key: 2,
        ..IntroducerLimits::default()
    };
    let (_t, svc, furl) = introducer_with(limits).await;
    let hostile_tub = tub().await;
    let hostile: IntroducerRef = hostile_tub.get(&furl).await.unwrap();
    let keys: Vec<SigningKey> = (0..5).map(|_| SigningKey::generate()).collect();
    for (i, k) in keys[..4].iter().enumerate() {
        assert_eq!(
            hostile
                .publish(ann(&format!("h{i}"), 1).sign(k))
                .await
                .unwrap(),
            PublishOutcome::Accepted
        );
    }
    match hostile.publish(ann("h4", 1).sign(&keys[4])).await {
        Err(CallError::App(IntroducerError::PublisherFull { by, maximum: 4 })) => {
            assert_eq!(by, "connection")
        }
        other => panic!("a fifth key from one connection: {other:?}"),
    }
    assert_eq!(svc.held_by_peer(&hostile_tub.tubid()), 4);
    // Updates of what it holds are still taken.
    assert_eq!(
        hostile.publish(ann("h0", 2).sign(&keys[0])).await.unwrap(),
        PublishOutcome::Accepted
    );

    // Another publisher still gets in; its announcements are charged to it.
    let good_tub = tub().await;
    let good: IntroducerRef = good_tub.get(&furl).await.unwrap();
    let gk = SigningKey::generate();
    assert_eq!(
        good.publish(ann("good", 1).sign(&gk)).await.unwrap(),
        PublishOutcome::Accepted
    );
    // One key holds at most `max_per_key` services, whoever publishes them.
    let mut a = ann("good", 1);
    a.service = "helper".into();
    good.publish(a.sign(&gk)).await.unwrap();
    let mut a = ann("good", 1);
    a.service = "third".into();
    match good.publish(a.sign(&gk)).await {
        Err(CallError::App(IntroducerError::PublisherFull { by, maximum: 2 })) => {
            assert_eq!(by, "key")
        }
        other => panic!("a third service for one key: {other:?}"),
    }
    assert_eq!(svc.held_by_peer(&good_tub.tubid()), 2);
    // An update passed on by another connection is taken, and stays charged to the first.
    assert_eq!(
        good.publish(ann("h1", 2).sign(&keys[1])).await.unwrap(),
        PublishOutcome::Accepted
    );
    assert_eq!(svc.held_by_peer(&hostile_tub.tubid()), 4);
    assert_eq!(svc.held_by_peer(&good_tub.tubid()), 2);
    assert_eq!(svc.announcements().len(), 6);

    // The global bound still holds over many publishers: each connection has its own
    // per-peer budget (TubIds are free), so four more fill the remaining four slots.
    for _ in 0..4 {
        let t = tub().await;
        let p: IntroducerRef = t.get(&furl).await.unwrap();
        let _ = p.publish(ann("x", 1).sign(&SigningKey::generate())).await;
        drop(t);
    }
    let last_tub = tub().await;
    let last: IntroducerRef = last_tub.get(&furl).await.unwrap();
    assert!(matches!(
        last.publish(ann("late", 1).sign(&SigningKey::generate()))
            .await,
        Err(CallError::App(IntroducerError::Full(_)))
    ));
    // Holders still update when the introducer is full.
    assert_eq!(
        good.publish(ann("good", 2).sign(&gk)).await.unwrap(),
        PublishOutcome::Accepted
    );
}

/// An announced nickname is held to tahoe.cfg's rule: no invisible or direction-changing
/// characters (before, only control characters were refused), so `tahoe status` cannot show
/// a name posing as another.
#[tokio::test]
async fn deceptive_nicknames_are_refused() {
    let (_t, svc, furl) = introducer().await;
    let client = tub().await;
    let intro: IntroducerRef = client.get(&furl).await.unwrap();
    for nickname in [
        "alice\u{202e}eci",
        "bo\u{200b}b",
        "\u{2066}x",
        "zero\u{feff}",
    ] {
        match intro
            .publish(ann(nickname, 1).sign(&SigningKey::generate()))
            .await
        {
            Err(CallError::App(IntroducerError::Announcement(AnnouncementError::Invalid {
                field,
                reason,
            }))) => {
                assert_eq!(field, "nickname");
                assert!(reason.contains("direction-changing"), "{reason}");
            }
            other => panic!("{nickname:?}: {other:?}"),
        }
    }
    assert!(svc.announcements().is_empty());
    // Letters of any script are fine.
    intro
        .publish(ann("Zoë 東京 شبكة", 1).sign(&SigningKey::generate()))
        .await
        .unwrap();
}

/// A client holds at most `max_announcements` (`[client] max_servers`) announcements, and
/// only of the services it subscribed to: an introducer that sends more cannot make it
/// hold (and dial) more.
#[tokio::test]
async fn a_client_holds_what_it_is_configured_to() {
    let (_it, _svc, furl) = introducer_with(IntroducerLimits {
        max_per_peer: 100,
        ..IntroducerLimits::default()
    })
    .await;
    let publisher = tub().await;
    let p: IntroducerRef = publisher.get(&furl).await.unwrap();
    for i in 0..5 {
        p.publish(ann(&format!("s{i}"), 1).sign(&SigningKey::generate()))
            .await
            .unwrap();
    }
    let mut other = ann("other", 1);
    other.service = "other".into();
    p.publish(other.sign(&SigningKey::generate()))
        .await
        .unwrap();

    let heard: Arc<Mutex<Vec<Verified>>> = Arc::default();
    let h = heard.clone();
    let t = tub().await;
    let client = IntroducerClient::start(
        &t,
        ClientOptions {
            introducers: vec![("default".into(), furl)],
            publish: Vec::new(),
            subscribe: vec!["storage".into()],
            cache: None,
            policy: ReconnectPolicy::default(),
            max_announcements: 3,
        },
        Arc::new(move |v: &Verified| h.lock().unwrap().push(v.clone())),
    );
    eventually("the client to hear three", || {
        heard.lock().unwrap().len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(client.announcements().len(), 3);
    assert!(client
        .announcements()
        .iter()
        .all(|v| v.ann.service == "storage"));
    client.stop();
}

/// The `[introducer]` section of an introducer node's tahoe.cfg reaches the running
/// introducer: with `max_announcements_per_peer = 1`, a second new key from one connection
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_introducer_node_takes_its_limits_from_tahoe_cfg() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("introducer");
    common::create(&[
        "create-introducer",
        "--hostname",
        "127.0.0.1",
        dir.to_str().unwrap(),
    ]);
    let cfg = dir.join("tahoe.cfg");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[introducer]\nmax_announcements_per_peer = 1\ndelivery_timeout = 5\n");
    std::fs::write(&cfg, text).unwrap();
    let node = folio_node::node::Node::start(&dir).await.unwrap();
    let furl = Furl::load(&dir.join("private/introducer.furl")).unwrap();

    let client = tub().await;
    let intro: IntroducerRef = client.get(&furl).await.unwrap();
    assert_eq!(
        intro
            .publish(ann("one", 1).sign(&SigningKey::generate()))
            .await
            .unwrap(),
        PublishOutcome::Accepted
    );
    match intro
        .publish(ann("two", 1).sign(&SigningKey::generate()))
        .await
    {
        Err(CallError::App(IntroducerError::PublisherFull { by, maximum: 1 })) => {
            assert_eq!(by, "connection")
        }
        other => panic!("a second key from one connection: {other:?}"),
    }
    client.shutdown().await;
    node.shutdown().await;
}
