//! A share's lease file (`shares/<p>/<si>/<shnum>.leases`, JSON) as the storage server finds
//! it on disk: the input is planted beside a real share, then a client's lease is added
//! through the server's own paths (`add_lease`; `allocate_buckets` on an existing immutable
//! share; a slot write on an existing mutable share), twice more to read back what it wrote.
//!
//! The first byte `f` chooses: `f & 1` a mutable share (else immutable); `(f >> 1) % 3` the path
//! (`0` add_lease, `1` allocate or slot write, `2` both); `f & 8` renew the first lease of the
//! input (if it has one) instead of adding a new one. The rest is the lease file.
//!
//! Invariants, beyond not panicking:
//! - the server always leaves a lease file in its documented shape (`{"version": 1, "leases":
//!   [{"renew_secret", "cancel_secret", "expires_at"}]}`, 64 lowercase hex digits per secret);
//! - a file already in that shape is read whole: the file written afterwards holds exactly its
//!   leases, in order, with the client's added at the end, or the client's renewed (the first
//!   with its renew secret, whose expiry only moves later); unless the share already holds
//!   the most leases allowed, and then `add_lease` is refused and the file is left as it was;
//! - a file not in that shape may be ignored, but then the share holds just the new lease;
//! - round trip: the file the server wrote is read back whole by the server (adding a second
//!   lease keeps every lease of the first file), and renewing changes nothing but the expiry.
//!
//! Seeds (`seeds/lease_file/`): lease files in the server's own format (one lease, several,
//! the 64 allowed, a renewal), and variations (compact JSON, a wrong version, a short secret,
//! an uppercase digit, an extra field, a negative expiry, not JSON). Regenerate with (the
//! fuzzer exits once they are written):
//!
//! ```sh
//! FOLIO_FUZZ_WRITE_SEEDS=$PWD/fuzz/seeds/lease_file RUSTC_BOOTSTRAP=1 \
//!   cargo fuzz run --fuzz-dir fuzz lease_file -- -runs=0
//! ```
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use folio_fuzz::disk::{self, strict_leases, Lease};
use folio_fuzz::scratch_dir;
use folio_node::storage::{
    CanaryRef, NullCanary, Storage, StorageConfig, StorageError, StorageServer, TestWriteVectors,
    MAX_LEASES_PER_SHARE,
};
use folio_rpc::Bytes;
use libfuzzer_sys::fuzz_target;

const SI: [u8; 16] = [7; 16];
const SHNUM: u16 = 3;
const WE: [u8; 32] = [0xe1; 32];
const DATA: &[u8] = b"share data";
const DURATION: Duration = Duration::from_secs(31 * 24 * 3600);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("FOLIO_FUZZ_WRITE_SEEDS") {
            seeds::write(Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let Some((&f, file)) = data.split_first() else {
            return;
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(f, file));
    }
);

struct Share {
    storage: Storage,
    mutable: bool,
    lease_path: PathBuf,
}

impl Share {
    fn read(&self) -> Vec<u8> {
        std::fs::read(&self.lease_path).expect("the share has a lease file")
    }

    /// The file as the server leaves it: always in the documented shape.
    fn leases(&self) -> Vec<Lease> {
        strict_leases(&self.read()).unwrap_or_else(|| {
            panic!(
                "the server wrote a lease file not in its documented shape:\n{}",
                String::from_utf8_lossy(&self.read())
            )
        })
    }

    /// Adds or renews `(renew, cancel)` through `path`; the error of `add_lease`, if any.
    async fn add(&self, path: u8, renew: [u8; 32], cancel: [u8; 32]) -> Result<(), StorageError> {
        let mut result = Ok(());
        if path != 1 {
            result = self.storage.add_lease(SI, renew, cancel).await;
        }
        if path != 0 {
            // These paths log a lease they cannot add, and go on.
            if self.mutable {
                let tw = BTreeMap::from([(
                    SHNUM,
                    TestWriteVectors {
                        test: Vec::new(),
                        write: vec![(0, Bytes(DATA.to_vec()))],
                        new_length: None,
                    },
                )]);
                let (passed, _) = self
                    .storage
                    .slot_testv_and_readv_and_writev(SI, (WE, renew, cancel), tw, Vec::new())
                    .await
                    .expect("a slot write");
                assert!(passed);
            } else {
                let canary = CanaryRef::serve(NullCanary);
                let (have, writers) = self
                    .storage
                    .allocate_buckets(SI, renew, cancel, BTreeSet::from([SHNUM]), 4, canary)
                    .await
                    .expect("allocate_buckets");
                assert_eq!(have, BTreeSet::from([SHNUM]));
                assert!(writers.is_empty());
            }
        }
        result
    }
}

