//! Delayed approvals (`nbf` after `iat`) and the signed cancellation lists
//! that prove they were not cancelled during their delay.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{claims, intent, set, verifier, Signer, AUD, ISS, NOW};
use sigil_verify::{
    assemble, b64url, cancellations_signing_input, CancellationList, Claims, Intent, Reason, Verifier, VerifyError,
};

/// The delay: the approval can be cancelled until `NBF`.
const NBF: i64 = NOW + 3600;
const EXP: i64 = NOW + 7200;

fn delayed() -> Claims {
    let mut c = claims();
    c.nbf = Some(NBF);
    c.exp = EXP;
    c
}

fn list(iat: i64, cancelled: &[&str]) -> CancellationList {
    CancellationList {
        iss: ISS.into(),
        aud: AUD.into(),
        iat,
        cancelled: cancelled.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The JWS `ApprovalService/GetCancellations` returns.
fn sign_list(signer: &Signer, list: &CancellationList) -> String {
    sign_list_with_kid(signer, &signer.jwk.kid, list)
}

fn sign_list_with_kid(signer: &Signer, kid: &str, list: &CancellationList) -> String {
    let input = cancellations_signing_input(kid, list);
    assemble(&input, &signer.sign_raw(input.as_bytes()))
}

fn parts(token: &str) -> Vec<String> {
    let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    assert_eq!(parts.len(), 3);
    parts
}

fn is_list_needed(r: &Result<Claims, VerifyError>) -> bool {
    matches!(r, Err(VerifyError::CancellationListNeeded(_)))
}

#[test]
fn is_delayed_means_nbf_after_iat() {
    assert!(delayed().is_delayed());
    let mut c = claims();
    assert!(!c.is_delayed());
    for (nbf, is) in [(NOW - 1, false), (NOW, false), (NOW + 1, true)] {
        c.nbf = Some(nbf);
        assert_eq!(c.is_delayed(), is, "{nbf}");
    }
}

#[test]
fn plain_verify_refuses_a_delayed_approval() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&delayed());
    // Once its time checks pass, only a cancellation list can clear it.
    for now in [NBF, NBF + 1, NBF + 600, EXP - 1] {
        let r = v.verify(&token, now);
        assert!(is_list_needed(&r), "{now}: {r:?}");
        let r = v.verify_for(&token, &intent(), now);
        assert!(is_list_needed(&r), "{now}: {r:?}");
    }
    let e = v.verify(&token, NBF).unwrap_err();
    assert!(e.to_string().contains("verify_delayed_for"), "{e}");
    assert_eq!(e.reason(), Reason::ApprovalNotYetValid);
    // Before nbf it is not valid yet anyway; after exp, expired.
    assert_eq!(v.verify(&token, NOW), Err(VerifyError::NotYetValid));
    assert_eq!(v.verify(&token, EXP + 3600), Err(VerifyError::Expired));
}

#[test]
fn checked_elsewhere_a_delayed_approval_verifies_from_nbf() {
    let signer = Signer::new();
    let token = signer.sign(&delayed());
    let v = verifier(&signer).with_leeway(0).with_cancellations_checked_elsewhere();
    assert_eq!(v.verify(&token, NOW), Err(VerifyError::NotYetValid));
    assert_eq!(v.verify(&token, NBF - 1), Err(VerifyError::NotYetValid));
    assert_eq!(v.verify(&token, NBF), Ok(delayed()));
    assert_eq!(v.verify_for(&token, &intent(), NBF + 10), Ok(delayed()));
    assert_eq!(v.verify(&token, EXP), Err(VerifyError::Expired));
    // With the default leeway, as any nbf.
    let v = verifier(&signer).with_cancellations_checked_elsewhere();
    assert_eq!(v.verify(&token, NBF - 31), Err(VerifyError::NotYetValid));
    assert_eq!(v.verify(&token, NBF - 30), Ok(delayed()));
}

#[test]
fn approvals_that_are_not_delayed_still_verify_without_a_list() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&claims());
    assert_eq!(v.verify(&token, NOW), Ok(claims()));
    assert_eq!(v.verify_for(&token, &intent(), NOW + 60), Ok(claims()));
    // An nbf at or before iat is no delay.
    for nbf in [NOW, NOW - 10] {
        let mut c = claims();
        c.nbf = Some(nbf);
        assert_eq!(v.verify(&signer.sign(&c), NOW), Ok(c));
    }
}

