//! A share file as the storage server finds it on disk (`shares/<p>/<si>/0`): usually a
//! mutable container (`"folio mutable slot v1\n"` padded to 32 bytes, the 32-byte write
//! enabler, the data length as a big-endian u64, the data), or an immutable share (its magic,
//! the data length, the data), or anything else. The server then serves it: slot reads, slot
//! test-and-set writes (with the container's write enabler or another), immutable reads,
//! leases, allocations; each answer, and the file after each write, is checked against a
//! model of what the file says.
//!
//! Input: a flag byte (unused bits are free for later), a varint length and that many bytes of
//! file (at most 8 KiB), then operations (see [`Op`]) until the input ends (at most 16).
//!
//! Invariants, beyond not panicking:
//! - the data is what the header's length field says, as far as the file holds it (a field
//!   that claims more, up to `u64::MAX`, is believed no further than the file goes): a read
//!   returns exactly those bytes in the range asked, never a byte of the header;
//! - the per-call bounds hold (a read of more than `MAX_CHUNK` in all is refused);
//! - a file that is not a whole container header (or is an immutable share) is another type
//!   of share to slot writes, and absent from slot reads; only an immutable header with its
//!   magic makes a bucket reader;
//! - a write with the container's write enabler whose tests pass leaves a well-formed
//!   container (its length field equals the data that follows) holding the old data with the
//!   writes applied (zeros in any gap) and cut at the new length, under the same write
//!   enabler; a write that is refused or whose tests
//!   fail leaves the file byte for byte as it was; no temporary file is left behind;
//! - every lease file the server writes is in its documented shape.
//!
//! Seeds (`seeds/mutable_container/`): containers as the server writes them (through a real
//! storage server), with reads, tests, writes and cuts; the same with a length field that
//! claims more or less than the file holds, with a short header, with the immutable magic,
//! and plain garbage. Regenerate with (the fuzzer exits once they are written):
//!
//! ```sh
//! FOLIO_FUZZ_WRITE_SEEDS=$PWD/fuzz/seeds/mutable_container RUSTC_BOOTSTRAP=1 \
//!   cargo fuzz run --fuzz-dir fuzz mutable_container -- -runs=0
//! ```
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use folio_fuzz::disk::{self, strict_leases};
use folio_fuzz::{scratch_dir, Input, Seed};
use folio_node::storage::{
    CanaryRef, NullCanary, Storage, StorageConfig, StorageError, StorageServer, TestVector,
    TestWriteVectors, MAX_CHUNK, MAX_VECTORS,
};
use folio_rpc::Bytes;
use libfuzzer_sys::fuzz_target;

const SI: [u8; 16] = [9; 16];
const MAX_SHARE: u64 = 1 << 20;
const MAX_FILE: u64 = 8192;
const MAX_OPS: usize = 16;
const OTHER_WE: [u8; 32] = [0x11; 32];

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("FOLIO_FUZZ_WRITE_SEEDS") {
            seeds::write(Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(data));
    }
);

#[derive(Debug)]
enum Op {
    SlotReadv {
        shares: Vec<u16>,
        readv: Vec<(u64, u64)>,
    },
    ImmutableRead {
        offset: u64,
        length: u64,
    },
    SlotWrite {
        /// The container's write enabler (if it has one), or another.
        own_we: bool,
        test: Vec<TestVector>,
        write: Vec<(u64, Bytes)>,
        new_length: Option<u64>,
        readv: Vec<(u64, u64)>,
    },
    AddLease,
    Allocate,
}

fn readv(i: &mut Input) -> Vec<(u64, u64)> {
    let n = match i.u8() {
        0xff => MAX_VECTORS + 1,
        b => usize::from(b % 4),
    };
    (0..n).map(|_| (i.var(), i.var())).collect()
}