/// `before` with `(renew, cancel)` added or renewed, as `add` must leave it (`None`: refused).
fn expected(before: &[Lease], renew: [u8; 32], cancel: [u8; 32], t0: u64) -> Option<Vec<Lease>> {
    let mut out = before.to_vec();
    let count = out.len();
    match out.iter_mut().find(|l| l.renew == renew) {
        Some(l) => l.expires_at = l.expires_at.max(t0 + DURATION.as_secs()),
        None if count >= MAX_LEASES_PER_SHARE => return None,
        None => out.push(Lease {
            renew,
            cancel,
            expires_at: t0 + DURATION.as_secs(),
        }),
    }
    Some(out)
}

/// `got` is `want`, but for expiries set during the call (from `t0` to `t1`): those
/// `want` puts at or past `t0` plus the duration may be up to `t1 - t0` later.
fn same(got: &[Lease], want: &[Lease], t0: u64, t1: u64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lease count");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            (g.renew, g.cancel),
            (w.renew, w.cancel),
            "{what}: secrets or order"
        );
        if w.expires_at >= t0 + DURATION.as_secs() {
            let range = w.expires_at..=w.expires_at + (t1 - t0);
            assert!(
                range.contains(&g.expires_at),
                "{what}: an expiry of {}",
                g.expires_at
            );
        } else {
            assert_eq!(g.expires_at, w.expires_at, "{what}: an expiry changed");
        }
    }
}

async fn run(f: u8, file: &[u8]) {
    let mutable = f & 1 != 0;
    let path = (f >> 1) % 3;
    let dir = scratch_dir("lease_file").join("storage");
    let storage = Storage::open(StorageConfig::new(&dir)).expect("Storage::open");
    let bucket = disk::si_path(&dir.join("shares"), &SI);
    std::fs::create_dir_all(&bucket).unwrap();
    let share_file = if mutable {
        disk::mutable_file(&WE, DATA)
    } else {
        disk::immutable_file(DATA)
    };
    std::fs::write(bucket.join(SHNUM.to_string()), share_file).unwrap();
    let lease_path = bucket.join(format!("{SHNUM}.leases"));
    std::fs::write(&lease_path, file).unwrap();
    let share = Share {
        storage,
        mutable,
        lease_path,
    };

    let input = strict_leases(file);
    let renew = match &input {
        Some(l) if f & 8 != 0 && !l.is_empty() => l[0].renew,
        _ => [0xaa; 32],
    };
    let cancel = [0xcc; 32];

    // 1. The client's lease, on top of the hostile file.
    let t0 = now();
    let added = share.add(path, renew, cancel).await;
    let t1 = now();
    let refused = |added: &Result<(), StorageError>| {
        path == 1
            || *added
                == Err(StorageError::TooManyLeases {
                    maximum: MAX_LEASES_PER_SHARE as u32,
                })
    };
    let first = match &input {
        Some(before) => match expected(before, renew, cancel, t0) {
            Some(want) => {
                added.expect("add_lease on a share with room");
                let first = share.leases();
                same(&first, &want, t0, t1, "a well-formed file, then a lease");
                first
            }
            None => {
                assert!(refused(&added), "a lease past the limit: {added:?}");
                assert_eq!(share.read(), file, "a refused lease changed the file");
                return;
            }
        },
        None if share.read() == file => {
            // Left alone: the server read the file (outside the documented shape, which it
            // may) as holding as many leases as allowed.
            assert!(
                refused(&added),
                "an unreadable lease file was left: {added:?}"
            );
            return;
        }
        None => {
            // Unreadable: the share held none, and now this one.
            added.expect("add_lease");
            let first = share.leases();
            assert_eq!(first.iter().filter(|l| l.renew == renew).count(), 1);
            first
        }
    };

    // 2. Round trip: a second lease keeps every lease the server wrote.
    let (renew2, cancel2) = ([0xbb; 32], [0xdd; 32]);
    let t0 = now();
    let added = share.add(path, renew2, cancel2).await;
    let t1 = now();
    let second = share.leases();
    match expected(&first, renew2, cancel2, t0) {
        Some(want) => {
            added.expect("add_lease on a share with room");
            same(
                &second,
                &want,
                t0,
                t1,
                "the server's file, then a second lease",
            );
        }
        None => {
            assert_eq!(second, first, "a refused lease changed the file");
        }
    }

    // 3. Renewing changes nothing but expiries, which only move later.
    let t0 = now();
    share.add(0, renew, cancel).await.expect("renewing");
    let third = share.leases();
    assert_eq!(
        third.len(),
        second.len(),
        "renewing changed the lease count"
    );
    for (a, b) in second.iter().zip(&third) {
        assert_eq!(
            (a.renew, a.cancel),
            (b.renew, b.cancel),
            "renewing changed a lease"
        );
        assert!(b.expires_at >= a.expires_at, "an expiry moved earlier");
        if b.renew == renew {
            assert!(b.expires_at >= t0 + DURATION.as_secs());
        }
    }
}

