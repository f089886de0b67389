//! Approval verification: acceptance, and refusal of every way an approval
//! can be wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{claims, claims_for, intent, set, verifier, Signer, AUD, ISS, NOW};
use ring::hmac;
use sigil_verify::{b64url, Intent, Jwk, JwkSet, Verifier, VerifyError};

fn split(token: &str) -> (String, String, String) {
    let mut it = token.split('.');
    let parts = (
        it.next().unwrap().to_owned(),
        it.next().unwrap().to_owned(),
        it.next().unwrap().to_owned(),
    );
    assert!(it.next().is_none());
    parts
}

fn payload_json(token: &str) -> serde_json::Value {
    let (_, p, _) = split(token);
    serde_json::from_slice(&b64url::decode(&p).unwrap()).unwrap()
}

#[test]
fn valid_approval_verifies() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&claims());
    assert_eq!(v.verify(&token, NOW + 1), Ok(claims()));
    assert_eq!(v.verify_for(&token, &intent(), NOW + 1), Ok(claims()));
}

#[test]
fn token_wire_format() {
    let signer = Signer::new();
    let token = signer.sign(&claims());
    let (h, _, s) = split(&token);
    let header: serde_json::Value = serde_json::from_slice(&b64url::decode(&h).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "sigil-approval+jwt");
    assert_eq!(header["kid"], signer.jwk.kid.as_str());
    assert_eq!(b64url::decode(&s).unwrap().len(), 64);
    let p = payload_json(&token);
    assert_eq!(p["intent_sha256"], b64url::encode(&intent().digest()).as_str());
    assert_eq!(p["intent"]["destination"], intent().destination.as_str());
    assert_eq!(p["act"], "withdrawal");
    assert!(p.get("nbf").is_none());
}

#[test]
fn each_intent_field_changed_is_refused() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&claims());
    let names = intent().fields().map(|(name, _)| name);
    assert_eq!(names.len(), 8);
    for name in names {
        let mut other = intent();
        match name {
            "action" => other.action = "add_address".into(),
            "user_id" => other.user_id = "mallory".into(),
            "withdrawal_id" => other.withdrawal_id = "wd-0002".into(),
            "asset" => other.asset = "ETH".into(),
            "network" => other.network = "lightning".into(),
            "amount" => other.amount = "5".into(),
            "destination" => other.destination.push('x'),
            "memo" => other.memo = "1".into(),
            _ => panic!("unexpected field {name}"),
        }
        assert_ne!(other, intent(), "{name}");
        assert_eq!(
            v.verify_for(&token, &other, NOW),
            Err(VerifyError::IntentMismatch { field: name }),
            "{name}"
        );
    }
}

#[test]
fn intent_compared_byte_for_byte() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&claims());
    for (field, change) in [
        ("amount", "0.50"),
        ("amount", " 0.5"),
        ("destination", "BC1QAR0SRRR7XFKVY5L643LYDNW9RE59GTZZWF5MDQ"),
    ] {
        let mut other = intent();
        match field {
            "amount" => other.amount = change.into(),
            _ => other.destination = change.into(),
        }
        assert_eq!(
            v.verify_for(&token, &other, NOW),
            Err(VerifyError::IntentMismatch { field })
        );
    }
    // First differing field in digest order is named.
    let other = Intent {
        amount: "9".into(),
        asset: "ETH".into(),
        ..intent()
    };
    assert_eq!(
        v.verify_for(&token, &other, NOW),
        Err(VerifyError::IntentMismatch { field: "asset" })
    );
}

#[test]
fn expiry_with_leeway() {
    let signer = Signer::new();
    let token = signer.sign(&claims()); // exp = NOW + 120
    let v = verifier(&signer); // leeway 30
    assert!(v.verify(&token, NOW + 149).is_ok());
    assert_eq!(v.verify(&token, NOW + 150), Err(VerifyError::Expired));
    assert_eq!(v.verify(&token, NOW + 10_000), Err(VerifyError::Expired));
    let strict = verifier(&signer).with_leeway(0);
    assert!(strict.verify(&token, NOW + 119).is_ok());
    assert_eq!(strict.verify(&token, NOW + 120), Err(VerifyError::Expired));
    // Negative leeway is taken as zero, not as a shorter lifetime... nor longer.
    let neg = verifier(&signer).with_leeway(-1000);
    assert!(neg.verify(&token, NOW + 119).is_ok());
    assert_eq!(neg.verify(&token, NOW + 120), Err(VerifyError::Expired));
}

