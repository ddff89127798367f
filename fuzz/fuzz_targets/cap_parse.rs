//! File caps, immutable (`folio:CHK:`, `folio:LIT:`) and mutable (`folio:MUT…`,
//! `folio:DIR…`): any text is read or refused (never a panic); a cap that is read prints as
//! text that reads back to the same cap and prints identically, so each cap has one
//! spelling. A mutable cap's weaker caps derive from it and print and read back too, and
//! `caps::Cap` (either kind) agrees with the two.
#![no_main]

use folio_node::caps::Cap;
use folio_node::immutable::{ReadCap, MAX_CAP_LEN};
use folio_node::mutable::MutCap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cap) = text.parse::<MutCap>() {
        mutable(text, &cap);
    }
    any(text);
    let Ok(cap) = text.parse::<ReadCap>() else {
        return;
    };
    let shown = cap.to_string();
    assert_eq!(shown, text, "an accepted cap is not spelled canonically");
    assert!(shown.len() <= MAX_CAP_LEN);
    let again: ReadCap = shown
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} parsed, but its Display {shown:?} does not: {e}"));
    assert_eq!(again, cap, "{text:?} -> {shown:?} changed value");
    assert_eq!(again.to_string(), shown, "{text:?}: Display is not stable");
    if let ReadCap::Chk(c) = &cap {
        assert!(1 <= c.needed && c.needed <= c.total && c.total <= 256);
        assert!(c.size >= 1);
    }
});

/// `caps::Cap`, the union a directory entry holds: it reads exactly what one of the two
/// kinds reads, prints canonically, and its read-only form is read-only and reads back.
fn any(text: &str) {
    let parsed = text.parse::<Cap>();
    let either = text.parse::<ReadCap>().is_ok() || text.parse::<MutCap>().is_ok();
    assert_eq!(parsed.is_ok(), either, "{text:?}: Cap disagrees with the two kinds");
    let Ok(cap) = parsed else {
        return;
    };
    assert_eq!(cap.to_string(), text);
    if let Some(ro) = cap.read_only() {
        assert!(!ro.is_write(), "{text:?}: read_only() can write");
        assert_eq!(ro.to_string().parse::<Cap>().as_ref(), Ok(&ro));
        assert_eq!(ro.read_only().as_ref(), Some(&ro), "read_only() is not idempotent");
    } else {
        assert!(!cap.can_read());
    }
}

fn mutable(text: &str, cap: &MutCap) {
    let shown = cap.to_string();
    assert_eq!(shown, text, "an accepted mutable cap is not spelled canonically");
    assert!(shown.len() <= MAX_CAP_LEN);
    let again: MutCap = shown
        .parse()
        .unwrap_or_else(|e| panic!("{text:?} parsed, but its Display {shown:?} does not: {e}"));
    assert_eq!(&again, cap, "{text:?} -> {shown:?} changed value");
    assert!(
        text.parse::<ReadCap>().is_err(),
        "{text:?} reads as both kinds"
    );
    // The weaker caps: same slot, same kind, and they read back as themselves.
    let weaker = [
        cap.read_cap().map(MutCap::Read),
        Some(MutCap::Verify(cap.verify_cap())),
    ];
    for w in weaker.into_iter().flatten() {
        assert_eq!(w.storage_index(), cap.storage_index());
        assert_eq!(w.kind(), cap.kind());
        let t = w.to_string();
        assert_eq!(t.parse::<MutCap>().as_ref(), Ok(&w), "{t:?}");
    }
}