impl Op {
    fn read(i: &mut Input, file: &Option<Vec<u8>>) -> Op {
        match i.u8() % 5 {
            0 => Op::SlotReadv {
                shares: match i.u8() % 3 {
                    0 => vec![],
                    1 => vec![0],
                    _ => vec![1],
                },
                readv: readv(i),
            },
            1 => Op::ImmutableRead {
                offset: i.var(),
                length: i.var(),
            },
            2 => {
                let own_we = !i.u8().is_multiple_of(4);
                let test = (0..i.u8() % 3)
                    .map(|_| {
                        let (offset, length) = (i.var(), i.var());
                        // Mostly the bytes the file holds there, so that tests pass.
                        let specimen = if !i.u8().is_multiple_of(4) {
                            file.as_ref()
                                .and_then(|f| mutable_view(f))
                                .map_or_else(Vec::new, |v| v.read(offset, length))
                        } else {
                            i.data(64)
                        };
                        TestVector {
                            offset,
                            length,
                            specimen: Bytes(specimen),
                        }
                    })
                    .collect();
                let write = (0..i.u8() % 3)
                    .map(|_| (i.var(), Bytes(i.data(64 * 1024))))
                    .collect();
                let new_length = match i.u8() % 4 {
                    0 | 1 => None,
                    2 => Some(0),
                    _ => Some(i.var()),
                };
                Op::SlotWrite {
                    own_we,
                    test,
                    write,
                    new_length,
                    readv: readv(i),
                }
            }
            3 => Op::AddLease,
            _ => Op::Allocate,
        }
    }
}

/// A file read as the documented format says, whatever it holds: the data is what the
/// header's length field says, as far as the file holds it.
struct View<'a> {
    we: [u8; 32],
    /// The length field, cut to the bytes the file has after the header.
    data_len: u64,
    /// The bytes after the header.
    body: &'a [u8],
}

impl View<'_> {
    /// `length` bytes at `offset` of the data, fewer at its end.
    fn read(&self, offset: u64, length: u64) -> Vec<u8> {
        let n = clipped(self.data_len, offset, length) as usize;
        if n == 0 {
            return Vec::new();
        }
        self.body[offset as usize..offset as usize + n].to_vec()
    }
}

fn mutable_view(f: &[u8]) -> Option<View<'_>> {
    if f.len() < disk::MUTABLE_HEADER || f[..32] != disk::magic(disk::MUTABLE_MAGIC) {
        return None;
    }
    Some(View {
        we: f[32..64].try_into().unwrap(),
        data_len: u64::from_be_bytes(f[64..72].try_into().unwrap())
            .min((f.len() - disk::MUTABLE_HEADER) as u64),
        body: &f[disk::MUTABLE_HEADER..],
    })
}

fn immutable_view(f: &[u8]) -> Option<View<'_>> {
    if f.len() < disk::IMMUTABLE_HEADER || f[..32] != disk::magic(disk::IMMUTABLE_MAGIC) {
        return None;
    }
    Some(View {
        we: [0; 32],
        data_len: u64::from_be_bytes(f[32..40].try_into().unwrap())
            .min((f.len() - disk::IMMUTABLE_HEADER) as u64),
        body: &f[disk::IMMUTABLE_HEADER..],
    })
}