#[test]
fn not_yet_valid_nbf() {
    let signer = Signer::new();
    let mut c = claims();
    c.nbf = Some(NOW + 3600); // time-delayed approval
    c.exp = NOW + 7200;
    let token = signer.sign(&c);
    // A delayed approval needs a cancellation list (tests/delayed.rs); the
    // time checks are the same with or without one.
    let v = verifier(&signer).with_cancellations_checked_elsewhere();
    assert_eq!(v.verify(&token, NOW), Err(VerifyError::NotYetValid));
    assert_eq!(v.verify(&token, NOW + 3569), Err(VerifyError::NotYetValid));
    assert!(v.verify(&token, NOW + 3570).is_ok()); // 30 s leeway
    let strict = verifier(&signer).with_leeway(0).with_cancellations_checked_elsewhere();
    assert_eq!(strict.verify(&token, NOW + 3599), Err(VerifyError::NotYetValid));
    assert!(strict.verify(&token, NOW + 3600).is_ok());
}

#[test]
fn iat_in_the_future_is_refused() {
    let signer = Signer::new();
    let mut c = claims();
    c.iat = NOW + 100;
    c.exp = NOW + 220;
    let token = signer.sign(&c);
    let v = verifier(&signer);
    assert_eq!(v.verify(&token, NOW), Err(VerifyError::NotYetValid));
    assert!(v.verify(&token, NOW + 70).is_ok());
}

