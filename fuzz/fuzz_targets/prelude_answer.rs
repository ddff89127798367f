//! The client's prelude decoder, sans-I/O: the same contract as `prelude_request`, with the
//! fixed-length answer.
#![no_main]

use folio_rpc::prelude::{decode_answer, encode_answer, Progress, ANSWER_LEN, MAGIC, PRELUDE_VERSION};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_answer(data) {
        Ok(Progress::Need(n)) => {
            assert!(n > data.len(), "Need({n}) with {} bytes in hand", data.len());
            assert!(n <= ANSWER_LEN, "Need({n}) beyond the answer length");
        }
        Ok(Progress::Done(answer, used)) => {
            assert!(used <= data.len(), "Done used {used} of {} bytes", data.len());
            assert_eq!(used, ANSWER_LEN);
            let msg = &data[..used];
            assert_eq!(
                decode_answer(msg).unwrap(),
                Progress::Done(answer.clone(), used)
            );
            for k in 0..used {
                match decode_answer(&msg[..k]) {
                    Ok(Progress::Need(n)) => assert!(k < n && n <= used, "prefix {k}: Need({n})"),
                    other => panic!("prefix of {k} bytes of a valid answer gave {other:?}"),
                }
            }
            let mut expect = encode_answer(answer.status);
            if answer.version == PRELUDE_VERSION {
                assert_eq!(expect, msg);
            } else {
                expect[MAGIC.len() + 1] = answer.version;
                assert_eq!(expect, msg, "version {} answer", answer.version);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
