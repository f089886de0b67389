//! Integration tests against a real SoftHSM2 (no mocks).
//!
//! The helper points `SOFTHSM2_CONF` at a fresh token directory once per test
//! process, before any PKCS#11 call (SoftHSM reads it at `C_Initialize`);
//! every test creates its own token with a unique label.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use secrecy::SecretString;
use sigil_hsm::{softhsm_module_path, write_softhsm_conf, EcPublicKey, Hsm, HsmConfig, HsmError};

const SO_PIN: &str = "so-pin-5678";
const USER_PIN: &str = "user-pin-1234";

/// Sets `SOFTHSM2_CONF` once per process; returns the module path.
fn module() -> PathBuf {
    static SETUP: OnceLock<tempfile::TempDir> = OnceLock::new();
    SETUP.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("softhsm-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let conf = dir.path().join("softhsm2.conf");
        write_softhsm_conf(&conf, &dir.path().join("tokens")).unwrap();
        // Edition 2021: set_var is safe; it runs before any PKCS#11 call and
        // before any other thread reads the environment through this helper.
        std::env::set_var("SOFTHSM2_CONF", &conf);
        dir
    });
    softhsm_module_path()
}

/// Create a token with a unique label.
fn new_token() -> String {
    // SoftHSM's one free slot is shared by the whole process.
    static INIT: Mutex<()> = Mutex::new(());
    static N: AtomicUsize = AtomicUsize::new(0);
    let module = module();
    let label = format!("t{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let _g = INIT.lock().unwrap_or_else(|e| e.into_inner());
    Hsm::init_token(&module, &label, &SO_PIN.into(), &USER_PIN.into()).unwrap();
    label
}

fn open(label: &str, pin: &str, pool: usize) -> Result<Hsm, HsmError> {
    let mut cfg = HsmConfig::new(module(), label, SecretString::from(pin));
    cfg.pool_size = pool;
    Hsm::open(&cfg)
}

/// Create a token with a unique label and open it with a pool of `pool`.
fn fresh_token(pool: usize) -> (Hsm, String) {
    let label = new_token();
    (open(&label, USER_PIN, pool).unwrap(), label)
}

fn verify(public: &EcPublicKey, message: &[u8], sig: &[u8; 64]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public.sec1())
        .verify(message, sig)
        .is_ok()
}

#[test]
fn hsm_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Hsm>();
}

#[test]
fn init_token_twice_is_token_exists() {
    let (_hsm, label) = fresh_token(1);
    let module = module();
    assert!(Hsm::token_exists(&module, &label).unwrap());
    assert!(!Hsm::token_exists(&module, "no-such-token").unwrap());
    let err = Hsm::init_token(&module, &label, &SO_PIN.into(), &USER_PIN.into()).unwrap_err();
    assert!(matches!(err, HsmError::TokenExists(_)), "{err}");
}

#[test]
fn ec_key_signs_es256_and_is_not_extractable() {
    let (hsm, _) = fresh_token(2);
    let public = hsm.generate_ec_key("approval-1").unwrap();
    assert_eq!(hsm.ec_public_key("approval-1").unwrap(), public);

    let msg = b"eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiIxIn0";
    let sig = hsm.sign_es256("approval-1", msg).unwrap();
    assert!(verify(&public, msg, &sig));
    assert!(!verify(&public, b"another message", &sig));
    // ECDSA is randomised: two signatures differ, both verify.
    let sig2 = hsm.sign_es256("approval-1", msg).unwrap();
    assert_ne!(sig, sig2);
    assert!(verify(&public, msg, &sig2));

    assert!(!hsm.is_extractable("approval-1").unwrap());
    let p = hsm.key_protection("approval-1").unwrap();
    assert!(p.sensitive && !p.extractable && p.always_sensitive && p.never_extractable);
}

#[test]
fn generate_ec_key_twice_is_key_exists() {
    let (hsm, _) = fresh_token(1);
    hsm.generate_ec_key("k").unwrap();
    let err = hsm.generate_ec_key("k").unwrap_err();
    assert!(matches!(err, HsmError::KeyExists(_)), "{err}");
    // A label names one key, whatever its type.
    let err = hsm.generate_aes_key("k").unwrap_err();
    assert!(matches!(err, HsmError::KeyExists(_)), "{err}");
}

