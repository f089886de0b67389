//! WebAuthn binary parsing: the attestation object (CBOR) as Sigil reads
//! it (`read_attestation_object`) and as webauthn-rs-core reads it,
//! authenticator data (webauthn-rs-core), and the COSE_Key reader of the
//! verifier library (`cose_key_to_sec1`). Every input goes to all of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_cbor_2::Value;
use sigil::factor::webauthn::read_attestation_object;
use webauthn_rs_core::internals::{AttestationObject, AuthenticatorData};
use webauthn_rs_core::proto::{Authentication, Registration};

/// The `authData` byte string of a CBOR map, if there is one.
fn auth_data(data: &[u8]) -> Option<Vec<u8>> {
    let Ok(Value::Map(m)) = serde_cbor_2::from_slice::<Value>(data) else {
        return None;
    };
    match m.get(&Value::Text("authData".into())) {
        Some(Value::Bytes(b)) => Some(b.clone()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let ours = read_attestation_object(data);
    if let Ok(facts) = &ours {
        assert!(!facts.credential_id.is_empty());
    }
    // Where webauthn-rs-core accepts the object and finds attested
    // credential data in it, Sigil reads the same credential id and AAGUID
    // (it reads them itself: webauthn-rs-core keeps them private).
    if AttestationObject::<Registration>::try_from(data).is_ok() {
        let bytes = auth_data(data).unwrap();
        let parsed = AuthenticatorData::<Registration>::try_from(bytes.as_slice()).unwrap();
        if let (Some(acd), Ok(facts)) = (&parsed.acd, &ours) {
            assert_eq!(facts.credential_id, acd.credential_id);
            assert_eq!(facts.aaguid, acd.aaguid);
        }
    }
    // Authenticator data on its own, as an assertion carries it.
    if let Ok(ad) = AuthenticatorData::<Authentication>::try_from(data) {
        assert!(!ad.user_verified || data.get(32).is_some_and(|f| f & 0x04 != 0));
    }
    if let Ok(point) = sigil_verify::cose_key_to_sec1(data) {
        assert_eq!(point[0], 4);
    }
});
