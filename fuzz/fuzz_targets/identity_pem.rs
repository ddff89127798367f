//! Identity files: whatever `Identity::from_pem` accepts writes back (`to_pem`) as text that
//! loads as the same Tub, and the TubId is the hash of the certificate's key.
#![no_main]

use folio_rpc::{Identity, TubId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(id) = Identity::from_pem(text) else {
        return;
    };
    assert_eq!(TubId::from_certificate(id.certificate()).as_ref(), Ok(&id.tubid()));
    let pem = id.to_pem();
    let back = Identity::from_pem(&pem)
        .unwrap_or_else(|e| panic!("{text:?} loaded, but its to_pem {pem:?} does not: {e}"));
    assert_eq!(back.tubid(), id.tubid());
    assert_eq!(back.certificate(), id.certificate());
    assert_eq!(back.to_pem(), pem, "to_pem is not stable");
});
