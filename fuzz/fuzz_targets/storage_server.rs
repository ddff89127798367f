//! The storage server (`folio_node::storage::Storage`) as a node serves it: exported on a
//! Tub configured as a node's, over a storage directory on tmpfs, on a current-thread runtime
//! with paused time. The first byte `m` of the input picks the mode, `(m & 0x7f) % 2`; if
//! `m & 0x80` the server is read-only.
//!
//! - `0` **frames**: a real client handshake, then the rest is split at `f5 f5 f5 f5` and
//!   each piece is sent as one frame payload: the message decoder, the argument decoders of
//!   every storage method and of the bucket writers and readers it hands out, and the
//!   references (canaries) in the arguments. The client never answers and finally goes away.
//! - `1` **operations**: the rest is read as a sequence of storage operations (see [`Op`])
//!   made by a real client Tub with typed calls, each answer checked against a model of the
//!   server: which shares exist with which bytes and write enablers, which uploads are open
//!   and what they hold, which leases each share has, how many advisories were recorded.
//!   The client may also drop writers, sleep (keepalives run), or reconnect.
//!
//! Invariants, beyond not panicking:
//! - every await is bounded in virtual time (a hang is a crash);
//! - after the input, the server holds at most one connection;
//! - (operations) every answer is the one the model predicts, errors included, and after every
//!   operation the storage directory holds exactly the model's shares, containers and lease
//!   files, byte for byte (immutable data, write enablers, lease secrets and their order);
//! - (both) `shares/` is always well-formed, as its documentation describes it: every share
//!   file's length field matches the file, every share has a lease file in the documented JSON
//!   shape with 1 to 64 unexpired leases and no lease file is orphaned, no temporary file is
//!   left, and every upload in progress has exactly one file under `incoming/`;
//! - once the client is gone, no upload is in progress and `incoming/` holds no file;
//! - the advisory log has one line per accepted advice, each naming its share.
//!
//! Seeds (`seeds/storage_server/`): hand-written operation sequences (`ops_*`: uploads,
//! reads, slot updates, leases, advice, errors), and for each the frames a real client Tub
//! sent while running it, recorded by a TLS-terminating proxy (`frames_*`). Regenerate with
//! (the fuzzer exits once they are written):
//!
//! ```sh
//! FOLIO_FUZZ_WRITE_SEEDS=$PWD/fuzz/seeds/storage_server RUSTC_BOOTSTRAP=1 \
//!   cargo fuzz run --fuzz-dir fuzz storage_server -- -runs=0
//! ```
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use folio_fuzz::disk::{self, Share};
use folio_fuzz::{
    bounded, eventually, node_like_tub, runtime, scratch_dir, Capture, Input, MemConnector,
    RawClient, Seed, CLIENT_PEM, SERVER_PEM,
};
use folio_node::storage::{
    si_b32, BucketWriterRef, CanaryRef, NullCanary, Storage, StorageConfig, StorageError,
    StorageServerRef, TestVector, TestWriteVectors, MAX_CHUNK, MAX_LEASES_PER_SHARE, MAX_SHNUM,
    MAX_VECTORS,
};
use folio_rpc::{Bytes, CallError, Furl, NoConnector, Tub};
use libfuzzer_sys::fuzz_target;

/// The largest share of either kind: keeps the model (and the files) small.
const MAX_SHARE: u64 = 1 << 20;
/// Operations per run.
const MAX_OPS: usize = 100;
/// The storage indexes the operations use.
const SIS: [[u8; 16]; 3] = [[0; 16], [1; 16], [0xff; 16]];

type Secret = [u8; 32];

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
        let readonly = m & 0x80 != 0;
        runtime().block_on(async {
            match (m & 0x7f) % 2 {
                0 => frames(rest, readonly).await,
                _ => ops(rest, readonly, None).await,
            }
        });
    }
);

struct Server {
    dir: PathBuf,
    storage: Storage,
    tub: Tub,
    furl: Furl,
}

fn start(readonly: bool) -> Server {
    let dir = scratch_dir("storage_server").join("storage");
    let storage = Storage::open(StorageConfig {
        max_immutable_share_size: MAX_SHARE,
        max_mutable_share_size: MAX_SHARE,
        readonly,
        ..StorageConfig::new(&dir)
    })
    .expect("Storage::open");
    let tub = node_like_tub(SERVER_PEM, Arc::new(NoConnector));
    let furl = tub.register_as(storage.serve(), "storage").unwrap();
    Server {
        dir,
        storage,
        tub,
        furl,
    }
}

/// Mode 0: hostile frames.
async fn frames(input: &[u8], readonly: bool) {
    let s = start(readonly);
    let mut client = RawClient::connect(&s.tub).await;
    bounded("sending the input", 600, client.send(input)).await;
    // Let running calls finish (each is bounded: nothing here waits on the client).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(s.tub.connection_count() <= 1);
    well_formed(&s, None);
    // The client goes away: every upload it left open is aborted.
    client.close().await;
    eventually("dropping a client that closed", 600, || {
        s.tub.connection_count() == 0
    })
    .await;
    eventually("aborting the uploads of a client that left", 60, || {
        s.storage.uploads_in_progress() == 0
    })
    .await;
    well_formed(&s, None);
    bounded("Tub::shutdown", 10, s.tub.shutdown()).await;
    bounded("the server closing its end", 60, client.server_closed()).await;
}