#[test]
fn a_list_issued_before_nbf_is_not_enough() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&delayed());
    for iat in [NOW - 100, NOW, NBF - 1] {
        let l = sign_list(&signer, &list(iat, &[]));
        let r = v.verify_delayed_for(&token, &intent(), &l, NBF + 10);
        assert!(is_list_needed(&r), "{iat}: {r:?}");
        // Whatever the leeway: the cancel window closes at nbf exactly.
        let r = verifier(&signer)
            .with_leeway(3600)
            .verify_delayed_for(&token, &intent(), &l, NBF + 10);
        assert!(is_list_needed(&r), "{iat}: {r:?}");
    }
}

#[test]
fn a_list_issued_from_nbf_without_the_jti_clears_it() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&delayed());
    for (iat, cancelled) in [
        (NBF, vec![]),
        (NBF + 5, vec!["jti-0", "jti-2"]),
        (NBF + 100, vec!["JTI-1", "jti-1 ", "jti-"]),
    ] {
        let l = sign_list(&signer, &list(iat, &cancelled));
        assert_eq!(
            v.verify_delayed_for(&token, &intent(), &l, NBF + 100),
            Ok(delayed()),
            "{iat} {cancelled:?}"
        );
    }
}

#[test]
fn a_list_naming_the_jti_cancels_it() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&delayed());
    for cancelled in [vec!["jti-1"], vec!["jti-0", "jti-1", "jti-2"]] {
        let l = sign_list(&signer, &list(NBF, &cancelled));
        let r = v.verify_delayed_for(&token, &intent(), &l, NBF + 1);
        assert_eq!(r, Err(VerifyError::Cancelled));
        assert_eq!(r.unwrap_err().reason(), Reason::ApprovalCancelled);
    }
}

#[test]
fn verify_delayed_for_checks_the_approval_first() {
    let signer = Signer::new();
    let v = verifier(&signer).with_leeway(0);
    let token = signer.sign(&delayed());
    let l = sign_list(&signer, &list(NBF, &[]));
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &l, NBF - 1),
        Err(VerifyError::NotYetValid)
    );
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &l, EXP),
        Err(VerifyError::Expired)
    );
    let other = Intent {
        amount: "5".into(),
        ..intent()
    };
    assert_eq!(
        v.verify_delayed_for(&token, &other, &l, NBF),
        Err(VerifyError::IntentMismatch { field: "amount" })
    );
    let mut c = delayed();
    c.intent_sha256 = b64url::encode(&other.digest());
    assert_eq!(
        v.verify_delayed_for(&signer.sign(&c), &intent(), &l, NBF),
        Err(VerifyError::DigestMismatch)
    );
}

#[test]
fn approvals_that_are_not_delayed_are_checked_against_the_list_too() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&claims());
    // Any list will do for an approval without delay (none predates it)...
    let l = sign_list(&signer, &list(NOW - 100, &["jti-0"]));
    assert_eq!(v.verify_delayed_for(&token, &intent(), &l, NOW), Ok(claims()));
    // ...but one naming it refuses it.
    let l = sign_list(&signer, &list(NOW, &["jti-1"]));
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &l, NOW),
        Err(VerifyError::Cancelled)
    );
}

/// A list only names approvals that have not expired at its `iat`; within
/// the clock leeway after `exp`, a list issued after `exp` says nothing
/// about the approval, cancelled or not.
#[test]
fn a_list_issued_at_or_after_exp_cannot_clear_it() {
    let signer = Signer::new();
    let v = verifier(&signer); // leeway 30
    let token = signer.sign(&delayed());
    for iat in [EXP, EXP + 20] {
        let l = sign_list(&signer, &list(iat, &[]));
        assert_eq!(
            v.verify_delayed_for(&token, &intent(), &l, EXP + 20),
            Err(VerifyError::Expired),
            "{iat}"
        );
    }
    let l = sign_list(&signer, &list(EXP - 1, &[]));
    assert_eq!(v.verify_delayed_for(&token, &intent(), &l, EXP + 20), Ok(delayed()));
    // An approval without delay too.
    let token = signer.sign(&claims());
    let l = sign_list(&signer, &list(NOW + 120, &[]));
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &l, NOW + 125),
        Err(VerifyError::Expired)
    );
}

#[test]
fn verify_cancellations_returns_the_list() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let l = list(NBF, &["a", "b"]);
    assert_eq!(v.verify_cancellations(&sign_list(&signer, &l), NBF), Ok(l.clone()));
    // Dated in the future beyond the leeway: the engine's clock is off.
    assert!(matches!(
        v.verify_cancellations(&sign_list(&signer, &l), NBF - 31),
        Err(VerifyError::Malformed(m)) if m.contains("future")
    ));
    assert_eq!(v.verify_cancellations(&sign_list(&signer, &l), NBF - 30), Ok(l));
}

