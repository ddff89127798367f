//! The announcement cache a node reads when it starts (`private/introducer_cache.json`, which
//! a node writes as it hears announcements): the bytes as that file, loaded by the node's own
//! start-up (`IntroducerClient::start` with the file as its cache), and as text to the cache's
//! reader and writer (`introducer::decode_cache` / `encode_cache`).
//!
//! Invariants, beyond not panicking:
//! - a file that is not UTF-8 or not a cache loads nothing;
//! - what the node holds after loading is exactly, for each (service, key) of a service it
//!   subscribes to ([`SUBSCRIBED`]), the first entry with the highest sequence number among
//!   the entries that verify (entries of other services are not held); the node's sink heard
//!   each entry that was newer than what it held at that point, in file order, and nothing
//!   else; everything held verifies;
//! - round trip: the cache the node would write for the entries read reads back as the same
//!   entries, and writing those again gives the same text.
//!
//! Seeds (`seeds/announcement_cache/`): caches written by `encode_cache` (the node's writer)
//! for announcements signed by fixed keys (one server; several keys and services with newer,
//! older and equal sequence numbers; a tampered signature), and hand-edited ones (a bad hex
//! digit, a short key, an extra field, an empty list, not a list). Regenerate with (the
//! fuzzer exits once they are written):
//!
//! ```sh
//! FOLIO_FUZZ_WRITE_SEEDS=$PWD/fuzz/seeds/announcement_cache RUSTC_BOOTSTRAP=1 \
//!   cargo fuzz run --fuzz-dir fuzz announcement_cache -- -runs=0
//! ```
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use folio_fuzz::{identity, scratch_dir, CLIENT_PEM};
use folio_node::introducer::{
    decode_cache, encode_cache, Announcement, ClientOptions, IntroducerClient, SignedAnnouncement,
    Verified, MAX_HELD_ANNOUNCEMENTS,
};
use folio_node::private::SigningKey;
use folio_rpc::{NoConnector, ReconnectPolicy, Tub, TubConfig};
use libfuzzer_sys::fuzz_target;

/// A runtime and a Tub for the node's client, made once.
fn tub() -> &'static (tokio::runtime::Runtime, Tub) {
    static TUB: OnceLock<(tokio::runtime::Runtime, Tub)> = OnceLock::new();
    TUB.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tub = {
            let _g = rt.enter();
            Tub::new(
                identity(CLIENT_PEM),
                Arc::new(NoConnector),
                TubConfig::default(),
            )
            .unwrap()
        };
        (rt, tub)
    })
}

/// The services the node subscribes to: cached announcements of others are not held.
const SUBSCRIBED: [&str; 2] = ["storage", "other"];