fn clipped(len: u64, offset: u64, length: u64) -> u64 {
    len.saturating_sub(offset).min(length)
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

fn total(v: &View, readv: &[(u64, u64)]) -> Result<(), StorageError> {
    let total: u64 = readv.iter().map(|&(o, l)| clipped(v.data_len, o, l)).sum();
    if total > MAX_CHUNK {
        return Err(StorageError::ReadTooLarge {
            requested: total,
            maximum: MAX_CHUNK,
        });
    }
    Ok(())
}

fn same_error(got: &StorageError, want: &StorageError) -> bool {
    match (got, want) {
        (
            StorageError::LimitExceeded { maximum: a, .. },
            StorageError::LimitExceeded { maximum: b, .. },
        ) => a == b,
        _ => got == want,
    }
}

fn check<T: std::fmt::Debug + PartialEq>(
    what: &str,
    got: Result<T, StorageError>,
    want: Result<T, StorageError>,
) {
    match (&got, &want) {
        (Err(g), Err(w)) if same_error(g, w) => {}
        _ => assert!(got == want, "{what}: got {got:?}, expected {want:?}"),
    }
}

struct Slot {
    storage: Storage,
    share: PathBuf,
    leases: PathBuf,
    tmp: PathBuf,
}

impl Slot {
    /// The share file must be `file` (or absent), with no temporary file beside it and a
    /// lease file, if any, in its documented shape.
    fn check(&self, file: &Option<Vec<u8>>, what: &str) {
        let on_disk = std::fs::read(&self.share).ok();
        if on_disk != *file {
            panic!(
                "{what}: the share file is {:?}, expected {:?}",
                on_disk.as_ref().map(|f| &f[..f.len().min(100)]),
                file.as_ref().map(|f| &f[..f.len().min(100)])
            );
        }
        assert!(!self.tmp.exists(), "{what}: a temporary file was left");
        if let Ok(l) = std::fs::read(&self.leases) {
            let l = strict_leases(&l).expect("a lease file in its documented shape");
            assert!(!l.is_empty());
        }
    }
}

async fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let _flags = i.u8();
    let len = i.var().min(MAX_FILE) as usize;
    let mut file = Some(i.take(len).to_vec());

    let dir = scratch_dir("mutable_container").join("storage");
    let storage = Storage::open(StorageConfig {
        max_immutable_share_size: MAX_SHARE,
        max_mutable_share_size: MAX_SHARE,
        ..StorageConfig::new(&dir)
    })
    .expect("Storage::open");
    let bucket = disk::si_path(&dir.join("shares"), &SI);
    std::fs::create_dir_all(&bucket).unwrap();
    let slot = Slot {
        storage,
        share: bucket.join("0"),
        leases: bucket.join("0.leases"),
        tmp: bucket.join("0.tmp"),
    };
    std::fs::write(&slot.share, file.as_ref().unwrap()).unwrap();

    for _ in 0..MAX_OPS {
        if i.is_empty() {
            break;
        }
        let op = Op::read(&mut i, &file);
        let what = format!("{op:?}");
        let what = &what[..what.len().min(200)];
        match op {
            Op::SlotReadv { shares, readv } => {
                let got = slot
                    .storage
                    .slot_readv(SI, shares.clone(), readv.clone())
                    .await;
                let want = check_read_vector(&readv).and_then(|()| {
                    let view = file.as_deref().and_then(mutable_view);
                    match view {
                        Some(v) if shares.is_empty() || shares.contains(&0) => {
                            total(&v, &readv)?;
                            let reads = readv.iter().map(|&(o, l)| Bytes(v.read(o, l))).collect();
                            Ok(BTreeMap::from([(0u16, reads)]))
                        }
                        _ => Ok(BTreeMap::new()),
                    }
                });
                check(what, got, want);
            }
            Op::ImmutableRead { offset, length } => {
                let readers = slot.storage.get_buckets(SI).await.expect("get_buckets");
                let view = file.as_deref().and_then(immutable_view);
                assert_eq!(
                    readers.len(),
                    usize::from(view.is_some()),
                    "{what}: readers"
                );
                let (Some(v), Some(r)) = (view, readers.get(&0)) else {
                    continue;
                };
                assert_eq!(r.size().await.expect("size"), v.data_len);
                let got = r.read(offset, length).await.map_err(|e| match e {
                    folio_rpc::CallError::App(e) => e,
                    e => panic!("{what}: a local call failed: {e}"),
                });
                let want = if length > MAX_CHUNK {
                    Err(StorageError::ReadTooLarge {
                        requested: length,
                        maximum: MAX_CHUNK,
                    })
                } else {
                    Ok(Bytes(v.read(offset, length)))
                };
                check(what, got, want);
            }
            Op::SlotWrite {
                own_we,
                test,
                write,
                new_length,
                readv,
            } => {
                let we = match file.as_deref().and_then(mutable_view) {
                    Some(v) if own_we => v.we,
                    _ => OTHER_WE,
                };
                let tw = TestWriteVectors {
                    test,
                    write,
                    new_length,
                };
                let got = slot
                    .storage
                    .slot_testv_and_readv_and_writev(
                        SI,
                        (we, [1; 32], [2; 32]),
                        BTreeMap::from([(0, tw.clone())]),
                        readv.clone(),
                    )
                    .await;
                let (want, after) = slot_write(&file, we, &tw, &readv);
                check(what, got, want);
                if let Some(after) = after {
                    file = after;
                }
            }
            Op::AddLease => {
                slot.storage
                    .add_lease(SI, [3; 32], [4; 32])
                    .await
                    .expect("add_lease");
                if file.is_some() {
                    let l = strict_leases(&std::fs::read(&slot.leases).unwrap()).unwrap();
                    assert!(l.iter().any(|l| l.renew == [3; 32]));
                }
            }
            Op::Allocate => {
                let canary = CanaryRef::serve(NullCanary);
                let (have, writers) = slot
                    .storage
                    .allocate_buckets(SI, [5; 32], [6; 32], BTreeSet::from([0]), 4, canary)
                    .await
                    .expect("allocate_buckets");
                assert_eq!(have.contains(&0), file.is_some(), "{what}: already have");
                assert_eq!(
                    writers.len(),
                    usize::from(file.is_none()),
                    "{what}: writers"
                );
                // Dropped: the upload is aborted.
            }
        }
        slot.check(&file, what);
    }
}

