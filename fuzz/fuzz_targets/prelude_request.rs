//! The server's prelude decoder, sans-I/O. The async side reads exactly the number of bytes
//! it is told to, so `Need` must never ask past the longest request (that would swallow the
//! TLS ClientHello behind it) and `Done` must never claim bytes it was not given.
#![no_main]

use folio_rpc::prelude::{
    decode_request, encode_request, Progress, MAGIC, MAX_REQUEST_LEN, PRELUDE_VERSION,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_request(data) {
        Ok(Progress::Need(n)) => {
            assert!(n > data.len(), "Need({n}) with {} bytes in hand", data.len());
            assert!(n <= MAX_REQUEST_LEN, "Need({n}) beyond the longest request");
        }
        Ok(Progress::Done(req, used)) => {
            assert!(used <= data.len(), "Done used {used} of {} bytes", data.len());
            assert!(used <= MAX_REQUEST_LEN);
            let msg = &data[..used];
            // Trailing bytes (the ClientHello) play no part in the decision...
            assert_eq!(
                decode_request(msg).unwrap(),
                Progress::Done(req.clone(), used)
            );
            // ...and every shorter read asks for more, never errs or decodes early.
            for k in 0..used {
                match decode_request(&msg[..k]) {
                    Ok(Progress::Need(n)) => assert!(k < n && n <= used, "prefix {k}: Need({n})"),
                    other => panic!("prefix of {k} bytes of a valid request gave {other:?}"),
                }
            }
            // The encoding is canonical: one spelling per TubId.
            let mut expect = encode_request(&req.target);
            if req.version == PRELUDE_VERSION {
                assert_eq!(expect, msg);
            } else {
                expect[MAGIC.len() + 1] = req.version;
                assert_eq!(expect, msg, "version {} request", req.version);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
