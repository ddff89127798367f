//! The web gateway's readers of request text (`folio_node::web::api`): a request path
//! `/uri/CAP/names…` with percent escapes, and a `Range` header against a file size. Any
//! input is read or refused with a message, never a panic; a range read lies inside the
//! file; names decoded from a path encode back to a path that decodes to the same names.
#![no_main]

use folio_node::web::api::{
    content_type, parse_range, percent_decode, percent_encode, split_uri_path,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap()) >> (data[0] % 64);
    let Ok(text) = std::str::from_utf8(&data[8..]) else {
        return;
    };

    // A Range header.
    if let Ok(Some((first, last))) = parse_range(Some(text), size) {
        assert!(first <= last, "{text:?}: {first}-{last}");
        assert!(last < size, "{text:?}: {first}-{last} of {size}");
    }

    // A request path.
    let path = format!("/uri/{text}");
    if let Ok((cap, names)) = split_uri_path(&path) {
        let mut again = format!("/uri/{}", percent_encode(&cap));
        for n in &names {
            assert!(!n.is_empty());
            again.push('/');
            again.push_str(&percent_encode(n));
        }
        let (cap2, names2) = split_uri_path(&again)
            .unwrap_or_else(|e| panic!("{path:?} -> {again:?} is refused: {e}"));
        assert_eq!((cap2, names2), (cap, names), "{path:?} -> {again:?}");
    }
    if let Some(s) = percent_decode(text) {
        assert_eq!(percent_decode(&percent_encode(&s)).as_deref(), Some(s.as_str()));
    }
    let _ = content_type(Some(text));
});
