//! The wire contract of the staff-quorum claims and of cancellation lists:
//! claim names, shapes, and the bytes of approvals that carry neither.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{claims, intent, verifier, Signer, AUD, ISS, NOW};
use serde_json::{json, Value};
use sigil_verify::{
    b64url, cancellations_signing_input, signing_input, ApproverEvidence, CancellationList, Claims, QuorumClaim,
    WebauthnEvidence,
};

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn evidence(tag: &str) -> WebauthnEvidence {
    WebauthnEvidence {
        credential_id: format!("{tag}-cred"),
        authenticator_data: format!("{tag}-ad"),
        client_data_json: format!("{tag}-cdj"),
        signature: format!("{tag}-sig"),
        nonce: format!("{tag}-nonce"),
    }
}

fn with_quorum() -> Claims {
    let mut c = claims();
    c.approvers = vec![
        ApproverEvidence {
            staff_id: "bob".into(),
            webauthn: evidence("b"),
        },
        ApproverEvidence {
            staff_id: "carol".into(),
            webauthn: evidence("c"),
        },
    ];
    c.quorum = vec![QuorumClaim {
        rule: "large-withdrawal".into(),
        m: 2,
        of: vec!["bob".into(), "carol".into(), "dave".into()],
    }];
    c
}

/// The payload JSON of an approval's signing input.
fn payload(c: &Claims) -> (String, Value) {
    let input = signing_input("k", c);
    let (_, p) = input.split_once('.').unwrap();
    let bytes = b64url::decode(p).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let v = serde_json::from_str(&text).unwrap();
    (text, v)
}

#[test]
fn approvers_and_quorum_use_the_contract_names_and_shapes() {
    let (_, v) = payload(&with_quorum());
    let names = keys(&v);
    assert!(names.contains(&"approvers".to_owned()), "{names:?}");
    assert!(names.contains(&"quorum".to_owned()), "{names:?}");
    assert_eq!(
        v["approvers"],
        json!([
            {
                "staff_id": "bob",
                "webauthn": {
                    "credential_id": "b-cred",
                    "authenticator_data": "b-ad",
                    "client_data_json": "b-cdj",
                    "signature": "b-sig",
                    "nonce": "b-nonce"
                }
            },
            {
                "staff_id": "carol",
                "webauthn": {
                    "credential_id": "c-cred",
                    "authenticator_data": "c-ad",
                    "client_data_json": "c-cdj",
                    "signature": "c-sig",
                    "nonce": "c-nonce"
                }
            }
        ])
    );
    assert_eq!(
        v["quorum"],
        json!([{ "rule": "large-withdrawal", "m": 2, "of": ["bob", "carol", "dave"] }])
    );
    // No other member anywhere in them (json! equality is exact, but say it).
    assert_eq!(keys(&v["approvers"][0]), ["staff_id", "webauthn"]);
    assert_eq!(
        keys(&v["approvers"][0]["webauthn"]),
        [
            "authenticator_data",
            "client_data_json",
            "credential_id",
            "nonce",
            "signature"
        ]
    );
    assert_eq!(keys(&v["quorum"][0]), ["m", "of", "rule"]);
    assert!(v["quorum"][0]["m"].is_u64());
}

#[test]
fn quorum_claims_round_trip_through_json_and_a_signed_token() {
    let c = with_quorum();
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Claims>(&json).unwrap(), c);
    let signer = Signer::new();
    assert_eq!(verifier(&signer).verify(&signer.sign(&c), NOW), Ok(c));
    // Either claim alone is kept alone.
    let mut only_quorum = with_quorum();
    only_quorum.approvers.clear();
    let (_, v) = payload(&only_quorum);
    assert!(v.get("approvers").is_none() && v.get("quorum").is_some());
    let mut only_approvers = with_quorum();
    only_approvers.quorum.clear();
    let (_, v) = payload(&only_approvers);
    assert!(v.get("approvers").is_some() && v.get("quorum").is_none());
}

#[test]
fn empty_approvers_and_quorum_leave_old_approvals_byte_for_byte() {
    let c = claims();
    assert!(c.approvers.is_empty() && c.quorum.is_empty());
    let (text, v) = payload(&c);
    assert!(v.get("approvers").is_none(), "{text}");
    assert!(v.get("quorum").is_none(), "{text}");
    // The exact payload of an approval from before staff quorums.
    let i = intent();
    let old = format!(
        concat!(
            r#"{{"iss":"{}","aud":"{}","sub":"alice","jti":"jti-1","iat":{},"exp":{},"act":"withdrawal","#,
            r#""intent":{{"action":"withdrawal","user_id":"alice","withdrawal_id":"wd-0001","asset":"BTC","#,
            r#""network":"bitcoin","amount":"0.5","destination":"{}","memo":""}},"#,
            r#""intent_sha256":"{}","amr":["hwk","user"]}}"#
        ),
        ISS,
        AUD,
        NOW,
        NOW + 120,
        i.destination,
        b64url::encode(&i.digest()),
    );
    assert_eq!(text, old);
    // An old approval parses with no approvers and no quorum, and
    // serialises back to the same bytes.
    let parsed: Claims = serde_json::from_str(&old).unwrap();
    assert_eq!(parsed, c);
    assert_eq!(serde_json::to_string(&parsed).unwrap(), old);
    // Explicitly empty arrays are read as absent.
    let explicit = old.replacen('{', r#"{"approvers":[],"quorum":[],"#, 1);
    assert_eq!(serde_json::from_str::<Claims>(&explicit).unwrap(), c);
}

#[test]
fn cancellation_list_payload_and_header() {
    let list = CancellationList {
        iss: ISS.into(),
        aud: AUD.into(),
        iat: NOW,
        cancelled: vec!["jti-1".into(), "jti-2".into()],
    };
    let input = cancellations_signing_input("k\"1", &list);
    let (h, p) = input.split_once('.').unwrap();
    assert_eq!(
        String::from_utf8(b64url::decode(h).unwrap()).unwrap(),
        r#"{"alg":"ES256","kid":"k\"1","typ":"sigil-cancellations+jwt"}"#
    );
    let text = String::from_utf8(b64url::decode(p).unwrap()).unwrap();
    assert_eq!(
        text,
        format!(r#"{{"iss":"{ISS}","aud":"{AUD}","iat":{NOW},"cancelled":["jti-1","jti-2"]}}"#)
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys(&v), ["aud", "cancelled", "iat", "iss"]);
    // An empty list is still listed (it is what proves "not cancelled").
    let empty = CancellationList {
        cancelled: vec![],
        ..list.clone()
    };
    let input = cancellations_signing_input("k", &empty);
    let (_, p) = input.split_once('.').unwrap();
    let v: Value = serde_json::from_slice(&b64url::decode(p).unwrap()).unwrap();
    assert_eq!(v["cancelled"], json!([]));
    assert_eq!(serde_json::from_value::<CancellationList>(v).unwrap(), empty);
    // Same kid escaping and layout as an approval's header, only the typ
    // differs.
    let approval = signing_input("k\"1", &claims());
    let (ah, _) = approval.split_once('.').unwrap();
    assert_eq!(
        String::from_utf8(b64url::decode(ah).unwrap())
            .unwrap()
            .replace("sigil-approval+jwt", "sigil-cancellations+jwt"),
        String::from_utf8(b64url::decode(h).unwrap()).unwrap()
    );
}