#[test]
fn list_and_exists() {
    let (hsm, _) = fresh_token(1);
    hsm.generate_ec_key("approval-b").unwrap();
    hsm.generate_ec_key("approval-a").unwrap();
    hsm.generate_ec_key("audit-1").unwrap();
    hsm.generate_aes_key("approval-secrets").unwrap();
    assert_eq!(
        hsm.list_ec_keys("approval-").unwrap(),
        vec!["approval-a".to_string(), "approval-b".to_string()]
    );
    assert_eq!(hsm.list_ec_keys("").unwrap().len(), 3);
    assert!(hsm.key_exists("audit-1").unwrap());
    assert!(hsm.key_exists("approval-secrets").unwrap());
    assert!(!hsm.key_exists("nope").unwrap());
}

#[test]
fn aes_gcm_round_trip_and_tamper_detection() {
    let (hsm, _) = fresh_token(2);
    hsm.generate_aes_key("secrets").unwrap();
    assert!(!hsm.is_extractable("secrets").unwrap());
    assert!(hsm.key_protection("secrets").unwrap().sensitive);

    let plain = b"totp seed 12345678901234567890";
    let aad = b"user:42/totp";
    let blob = hsm.encrypt("secrets", plain, aad).unwrap();
    assert_eq!(blob.len(), 12 + plain.len() + 16);
    assert_eq!(hsm.decrypt("secrets", &blob, aad).unwrap().as_slice(), plain);

    // Fresh IV each time.
    let blob2 = hsm.encrypt("secrets", plain, aad).unwrap();
    assert_ne!(blob, blob2);
    assert_ne!(blob[..12], blob2[..12]);

    let err = hsm.decrypt("secrets", &blob, b"user:43/totp").unwrap_err();
    assert!(matches!(err, HsmError::Crypto(_)), "{err}");

    for i in [0, 12, blob.len() - 1] {
        let mut bad = blob.clone();
        bad[i] ^= 0x01;
        let err = hsm.decrypt("secrets", &bad, aad).unwrap_err();
        assert!(matches!(err, HsmError::Crypto(_)), "byte {i}: {err}");
    }
    let err = hsm.decrypt("secrets", &blob[..20], aad).unwrap_err();
    assert!(matches!(err, HsmError::Crypto(_)), "{err}");

    // Empty plaintext and empty aad work too.
    let blob = hsm.encrypt("secrets", b"", b"").unwrap();
    assert!(hsm.decrypt("secrets", &blob, b"").unwrap().is_empty());

    // The pool still works after the failures above.
    assert_eq!(hsm.decrypt("secrets", &blob2, aad).unwrap().as_slice(), plain);
}

#[test]
fn wrong_key_type_is_not_found() {
    let (hsm, _) = fresh_token(1);
    hsm.generate_aes_key("aes").unwrap();
    hsm.generate_ec_key("ec").unwrap();
    assert!(matches!(
        hsm.sign_es256("aes", b"m").unwrap_err(),
        HsmError::KeyNotFound(_)
    ));
    assert!(matches!(
        hsm.encrypt("ec", b"m", b"").unwrap_err(),
        HsmError::KeyNotFound(_)
    ));
}

#[test]
fn sign_survives_session_loss() {
    let (hsm, _) = fresh_token(2);
    let public = hsm.generate_ec_key("k").unwrap();
    hsm.generate_aes_key("s").unwrap();
    let blob = hsm.encrypt("s", b"x", b"a").unwrap();
    for _ in 0..3 {
        hsm.close_all_sessions().unwrap();
        let sig = hsm.sign_es256("k", b"after loss").unwrap();
        assert!(verify(&public, b"after loss", &sig));
        hsm.close_all_sessions().unwrap();
        assert_eq!(hsm.decrypt("s", &blob, b"a").unwrap().as_slice(), b"x");
    }
}

#[test]
fn unknown_key_is_key_not_found() {
    let (hsm, label) = fresh_token(1);
    let err = hsm.sign_es256("missing", b"m").unwrap_err();
    assert!(matches!(err, HsmError::KeyNotFound(_)), "{err}");
    assert!(err.to_string().contains(&label), "{err}");
    assert!(matches!(
        hsm.ec_public_key("missing").unwrap_err(),
        HsmError::KeyNotFound(_)
    ));
    assert!(matches!(
        hsm.decrypt("missing", &[0u8; 40], b"").unwrap_err(),
        HsmError::KeyNotFound(_)
    ));
    assert!(matches!(
        hsm.destroy_key("missing").unwrap_err(),
        HsmError::KeyNotFound(_)
    ));
}

