//! `tahoe.cfg`: any text is either read or refused naming a line (never a panic); whatever
//! is read writes as a canonical file that reads back to an equal configuration and writes
//! identically again; the privacy check never panics and finds the same problems in both.
#![no_main]

use folio_node::config::{ConfigError, NodeConfig, MAX_CFG_LEN};
use libfuzzer_sys::fuzz_target;

fn violations(cfg: &NodeConfig) -> usize {
    cfg.check_privacy().map_or_else(|e| {
        assert!(!e.violations.is_empty(), "a privacy error with no violation");
        let _ = e.to_string();
        e.violations.len()
    }, |()| 0)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let cfg = match NodeConfig::parse(text) {
        Ok(cfg) => cfg,
        Err(e) => {
            let shown = e.to_string();
            if text.len() <= MAX_CFG_LEN {
                assert!(e.line().is_some(), "a refusal that names no line: {shown}");
            }
            return;
        }
    };
    let found = violations(&cfg);
    let written = cfg.to_cfg_string();
    match NodeConfig::parse(&written) {
        Ok(back) => {
            assert_eq!(back, cfg, "{text:?} -> {written:?} changed value");
            assert_eq!(back.to_cfg_string(), written, "{text:?}: writing is not stable");
            assert_eq!(violations(&back), found, "{text:?}: privacy check differs");
            back.validate()
                .unwrap_or_else(|e| panic!("{text:?}: validate refuses a read config: {e}"));
        }
        // Comments and `key = value` spacing can push a file near the limit over it.
        Err(ConfigError::TooLarge { .. }) if written.len() > MAX_CFG_LEN => {}
        Err(e) => panic!("{text:?} was read, but its written form {written:?} is refused: {e}"),
    }
});
