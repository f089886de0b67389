//! The WebAuthn JSON a browser sends, as Sigil parses it: the
//! registration response (`Webauthn::finish_registration`) and the
//! assertion response (`precheck_assertion`, `finish_assertion`), against
//! the ceremony states in `fixtures/webauthn.json` (the seeds answer them).
//!
//! Input: `R` + registration response JSON, `A` + assertion response JSON,
//! or `S` + a registration state JSON answered by the seed's response.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sigil::factor::webauthn::{AssertionError, StoredCredential, Webauthn, WebauthnPolicy};

struct Setup {
    rp: Webauthn,
    registration_state: String,
    assertion_state: String,
    creds: Vec<StoredCredential>,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let f: serde_json::Value = serde_json::from_str(include_str!("../fixtures/webauthn.json")).unwrap();
        let policy = WebauthnPolicy {
            origins: vec![f["origin"].as_str().unwrap().to_owned()],
            require_uv_for: Vec::new(),
            attestation: "none".into(),
            ..WebauthnPolicy::default()
        };
        Setup {
            rp: Webauthn::new(&policy).unwrap(),
            registration_state: f["registration_state"].as_str().unwrap().to_owned(),
            assertion_state: f["assertion_state"].as_str().unwrap().to_owned(),
            creds: vec![serde_json::from_value(f["credential"].clone()).unwrap()],
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let json = String::from_utf8_lossy(rest);
    match mode {
        b'R' => {
            if let Ok(cred) = s.rp.finish_registration(&s.registration_state, &json) {
                // What is stored is what the authenticator attested.
                assert!(!cred.credential_id.is_empty());
                assert_eq!(sigil_verify::b64url::decode(&cred.public_key_sec1).unwrap().len(), 65);
            }
        }
        b'A' => {
            let pre = s.rp.precheck_assertion(&s.assertion_state, &json, &s.creds);
            match s.rp.finish_assertion(&s.assertion_state, &json, &s.creds) {
                Ok(a) => {
                    // Whatever passes the full check passes the precheck.
                    assert!(pre.is_ok());
                    assert_eq!(a.credential_id, s.creds[0].credential_id);
                    assert!(a.user_present);
                    assert!(a.authenticator_data.len() >= 37);
                }
                Err(AssertionError::Failed(e)) => drop(e.to_string()),
                Err(other) => drop(format!("{other:?}")),
            }
        }
        _ => {
            // A stored state that is not what Sigil wrote.
            let _ = s.rp.finish_registration(&json, &s.registration_state);
            let _ = s.rp.precheck_assertion(&json, &s.assertion_state, &s.creds);
        }
    }
});