#[test]
fn wrong_pin_is_unavailable_and_never_echoed() {
    let label = new_token();
    let wrong = "wrong-pin-987654";
    let err = open(&label, wrong, 1).unwrap_err();
    assert!(matches!(err, HsmError::Unavailable(_)), "{err}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!text.contains(USER_PIN), "{text}");
    assert!(text.contains("PIN"), "{text}");

    // While the right PIN holds the token's (process-wide) login, a wrong PIN
    // is still refused, and the right one is accepted again.
    let good = open(&label, USER_PIN, 1).unwrap();
    assert!(!format!("{good:?}").contains(USER_PIN));
    let err = open(&label, wrong, 1).unwrap_err();
    assert!(matches!(err, HsmError::Unavailable(_)), "{err}");
    assert!(!format!("{err} {err:?}").contains(wrong));
    good.generate_ec_key("k").unwrap();
    let again = open(&label, USER_PIN, 1).unwrap();
    again.sign_es256("k", b"m").unwrap();
}

#[test]
fn unknown_token_is_token_not_found() {
    let cfg = HsmConfig::new(module(), "no-such-token", SecretString::from(USER_PIN));
    let err = Hsm::open(&cfg).unwrap_err();
    assert!(matches!(err, HsmError::TokenNotFound(_)), "{err}");
    assert!(err.to_string().contains("make hsm"), "{err}");
}

#[test]
fn missing_module_is_unavailable() {
    let cfg = HsmConfig::new("/nonexistent/libpkcs11.so", "sigil", SecretString::from(USER_PIN));
    let err = Hsm::open(&cfg).unwrap_err();
    assert!(matches!(err, HsmError::Unavailable(_)), "{err}");
}

#[test]
fn bad_config_is_config_error() {
    let mut cfg = HsmConfig::new(module(), "sigil", SecretString::from(USER_PIN));
    cfg.pool_size = 0;
    assert!(matches!(Hsm::open(&cfg).unwrap_err(), HsmError::Config(_)));
    let cfg = HsmConfig::new(module(), "x".repeat(33), SecretString::from(USER_PIN));
    assert!(matches!(Hsm::open(&cfg).unwrap_err(), HsmError::Config(_)));
}

#[test]
fn destroy_then_sign_is_key_not_found() {
    let (hsm, _) = fresh_token(2);
    hsm.generate_ec_key("old").unwrap();
    hsm.generate_aes_key("aes").unwrap();
    hsm.sign_es256("old", b"m").unwrap(); // caches the handle
    hsm.destroy_key("old").unwrap();
    assert!(!hsm.key_exists("old").unwrap());
    let err = hsm.sign_es256("old", b"m").unwrap_err();
    assert!(matches!(err, HsmError::KeyNotFound(_)), "{err}");
    assert!(matches!(
        hsm.ec_public_key("old").unwrap_err(),
        HsmError::KeyNotFound(_)
    ));
    hsm.destroy_key("aes").unwrap();
    assert!(!hsm.key_exists("aes").unwrap());
    // The label can be reused.
    hsm.generate_ec_key("old").unwrap();
}

#[test]
fn concurrent_signing_over_small_pool() {
    let (hsm, _) = fresh_token(4);
    let public = hsm.generate_ec_key("k").unwrap();
    let ok = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let hsm = hsm.clone();
            let ok = Arc::clone(&ok);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let msg = format!("thread {t} message {i}");
                    let sig = hsm.sign_es256("k", msg.as_bytes()).unwrap();
                    assert!(verify(&public, msg.as_bytes(), &sig));
                    if i == 10 && t == 3 {
                        hsm.close_all_sessions().unwrap();
                    }
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ok.load(Ordering::SeqCst), 200);
}

#[test]
fn two_tokens_in_one_process() {
    let (a, _) = fresh_token(1);
    let (b, _) = fresh_token(1);
    let pa = a.generate_ec_key("same-label").unwrap();
    let pb = b.generate_ec_key("same-label").unwrap();
    assert_ne!(pa, pb);
    let sig = b.sign_es256("same-label", b"m").unwrap();
    assert!(verify(&pb, b"m", &sig));
    assert!(!verify(&pa, b"m", &sig));
    assert_eq!(a.list_ec_keys("").unwrap(), vec!["same-label".to_string()]);
}
