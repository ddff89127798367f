//! The hello, the first frame inside TLS: whatever `Hello::decode` accepts is a valid hello,
//! and its canonical encoding decodes to the same value, with or without trailing fields.
#![no_main]

use folio_rpc::handshake::MIN_FRAME_LIMIT;
use folio_rpc::Hello;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(hello) = Hello::decode(data) else {
        return;
    };
    assert!(hello.min_version <= hello.max_version);
    assert!(hello.max_frame_len >= MIN_FRAME_LIMIT);

    let bytes = postcard::to_allocvec(&hello).expect("a Hello always serializes");
    // Varints are written at their shortest, so the canonical form is never longer.
    assert!(bytes.len() <= data.len());
    let back = Hello::decode(&bytes)
        .unwrap_or_else(|e| panic!("{hello:?} re-encoded as {bytes:02x?} does not decode: {e}"));
    assert_eq!(back, hello);
    assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes);

    // Fields a later version appends are ignored.
    let mut extended = bytes.clone();
    extended.extend_from_slice(data);
    assert_eq!(Hello::decode(&extended).unwrap(), hello);
});