#[test]
fn exp_before_iat_is_malformed() {
    let signer = Signer::new();
    let mut c = claims();
    c.exp = c.iat - 1;
    let token = signer.sign(&c);
    assert!(matches!(
        verifier(&signer).verify(&token, NOW),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn extreme_times_do_not_overflow() {
    let signer = Signer::new();
    let v = verifier(&signer).with_leeway(i64::MAX);
    for (iat, exp, nbf) in [
        (i64::MIN, i64::MAX, Some(i64::MAX)),
        (i64::MIN, i64::MIN, None),
        (i64::MAX, i64::MAX, Some(i64::MIN)),
    ] {
        let mut c = claims();
        c.iat = iat;
        c.exp = exp;
        c.nbf = nbf;
        let token = signer.sign(&c);
        for now in [i64::MIN, -1, 0, NOW, i64::MAX] {
            let _ = v.verify(&token, now);
            let _ = verifier(&signer).verify(&token, now);
        }
    }
}

#[test]
fn wrong_issuer() {
    let signer = Signer::new();
    let mut c = claims();
    c.iss = "https://evil.example".into();
    let token = signer.sign(&c);
    assert_eq!(verifier(&signer).verify(&token, NOW), Err(VerifyError::WrongIssuer));
    // and a verifier configured for another issuer refuses a good token
    let other = Verifier::new(&set(&[&signer.jwk]), "https://sigil-staging.example", AUD).unwrap();
    assert_eq!(
        other.verify(&signer.sign(&claims()), NOW),
        Err(VerifyError::WrongIssuer)
    );
}

#[test]
fn wrong_audience() {
    let signer = Signer::new();
    let mut c = claims();
    c.aud = "frontend".into();
    let token = signer.sign(&c);
    assert_eq!(verifier(&signer).verify(&token, NOW), Err(VerifyError::WrongAudience));
    let other = Verifier::new(&set(&[&signer.jwk]), ISS, "other-engine").unwrap();
    assert_eq!(
        other.verify(&signer.sign(&claims()), NOW),
        Err(VerifyError::WrongAudience)
    );
}

#[test]
fn foreign_key_with_unknown_kid() {
    let sigil = Signer::new();
    let attacker = Signer::new();
    let token = attacker.sign(&claims());
    assert_eq!(
        verifier(&sigil).verify(&token, NOW),
        Err(VerifyError::UnknownKey(attacker.jwk.kid.clone()))
    );
}

#[test]
fn foreign_key_claiming_a_known_kid() {
    let sigil = Signer::new();
    let attacker = Signer::new();
    let token = attacker.sign_with_kid(&sigil.jwk.kid, &claims());
    assert_eq!(verifier(&sigil).verify(&token, NOW), Err(VerifyError::BadSignature));
}

#[test]
fn several_keys_each_verify_their_tokens() {
    let a = Signer::new();
    let mut b = Signer::new();
    b.jwk.status = Some("next".into());
    let mut c = Signer::new();
    c.jwk.status = Some("retiring".into());
    let mut d = Signer::new();
    d.jwk.status = Some("active".into());
    let v = Verifier::new(&set(&[&a.jwk, &b.jwk, &c.jwk, &d.jwk]), ISS, AUD).unwrap();
    for s in [&a, &b, &c, &d] {
        assert!(v.verify(&s.sign(&claims()), NOW).is_ok());
    }
    // b's kid with a's signature
    assert_eq!(
        v.verify(&a.sign_with_kid(&b.jwk.kid, &claims()), NOW),
        Err(VerifyError::BadSignature)
    );
}

#[test]
fn alg_none_is_refused() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let payload = b64url::encode(&serde_json::to_vec(&claims()).unwrap());
    for header in [
        format!(
            r#"{{"alg":"none","kid":"{}","typ":"sigil-approval+jwt"}}"#,
            signer.jwk.kid
        ),
        r#"{"alg":"none"}"#.to_owned(),
        r#"{"alg":"None","typ":"JWT"}"#.to_owned(),
        r#"{"alg":"es256"}"#.to_owned(),
        r#"{"alg":""}"#.to_owned(),
    ] {
        let token = format!("{}.{payload}.", b64url::encode(header.as_bytes()));
        assert!(
            matches!(v.verify(&token, NOW), Err(VerifyError::UnsupportedAlgorithm(_))),
            "{header}"
        );
    }
}

#[test]
fn alg_hs256_with_public_key_as_secret_is_refused() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let header = format!(
        r#"{{"alg":"HS256","kid":"{}","typ":"sigil-approval+jwt"}}"#,
        signer.jwk.kid
    );
    let input = format!(
        "{}.{}",
        b64url::encode(header.as_bytes()),
        b64url::encode(&serde_json::to_vec(&claims()).unwrap())
    );
    for secret in [
        b64url::decode(&signer.jwk.x).unwrap(),
        signer.jwk.x.as_bytes().to_vec(),
        serde_json::to_vec(&signer.jwk).unwrap(),
    ] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let tag = hmac::sign(&key, input.as_bytes());
        let token = format!("{input}.{}", b64url::encode(tag.as_ref()));
        assert_eq!(
            v.verify(&token, NOW),
            Err(VerifyError::UnsupportedAlgorithm("HS256".into()))
        );
    }
}

#[test]
fn other_header_problems() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let payload = serde_json::to_string(&claims()).unwrap();
    let kid = &signer.jwk.kid;
    for header in [
        format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#),
        format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"JWT"}}"#),
        format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"sigil-approval+jwt","crit":["b64"],"b64":false}}"#),
        r#"{"alg":"ES256","typ":"sigil-approval+jwt"}"#.to_owned(),
        format!(r#"{{"alg":"ES256","alg":"none","kid":"{kid}","typ":"sigil-approval+jwt"}}"#),
        format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"sigil-approval+jwt"}} x"#),
        r#"["ES256"]"#.to_owned(),
    ] {
        let token = signer.sign_json(&header, &payload);
        assert!(
            matches!(v.verify(&token, NOW), Err(VerifyError::Malformed(_))),
            "{header}: {:?}",
            v.verify(&token, NOW)
        );
    }
    // Unknown, non-critical header members are ignored (the header is signed).
    let header =
        format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"sigil-approval+jwt","jku":"https://evil.example/jwks"}}"#);
    assert!(v.verify(&signer.sign_json(&header, &payload), NOW).is_ok());
}

