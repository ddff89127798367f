//! TubIds from untrusted certificates (what a TLS peer presents) and from text (FURLs,
//! preludes): no panic, and text has exactly one spelling.
#![no_main]

use std::str::FromStr;

use folio_rpc::tubid::TUBID_TEXT_LEN;
use folio_rpc::TubId;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    let cert = CertificateDer::from(data);
    if let Ok(id) = TubId::from_certificate(&cert) {
        assert_eq!(TubId::from_certificate(&cert), Ok(id), "not deterministic");
    }

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = TubId::from_str(text) {
        let shown = id.to_string();
        assert_eq!(shown, text, "a TubId has one spelling");
        assert_eq!(shown.len(), TUBID_TEXT_LEN);
        assert_eq!(TubId::from_bytes(*id.as_bytes()), id);
    }
});