/// Checks `shares/` against its documented shape; returns what it holds.
fn well_formed(s: &Server, open_uploads: Option<usize>) -> disk::Scan {
    let scan = disk::scan(&s.dir);
    assert!(scan.stray.is_empty(), "stray files: {:?}", scan.stray);
    let in_progress = s.storage.uploads_in_progress();
    assert_eq!(
        scan.incoming.len(),
        in_progress,
        "one incoming file per upload in progress"
    );
    if let Some(n) = open_uploads {
        assert_eq!(in_progress, n, "uploads in progress");
    }
    for (path, bytes) in &scan.incoming {
        assert!(
            bytes.len() >= disk::IMMUTABLE_HEADER
                && bytes[..32] == disk::magic(disk::IMMUTABLE_MAGIC),
            "an incoming share without its header: {}",
            path.display()
        );
        let size = u64::from_be_bytes(bytes[32..40].try_into().unwrap());
        assert!(size <= MAX_SHARE && (bytes.len() - disk::IMMUTABLE_HEADER) as u64 <= size);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (key, share) in &scan.shares {
        match share {
            Share::Immutable(d) => assert!(d.len() as u64 <= MAX_SHARE),
            Share::Mutable { data, .. } => assert!(data.len() as u64 <= MAX_SHARE),
            Share::Other(b) => panic!("share {key:?} is malformed ({} bytes)", b.len()),
        }
        let leases = scan
            .leases
            .get(key)
            .unwrap_or_else(|| panic!("share {key:?} has no lease file"));
        let leases = leases
            .as_ref()
            .unwrap_or_else(|| panic!("the lease file of {key:?} is not in its documented shape"));
        assert!(
            (1..=MAX_LEASES_PER_SHARE).contains(&leases.len()),
            "{} leases on {key:?}",
            leases.len()
        );
        for l in leases {
            assert!(l.expires_at > now, "an expired lease on {key:?}");
        }
        let renews: BTreeSet<_> = leases.iter().map(|l| l.renew).collect();
        assert_eq!(
            renews.len(),
            leases.len(),
            "two leases with one renew secret"
        );
    }
    for key in scan.leases.keys() {
        assert!(scan.shares.contains_key(key), "orphaned lease file {key:?}");
    }
    check_advisories(&s.dir);
    scan
}

/// Every advisory line is `<secs> <immutable|mutable> <si> <shnum> <reason>` on one line.
fn check_advisories(dir: &Path) -> usize {
    let Ok(log) = std::fs::read_to_string(dir.join("corruption-advisories/advisories.log")) else {
        return 0;
    };
    assert!(log.is_empty() || log.ends_with('\n'));
    for line in log.lines() {
        let f: Vec<&str> = line.splitn(5, ' ').collect();
        assert!(f.len() >= 4, "advisory line {line:?}");
        assert!(f[0].parse::<u64>().is_ok(), "advisory line {line:?}");
        assert!(
            f[1] == "immutable" || f[1] == "mutable",
            "advisory line {line:?}"
        );
        assert!(SIS.iter().any(|si| si_b32(si) == f[2]) || f[2].len() == 26);
        assert!(f[3].parse::<u16>().is_ok_and(|n| n <= MAX_SHNUM));
        assert!(
            !line.chars().any(char::is_control),
            "advisory line {line:?}"
        );
    }
    log.lines().count()
}

// ---------------------------------------------------------------------------------------
// Mode 1: operations, against a model.

/// One operation. Read from the input by [`Op::read`]; indexes choose among a few storage
/// indexes, secrets and write enablers, so that operations meet.
#[derive(Debug, Clone)]
enum Op {
    Version,
    Allocate {
        si: usize,
        renew: u8,
        cancel: u8,
        shnums: BTreeSet<u16>,
        size: u64,
    },
    Write {
        w: u8,
        offset: u64,
        data: Vec<u8>,
    },
    Close {
        w: u8,
    },
    Abort {
        w: u8,
    },
    /// Drops the client's reference to a writer (the server aborts an unclosed upload).
    DropWriter {
        w: u8,
    },
    /// `get_buckets`, then `read` on one of the readers (if the share is there).
    Read {
        si: usize,
        shnum: u16,
        offset: u64,
        length: u64,
    },
    AddLease {
        si: usize,
        renew: u8,
        cancel: u8,
    },
    /// `count` leases with distinct secrets: reaches the per-share limit.
    LeaseFlood {
        si: usize,
        base: u8,
        count: u8,
    },
    Advise {
        kind: u8,
        si: usize,
        shnum: u16,
        reason: Vec<u8>,
    },
    SlotReadv {
        si: usize,
        shares: Vec<u16>,
        readv: Vec<(u64, u64)>,
    },
    SlotWrite {
        si: usize,
        we: u8,
        renew: u8,
        cancel: u8,
        tw: BTreeMap<u16, TestWriteVectors>,
        readv: Vec<(u64, u64)>,
    },
    /// Virtual time passes (keepalives run).
    Sleep {
        secs: u8,
    },
    /// The client Tub shuts down and a new one connects.
    Reconnect,
}

const OPS: u8 = 14;

fn shnum(i: &mut Input) -> u16 {
    match i.u8() {
        b @ 0..=239 => u16::from(b % 8),
        240..=247 => MAX_SHNUM,
        248..=251 => MAX_SHNUM + 1,
        _ => i.var() as u16,
    }
}

/// A count of vector entries: mostly small, sometimes one past the limit.
fn count(i: &mut Input, small: u8) -> usize {
    match i.u8() {
        0xff => MAX_VECTORS + 1,
        b => usize::from(b % small),
    }
}

fn readv(i: &mut Input) -> Vec<(u64, u64)> {
    (0..count(i, 4)).map(|_| (i.var(), i.var())).collect()
}

impl Op {
    fn read(i: &mut Input) -> Op {
        match i.u8() % OPS {
            0 => Op::Version,
            1 => Op::Allocate {
                si: usize::from(i.u8() % 3),
                renew: i.u8(),
                cancel: i.u8(),
                shnums: (0..i.u8() % 6).map(|_| shnum(i)).collect(),
                size: i.var(),
            },
            2 => Op::Write {
                w: i.u8(),
                offset: i.var(),
                data: i.data(MAX_CHUNK + 1),
            },
            3 => Op::Close { w: i.u8() },
            4 => Op::Abort { w: i.u8() },
            5 => Op::DropWriter { w: i.u8() },
            6 => Op::Read {
                si: usize::from(i.u8() % 3),
                shnum: shnum(i),
                offset: i.var(),
                length: i.var(),
            },
            7 => Op::AddLease {
                si: usize::from(i.u8() % 3),
                renew: i.u8(),
                cancel: i.u8(),
            },
            8 => Op::LeaseFlood {
                si: usize::from(i.u8() % 3),
                base: i.u8(),
                count: i.u8() % 80,
            },
            9 => Op::Advise {
                kind: i.u8(),
                si: usize::from(i.u8() % 3),
                shnum: shnum(i),
                reason: i.data(4096),
            },
            10 => Op::SlotReadv {
                si: usize::from(i.u8() % 3),
                shares: (0..count(i, 4)).map(|_| shnum(i)).collect(),
                readv: readv(i),
            },
            11 => {
                let si = usize::from(i.u8() % 3);
                let (we, renew, cancel) = (i.u8(), i.u8(), i.u8());
                let mut tw = BTreeMap::new();
                // The data of one call stays under the 1 MiB frame (yet may pass MAX_CHUNK).
                let mut budget = MAX_CHUNK + 4096;
                let mut data = |i: &mut Input| {
                    let d = i.data(budget);
                    budget = budget.saturating_sub(d.len() as u64);
                    Bytes(d)
                };
                for _ in 0..i.u8() % 4 {
                    let n = shnum(i);
                    let test = (0..count(i, 3))
                        .map(|_| TestVector {
                            offset: i.var(),
                            length: i.var(),
                            specimen: data(i),
                        })
                        .collect();
                    let write = (0..count(i, 4)).map(|_| (i.var(), data(i))).collect();
                    let new_length = match i.u8() % 4 {
                        0 | 1 => None,
                        2 => Some(0),
                        _ => Some(i.var()),
                    };
                    tw.insert(
                        n,
                        TestWriteVectors {
                            test,
                            write,
                            new_length,
                        },
                    );
                }
                Op::SlotWrite {
                    si,
                    we,
                    renew,
                    cancel,
                    tw,
                    readv: readv(i),
                }
            }
            12 => Op::Sleep { secs: i.u8() },
            _ => Op::Reconnect,
        }
    }
}

fn secret(b: u8) -> Secret {
    [b; 32]
}

fn write_enabler(b: u8) -> Secret {
    [0xe0 | (b % 3); 32]
}

/// The secrets of the `i`th lease of a flood.
fn flood_secret(base: u8, i: u8) -> Secret {
    let mut s = [0x5a; 32];
    s[0] = base;
    s[1] = i;
    s
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum UploadState {
    Open,
    Closed,
    Aborted,
}

#[derive(Debug)]
struct Upload {
    si: usize,
    shnum: u16,
    size: u64,
    /// The bytes written so far (`None`: never written), up to the highest end written.
    bytes: Vec<Option<u8>>,
    state: UploadState,
    lease: (Secret, Secret),
}

impl Upload {
    fn covered(&self) -> u64 {
        self.bytes.iter().filter(|b| b.is_some()).count() as u64
    }
}

/// What the storage directory should hold.
#[derive(Default, Debug)]
struct Model {
    readonly: bool,
    immutable: BTreeMap<(usize, u16), Vec<u8>>,
    mutable: BTreeMap<(usize, u16), (Secret, Vec<u8>)>,
    /// `(renew, cancel)` per share, in the order added.
    leases: BTreeMap<(usize, u16), Vec<(Secret, Secret)>>,
    uploads: Vec<Upload>,
    advisories: usize,
}

impl Model {
    fn open_uploads(&self) -> usize {
        self.uploads
            .iter()
            .filter(|u| u.state == UploadState::Open)
            .count()
    }

    fn uploading(&self, si: usize, shnum: u16) -> bool {
        self.uploads
            .iter()
            .any(|u| u.si == si && u.shnum == shnum && u.state == UploadState::Open)
    }

    /// Every share of `si`, immutable or mutable.
    fn shares_of(&self, si: usize) -> BTreeSet<u16> {
        let imm = self.immutable.keys().filter(|k| k.0 == si).map(|k| k.1);
        let mt = self.mutable.keys().filter(|k| k.0 == si).map(|k| k.1);
        imm.chain(mt).collect()
    }

    fn add_or_renew(
        &mut self,
        si: usize,
        shnum: u16,
        l: (Secret, Secret),
    ) -> Result<(), StorageError> {
        let leases = self.leases.entry((si, shnum)).or_default();
        if leases.iter().any(|x| x.0 == l.0) {
            return Ok(());
        }
        if leases.len() >= MAX_LEASES_PER_SHARE {
            return Err(StorageError::TooManyLeases {
                maximum: MAX_LEASES_PER_SHARE as u32,
            });
        }
        leases.push(l);
        Ok(())
    }

    fn add_lease(&mut self, si: usize, l: (Secret, Secret)) -> Result<(), StorageError> {
        for n in self.shares_of(si) {
            self.add_or_renew(si, n, l)?;
        }
        Ok(())
    }

    /// The storage directory must hold exactly this.
    fn check(&self, s: &Server) {
        let scan = well_formed(s, Some(self.open_uploads()));
        let key = |si: usize, n: u16| (si_b32(&SIS[si]), n);
        let mut expected = BTreeMap::new();
        for (&(si, n), d) in &self.immutable {
            expected.insert(key(si, n), Share::Immutable(d.clone()));
        }
        for (&(si, n), (we, d)) in &self.mutable {
            expected.insert(
                key(si, n),
                Share::Mutable {
                    we: *we,
                    data: d.clone(),
                },
            );
        }
        if scan.shares != expected {
            let got: Vec<_> = scan.shares.keys().collect();
            let want: Vec<_> = expected.keys().collect();
            panic!("the shares on disk differ from the model: have {got:?}, expected {want:?}");
        }
        for (&(si, n), leases) in &self.leases {
            if !expected.contains_key(&key(si, n)) {
                assert!(leases.is_empty() || !scan.leases.contains_key(&key(si, n)));
                continue;
            }
            let on_disk: Vec<(Secret, Secret)> = scan.leases[&key(si, n)]
                .as_ref()
                .unwrap()
                .iter()
                .map(|l| (l.renew, l.cancel))
                .collect();
            assert_eq!(&on_disk, leases, "the leases of share {n} of SI {si}");
        }
        assert_eq!(check_advisories(&s.dir), self.advisories, "advisory lines");
    }
}

/// The application error of a call; any other failure is a bug here.
fn app<T>(r: Result<T, CallError<StorageError>>) -> Result<T, StorageError> {
    match r {
        Ok(v) => Ok(v),
        Err(CallError::App(e)) => Err(e),
        Err(e) => panic!("a well-formed call failed: {e}"),
    }
}

/// Compares an error, ignoring the wording of `LimitExceeded`.
fn same_error(got: &StorageError, want: &StorageError) -> bool {
    match (got, want) {
        (
            StorageError::LimitExceeded { maximum: a, .. },
            StorageError::LimitExceeded { maximum: b, .. },
        ) => a == b,
        _ => got == want,
    }
}

fn expect_err<T>(what: &str, got: Result<T, StorageError>, want: StorageError) {
    match got {
        Err(e) if same_error(&e, &want) => {}
        Err(e) => panic!("{what}: expected Err({want:?}), got Err({e:?})"),
        Ok(_) => panic!("{what}: expected Err({want:?}), got Ok"),
    }
}

fn clipped(len: u64, offset: u64, length: u64) -> u64 {
    len.saturating_sub(offset).min(length)
}

fn slice(data: &[u8], offset: u64, length: u64) -> Vec<u8> {
    let n = clipped(data.len() as u64, offset, length) as usize;
    if n == 0 {
        return Vec::new();
    }
    data[offset as usize..offset as usize + n].to_vec()
}

fn check_read_vector(readv: &[(u64, u64)]) -> Result<(), StorageError> {
    if readv.len() > MAX_VECTORS {
        return Err(StorageError::LimitExceeded {
            what: String::new(),
            maximum: MAX_VECTORS as u64,
        });
    }
    match readv.iter().find(|r| r.1 > MAX_CHUNK) {
        Some(&(_, l)) => Err(StorageError::ReadTooLarge {
            requested: l,
            maximum: MAX_CHUNK,
        }),
        None => Ok(()),
    }
}

/// A client Tub connected to the server.
struct Client {
    tub: Tub,
    storage: StorageServerRef,
    canary: CanaryRef,
    /// The writers handed out, by allocation order (`None` once dropped); parallel to
    /// `Model::uploads`.
    writers: Vec<Option<BucketWriterRef>>,
}

async fn connect(s: &Server, capture: Option<&Arc<Capture>>) -> Client {
    let connector = match capture {
        Some(c) => MemConnector::recording(s.tub.clone(), c.clone()),
        None => MemConnector::new(s.tub.clone()),
    };
    let tub = node_like_tub(CLIENT_PEM, connector);
    let storage: StorageServerRef = bounded("Tub::get", 10, tub.get(&s.furl))
        .await
        .expect("a real client reaches the storage server");
    Client {
        tub,
        storage,
        canary: CanaryRef::serve(NullCanary),
        writers: Vec::new(),
    }
}

/// Mode 1 (and the seeds, with a `capture`).
async fn ops(input: &[u8], readonly: bool, capture: Option<Arc<Capture>>) {
    let s = start(readonly);
    let mut model = Model {
        readonly,
        ..Model::default()
    };
    let mut client = connect(&s, capture.as_ref()).await;
    let mut i = Input::new(input);
    let trace = std::env::var_os("FOLIO_FUZZ_TRACE").is_some();
    for _ in 0..MAX_OPS {
        if i.is_empty() {
            break;
        }
        let op = Op::read(&mut i);
        if trace {
            let text = format!("{op:?}");
            eprintln!("op: {}", &text[..text.len().min(300)]);
        }
        let reconnect = matches!(op, Op::Reconnect);
        bounded("an operation", 900, run(&s, &mut client, &mut model, op)).await;
        if reconnect {
            bounded("Tub::shutdown (client)", 10, client.tub.shutdown()).await;
            for u in &mut model.uploads {
                if u.state == UploadState::Open {
                    u.state = UploadState::Aborted;
                }
            }
            eventually("dropping a client that left", 600, || {
                s.tub.connection_count() == 0
            })
            .await;
            eventually("aborting the uploads of a client that left", 60, || {
                s.storage.uploads_in_progress() == 0
            })
            .await;
            client = connect(&s, capture.as_ref()).await;
            model.uploads.clear();
        }
        model.check(&s);
        if trace {
            eprintln!(
                "   immutable {:?} mutable {:?} uploads {:?} leases {:?}",
                model
                    .immutable
                    .iter()
                    .map(|(k, v)| (k, v.len()))
                    .collect::<Vec<_>>(),
                model
                    .mutable
                    .iter()
                    .map(|(k, v)| (k, v.1.len()))
                    .collect::<Vec<_>>(),
                model
                    .uploads
                    .iter()
                    .map(|u| (u.si, u.shnum, u.state, u.covered()))
                    .collect::<Vec<_>>(),
                model
                    .leases
                    .iter()
                    .map(|(k, v)| (k, v.len()))
                    .collect::<Vec<_>>(),
            );
        }
    }
    assert!(s.tub.connection_count() <= 1);
    // The client goes away: its open uploads are aborted.
    bounded("Tub::shutdown (client)", 10, client.tub.shutdown()).await;
    drop(client);
    for u in &mut model.uploads {
        if u.state == UploadState::Open {
            u.state = UploadState::Aborted;
        }
    }
    eventually("dropping a client that left", 600, || {
        s.tub.connection_count() == 0
    })
    .await;
    eventually("aborting the uploads of a client that left", 60, || {
        s.storage.uploads_in_progress() == 0
    })
    .await;
    model.check(&s);
    bounded("Tub::shutdown", 10, s.tub.shutdown()).await;
}

/// Runs one operation and checks its answer against the model, which it updates.
async fn run(s: &Server, c: &mut Client, m: &mut Model, op: Op) {
    match op {
        Op::Version => {
            let v = app(c.storage.get_version().await).expect("get_version");
            assert_eq!(v.max_read_per_call, MAX_CHUNK);
            assert_eq!(v.max_write_per_call, MAX_CHUNK);
            assert_eq!(v.max_vectors_per_call as usize, MAX_VECTORS);
            assert_eq!(v.maximum_mutable_share_size, MAX_SHARE);
            assert!(v.maximum_immutable_share_size <= MAX_SHARE);
            if m.readonly {
                assert_eq!(v.maximum_immutable_share_size, 0);
            }
            assert!(v.application_version.starts_with("folio-node/"));
        }
        Op::Allocate {
            si,
            renew,
            cancel,
            shnums,
            size,
        } => {
            let lease = (secret(renew), secret(cancel));
            // What the server can promise: free space less the open uploads'.
            let promised: u64 = m
                .uploads
                .iter()
                .filter(|u| u.state == UploadState::Open)
                .map(|u| u.size + disk::IMMUTABLE_HEADER as u64)
                .sum();
            let room = match (m.readonly, s.storage.available_space()) {
                (true, _) => 0,
                (false, Some(a)) => a.saturating_sub(promised),
                (false, None) => u64::MAX,
            };
            let got = app(c
                .storage
                .allocate_buckets(
                    SIS[si],
                    lease.0,
                    lease.1,
                    shnums.clone(),
                    size,
                    c.canary.clone(),
                )
                .await);
            if let Some(&bad) = shnums.iter().find(|&&n| n > MAX_SHNUM) {
                return expect_err("allocate", got, StorageError::BadShareNumber(bad));
            }
            if size > MAX_SHARE {
                return expect_err(
                    "allocate",
                    got,
                    StorageError::TooLarge {
                        requested: size,
                        maximum: MAX_SHARE,
                    },
                );
            }
            let (have, writers) = got.expect("allocate_buckets");
            let existing = m.shares_of(si);
            // The lease goes onto every existing immutable share of the index.
            let imm: Vec<u16> = m
                .immutable
                .keys()
                .filter(|k| k.0 == si)
                .map(|k| k.1)
                .collect();
            for n in imm {
                let _ = m.add_or_renew(si, n, lease);
            }
            let want_have: BTreeSet<u16> = shnums.intersection(&existing).copied().collect();
            assert_eq!(have, want_have, "already_have");
            let need = size + disk::IMMUTABLE_HEADER as u64;
            let mut room = room;
            let mut want_new = BTreeSet::new();
            for &n in shnums.difference(&existing) {
                if m.uploading(si, n) || room < need {
                    continue;
                }
                room -= need;
                want_new.insert(n);
            }
            let got_new: BTreeSet<u16> = writers.keys().copied().collect();
            assert_eq!(got_new, want_new, "allocated writers");
            for (n, w) in writers {
                m.uploads.push(Upload {
                    si,
                    shnum: n,
                    size,
                    bytes: Vec::new(),
                    state: UploadState::Open,
                    lease,
                });
                c.writers.push(Some(w));
            }
        }
        Op::Write { w, offset, data } => {
            let Some(k) = pick(&c.writers, w) else { return };
            let got = app(c.writers[k]
                .as_ref()
                .unwrap()
                .write(offset, Bytes(data.clone()))
                .await);
            let u = &mut m.uploads[k];
            let len = data.len() as u64;
            if len > MAX_CHUNK {
                return expect_err(
                    "write",
                    got,
                    StorageError::WriteTooLarge {
                        requested: len,
                        maximum: MAX_CHUNK,
                    },
                );
            }
            if offset.checked_add(len).is_none_or(|e| e > u.size) {
                return expect_err(
                    "write",
                    got,
                    StorageError::WritePastEnd {
                        offset,
                        length: len,
                        allocated_size: u.size,
                    },
                );
            }
            if u.state != UploadState::Open {
                return expect_err("write", got, StorageError::AlreadyClosed);
            }
            // The first written run (a merged range) that overlaps with different bytes.
            let (start, end) = (offset as usize, offset as usize + data.len());
            let mut conflict = None;
            let mut run_start = None;
            for p in start..end.min(u.bytes.len()) {
                match u.bytes[p] {
                    Some(b) => {
                        let rs = *run_start.get_or_insert(p);
                        if b != data[p - start] {
                            conflict = Some(rs);
                            break;
                        }
                    }
                    None => run_start = None,
                }
            }
            if let Some(at) = conflict {
                return expect_err(
                    "write",
                    got,
                    StorageError::ConflictingWrite { offset: at as u64 },
                );
            }
            got.expect("a write within the share");
            if u.bytes.len() < end {
                u.bytes.resize(end, None);
            }
            for (p, &b) in data.iter().enumerate() {
                u.bytes[start + p] = Some(b);
            }
        }
        Op::Close { w } => {
            let Some(k) = pick(&c.writers, w) else { return };
            let got = app(c.writers[k].as_ref().unwrap().close().await);
            let u = &mut m.uploads[k];
            if u.state != UploadState::Open {
                return expect_err("close", got, StorageError::AlreadyClosed);
            }
            let covered = u.covered();
            if covered != u.size {
                return expect_err(
                    "close",
                    got,
                    StorageError::Incomplete {
                        missing: u.size - covered,
                    },
                );
            }
            got.expect("closing a complete share");
            u.state = UploadState::Closed;
            let data: Vec<u8> = u.bytes.iter().map(|b| b.unwrap()).collect();
            let (si, n, lease) = (u.si, u.shnum, u.lease);
            m.immutable.insert((si, n), data);
            m.leases.insert((si, n), vec![lease]);
        }
        Op::Abort { w } => {
            let Some(k) = pick(&c.writers, w) else { return };
            app(c.writers[k].as_ref().unwrap().abort().await).expect("abort");
            let u = &mut m.uploads[k];
            if u.state == UploadState::Open {
                u.state = UploadState::Aborted;
            }
        }
        Op::DropWriter { w } => {
            let Some(k) = pick(&c.writers, w) else { return };
            c.writers[k] = None;
            let u = &mut m.uploads[k];
            if u.state == UploadState::Open {
                u.state = UploadState::Aborted;
            }
            let open = m.open_uploads();
            eventually("a dropped writer's upload to abort", 60, || {
                s.storage.uploads_in_progress() == open
            })
            .await;
        }
        Op::Read {
            si,
            shnum,
            offset,
            length,
        } => {
            let readers = app(c.storage.get_buckets(SIS[si]).await).expect("get_buckets");
            let want: BTreeSet<u16> = m
                .immutable
                .keys()
                .filter(|k| k.0 == si)
                .map(|k| k.1)
                .collect();
            assert_eq!(
                readers.keys().copied().collect::<BTreeSet<_>>(),
                want,
                "get_buckets"
            );
            let Some(r) = readers.get(&shnum) else { return };
            let data = &m.immutable[&(si, shnum)];
            assert_eq!(app(r.size().await).expect("size"), data.len() as u64);
            let got = app(r.read(offset, length).await);
            if length > MAX_CHUNK {
                return expect_err(
                    "read",
                    got,
                    StorageError::ReadTooLarge {
                        requested: length,
                        maximum: MAX_CHUNK,
                    },
                );
            }
            assert_eq!(got.expect("read").0, slice(data, offset, length), "read");
        }
        Op::AddLease { si, renew, cancel } => {
            let lease = (secret(renew), secret(cancel));
            let got = app(c.storage.add_lease(SIS[si], lease.0, lease.1).await);
            match m.add_lease(si, lease) {
                Ok(()) => got.expect("add_lease"),
                Err(e) => expect_err("add_lease", got, e),
            }
        }
        Op::LeaseFlood { si, base, count } => {
            for k in 0..count {
                let lease = (flood_secret(base, k), flood_secret(base ^ 0xff, k));
                let got = app(c.storage.add_lease(SIS[si], lease.0, lease.1).await);
                match m.add_lease(si, lease) {
                    Ok(()) => got.expect("add_lease"),
                    Err(e) => expect_err("add_lease", got, e),
                }
            }
        }
        Op::Advise {
            kind,
            si,
            shnum,
            reason,
        } => {
            let kind = match kind % 4 {
                0 | 1 => "immutable",
                2 => "mutable",
                _ => "mutable\n",
            };
            let reason = String::from_utf8_lossy(&reason).into_owned();
            let got = app(c
                .storage
                .advise_corrupt_share(kind.to_string(), SIS[si], shnum, reason)
                .await);
            if kind.ends_with('\n') {
                return expect_err("advise", got, StorageError::BadShareType);
            }
            if shnum > MAX_SHNUM {
                return expect_err("advise", got, StorageError::BadShareNumber(shnum));
            }
            got.expect("advise_corrupt_share");
            m.advisories += 1;
        }
        Op::SlotReadv { si, shares, readv } => {
            let got = app(c
                .storage
                .slot_readv(SIS[si], shares.clone(), readv.clone())
                .await);
            if shares.len() > MAX_VECTORS {
                return expect_err(
                    "slot_readv",
                    got,
                    StorageError::LimitExceeded {
                        what: String::new(),
                        maximum: MAX_VECTORS as u64,
                    },
                );
            }
            if let Some(&bad) = shares.iter().find(|&&n| n > MAX_SHNUM) {
                return expect_err("slot_readv", got, StorageError::BadShareNumber(bad));
            }
            if let Err(e) = check_read_vector(&readv) {
                return expect_err("slot_readv", got, e);
            }
            let slots: Vec<(u16, &Vec<u8>)> = m
                .mutable
                .iter()
                .filter(|(k, _)| k.0 == si && (shares.is_empty() || shares.contains(&k.1)))
                .map(|(k, v)| (k.1, &v.1))
                .collect();
            let total: u64 = slots
                .iter()
                .map(|(_, d)| {
                    readv
                        .iter()
                        .map(|&(o, l)| clipped(d.len() as u64, o, l))
                        .sum::<u64>()
                })
                .sum();
            if total > MAX_CHUNK {
                return expect_err(
                    "slot_readv",
                    got,
                    StorageError::ReadTooLarge {
                        requested: total,
                        maximum: MAX_CHUNK,
                    },
                );
            }
            let want: BTreeMap<u16, Vec<Bytes>> = slots
                .iter()
                .map(|(n, d)| {
                    (
                        *n,
                        readv.iter().map(|&(o, l)| Bytes(slice(d, o, l))).collect(),
                    )
                })
                .collect();
            assert_eq!(got.expect("slot_readv"), want, "slot_readv");
        }
        Op::SlotWrite {
            si,
            we,
            renew,
            cancel,
            tw,
            readv,
        } => {
            let (we, lease) = (write_enabler(we), (secret(renew), secret(cancel)));
            let room = s.storage.available_space();
            let got = app(c
                .storage
                .slot_testv_and_readv_and_writev(
                    SIS[si],
                    (we, lease.0, lease.1),
                    tw.clone(),
                    readv.clone(),
                )
                .await);
            match slot_write(m, si, we, lease, &tw, &readv, room) {
                Ok(want) => assert_eq!(got.expect("slot_testv_and_readv_and_writev"), want),
                Err(e) => expect_err("slot_testv_and_readv_and_writev", got, e),
            }
        }
        Op::Sleep { secs } => {
            tokio::time::sleep(Duration::from_secs(u64::from(secs) * 2)).await;
            assert_eq!(
                s.tub.connection_count(),
                1,
                "the connection survives idling"
            );
        }
        Op::Reconnect => {}
    }
}

/// The writer `w` picks, if it is still held.
fn pick(writers: &[Option<BucketWriterRef>], w: u8) -> Option<usize> {
    if writers.is_empty() {
        return None;
    }
    let k = usize::from(w) % writers.len();
    writers[k].as_ref().map(|_| k)
}

/// The model of `slot_testv_and_readv_and_writev`, as `folio_node::storage` documents it.
fn slot_write(
    m: &mut Model,
    si: usize,
    we: Secret,
    lease: (Secret, Secret),
    tw: &BTreeMap<u16, TestWriteVectors>,
    readv: &[(u64, u64)],
    room: Option<u64>,
) -> Result<(bool, BTreeMap<u16, Vec<Bytes>>), StorageError> {
    check_read_vector(readv)?;
    let (mut carried, mut tested) = (0u64, 0u64);
    for (&n, v) in tw {
        if n > MAX_SHNUM {
            return Err(StorageError::BadShareNumber(n));
        }
        if v.test.len() > MAX_VECTORS || v.write.len() > MAX_VECTORS {
            return Err(StorageError::LimitExceeded {
                what: String::new(),
                maximum: MAX_VECTORS as u64,
            });
        }
        for t in &v.test {
            tested = tested.saturating_add(t.length);
            carried = carried.saturating_add(t.specimen.len() as u64);
        }
        for (_, d) in &v.write {
            carried = carried.saturating_add(d.len() as u64);
        }
    }
    if tested > MAX_CHUNK {
        return Err(StorageError::ReadTooLarge {
            requested: tested,
            maximum: MAX_CHUNK,
        });
    }
    if carried > MAX_CHUNK {
        return Err(StorageError::WriteTooLarge {
            requested: carried,
            maximum: MAX_CHUNK,
        });
    }
    let writes = tw
        .values()
        .any(|v| !v.write.is_empty() || v.new_length.is_some());
    if writes && m.readonly {
        return Err(StorageError::ReadOnly);
    }
    for &n in tw.keys() {
        if m.immutable.contains_key(&(si, n)) || m.uploading(si, n) {
            return Err(StorageError::ShareTypeConflict { shnum: n });
        }
    }
    let slots: BTreeMap<u16, (Secret, Vec<u8>)> = m
        .mutable
        .iter()
        .filter(|(k, _)| k.0 == si)
        .map(|(k, v)| (k.1, v.clone()))
        .collect();
    if slots.values().any(|(w, _)| *w != we) {
        return Err(StorageError::BadWriteEnabler);
    }
    let total: u64 = slots
        .values()
        .map(|(_, d)| {
            readv
                .iter()
                .map(|&(o, l)| clipped(d.len() as u64, o, l))
                .sum::<u64>()
        })
        .sum();
    if total > MAX_CHUNK {
        return Err(StorageError::ReadTooLarge {
            requested: total,
            maximum: MAX_CHUNK,
        });
    }
    let empty = Vec::new();
    let passed = tw.iter().all(|(n, v)| {
        let data = slots.get(n).map_or(&empty, |s| &s.1);
        v.test
            .iter()
            .all(|t| slice(data, t.offset, t.length) == t.specimen.0)
    });
    let reads: BTreeMap<u16, Vec<Bytes>> = slots
        .iter()
        .map(|(&n, (_, d))| {
            (
                n,
                readv.iter().map(|&(o, l)| Bytes(slice(d, o, l))).collect(),
            )
        })
        .collect();
    if !passed {
        return Ok((false, reads));
    }
    // Every share's new contents, before any is written: a refusal writes nothing.
    enum Plan {
        Nothing,
        Delete,
        Write(Vec<u8>),
    }
    let mut plans = Vec::new();
    let mut growth = 0u64;
    for (&n, v) in tw {
        let current = slots.get(&n);
        let cur_len = current.map_or(0, |s| s.1.len() as u64);
        let plan = if v.new_length == Some(0) {
            if current.is_some() {
                Plan::Delete
            } else {
                Plan::Nothing
            }
        } else if v.write.is_empty() && v.new_length.is_none_or(|l| l >= cur_len) {
            Plan::Nothing
        } else {
            let mut len = cur_len;
            for (o, d) in &v.write {
                let end = o
                    .checked_add(d.len() as u64)
                    .ok_or(StorageError::TooLarge {
                        requested: u64::MAX,
                        maximum: MAX_SHARE,
                    })?;
                len = len.max(end);
            }
            if let Some(l) = v.new_length {
                len = len.min(l);
            }
            if len > MAX_SHARE {
                return Err(StorageError::TooLarge {
                    requested: len,
                    maximum: MAX_SHARE,
                });
            }
            let header = if current.is_none() { 72 } else { 0 };
            growth = growth.saturating_add(len.saturating_sub(cur_len) + header);
            let mut buf = current.map_or_else(Vec::new, |s| s.1.clone());
            for (o, d) in &v.write {
                if *o >= len {
                    continue;
                }
                let o = *o as usize;
                let k = (len as usize - o).min(d.len());
                if buf.len() < o + k {
                    buf.resize(o + k, 0);
                }
                buf[o..o + k].copy_from_slice(&d[..k]);
            }
            buf.resize(len as usize, 0);
            Plan::Write(buf)
        };
        plans.push((n, plan));
    }
    if growth > 0 && room.unwrap_or(u64::MAX) < growth {
        return Err(StorageError::NoSpace);
    }
    for (n, plan) in plans {
        match plan {
            Plan::Nothing => {}
            Plan::Delete => {
                m.mutable.remove(&(si, n));
                m.leases.remove(&(si, n));
            }
            Plan::Write(data) => {
                if m.mutable.insert((si, n), (we, data)).is_some() {
                    let _ = m.add_or_renew(si, n, lease);
                } else {
                    m.leases.insert((si, n), vec![lease]);
                }
            }
        }
    }
    Ok((true, reads))
}

/// Seeds: hand-written operation sequences, and the frames a real client sent for each.
mod seeds {
    use super::*;

    fn allocate(s: &mut Seed, si: u8, renew: u8, shnums: &[u8], size: u64) {
        s.u8(1)
            .u8(si)
            .u8(renew)
            .u8(renew ^ 0xff)
            .u8(shnums.len() as u8);
        for &n in shnums {
            s.u8(n);
        }
        s.var(size);
    }

    fn put(s: &mut Seed, w: u8, offset: u64, data: &[u8]) {
        s.u8(2).u8(w).var(offset).lit(data);
    }

    /// A slot update: one share, optional test, writes, new length.
    fn slot_write(
        s: &mut Seed,
        si: u8,
        we: u8,
        shnum: u8,
        test: Option<(u64, &[u8])>,
        writes: &[(u64, &[u8])],
        new_length: Option<u64>,
    ) {
        s.u8(11).u8(si).u8(we).u8(7).u8(8).u8(1).u8(shnum);
        match test {
            Some((o, d)) => {
                s.u8(1).var(o).var(d.len() as u64).lit(d);
            }
            None => {
                s.u8(0);
            }
        }
        s.u8(writes.len() as u8);
        for (o, d) in writes {
            s.var(*o).lit(d);
        }
        match new_length {
            None => s.u8(0),
            Some(0) => s.u8(2),
            Some(n) => s.u8(3).var(n),
        };
        s.u8(1).var(0).var(16); // read vector: 16 bytes at 0
    }

    fn scenarios() -> Vec<(&'static str, Seed)> {
        let mut out = Vec::new();

        let mut s = Seed::new(1);
        s.u8(0); // version
        allocate(&mut s, 0, 1, &[0, 1, 2], 20);
        put(&mut s, 0, 0, b"0123456789");
        put(&mut s, 0, 10, b"abcdefghij");
        s.u8(3).u8(0); // close 0
        put(&mut s, 1, 0, b"01234567890123456789");
        s.u8(3).u8(1); // close 1
        s.u8(4).u8(2); // abort 2
        s.u8(6).u8(0).u8(0).var(5).var(10); // read 5..15 of share 0
        s.u8(7).u8(0).u8(9).u8(10); // add_lease
        out.push(("upload_read", s));

        let mut s = Seed::new(1);
        allocate(&mut s, 1, 2, &[3], 8);
        put(&mut s, 0, 0, b"abcd");
        put(&mut s, 0, 2, b"cdef"); // overlaps consistently
        put(&mut s, 0, 3, b"XX"); // conflicts
        put(&mut s, 0, 6, b"0123"); // past the end
        s.u8(3).u8(0); // close: incomplete
        put(&mut s, 0, 6, b"gh");
        s.u8(3).u8(0); // close
        s.u8(3).u8(0); // close again
        allocate(&mut s, 1, 3, &[3, 4], 8); // already have 3
        s.u8(5).u8(1); // drop the writer of 4
        allocate(&mut s, 1, 3, &[240, 250], 8); // 255, then 256: refused
        allocate(&mut s, 1, 3, &[4], MAX_SHARE + 1); // too large
        out.push(("upload_errors", s));

        let mut s = Seed::new(1);
        slot_write(&mut s, 2, 0, 0, None, &[(0, b"hello, slot")], None);
        slot_write(&mut s, 2, 0, 0, Some((0, b"hello")), &[(7, b"world")], None);
        slot_write(&mut s, 2, 0, 0, Some((0, b"nope")), &[(0, b"x")], None);
        slot_write(&mut s, 2, 1, 0, None, &[(0, b"x")], None); // wrong write enabler
        slot_write(&mut s, 2, 0, 1, None, &[(40, b"gap")], None);
        slot_write(&mut s, 2, 0, 0, None, &[], Some(5)); // cut
        s.u8(10).u8(2).u8(0).u8(2).var(0).var(4).var(3).var(100); // readv all shares
        slot_write(&mut s, 2, 0, 1, None, &[], Some(0)); // delete
        s.u8(10).u8(2).u8(1).u8(0).u8(1).var(0).var(64);
        out.push(("slots", s));

        let mut s = Seed::new(1);
        allocate(&mut s, 0, 1, &[5], 4);
        slot_write(&mut s, 0, 0, 5, None, &[(0, b"m")], None); // conflicts with the upload
        put(&mut s, 0, 0, b"imm!");
        s.u8(3).u8(0);
        slot_write(&mut s, 0, 0, 6, None, &[(0, b"mutable")], None);
        allocate(&mut s, 0, 2, &[5, 6, 7], 4); // 5 and 6 exist
        s.u8(7).u8(0).u8(3).u8(4); // a lease on both
        s.u8(9).u8(0).u8(0).u8(5).lit(b"bad\nhash \x07"); // advice
        s.u8(9).u8(3).u8(0).u8(5).lit(b"wrong type");
        s.u8(12).u8(40); // 80 s idle
        out.push(("mixed", s));

        // Kept apart: the flood's 70 calls make every input that descends from it slow.
        let mut s = Seed::new(1);
        slot_write(&mut s, 1, 0, 6, None, &[(0, b"mutable")], None);
        allocate(&mut s, 1, 1, &[5], 1);
        put(&mut s, 0, 0, b"i");
        s.u8(3).u8(0);
        s.u8(8).u8(1).u8(3).u8(70); // 70 leases: past the limit on share 5
        s.u8(7).u8(1).u8(3).u8(4); // a renewal still works at the limit
        out.push(("lease_limit", s));

        let mut s = Seed::new(1);
        allocate(&mut s, 0, 1, &[0, 1], 4);
        put(&mut s, 0, 0, b"ab");
        s.u8(13); // reconnect: both uploads abort
        allocate(&mut s, 0, 1, &[0], 4);
        put(&mut s, 0, 0, b"abcd");
        s.u8(3).u8(0);
        out.push(("reconnect", s));

        let mut s = Seed::new(1);
        allocate(&mut s, 0, 1, &[0], MAX_CHUNK + 8);
        s.u8(2).u8(0).var(0).gen(MAX_CHUNK, 3);
        s.u8(2).u8(0).var(MAX_CHUNK).gen(8, 5);
        s.u8(2).u8(0).var(0).gen(MAX_CHUNK + 1, 3); // too large
        s.u8(3).u8(0);
        s.u8(6).u8(0).u8(0).var(MAX_CHUNK - 4).var(64);
        out.push(("large", s));

        let mut ro = Seed::new(0x81);
        allocate(&mut ro, 0, 1, &[0], 4);
        slot_write(&mut ro, 0, 0, 0, None, &[(0, b"x")], None);
        ro.u8(0);
        out.push(("readonly", ro));
        out
    }

    pub fn write(dir: &Path) {
        for (name, seed) in scenarios() {
            seed.write(dir, &format!("ops_{name}"));
            let capture = Arc::new(Capture::default());
            let mode = seed.0[0];
            runtime().block_on(ops(&seed.0[1..], mode & 0x80 != 0, Some(capture.clone())));
            if name == "large" {
                // A megabyte of frames would make libFuzzer's inputs that long: the
                // operations reach large data from a few bytes instead.
                continue;
            }
            let mut frames = vec![mode & 0x80];
            frames.extend_from_slice(&capture.joined());
            folio_fuzz::write_seed(dir, &format!("frames_{name}"), &frames);
            eprintln!("{name}: {} frames", capture.frames.lock().unwrap().len());
        }
        folio_fuzz::write_seed(dir, "frames_bad_message", &[0x00, 0xff, 0xff, 0xff]);
        eprintln!("seeds written to {}", dir.display());
    }
}