/// What `slot_testv_and_readv_and_writev` answers for share 0, and the file it leaves (`None`
/// if unchanged; `Some(None)` if deleted).
#[allow(clippy::type_complexity)]
fn slot_write(
    file: &Option<Vec<u8>>,
    we: [u8; 32],
    tw: &TestWriteVectors,
    readv: &[(u64, u64)],
) -> (
    Result<(bool, BTreeMap<u16, Vec<Bytes>>), StorageError>,
    Option<Option<Vec<u8>>>,
) {
    let refused = |e| (Err(e), None);
    if let Err(e) = check_read_vector(readv) {
        return refused(e);
    }
    if tw.test.len() > MAX_VECTORS || tw.write.len() > MAX_VECTORS {
        return refused(StorageError::LimitExceeded {
            what: String::new(),
            maximum: MAX_VECTORS as u64,
        });
    }
    let tested = tw.test.iter().fold(0u64, |a, t| a.saturating_add(t.length));
    let carried = tw.test.iter().map(|t| t.specimen.len() as u64).sum::<u64>()
        + tw.write.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
    if tested > MAX_CHUNK {
        return refused(StorageError::ReadTooLarge {
            requested: tested,
            maximum: MAX_CHUNK,
        });
    }
    if carried > MAX_CHUNK {
        return refused(StorageError::WriteTooLarge {
            requested: carried,
            maximum: MAX_CHUNK,
        });
    }
    let view = match file {
        None => None,
        Some(f) => match mutable_view(f) {
            Some(v) => Some(v),
            None => return refused(StorageError::ShareTypeConflict { shnum: 0 }),
        },
    };
    if view.as_ref().is_some_and(|v| v.we != we) {
        return refused(StorageError::BadWriteEnabler);
    }
    if let Some(v) = &view {
        if let Err(e) = total(v, readv) {
            return refused(e);
        }
    }
    let passed = tw.test.iter().all(|t| {
        let have = view
            .as_ref()
            .map_or_else(Vec::new, |v| v.read(t.offset, t.length));
        have == t.specimen.0
    });
    let reads: BTreeMap<u16, Vec<Bytes>> = match &view {
        Some(v) => BTreeMap::from([(0, readv.iter().map(|&(o, l)| Bytes(v.read(o, l))).collect())]),
        None => BTreeMap::new(),
    };
    if !passed {
        return (Ok((false, reads)), None);
    }
    let cur_len = view.as_ref().map_or(0, |v| v.data_len);
    if tw.new_length == Some(0) {
        let after = view.is_some().then_some(None);
        return (Ok((true, reads)), after);
    }
    if tw.write.is_empty() && tw.new_length.is_none_or(|n| n >= cur_len) {
        return (Ok((true, reads)), None);
    }
    let mut len = cur_len;
    for (o, d) in &tw.write {
        match o.checked_add(d.len() as u64) {
            Some(end) => len = len.max(end),
            None => {
                return refused(StorageError::TooLarge {
                    requested: u64::MAX,
                    maximum: MAX_SHARE,
                })
            }
        }
    }
    if let Some(n) = tw.new_length {
        len = len.min(n);
    }
    if len > MAX_SHARE {
        return refused(StorageError::TooLarge {
            requested: len,
            maximum: MAX_SHARE,
        });
    }
    // The old data, the writes, the cut (zeros in any gap).
    let mut data = match &view {
        Some(v) => v.body[..v.data_len.min(len) as usize].to_vec(),
        None => Vec::new(),
    };
    for (o, d) in &tw.write {
        if *o >= len {
            continue;
        }
        let o = *o as usize;
        let k = (len as usize - o).min(d.len());
        if data.len() < o + k {
            data.resize(o + k, 0);
        }
        data[o..o + k].copy_from_slice(&d[..k]);
    }
    data.resize(len as usize, 0);
    let we = view.as_ref().map_or(we, |v| v.we);
    (
        Ok((true, reads)),
        Some(Some(disk::mutable_file(&we, &data))),
    )
}

