//! The private Tor network file (`[tor] arti.network`): whatever `PrivateNetwork::parse`
//! accepts is within its bounds and every identity has its exact shape; an input over the
//! size limit is refused as too large, nothing else.
#![no_main]

use folio_transports::tor_network::{
    NetworkError, PrivateNetwork, MAX_NETWORK_FILE, MAX_NETWORK_RELAYS,
};
use libfuzzer_sys::fuzz_target;

fn hex40(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match PrivateNetwork::parse(text) {
        Ok(net) => {
            assert!(text.len() <= MAX_NETWORK_FILE);
            assert!(!net.authorities.is_empty());
            assert!(net.authorities.len() <= net.fallbacks.len());
            assert!(net.fallbacks.len() <= MAX_NETWORK_RELAYS);
            assert!(net.authorities.iter().all(|a| hex40(a)), "{net:?}");
            for f in &net.fallbacks {
                assert!(hex40(&f.rsa), "{f:?}");
                assert_eq!(f.ed25519.len(), 43, "{f:?}");
            }
        }
        Err(NetworkError::TooLarge(n)) => assert!(n == text.len() && n > MAX_NETWORK_FILE),
        Err(e) => {
            assert!(text.len() <= MAX_NETWORK_FILE, "{e}");
            assert!(!e.to_string().is_empty());
        }
    }
});
