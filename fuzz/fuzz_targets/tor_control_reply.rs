//! tor control-port replies: the parser never panics, and what it accepts has one status
//! code and one text per line.
#![no_main]

use folio_transports::tor::parse_control_reply;
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
    }
});