#[test]
fn tampered_claims_with_original_signature() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&claims());
    let (h, _, s) = split(&token);

    // Change the amount and keep the digest consistent: only the signature
    // can catch it.
    let mut forged = intent();
    forged.amount = "50".into();
    let p = b64url::encode(&serde_json::to_vec(&claims_for(&forged)).unwrap());
    assert_eq!(v.verify(&format!("{h}.{p}.{s}"), NOW), Err(VerifyError::BadSignature));

    // Extend the expiry.
    let mut c = claims();
    c.exp += 3600;
    let p = b64url::encode(&serde_json::to_vec(&c).unwrap());
    assert_eq!(v.verify(&format!("{h}.{p}.{s}"), NOW), Err(VerifyError::BadSignature));

    // Swap the header for one naming the same key with different JSON.
    let h2 = b64url::encode(signer.header().replace(',', ", ").as_bytes());
    let (_, p, _) = split(&token);
    assert_eq!(v.verify(&format!("{h2}.{p}.{s}"), NOW), Err(VerifyError::BadSignature));
}

#[test]
fn signature_encodings_other_than_raw_r_s_are_refused() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&claims());
    let (h, p, s) = split(&token);
    let sig = b64url::decode(&s).unwrap();
    // Wrong lengths.
    for bad in [&sig[..63], &[][..], &[sig.clone(), vec![0]].concat()[..]] {
        assert_eq!(
            v.verify(&format!("{h}.{p}.{}", b64url::encode(bad)), NOW),
            Err(VerifyError::BadSignature)
        );
    }
    // r and s swapped, all zero.
    let swapped = [&sig[32..], &sig[..32]].concat();
    for bad in [swapped, vec![0u8; 64]] {
        assert_eq!(
            v.verify(&format!("{h}.{p}.{}", b64url::encode(&bad)), NOW),
            Err(VerifyError::BadSignature)
        );
    }
    // Padded base64url of the right signature.
    let padded = format!("{h}.{p}.{s}==");
    assert!(matches!(v.verify(&padded, NOW), Err(VerifyError::Malformed(_))));
}

#[test]
fn digest_not_matching_intent() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let mut c = claims();
    let mut other = intent();
    other.amount = "50".into();
    c.intent_sha256 = b64url::encode(&other.digest());
    assert_eq!(v.verify(&signer.sign(&c), NOW), Err(VerifyError::DigestMismatch));
    // Same digest in another encoding (hex, padded) is not accepted either.
    for enc in [
        intent().digest().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        format!("{}=", b64url::encode(&intent().digest())),
        String::new(),
    ] {
        let mut c = claims();
        c.intent_sha256 = enc;
        assert_eq!(v.verify(&signer.sign(&c), NOW), Err(VerifyError::DigestMismatch));
    }
}

#[test]
fn inconsistent_act_sub_amr_are_refused() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let mut c = claims();
    c.act = "add_address".into();
    assert!(matches!(v.verify(&signer.sign(&c), NOW), Err(VerifyError::Malformed(m)) if m.contains("act")));
    let mut c = claims();
    c.sub = "mallory".into();
    assert!(matches!(v.verify(&signer.sign(&c), NOW), Err(VerifyError::Malformed(m)) if m.contains("sub")));
    let mut c = claims();
    c.amr.clear();
    assert!(matches!(v.verify(&signer.sign(&c), NOW), Err(VerifyError::Malformed(m)) if m.contains("amr")));
}

