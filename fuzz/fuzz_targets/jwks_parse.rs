//! JWKS parsing: the key set JSON an engine loads (`JwkSet`, then
//! `Verifier::new`, directly and through `CachingVerifier`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil_verify::{b64url, CachingVerifier, Jwk, JwkSet, Verifier};

fuzz_target!(|data: &[u8]| {
    let Ok(set) = serde_json::from_slice::<JwkSet>(data) else {
        return;
    };
    // Serialising a parsed set and parsing it again gives the same set.
    let json = serde_json::to_string(&set).unwrap();
    assert_eq!(serde_json::from_str::<JwkSet>(&json).unwrap(), set);
    for jwk in &set.keys {
        let t = jwk.thumbprint();
        assert_eq!(b64url::decode(&t).map(|d| d.len()), Ok(32));
    }
    let direct = Verifier::new(&set, "https://sigil.example", "withdrawal-engine");
    if direct.is_ok() {
        // Every key it loaded is a P-256 key named by its thumbprint, and
        // rebuilt from its point it is the same JWK.
        for jwk in &set.keys {
            if matches!(jwk.status.as_deref(), None | Some("next" | "active" | "retiring")) {
                let x: [u8; 32] = b64url::decode(&jwk.x).unwrap().try_into().unwrap();
                let y: [u8; 32] = b64url::decode(&jwk.y).unwrap().try_into().unwrap();
                let rebuilt = Jwk::from_p256_point(&x, &y);
                assert_eq!(
                    rebuilt,
                    Jwk {
                        status: None,
                        ..jwk.clone()
                    }
                );
            }
        }
    }
    let cloned = set.clone();
    let caching = CachingVerifier::new(move || Ok(cloned.clone()), "https://sigil.example", "withdrawal-engine");
    assert_eq!(caching.is_ok(), direct.is_ok());
    if let Err(e) = direct {
        drop(e.to_string());
    }
});