fn encoded(a: &SignedAnnouncement) -> Vec<u8> {
    postcard::to_allocvec(a).unwrap()
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("FOLIO_FUZZ_WRITE_SEEDS") {
            seeds::write(Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        // The node's start-up, with these bytes as its cache.
        let path = scratch_dir("announcement_cache").join("introducer_cache.json");
        std::fs::write(&path, data).unwrap();
        let heard: Arc<Mutex<Vec<Verified>>> = Arc::default();
        let sink = {
            let heard = heard.clone();
            Arc::new(move |v: &Verified| heard.lock().unwrap().push(v.clone()))
        };
        let (rt, tub) = tub();
        let held = {
            let _g = rt.enter();
            let opts = ClientOptions {
                introducers: Vec::new(),
                publish: Vec::new(),
                subscribe: SUBSCRIBED.map(String::from).to_vec(),
                cache: Some(path),
                policy: ReconnectPolicy::default(),
                max_announcements: MAX_HELD_ANNOUNCEMENTS,
            };
            let client = IntroducerClient::start(tub, opts, sink);
            let held = client.announcements();
            client.stop();
            held
        };
        let heard = std::mem::take(&mut *heard.lock().unwrap());

        let entries = match std::str::from_utf8(data).map(decode_cache) {
            Ok(Ok(entries)) => entries,
            _ => {
                assert!(held.is_empty() && heard.is_empty(), "loaded from a file that is not a cache");
                return;
            }
        };

        // Round trip through the node's writer.
        let text = encode_cache(&entries);
        let again = decode_cache(&text).expect("the node reads the cache it writes");
        assert!(again == entries, "the cache written does not read back as what was read");
        assert_eq!(encode_cache(&again), text, "writing is not stable");

        // What the node should hold, and what its sink should have heard.
        let mut want: BTreeMap<(String, [u8; 32]), Verified> = BTreeMap::new();
        let mut want_heard = Vec::new();
        for s in &entries {
            let Ok(v) = s.verify() else { continue };
            if !SUBSCRIBED.contains(&v.ann.service.as_str()) {
                continue;
            }
            let k = (v.ann.service.clone(), v.key);
            if want.get(&k).is_some_and(|cur| v.ann.seqnum <= cur.ann.seqnum) {
                continue;
            }
            want.insert(k, v.clone());
            want_heard.push(v);
        }
        let got: Vec<Vec<u8>> = held.iter().map(|v| encoded(&v.signed)).collect();
        let wanted: Vec<Vec<u8>> = want.values().map(|v| encoded(&v.signed)).collect();
        assert_eq!(got, wanted, "the announcements held after loading the cache");
        let got: Vec<Vec<u8>> = heard.iter().map(|v| encoded(&v.signed)).collect();
        let wanted: Vec<Vec<u8>> = want_heard.iter().map(|v| encoded(&v.signed)).collect();
        assert_eq!(got, wanted, "what the sink heard while loading");
        for v in &held {
            assert_eq!(v.signed.verify().as_ref(), Ok(v));
        }
    }
);

mod seeds {
    use super::*;

    fn ann(k: u8, service: &str, seqnum: u64, furl: bool) -> SignedAnnouncement {
        let key = SigningKey::from_seed([0x40 + k; 32]);
        Announcement {
            service: service.to_string(),
            nickname: format!("node-{k}"),
            version: "folio-tahoe/0.1.0".to_string(),
            seqnum,
            nonce: [k ^ seqnum as u8; 16],
            furl: furl.then(|| {
                let t = &tub().1;
                t.set_location(vec!["tcp:127.0.0.1:3456".parse().unwrap()]);
                t.furl_for("storage").unwrap().to_string()
            }),
            permutation_seed: Some([k; 32]),
        }
        .sign(&key)
    }

    pub fn write(dir: &Path) {
        let put = |name: &str, text: &str| folio_fuzz::write_seed(dir, name, text.as_bytes());
        let one = ann(0, "storage", 1, true);
        one.verify().expect("the seed announcement verifies");
        put("one", &encode_cache([&one]));
        let many = vec![
            ann(1, "storage", 5, false),
            ann(2, "storage", 1, false),
            ann(1, "storage", 3, false), // older: ignored
            ann(2, "storage", 2, false), // newer: replaces
            ann(1, "other", 1, false),
            ann(3, "storage", 7, false),
            ann(3, "storage", 7, false), // the same again
        ];
        put("many", &encode_cache(&many));
        let mut tampered = many[..2].to_vec();
        tampered[0].signature.0[5] ^= 4;
        put("tampered", &encode_cache(&tampered));
        let text = encode_cache(&many[..2]);
        let first_hex = text.find("\"body\": \"").unwrap() + 9;
        let mut bad_hex = text.clone();
        bad_hex.replace_range(first_hex..first_hex + 1, "G");
        put("bad_hex", &bad_hex);
        let key_hex = text.find("\"key\": \"").unwrap() + 8;
        let mut short_key = text.clone();
        short_key.replace_range(key_hex..key_hex + 2, "");
        put("short_key", &short_key);
        put(
            "extra_field",
            &text.replacen("\"key\"", "\"comment\": \"hi\",\n    \"key\"", 1),
        );
        put("empty", "[]");
        put("object", "{}");
        put(
            "compact",
            &serde_json::to_string(&serde_json::from_str::<serde_json::Value>(&text).unwrap())
                .unwrap(),
        );
        eprintln!("seeds written to {}", dir.display());
    }
}