#[test]
fn claim_schema_is_enforced_after_the_signature() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let good = serde_json::to_value(claims()).unwrap();
    let mut cases = Vec::new();
    // missing claim
    let mut c = good.clone();
    c.as_object_mut().unwrap().remove("exp");
    cases.push(c.to_string());
    // wrong type
    let mut c = good.clone();
    c["exp"] = serde_json::json!("1700000120");
    cases.push(c.to_string());
    let mut c = good.clone();
    c["exp"] = serde_json::json!(1.7e9);
    cases.push(c.to_string());
    // an intent field the digest does not cover
    let mut c = good.clone();
    c["intent"]["chain_id"] = serde_json::json!("1");
    cases.push(c.to_string());
    // an intent field missing
    let mut c = good.clone();
    c["intent"].as_object_mut().unwrap().remove("memo");
    cases.push(c.to_string());
    // duplicate claim: the second iss would win in a lax parser
    cases.push(good.to_string().replacen('{', r#"{"aud":"other","#, 1));
    // not an object / not JSON / not UTF-8 JSON
    cases.push("[]".into());
    cases.push("not json".into());
    cases.push(String::new());
    for payload in cases {
        let token = signer.sign_json(&signer.header(), &payload);
        assert!(
            matches!(v.verify(&token, NOW), Err(VerifyError::Malformed(_))),
            "{payload}: {:?}",
            v.verify(&token, NOW)
        );
    }
    // Unknown top-level claims are tolerated.
    let mut c = good.clone();
    c["device"] = serde_json::json!({"rooted": false});
    assert!(v
        .verify(&signer.sign_json(&signer.header(), &c.to_string()), NOW)
        .is_ok());
}

#[test]
fn retired_key_never_verifies() {
    let active = Signer::new();
    let mut retired = Signer::new();
    retired.jwk.status = Some("retired".into());
    let v = Verifier::new(&set(&[&active.jwk, &retired.jwk]), ISS, AUD).unwrap();
    let token = retired.sign(&claims());
    assert_eq!(
        v.verify(&token, NOW),
        Err(VerifyError::RetiredKey(retired.jwk.kid.clone()))
    );
    // An unknown status is treated as unusable too.
    let mut odd = Signer::new();
    odd.jwk.status = Some("compromised".into());
    let v = Verifier::new(&set(&[&active.jwk, &odd.jwk]), ISS, AUD).unwrap();
    assert_eq!(
        v.verify(&odd.sign(&claims()), NOW),
        Err(VerifyError::RetiredKey(odd.jwk.kid.clone()))
    );
    assert!(v.verify(&active.sign(&claims()), NOW).is_ok());
}

#[test]
fn key_set_validation() {
    let s = Signer::new();
    let good = s.jwk.clone();
    assert!(Verifier::new(&set(&[&good]), ISS, AUD).is_ok());

    let with = |f: &dyn Fn(&mut Jwk)| {
        let mut k = good.clone();
        f(&mut k);
        Verifier::new(&set(&[&k]), ISS, AUD)
    };
    assert!(matches!(
        with(&|k| k.kty = "RSA".into()),
        Err(VerifyError::UnsupportedAlgorithm(_))
    ));
    assert!(matches!(
        with(&|k| k.crv = "P-384".into()),
        Err(VerifyError::UnsupportedAlgorithm(_))
    ));
    assert!(matches!(
        with(&|k| k.alg = "ES384".into()),
        Err(VerifyError::UnsupportedAlgorithm(_))
    ));
    assert!(matches!(
        with(&|k| k.alg = "HS256".into()),
        Err(VerifyError::UnsupportedAlgorithm(_))
    ));
    assert!(matches!(
        with(&|k| k.alg = "none".into()),
        Err(VerifyError::UnsupportedAlgorithm(_))
    ));
    assert!(matches!(
        with(&|k| k.use_ = "enc".into()),
        Err(VerifyError::Malformed(_))
    ));
    assert!(matches!(
        with(&|k| k.kid = "key-1".into()),
        Err(VerifyError::Malformed(_))
    ));
    assert!(matches!(with(&|k| k.x.push_str("AA")), Err(VerifyError::Malformed(_))));
    assert!(matches!(
        with(&|k| k.y = format!("{}=", k.y)),
        Err(VerifyError::Malformed(_))
    ));
    // x and y swapped (kid no longer the thumbprint)
    assert!(matches!(
        with(&|k| std::mem::swap(&mut k.x, &mut k.y)),
        Err(VerifyError::Malformed(_))
    ));
    // duplicate kid
    assert!(matches!(
        Verifier::new(&set(&[&good, &good]), ISS, AUD),
        Err(VerifyError::Malformed(_))
    ));
    // nothing usable
    assert!(matches!(
        Verifier::new(&JwkSet::default(), ISS, AUD),
        Err(VerifyError::Malformed(_))
    ));
    let mut retired = good.clone();
    retired.status = Some("retired".into());
    assert!(matches!(
        Verifier::new(&set(&[&retired]), ISS, AUD),
        Err(VerifyError::Malformed(_))
    ));
    // A retired key is not validated (it is never used).
    let mut retired_rsa = Signer::new().jwk;
    retired_rsa.kty = "RSA".into();
    retired_rsa.status = Some("retired".into());
    assert!(Verifier::new(&set(&[&good, &retired_rsa]), ISS, AUD).is_ok());
    // empty issuer / audience
    assert!(Verifier::new(&set(&[&good]), "", AUD).is_err());
    assert!(Verifier::new(&set(&[&good]), ISS, "").is_err());
}

#[test]
fn jwks_json_round_trip() {
    let a = Signer::new();
    let mut b = Signer::new();
    b.jwk.status = Some("retired".into());
    let json = serde_json::to_string(&set(&[&a.jwk, &b.jwk])).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["keys"][0]["use"], "sig");
    assert_eq!(v["keys"][0]["kty"], "EC");
    assert!(v["keys"][0].get("status").is_none());
    assert_eq!(v["keys"][1]["status"], "retired");
    let back: JwkSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back, set(&[&a.jwk, &b.jwk]));
}

