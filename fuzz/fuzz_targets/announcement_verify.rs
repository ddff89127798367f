//! Announcement bytes as an introducer or a client receives them: signed by a fixed key so
//! that the fuzzer reaches the decoder behind the signature check, and also with the
//! signature tampered, which must always be refused.
#![no_main]

use folio_node::introducer::{Announcement, SignedAnnouncement};
use folio_node::private::SigningKey;
use folio_rpc::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_seed([7; 32]);
    let mut msg = folio_node::introducer::SIGNATURE_CONTEXT.to_vec();
    msg.extend_from_slice(data);
    let signed = SignedAnnouncement {
        body: Bytes(data.to_vec()),
        signature: Bytes(key.sign(&msg).to_vec()),
        key: key.public(),
    };
    let direct = Announcement::from_signed_bytes(data);
    match signed.verify() {
        Ok(v) => {
            assert_eq!(Ok(v.ann.clone()), direct);
            // What verified re-signs and verifies to the same announcement.
            assert_eq!(v.ann.sign(&key).verify().unwrap().ann, v.ann);
        }
        Err(e) => assert!(direct.is_err() || data.len() > 8192, "{e}"),
    }
    let mut forged = signed;
    forged.signature.0[0] ^= 1;
    assert!(forged.verify().is_err());
});
