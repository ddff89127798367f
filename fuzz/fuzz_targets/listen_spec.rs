//! TCP listen specifications (`tub.port`): whatever parses prints as a spec that parses to
//! the same address, and printing is stable.
#![no_main]

use std::str::FromStr;

use folio_transports::tcp::ListenSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = ListenSpec::from_str(text) else {
        return;
    };
    let shown = spec.to_string();
    let again = ListenSpec::from_str(&shown)
        .unwrap_or_else(|e| panic!("{text:?} parsed, but its Display {shown:?} does not: {e}"));
    assert_eq!(again, spec, "{text:?} -> {shown:?} changed value");
    assert_eq!(again.to_string(), shown, "{text:?}: Display is not stable");
});
