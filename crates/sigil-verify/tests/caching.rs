//! The caching verifier: refreshes on unknown kids (rate limited) and on
//! age, retired keys, failing sources, and a whole key rotation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::{claims, intent, set, Signer, AUD, ISS, NOW};
use ring::rand::{SecureRandom, SystemRandom};
use sigil_verify::{b64url, CachingVerifier, Claims, Intent, Jwk, JwkSet, KeySource, Verifier, VerifyError};

/// What Sigil currently publishes, with a switch to make fetches fail and a
/// count of the fetches it actually served.
#[derive(Clone)]
struct Published {
    keys: Arc<Mutex<JwkSet>>,
    failing: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
}

impl Published {
    fn new(keys: &[&Jwk]) -> Published {
        Published {
            keys: Arc::new(Mutex::new(set(keys))),
            failing: Arc::new(AtomicBool::new(false)),
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    fn publish(&self, keys: &[&Jwk]) {
        *self.keys.lock().unwrap() = set(keys);
    }

    fn publish_set(&self, keys: JwkSet) {
        *self.keys.lock().unwrap() = keys;
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The key source an engine would pass: a closure.
    fn source(&self) -> impl Fn() -> Result<JwkSet, String> + Send + Sync + 'static {
        let p = self.clone();
        move || {
            p.calls.fetch_add(1, Ordering::SeqCst);
            if p.failing.load(Ordering::SeqCst) {
                return Err("connection refused".into());
            }
            Ok(p.keys.lock().unwrap().clone())
        }
    }

    fn verifier(&self) -> CachingVerifier<impl KeySource> {
        CachingVerifier::new(self.source(), ISS, AUD).unwrap()
    }
}

fn with_status(jwk: &Jwk, status: &str) -> Jwk {
    Jwk {
        status: Some(status.into()),
        ..jwk.clone()
    }
}

/// Claims valid from `iat` to `exp`.
fn claims_between(iat: i64, exp: i64) -> Claims {
    Claims { iat, exp, ..claims() }
}

fn random_kid(rng: &SystemRandom) -> String {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes).unwrap();
    b64url::encode(&bytes)
}

/// Asserts the verifier's count and the source's own count agree.
fn assert_fetches<S: KeySource>(v: &CachingVerifier<S>, p: &Published, n: u64) {
    assert_eq!(v.fetches(), n, "fetches()");
    assert_eq!(p.calls(), n, "calls the source saw");
}

#[test]
fn key_added_after_construction_verifies_after_one_refresh() {
    let a = Signer::new();
    let b = Signer::new();
    let published = Published::new(&[&a.jwk]);
    let v = published.verifier();
    assert_fetches(&v, &published, 1);
    // A known key verifies without fetching.
    assert_eq!(v.verify(&a.sign(&claims()), NOW), Ok(claims()));
    assert_fetches(&v, &published, 1);

    published.publish(&[&a.jwk, &b.jwk]);
    let token = b.sign(&claims());
    // The set fetched at construction alone refuses it...
    let before = Verifier::new(&set(&[&a.jwk]), ISS, AUD).unwrap();
    assert_eq!(
        before.verify(&token, NOW),
        Err(VerifyError::UnknownKey(b.jwk.kid.clone()))
    );
    // ...the caching verifier fetches once and accepts it.
    assert_eq!(v.verify_for(&token, &intent(), NOW + 1), Ok(claims()));
    assert_fetches(&v, &published, 2);
    // From then on both keys verify from the cache.
    for _ in 0..3 {
        assert!(v.verify(&token, NOW + 2).is_ok());
        assert!(v.verify(&a.sign(&claims()), NOW + 2).is_ok());
    }
    assert_fetches(&v, &published, 2);
}

#[test]
fn forged_kid_flood_costs_one_fetch_per_interval() {
    let sigil = Signer::new();
    let attacker = Signer::new();
    let rng = SystemRandom::new();
    let published = Published::new(&[&sigil.jwk]);
    let v = published.verifier(); // interval 60 s by default
    let good = sigil.sign(&claims());

    let flood = |from: i64| {
        for i in 0..1_000 {
            let kid = random_kid(&rng);
            let token = attacker.sign_with_kid(&kid, &claims());
            let now = from + i64::from(i % 60); // all within one interval
            assert_eq!(v.verify(&token, now), Err(VerifyError::UnknownKey(kid)));
            if i % 100 == 0 {
                assert!(v.verify(&good, now).is_ok(), "the real key keeps verifying");
            }
        }
    };
    flood(NOW);
    assert_fetches(&v, &published, 2); // construction + one refresh
                                       // The interval passes: exactly one more fetch for another 1,000.
    flood(NOW + 60);
    assert_fetches(&v, &published, 3);
}

#[test]
fn concurrent_forged_kid_flood_costs_one_fetch() {
    let sigil = Signer::new();
    let attacker = Arc::new(Signer::new());
    let published = Published::new(&[&sigil.jwk]);
    let v = Arc::new(published.verifier());
    let good = Arc::new(sigil.sign(&claims()));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (v, attacker, good) = (Arc::clone(&v), Arc::clone(&attacker), Arc::clone(&good));
            std::thread::spawn(move || {
                let rng = SystemRandom::new();
                for _ in 0..100 {
                    let token = attacker.sign_with_kid(&random_kid(&rng), &claims());
                    assert!(matches!(v.verify(&token, NOW), Err(VerifyError::UnknownKey(_))));
                    assert!(v.verify(&good, NOW).is_ok());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_fetches(&v, &published, 2);
}

#[test]
fn key_retired_in_the_source_is_refused_after_max_age() {
    let a = Signer::new();
    let b = Signer::new();
    let published = Published::new(&[&a.jwk, &b.jwk]);
    let v = published.verifier().with_max_age(300);
    // Long-lived, so that only the retirement can refuse it.
    let token = a.sign(&claims_between(NOW, NOW + 10_000));
    assert!(v.verify(&token, NOW).is_ok());

    published.publish(&[&with_status(&a.jwk, "retired"), &b.jwk]);
    // Within the max age the cached set still has it active.
    assert!(v.verify(&token, NOW + 299).is_ok());
    assert_fetches(&v, &published, 1);
    // Past it, the next verification refreshes and sees the retirement.
    assert_eq!(
        v.verify(&token, NOW + 300),
        Err(VerifyError::RetiredKey(a.jwk.kid.clone()))
    );
    assert_fetches(&v, &published, 2);
    // The retired kid never triggers a refresh, however often it comes.
    for now in NOW + 300..NOW + 599 {
        assert_eq!(v.verify(&token, now), Err(VerifyError::RetiredKey(a.jwk.kid.clone())));
    }
    assert_fetches(&v, &published, 2);
    assert!(v.verify(&b.sign(&claims_between(NOW, NOW + 10_000)), NOW + 598).is_ok());
}

#[test]
fn retired_kid_never_triggers_a_refresh() {
    let a = Signer::new();
    let old = Signer::new();
    let published = Published::new(&[&a.jwk, &with_status(&old.jwk, "retired")]);
    // No rate limit at all: an unknown kid would fetch every time.
    let v = published.verifier().with_min_refresh_interval(0);
    let token = old.sign(&claims());
    for i in 0..100 {
        assert_eq!(
            v.verify(&token, NOW + i),
            Err(VerifyError::RetiredKey(old.jwk.kid.clone()))
        );
    }
    assert_fetches(&v, &published, 1);
    // Even if the source were to list it as active again.
    published.publish(&[&a.jwk, &old.jwk]);
    assert_eq!(
        v.verify(&token, NOW + 100),
        Err(VerifyError::RetiredKey(old.jwk.kid.clone()))
    );
    assert_fetches(&v, &published, 1);
    // Control: without the rate limit, an unknown kid does fetch each time.
    let stranger = Signer::new().sign(&claims());
    assert!(v.verify(&stranger, NOW + 100).is_err());
    assert!(v.verify(&stranger, NOW + 100).is_err());
    assert_fetches(&v, &published, 3);
}

#[test]
fn malformed_tokens_never_trigger_a_refresh() {
    let a = Signer::new();
    let published = Published::new(&[&a.jwk]);
    let v = published.verifier().with_min_refresh_interval(0);
    let payload = serde_json::to_string(&claims()).unwrap();
    for header in [
        r#"{"alg":"none","kid":"forged-1","typ":"sigil-approval+jwt"}"#,
        r#"{"alg":"HS256","kid":"forged-2","typ":"sigil-approval+jwt"}"#,
        r#"{"alg":"ES256","kid":"forged-3","typ":"JWT"}"#,
        r#"{"alg":"ES256","kid":"forged-4","typ":"sigil-approval+jwt","crit":["x"]}"#,
        r#"{"alg":"ES256","kid":"forged-5","kid":"forged-6","typ":"sigil-approval+jwt"}"#,
    ] {
        let token = a.sign_json(header, &payload);
        let plain = Verifier::new(&set(&[&a.jwk]), ISS, AUD).unwrap();
        // Refused exactly as the plain verifier refuses it.
        assert_eq!(v.verify(&token, NOW), plain.verify(&token, NOW), "{header}");
        assert!(v.verify(&token, NOW).is_err());
    }
    for token in ["", "a.b", "a.b.c.d", "!!.e30.", &"x".repeat(70_000)] {
        assert!(matches!(v.verify(token, NOW), Err(VerifyError::Malformed(_))));
    }
    assert_fetches(&v, &published, 1);
}

#[test]
fn failing_source_keeps_known_keys_and_refuses_unknown_ones() {
    let a = Signer::new();
    let b = Signer::new();
    let published = Published::new(&[&a.jwk]);
    let v = published.verifier().with_max_age(300).with_min_refresh_interval(60);
    let known = a.sign(&claims_between(NOW, NOW + 10_000));
    let unknown = b.sign(&claims_between(NOW, NOW + 10_000));
    assert!(v.verify(&known, NOW).is_ok());

    published.publish(&[&a.jwk, &b.jwk]);
    published.fail(true);
    // The refresh for b fails: b refused, the failure counts as a refresh.
    assert_eq!(v.verify(&unknown, NOW), Err(VerifyError::UnknownKey(b.jwk.kid.clone())));
    assert_fetches(&v, &published, 2);
    assert_eq!(
        v.verify(&unknown, NOW + 59),
        Err(VerifyError::UnknownKey(b.jwk.kid.clone()))
    );
    assert_fetches(&v, &published, 2);
    // Known keys keep verifying, also past the max age (retried once per
    // interval, not on every verification).
    for now in (NOW..NOW + 1_000).step_by(10) {
        assert!(v.verify(&known, now).is_ok(), "at {now}");
    }
    // Stale from 300 on: failed attempts at 300, 360, ..., 960.
    assert_fetches(&v, &published, 2 + 12);
    assert!(v.verify(&known, NOW + 1_000).is_ok());

    // A source answering with a set the verifier refuses is a failure too.
    published.fail(false);
    let mut broken = set(&[&a.jwk, &b.jwk]);
    broken.keys[1].kid = "not-the-thumbprint".into();
    published.publish_set(broken);
    let fetches = v.fetches();
    assert_eq!(
        v.verify(&unknown, NOW + 2_000),
        Err(VerifyError::UnknownKey(b.jwk.kid.clone()))
    );
    assert_eq!(v.fetches(), fetches + 1);
    assert!(v.verify(&known, NOW + 2_000).is_ok());
    published.publish_set(JwkSet::default());
    assert!(v.verify(&unknown, NOW + 2_100).is_err());
    assert!(v.verify(&known, NOW + 2_100).is_ok());

    // Once the source recovers, the next allowed refresh brings b in.
    published.publish(&[&a.jwk, &b.jwk]);
    assert!(v.verify(&unknown, NOW + 2_200).is_ok());
    assert!(v.verify(&known, NOW + 2_200).is_ok());
    assert_eq!(v.fetches(), published.calls());
}

#[test]
fn construction_needs_a_working_source() {
    let a = Signer::new();
    let published = Published::new(&[&a.jwk]);
    published.fail(true);
    match CachingVerifier::new(published.source(), ISS, AUD) {
        Err(VerifyError::Malformed(m)) => assert!(m.contains("connection refused"), "{m}"),
        other => panic!("{other:?}"),
    }
    published.fail(false);
    published.publish(&[&with_status(&a.jwk, "retired")]);
    assert!(matches!(
        CachingVerifier::new(published.source(), ISS, AUD),
        Err(VerifyError::Malformed(_))
    ));
    published.publish(&[&a.jwk]);
    assert!(matches!(
        CachingVerifier::new(published.source(), "", AUD),
        Err(VerifyError::Malformed(_))
    ));
}

/// Old key active → new key published as next → new active, old retiring →
/// old retired.
#[test]
fn key_rotation() {
    let old = Signer::new();
    let new = Signer::new();
    let published = Published::new(&[&with_status(&old.jwk, "active")]);
    let v = published
        .verifier()
        .with_leeway(0)
        .with_max_age(300)
        .with_min_refresh_interval(60);
    let t = |s: i64| NOW + s;

    // t=0: only the old key.
    let old_short = old.sign(&claims_between(t(0), t(500)));
    let old_long = old.sign(&claims_between(t(0), t(5_000)));
    assert!(v.verify(&old_short, t(0)).is_ok());
    assert!(v.verify(&old_long, t(0)).is_ok());
    assert_fetches(&v, &published, 1);

    // t=100: Sigil publishes the new key as "next". A token it signs
    // verifies as soon as the key is in the set (one refresh).
    published.publish(&[&with_status(&old.jwk, "active"), &with_status(&new.jwk, "next")]);
    let new_early = new.sign(&claims_between(t(100), t(400)));
    assert!(v.verify(&new_early, t(100)).is_ok());
    assert_fetches(&v, &published, 2);

    // t=200: the new key signs, the old one is retiring. Both verify, from
    // the cache.
    published.publish(&[&with_status(&old.jwk, "retiring"), &with_status(&new.jwk, "active")]);
    let new_1 = new.sign(&claims_between(t(200), t(1_000)));
    for token in [&old_short, &old_long, &new_early, &new_1] {
        assert!(v.verify(token, t(200)).is_ok());
    }
    assert_fetches(&v, &published, 2);

    // t=400: the set is past its max age (loaded at 100): refreshed, and
    // the retiring key still verifies what it signed.
    assert!(v.verify(&old_short, t(400)).is_ok());
    assert_fetches(&v, &published, 3);
    assert!(v.verify(&old_long, t(400)).is_ok());
    assert!(v.verify(&new_1, t(400)).is_ok());
    // ...until each approval's own exp (leeway 0, kept across refreshes).
    assert!(v.verify(&old_short, t(499)).is_ok());
    assert_eq!(v.verify(&old_short, t(500)), Err(VerifyError::Expired));
    assert_eq!(v.verify(&new_early, t(400)), Err(VerifyError::Expired));

    // t=550: Sigil retires the old key. The cache (loaded at 400) does not
    // know yet: this is the max-age window.
    published.publish(&[&with_status(&old.jwk, "retired"), &with_status(&new.jwk, "active")]);
    assert!(v.verify(&old_long, t(550)).is_ok());
    assert_fetches(&v, &published, 3);
    // t=700: refreshed by age; the old key never verifies again.
    assert_eq!(
        v.verify(&old_long, t(700)),
        Err(VerifyError::RetiredKey(old.jwk.kid.clone()))
    );
    assert_fetches(&v, &published, 4);
    let new_2 = new.sign(&claims_between(t(700), t(800)));
    assert!(v.verify(&new_2, t(700)).is_ok());
    assert!(v.verify_for(&new_1, &intent(), t(900)).is_ok());
    for now in t(700)..t(1_000) {
        assert!(matches!(v.verify(&old_long, now), Err(VerifyError::RetiredKey(_))));
    }
    assert_fetches(&v, &published, 4);
}

#[test]
fn verify_for_compares_the_intent() {
    let a = Signer::new();
    let b = Signer::new();
    let published = Published::new(&[&a.jwk]);
    let v = published.verifier();
    published.publish(&[&a.jwk, &b.jwk]);
    let token = b.sign(&claims());
    let other = Intent {
        destination: "bc1qattacker".into(),
        ..intent()
    };
    // Refreshes for the new key, then still compares the intent.
    assert_eq!(
        v.verify_for(&token, &other, NOW),
        Err(VerifyError::IntentMismatch { field: "destination" })
    );
    assert_fetches(&v, &published, 2);
    assert_eq!(v.verify_for(&token, &intent(), NOW), Ok(claims()));
    assert_eq!(v.verify_for(&token, &intent(), NOW + 600), Err(VerifyError::Expired));
}

#[test]
fn leeway_applies_before_and_after_refreshes() {
    let a = Signer::new();
    let b = Signer::new();
    let published = Published::new(&[&a.jwk]);
    let token_a = a.sign(&claims()); // exp = NOW + 120
    let token_b = b.sign(&claims());
    let v = published.verifier(); // default leeway 30, as Verifier
    assert!(v.verify(&token_a, NOW + 149).is_ok());
    assert_eq!(v.verify(&token_a, NOW + 150), Err(VerifyError::Expired));

    let v = published.verifier().with_leeway(5);
    assert!(v.verify(&token_a, NOW + 124).is_ok());
    assert_eq!(v.verify(&token_a, NOW + 125), Err(VerifyError::Expired));
    published.publish(&[&a.jwk, &b.jwk]);
    assert!(v.verify(&token_b, NOW + 124).is_ok()); // refreshed
    assert_eq!(v.fetches(), 2);
    assert_eq!(published.calls(), 3); // the first verifier fetched once too
    assert_eq!(v.verify(&token_b, NOW + 125), Err(VerifyError::Expired));
    assert_eq!(v.verify(&token_a, NOW + 125), Err(VerifyError::Expired));
}

/// A key source can also be a type of the engine's own.
struct StaticKeys(JwkSet);

impl KeySource for StaticKeys {
    fn fetch(&self) -> Result<JwkSet, String> {
        Ok(self.0.clone())
    }
}

#[test]
fn key_source_can_be_a_struct() {
    let a = Signer::new();
    let v = CachingVerifier::new(StaticKeys(set(&[&a.jwk])), ISS, AUD).unwrap();
    assert!(v.verify(&a.sign(&claims()), NOW).is_ok());
    assert_eq!(v.fetches(), 1);
    let shared: Arc<dyn Fn(&str) -> bool + Send + Sync> = {
        let v = Arc::new(v);
        Arc::new(move |token| v.verify(token, NOW).is_ok())
    };
    assert!(shared(&a.sign(&claims())));
    assert!(format!(
        "{:?}",
        CachingVerifier::new(StaticKeys(set(&[&a.jwk])), ISS, AUD).unwrap()
    )
    .contains("withdrawal-engine"));
}
