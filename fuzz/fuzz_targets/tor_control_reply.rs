//! tor control-port replies: the parser never panics, and what it accepts has one status
//! code and one text per line; the PROTOCOLINFO and AUTHCHALLENGE readers (what a hostile
//! control port says about authentication) never panic on any reply.
#![no_main]

use folio_transports::tor::{parse_auth_challenge, parse_auth_info, parse_control_reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<String> = text.split("\r\n").map(str::to_string).collect();
    if let Ok(reply) = parse_control_reply(&lines) {
        assert_eq!(reply.lines.len(), lines.len());
        assert!((100..1000).contains(&reply.code));
        for (line, parsed) in lines.iter().zip(&reply.lines) {
            assert!(line.ends_with(parsed.as_str()));
        }
        if let Ok(info) = parse_auth_info(&reply) {
            assert!(info.methods.iter().all(|m| !m.is_empty() && !m.contains(',')));
        }
        let _ = parse_auth_challenge(&reply);
    }
});