#[test]
fn a_list_with_the_approval_typ_is_malformed() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&delayed());
    let payload = serde_json::to_string(&list(NBF, &[])).unwrap();
    let as_approval = signer.sign_json(&signer.header(), &payload);
    for l in [
        as_approval,
        signer.sign_json(&format!(r#"{{"alg":"ES256","kid":"{}"}}"#, signer.jwk.kid), &payload),
        signer.sign_json(
            &format!(r#"{{"alg":"ES256","kid":"{}","typ":"JWT"}}"#, signer.jwk.kid),
            &payload,
        ),
    ] {
        assert!(matches!(
            v.verify_cancellations(&l, NBF),
            Err(VerifyError::Malformed(m)) if m.contains("typ")
        ));
        assert!(matches!(
            v.verify_delayed_for(&token, &intent(), &l, NBF),
            Err(VerifyError::Malformed(m)) if m.contains("typ")
        ));
    }
    // The cancellations typ with the exact header verifies.
    let header = format!(
        r#"{{"alg":"ES256","kid":"{}","typ":"sigil-cancellations+jwt"}}"#,
        signer.jwk.kid
    );
    assert!(v
        .verify_cancellations(&signer.sign_json(&header, &payload), NBF)
        .is_ok());
}

#[test]
fn approvals_and_lists_are_not_interchangeable() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let approval = signer.sign(&delayed());
    let plain = signer.sign(&claims());
    let l = sign_list(&signer, &list(NBF, &[]));
    // An approval where the list is expected.
    for t in [&approval, &plain] {
        assert!(matches!(v.verify_cancellations(t, NBF), Err(VerifyError::Malformed(_))));
        assert!(matches!(
            v.verify_delayed_for(&approval, &intent(), t, NBF),
            Err(VerifyError::Malformed(_))
        ));
    }
    // A list where an approval is expected.
    let elsewhere = verifier(&signer).with_cancellations_checked_elsewhere();
    assert!(matches!(v.verify(&l, NBF), Err(VerifyError::Malformed(_))));
    assert!(matches!(elsewhere.verify(&l, NBF), Err(VerifyError::Malformed(_))));
    assert!(matches!(
        v.verify_for(&l, &intent(), NBF),
        Err(VerifyError::Malformed(_))
    ));
    assert!(matches!(
        v.verify_delayed_for(&l, &intent(), &l, NBF),
        Err(VerifyError::Malformed(_))
    ));
    // A list payload under an approval header is not an approval either.
    let payload = serde_json::to_string(&list(NBF, &[])).unwrap();
    assert!(matches!(
        v.verify(&signer.sign_json(&signer.header(), &payload), NBF),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn a_list_for_another_issuer_or_audience_is_refused() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&delayed());
    let mut l = list(NBF, &[]);
    l.iss = "https://evil.example".into();
    let t = sign_list(&signer, &l);
    assert_eq!(v.verify_cancellations(&t, NBF), Err(VerifyError::WrongIssuer));
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &t, NBF),
        Err(VerifyError::WrongIssuer)
    );
    let mut l = list(NBF, &[]);
    l.aud = "other-engine".into();
    let t = sign_list(&signer, &l);
    assert_eq!(v.verify_cancellations(&t, NBF), Err(VerifyError::WrongAudience));
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &t, NBF),
        Err(VerifyError::WrongAudience)
    );
    // A verifier for another engine refuses a good list.
    let other = Verifier::new(&set(&[&signer.jwk]), ISS, "other-engine").unwrap();
    assert_eq!(
        other.verify_cancellations(&sign_list(&signer, &list(NBF, &[])), NBF),
        Err(VerifyError::WrongAudience)
    );
}

#[test]
fn a_list_signed_by_another_key_is_refused() {
    let sigil = Signer::new();
    let attacker = Signer::new();
    let v = verifier(&sigil);
    let token = sigil.sign(&delayed());
    // Its own kid: unknown.
    let t = sign_list(&attacker, &list(NBF, &[]));
    assert_eq!(
        v.verify_cancellations(&t, NBF),
        Err(VerifyError::UnknownKey(attacker.jwk.kid.clone()))
    );
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &t, NBF),
        Err(VerifyError::UnknownKey(attacker.jwk.kid.clone()))
    );
    // Sigil's kid: the signature does not verify.
    let t = sign_list_with_kid(&attacker, &sigil.jwk.kid, &list(NBF, &[]));
    assert_eq!(v.verify_cancellations(&t, NBF), Err(VerifyError::BadSignature));
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &t, NBF),
        Err(VerifyError::BadSignature)
    );
    // A retired key.
    let mut retired = Signer::new();
    retired.jwk.status = Some("retired".into());
    let v = Verifier::new(&set(&[&sigil.jwk, &retired.jwk]), ISS, AUD).unwrap();
    assert_eq!(
        v.verify_cancellations(&sign_list(&retired, &list(NBF, &[])), NBF),
        Err(VerifyError::RetiredKey(retired.jwk.kid.clone()))
    );
}

