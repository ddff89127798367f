//! FURLs and hints: whatever parses must print as text that parses back to the same value
//! and prints identically (one canonical spelling per FURL).
#![no_main]

use std::str::FromStr;

use folio_rpc::furl::MAX_HINTS;
use folio_rpc::{Furl, Hint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(furl) = Furl::from_str(text) {
        let shown = furl.to_string();
        let again = Furl::from_str(&shown)
            .unwrap_or_else(|e| panic!("{text:?} parsed, but its Display {shown:?} does not: {e}"));
        assert_eq!(again, furl, "{text:?} -> {shown:?} changed value");
        assert_eq!(again.to_string(), shown, "{text:?}: Display is not stable");
        assert!(furl.hints().len() <= MAX_HINTS);
        for hint in furl.hints() {
            let h = hint.to_string();
            assert_eq!(Hint::from_str(&h).as_ref(), Ok(hint), "hint {h:?} of {text:?}");
        }
    }

    match Hint::from_str(text) {
        // Unknown hint types are kept verbatim, so a later build can still dial them.
        Ok(Hint::Unknown(kept)) => {
            assert_eq!(kept, text);
            assert!(text.starts_with(Hint::Unknown(kept.clone()).kind()));
        }
        Ok(hint) => {
            let shown = hint.to_string();
            let again = Hint::from_str(&shown)
                .unwrap_or_else(|e| panic!("hint {text:?} parsed, but {shown:?} does not: {e}"));
            assert_eq!(again, hint, "hint {text:?} -> {shown:?} changed value");
            assert_eq!(again.to_string(), shown, "hint {text:?}: Display is not stable");
            assert_eq!(shown.split(':').next(), Some(hint.kind()));
        }
        Err(_) => {}
    }
});