mod seeds {
    use super::*;

    /// A container as a real storage server writes it.
    fn server_container(we: [u8; 32], data: &[u8]) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = scratch_dir("mutable_container_seeds").join("storage");
        let storage = Storage::open(StorageConfig::new(&dir)).unwrap();
        let tw = TestWriteVectors {
            test: Vec::new(),
            write: vec![(0, Bytes(data.to_vec()))],
            new_length: None,
        };
        let (passed, _) = rt
            .block_on(storage.slot_testv_and_readv_and_writev(
                SI,
                (we, [1; 32], [2; 32]),
                BTreeMap::from([(0, tw)]),
                Vec::new(),
            ))
            .unwrap();
        assert!(passed);
        std::fs::read(disk::si_path(&dir.join("shares"), &SI).join("0")).unwrap()
    }

    /// Operations that exercise a file: reads, a passing test-and-write, a cut, leases.
    fn ops(s: &mut Seed) {
        s.u8(0)
            .u8(0)
            .u8(3)
            .var(0)
            .var(16)
            .var(5)
            .var(1000)
            .var(u64::MAX - 8)
            .var(100);
        s.u8(1).var(0).var(64);
        // A write with the container's enabler, testing the first 4 bytes as they are.
        s.u8(2)
            .u8(1)
            .u8(1)
            .var(0)
            .var(4)
            .u8(1)
            .u8(1)
            .var(3)
            .lit(b"xyz")
            .u8(0)
            .u8(1)
            .var(0)
            .var(32);
        s.u8(3);
        s.u8(2).u8(1).u8(0).u8(0).u8(3).var(6).u8(0); // cut to 6
        s.u8(0).u8(1).u8(1).var(0).var(100);
        s.u8(4);
        s.u8(2).u8(0).u8(0).u8(1).var(0).lit(b"other").u8(0).u8(0); // another enabler
        s.u8(2).u8(1).u8(0).u8(0).u8(2).u8(0); // delete
        s.u8(2).u8(1).u8(0).u8(1).var(2).lit(b"new").u8(0).u8(0); // a new container
    }

    pub fn write(dir: &Path) {
        let put = |name: &str, file: &[u8]| {
            let mut s = Seed::new(0);
            s.var(file.len() as u64).raw(file);
            ops(&mut s);
            s.write(dir, name);
        };
        let we = [0x42; 32];
        let real = server_container(we, b"the data of a mutable share, 40 bytes..");
        put("server", &real);
        put("server_empty", &server_container(we, b""));
        let mut longer = real.clone();
        longer[64..72].copy_from_slice(&1000u64.to_be_bytes());
        put("length_past_file", &longer);
        let mut huge = real.clone();
        huge[64..72].copy_from_slice(&u64::MAX.to_be_bytes());
        put("length_max", &huge);
        let mut shorter = real.clone();
        shorter[64..72].copy_from_slice(&4u64.to_be_bytes());
        put("length_short_of_file", &shorter);
        put("short_header", &real[..60]);
        put("immutable", &disk::immutable_file(b"immutable share data"));
        let mut imm_huge = disk::immutable_file(b"data");
        imm_huge[32..40].copy_from_slice(&(u64::MAX - 2).to_be_bytes());
        put("immutable_length_max", &imm_huge);
        put("garbage", b"not a share at all");
        put("empty", b"");
        eprintln!("seeds written to {}", dir.display());
    }
}
