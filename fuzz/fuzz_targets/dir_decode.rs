//! A directory's content as a storage server (through a valid signature, so as its writer)
//! might hand it over: any bytes are read or refused (never a panic, never an allocation
//! past what the bytes can hold); what is read is canonical (it encodes back to exactly the
//! input), holds only read-only caps in the clear, and its sealed write caps open to a
//! matching write cap or are refused, never to another cap.
#![no_main]

use folio_node::dirnode::{Dir, DirKey};
use folio_node::mutable::{MutCap, MutKind};
use libfuzzer_sys::fuzz_target;

/// The known-answer directory write cap (write secret bytes 0..32).
const DIR_WRITE_CAP: &str = "folio:DIR:aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq";

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = Dir::decode(data) else {
        return;
    };
    assert_eq!(dir.encode(), data, "an accepted directory is not canonical");
    let Ok(MutCap::Write(w)) = DIR_WRITE_CAP.parse::<MutCap>() else {
        panic!("the fixed directory cap does not parse");
    };
    assert_eq!(w.kind(), MutKind::Dir);
    let dk = DirKey::of(&w);
    for (name, entry) in &dir.entries {
        assert!(!entry.read_cap.is_write(), "{name}: a write cap in the clear");
        assert!(entry.read_cap.can_read(), "{name}: a verify cap as a child");
        if let Some(Ok(opened)) = dir.write_cap(name, &dk) {
            assert!(opened.is_write());
            assert_eq!(opened.read_only().as_ref(), Some(&entry.read_cap));
        }
    }
});