#[test]
fn a_tampered_list_is_refused() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&delayed());
    let t = sign_list(&signer, &list(NBF, &["jti-1"]));
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &t, NBF),
        Err(VerifyError::Cancelled)
    );
    let [h, p, s] = <[String; 3]>::try_from(parts(&t)).unwrap();
    let payload = b64url::decode(&p).unwrap();
    // Every byte of the payload.
    for pos in 0..payload.len() {
        let mut altered = payload.clone();
        altered[pos] ^= 0x01;
        let forged = format!("{h}.{}.{s}", b64url::encode(&altered));
        assert_eq!(
            v.verify_cancellations(&forged, NBF),
            Err(VerifyError::BadSignature),
            "{pos}"
        );
        assert_eq!(
            v.verify_delayed_for(&token, &intent(), &forged, NBF),
            Err(VerifyError::BadSignature),
            "{pos}"
        );
    }
    // The jti taken out, the rest kept.
    let cleared = b64url::encode(&serde_json::to_vec(&list(NBF, &[])).unwrap());
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &format!("{h}.{cleared}.{s}"), NBF),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn the_list_schema_is_enforced_after_the_signature() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let header = format!(
        r#"{{"alg":"ES256","kid":"{}","typ":"sigil-cancellations+jwt"}}"#,
        signer.jwk.kid
    );
    let good = serde_json::to_value(list(NBF, &["x"])).unwrap();
    let mut cases = Vec::new();
    for missing in ["iss", "aud", "iat", "cancelled"] {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(missing);
        cases.push(c.to_string());
    }
    let mut c = good.clone();
    c["cancelled"] = serde_json::json!("jti-1");
    cases.push(c.to_string());
    let mut c = good.clone();
    c["iat"] = serde_json::json!("1700003600");
    cases.push(c.to_string());
    cases.push(good.to_string().replacen('{', r#"{"cancelled":[],"#, 1));
    cases.push("[]".into());
    cases.push(String::new());
    for payload in cases {
        let t = signer.sign_json(&header, &payload);
        assert!(
            matches!(v.verify_cancellations(&t, NBF), Err(VerifyError::Malformed(_))),
            "{payload}: {:?}",
            v.verify_cancellations(&t, NBF)
        );
    }
}

/// The caching verifier checks delayed approvals the same way, and fetches
/// the key set again when the list is signed by a key it does not know yet.
#[test]
fn the_caching_verifier_checks_delayed_approvals_and_learns_the_lists_key() {
    use std::sync::{Arc, Mutex};

    let old = Signer::new();
    let new = Signer::new();
    let published = Arc::new(Mutex::new(set(&[&old.jwk])));
    let source = {
        let p = published.clone();
        move || Ok::<_, String>(p.lock().unwrap().clone())
    };
    let v = sigil_verify::CachingVerifier::new(source, ISS, AUD)
        .unwrap()
        .with_min_refresh_interval(0);
    let token = old.sign(&delayed());
    assert!(
        is_list_needed(&v.verify(&token, NBF + 1)),
        "plain verify needs the list"
    );
    let cleared = sign_list(&old, &list(NBF, &["jti-0"]));
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &cleared, NBF + 1),
        Ok(delayed())
    );
    let cancelled = sign_list(&old, &list(NBF, &["jti-1"]));
    assert_eq!(
        v.verify_delayed_for(&token, &intent(), &cancelled, NBF + 1),
        Err(VerifyError::Cancelled)
    );
    // The list comes signed by a key rotated in since the set was cached.
    let by_new = sign_list(&new, &list(NBF, &[]));
    *published.lock().unwrap() = set(&[&old.jwk, &new.jwk]);
    let fetches = v.fetches();
    assert_eq!(v.verify_delayed_for(&token, &intent(), &by_new, NBF + 1), Ok(delayed()));
    assert_eq!(v.fetches(), fetches + 1, "the list's key was fetched");
    // A list by a key nobody publishes is refused.
    let stranger = sign_list(&Signer::new(), &list(NBF, &[]));
    assert!(v.verify_delayed_for(&token, &intent(), &stranger, NBF + 1).is_err());
}