#[test]
fn thumbprint_is_sha256_of_canonical_json() {
    let s = Signer::new();
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, s.jwk.x, s.jwk.y);
    let d = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    assert_eq!(s.jwk.thumbprint(), b64url::encode(d.as_ref()));
    assert_eq!(s.jwk.kid, s.jwk.thumbprint());
}

#[test]
fn malformed_tokens_are_refused() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&claims());
    let (h, p, s) = split(&token);
    let cases = [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        format!("{h}.{p}"),
        format!("{h}.{p}.{s}.{s}"),
        format!("{h}.{p}.{s}."),
        format!("{h}=.{p}.{s}"),
        format!("{}.{p}.{s}", h.replace('e', "+")),
        format!("{h}.{p}!.{s}"),
        format!("{h}.{p}.{s} "),
        format!(" {h}.{p}.{s}"),
        format!("{}.{p}.{s}", b64url::encode(b"not json")),
        format!("{}.{p}.{s}", b64url::encode(&[0xff, 0xfe])),
        "a.b.c".into(),
        "ü.ü.ü".into(),
        "x".repeat(70_000),
        format!("{h}.{}.{s}", "A".repeat(70_000)),
    ];
    for t in cases {
        let r = v.verify(&t, NOW);
        assert!(
            matches!(r, Err(VerifyError::Malformed(_))),
            "{:?} -> {r:?}",
            &t[..t.len().min(80)]
        );
        // and the message stays short enough to log
        assert!(r.unwrap_err().to_string().len() < 400);
    }
}

