//! Immutable file caps: any text is read or refused (never a panic); a cap that is read
//! prints as text that reads back to the same cap and prints identically, so each cap has
//! one spelling.
#![no_main]

use folio_node::immutable::{ReadCap, MAX_CAP_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
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