mod seeds {
    use super::*;

    fn lease(i: u8, expires_at: u64) -> Lease {
        Lease {
            renew: [i; 32],
            cancel: [i ^ 0xff; 32],
            expires_at,
        }
    }

    /// The server's own file for `leases`: written by a real storage server.
    fn server_file(leases: &[(u8, u8)]) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = scratch_dir("lease_file_seeds").join("storage");
        let storage = Storage::open(StorageConfig::new(&dir)).unwrap();
        let bucket = disk::si_path(&dir.join("shares"), &SI);
        std::fs::create_dir_all(&bucket).unwrap();
        std::fs::write(bucket.join(SHNUM.to_string()), disk::immutable_file(DATA)).unwrap();
        for &(r, c) in leases {
            rt.block_on(storage.add_lease(SI, [r; 32], [c; 32]))
                .unwrap();
        }
        std::fs::read(bucket.join(format!("{SHNUM}.leases"))).unwrap()
    }

    pub fn write(dir: &Path) {
        let put = |name: &str, f: u8, file: &[u8]| {
            let mut bytes = vec![f];
            bytes.extend_from_slice(file);
            folio_fuzz::write_seed(dir, name, &bytes);
        };
        let one = server_file(&[(1, 2)]);
        put("server_one", 0, &one);
        put("server_one_mutable_renew", 1 | 2 | 8, &one);
        let three = server_file(&[(1, 2), (3, 4), (5, 6), (3, 9)]);
        put("server_three", 4, &three);
        let full: Vec<(u8, u8)> = (0..MAX_LEASES_PER_SHARE as u8).map(|i| (i, i)).collect();
        let full = server_file(&full);
        put("server_full", 0, &full);
        put("server_full_renew", 8, &full);
        put("server_full_mutable", 1 | 4, &full);
        let text = String::from_utf8(three.clone()).unwrap();
        let compact =
            serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&three).unwrap())
                .unwrap();
        put("compact", 0, &compact);
        put(
            "version2",
            0,
            text.replacen("\"version\": 1", "\"version\": 2", 1)
                .as_bytes(),
        );
        put("short_secret", 0, text.replacen("0101", "01", 1).as_bytes());
        put("uppercase", 0, text.replacen("0303", "0B03", 1).as_bytes());
        put(
            "extra_field",
            0,
            text.replacen("\"version\"", "\"note\": 0, \"version\"", 1)
                .as_bytes(),
        );
        put(
            "negative_expiry",
            0,
            &disk::lease_file(&[lease(1, 5)]).replace_first(b"5", b"-5"),
        );
        put("empty_list", 0, b"{\"version\": 1, \"leases\": []}");
        put("not_json", 0, b"leases: none");
        put("empty", 0, b"");
        eprintln!("seeds written to {}", dir.display());
    }

    trait ReplaceFirst {
        fn replace_first(self, from: &[u8], to: &[u8]) -> Vec<u8>;
    }

    impl ReplaceFirst for Vec<u8> {
        fn replace_first(self, from: &[u8], to: &[u8]) -> Vec<u8> {
            let text = String::from_utf8(self).unwrap();
            let from = std::str::from_utf8(from).unwrap();
            let to = std::str::from_utf8(to).unwrap();
            // The last occurrence: the expiry comes after the secrets.
            match text.rfind(from) {
                Some(i) => format!("{}{}{}", &text[..i], to, &text[i + from.len()..]).into_bytes(),
                None => text.into_bytes(),
            }
        }
    }
}