#[test]
fn every_single_character_change_is_refused_without_panic() {
    let signer = Signer::new();
    let v = verifier(&signer);
    let token = signer.sign(&claims());
    assert!(v.verify_for(&token, &intent(), NOW).is_ok());
    let bytes = token.as_bytes();
    for i in 0..bytes.len() {
        for replacement in [b'A', b'Q', b'g', b'w', b'_', b'-', b'.', b'=', b' ', b'0'] {
            if bytes[i] == replacement {
                continue;
            }
            let mut m = bytes.to_vec();
            m[i] = replacement;
            let m = String::from_utf8(m).unwrap();
            assert!(v.verify(&m, NOW).is_err(), "position {i} -> {}", replacement as char);
        }
    }
    // Every truncation and every extension.
    for n in 0..token.len() {
        assert!(v.verify(&token[..n], NOW).is_err(), "truncated to {n}");
    }
    for extra in ["A", "AA", "AAA", "AAAA", ".", "=", "\n", "\0"] {
        assert!(v.verify(&format!("{token}{extra}"), NOW).is_err(), "{extra:?}");
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let signer = Signer::new();
    let v = verifier(&signer);
    // Deterministic xorshift; the point is coverage of odd inputs, not
    // randomness.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"AQgw09-_.=+/ \"{}:,eyJ";
    for _ in 0..3000 {
        let len = (next() % 200) as usize;
        let s: String = (0..len)
            .map(|_| char::from(alphabet[(next() % alphabet.len() as u64) as usize]))
            .collect();
        assert!(v.verify(&s, NOW).is_err());
    }
    // Valid base64url of arbitrary JSON-ish headers.
    for header in [
        "{}",
        "null",
        r#"{"alg":null}"#,
        r#"{"alg":1}"#,
        r#"{"alg":"ES256","kid":1}"#,
        r#"{"alg":"ES256","kid":"","typ":"sigil-approval+jwt"}"#,
        r#"{"alg":"ES256","kid":"x","typ":"sigil-approval+jwt"}"#,
    ] {
        let t = format!("{}.e30.", b64url::encode(header.as_bytes()));
        assert!(v.verify(&t, NOW).is_err(), "{header}");
    }
}

#[test]
fn errors_are_std_errors_with_actionable_text() {
    let e: Box<dyn std::error::Error + Send + Sync> = Box::new(VerifyError::IntentMismatch { field: "destination" });
    assert!(e.to_string().contains("destination"));
    for e in [
        VerifyError::Malformed("x".into()),
        VerifyError::UnsupportedAlgorithm("none".into()),
        VerifyError::UnknownKey("k".into()),
        VerifyError::RetiredKey("k".into()),
        VerifyError::BadSignature,
        VerifyError::WrongIssuer,
        VerifyError::WrongAudience,
        VerifyError::Expired,
        VerifyError::NotYetValid,
        VerifyError::DigestMismatch,
        VerifyError::IntentMismatch { field: "memo" },
        VerifyError::BadEvidence("x".into()),
        VerifyError::QuorumNotMet("x".into()),
        VerifyError::Cancelled,
        VerifyError::CancellationListNeeded("x".into()),
    ] {
        let text = e.to_string();
        assert!(text.len() > 30, "{text}");
    }
}

/// `(r, s)` and `(r, n - s)` both verify under ECDSA: Sigil issues only the
/// low-S form, and the other encoding of the same approval is refused with
/// a reason (after the signature verified, so it is not a forgery).
#[test]
fn high_s_signatures_are_refused_and_assemble_issues_low_s() {
    let sigil = Signer::new();
    let v = verifier(&sigil);
    let n: [u8; 32] = [
        0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xBC, 0xE6,
        0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
    ];
    let mut high_seen = 0;
    for i in 0..64 {
        let mut c = claims();
        c.jti = format!("jti-{i}");
        let token = sigil.sign(&c);
        let (h, p, s) = split(&token);
        let sig: [u8; 64] = b64url::decode(&s).unwrap().try_into().unwrap();
        assert!(sigil_verify::is_low_s(&sig), "assemble issued a high-S signature");
        assert!(v.verify(&token, NOW).is_ok());
        // The other encoding: s' = n - s.
        let mut other = sig;
        let mut borrow = 0i16;
        for k in (0..32).rev() {
            let d = i16::from(n[k]) - i16::from(sig[32 + k]) - borrow;
            other[32 + k] = d.rem_euclid(256) as u8;
            borrow = i16::from(d < 0);
        }
        assert!(!sigil_verify::is_low_s(&other));
        let mut back = other;
        sigil_verify::to_low_s(&mut back);
        assert_eq!(back, sig, "to_low_s maps n - s back to s");
        match v.verify(&format!("{h}.{p}.{}", b64url::encode(&other)), NOW) {
            Err(VerifyError::Malformed(m)) => {
                assert!(m.contains("high S"), "{m}");
                high_seen += 1;
            }
            other => panic!("a high-S encoding was not refused as such: {other:?}"),
        }
    }
    assert_eq!(high_seen, 64);
}

#[test]
fn crit_is_refused_whatever_its_value() {
    let sigil = Signer::new();
    let v = verifier(&sigil);
    let kid = sigil.jwk.kid.clone();
    let payload = serde_json::to_string(&claims()).unwrap();
    for crit in ["null", "[]", "\"b64\"", "{}", "false"] {
        let header = format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"sigil-approval+jwt","crit":{crit}}}"#);
        match v.verify(&sigil.sign_json(&header, &payload), NOW) {
            Err(VerifyError::Malformed(m)) => assert!(m.contains("crit"), "{crit}: {m}"),
            other => panic!("\"crit\": {crit} was not refused: {other:?}"),
        }
    }
}
