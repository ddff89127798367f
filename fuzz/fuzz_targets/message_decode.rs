//! The object-protocol message decoder, on the payload of one frame after the hello: whatever
//! `message::decode` accepts re-encodes to bytes that decode to the same message, no longer
//! than the input (varints are written at their shortest), and trailing bytes are refused.
#![no_main]

use folio_rpc::message::{self, AnswerBody, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = message::decode(data) else {
        return;
    };
    // Borrowed payloads point into the frame and are never longer than it.
    match &msg {
        Message::Call {
            interface,
            method,
            args,
            ..
        }
        | Message::Oneway {
            interface,
            method,
            args,
            ..
        } => assert!(interface.len() + method.len() + args.len() <= data.len()),
        Message::Answer {
            body: AnswerBody::Ok { value, .. } | AnswerBody::AppError { value, .. },
            ..
        } => assert!(value.len() <= data.len()),
        _ => {}
    }

    let bytes = postcard::to_allocvec(&msg).expect("a decoded message always serializes");
    assert!(
        bytes.len() <= data.len(),
        "{msg:?} re-encoded longer ({} > {})",
        bytes.len(),
        data.len()
    );
    let back = message::decode(&bytes)
        .unwrap_or_else(|e| panic!("{msg:?} re-encoded as {bytes:02x?} does not decode: {e}"));
    assert_eq!(back, msg);
    assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes);

    let mut extended = bytes.clone();
    extended.push(0);
    assert!(
        message::decode(&extended).is_err(),
        "{msg:?} decoded with a trailing byte"
    );
});
