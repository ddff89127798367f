//! SAM bridge reply lines: the parser never panics, refuses over-long lines, and what it
//! accepts has a topic, a kind and non-empty keys.
#![no_main]

use folio_transports::i2p::{parse_reply, MAX_LINE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse_reply(line) {
        Ok(reply) => {
            assert!(line.len() <= MAX_LINE);
            assert!(!reply.topic.is_empty() && !reply.kind.is_empty());
            assert!(!reply.topic.contains(' ') && !reply.kind.contains(' '));
            assert!(reply.fields.keys().all(|k| !k.is_empty() && !k.contains(' ')));
        }
        Err(_) => {}
    }
});
