//! Staff quorums: offline re-verification of the approvers' WebAuthn
//! assertions and of the quorums they meet ([`verify_quorum`]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{claims, intent, verifier, Signer, NOW};
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use sigil_verify::{
    b64url, verify_quorum, webauthn_challenge, ApproverEvidence, Claims, Intent, QuorumClaim, Reason, StaffKey,
    StaffKeySet, VerifyError, WebauthnEvidence,
};

const ORIGIN: &str = "https://localhost:8443";
const RP_ID: &str = "localhost";

/// A staff member's security key: a P-256 credential producing ASN.1 DER
/// signatures, as WebAuthn authenticators do.
struct StaffAuthenticator {
    staff_id: String,
    credential_id: Vec<u8>,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl StaffAuthenticator {
    fn new(staff_id: &str, credential_id: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        StaffAuthenticator {
            staff_id: staff_id.to_owned(),
            credential_id: credential_id.as_bytes().to_vec(),
            key,
            rng,
        }
    }

    /// The key as Sigil publishes it (`StaffService/GetStaffKeys`).
    fn published(&self) -> StaffKey {
        StaffKey {
            staff_id: self.staff_id.clone(),
            user_id: String::new(),
            credential_id: b64url::encode(&self.credential_id),
            public_key: b64url::encode(self.key.public_key().as_ref()),
            removed_at: None,
        }
    }

    /// An assertion over `intent_sha256` with a fresh nonce: authenticator
    /// data `SHA-256(rp id) || UP|UV || counter`, clientDataJSON of type
    /// `webauthn.get`, signature over `authData || SHA-256(clientDataJSON)`.
    fn assertion(&self, intent_sha256: &[u8; 32], origin: &str) -> WebauthnEvidence {
        let mut nonce = [0u8; 16];
        self.rng.fill(&mut nonce).unwrap();
        let challenge = webauthn_challenge(&nonce, intent_sha256);
        let client_data_json = format!(
            r#"{{"type":"webauthn.get","challenge":"{}","origin":"{origin}"}}"#,
            b64url::encode(&challenge)
        );
        let mut auth_data = digest(&SHA256, RP_ID.as_bytes()).as_ref().to_vec();
        auth_data.push(0x05); // UP | UV
        auth_data.extend_from_slice(&42u32.to_be_bytes());
        let mut signed = auth_data.clone();
        signed.extend_from_slice(digest(&SHA256, client_data_json.as_bytes()).as_ref());
        let signature = self.key.sign(&self.rng, &signed).unwrap();
        WebauthnEvidence {
            credential_id: b64url::encode(&self.credential_id),
            authenticator_data: b64url::encode(&auth_data),
            client_data_json: b64url::encode(client_data_json.as_bytes()),
            signature: b64url::encode(signature.as_ref()),
            nonce: b64url::encode(&nonce),
        }
    }

    /// This staff member's approval of `intent`.
    fn approve(&self, intent: &Intent) -> ApproverEvidence {
        ApproverEvidence {
            staff_id: self.staff_id.clone(),
            webauthn: self.assertion(&intent.digest(), ORIGIN),
        }
    }
}

fn staff_set(keys: &[&StaffAuthenticator]) -> StaffKeySet {
    StaffKeySet {
        keys: keys.iter().map(|k| k.published()).collect(),
    }
}

fn quorum(rule: &str, m: u32, of: &[&str]) -> QuorumClaim {
    QuorumClaim {
        rule: rule.into(),
        m,
        of: of.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Bob and Carol, and the approval of `intent()` (user alice) that they
/// both approved under a 2-of-2 quorum.
struct Fixture {
    bob: StaffAuthenticator,
    carol: StaffAuthenticator,
    claims: Claims,
    staff: StaffKeySet,
}

fn fixture() -> Fixture {
    let bob = StaffAuthenticator::new("bob", "bob-key-1");
    let carol = StaffAuthenticator::new("carol", "carol-key-1");
    let mut c = claims();
    c.approvers = vec![bob.approve(&intent()), carol.approve(&intent())];
    c.quorum = vec![quorum("large-withdrawal", 2, &["bob", "carol"])];
    let staff = staff_set(&[&bob, &carol]);
    Fixture {
        bob,
        carol,
        claims: c,
        staff,
    }
}

fn quorum_not_met(r: Result<Vec<String>, VerifyError>) -> String {
    match r {
        Err(e @ VerifyError::QuorumNotMet(_)) => {
            assert_eq!(e.reason(), Reason::QuorumNotMet);
            e.to_string()
        }
        other => panic!("expected QuorumNotMet, got {other:?}"),
    }
}

fn bad_evidence(r: Result<Vec<String>, VerifyError>) -> String {
    match r {
        Err(VerifyError::BadEvidence(why)) => why,
        other => panic!("expected BadEvidence, got {other:?}"),
    }
}

fn malformed(r: Result<Vec<String>, VerifyError>) -> String {
    match r {
        Err(VerifyError::Malformed(why)) => why,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn two_of_two_quorum_verifies() {
    let f = fixture();
    assert_eq!(
        verify_quorum(&f.claims, &f.staff, Some(ORIGIN)),
        Ok(vec!["bob".to_owned(), "carol".to_owned()])
    );
    assert_eq!(
        verify_quorum(&f.claims, &f.staff, None),
        Ok(vec!["bob".to_owned(), "carol".to_owned()])
    );
    // The returned ids are sorted and distinct whatever the order of the
    // approvers.
    let mut c = f.claims.clone();
    c.approvers.reverse();
    assert_eq!(
        verify_quorum(&c, &f.staff, Some(ORIGIN)),
        Ok(vec!["bob".to_owned(), "carol".to_owned()])
    );
}

#[test]
fn quorum_survives_a_signed_approval() {
    // The claims as an engine gets them: out of a verified token.
    let f = fixture();
    let signer = Signer::new();
    let token = signer.sign(&f.claims);
    let verified = verifier(&signer).verify_for(&token, &intent(), NOW).unwrap();
    assert_eq!(verified, f.claims);
    assert_eq!(
        verify_quorum(&verified, &f.staff, Some(ORIGIN)),
        Ok(vec!["bob".to_owned(), "carol".to_owned()])
    );
}

#[test]
fn no_quorum_and_no_approvers_is_nothing_to_check() {
    assert_eq!(
        verify_quorum(&claims(), &StaffKeySet::default(), Some(ORIGIN)),
        Ok(vec![])
    );
}

#[test]
fn one_approver_of_two_is_not_a_quorum() {
    let f = fixture();
    for keep in [0, 1] {
        let mut c = f.claims.clone();
        c.approvers.remove(keep);
        let m = quorum_not_met(verify_quorum(&c, &f.staff, Some(ORIGIN)));
        assert!(m.contains("large-withdrawal") && m.contains("1 approved"), "{m}");
    }
    let mut c = f.claims.clone();
    c.approvers.clear();
    quorum_not_met(verify_quorum(&c, &f.staff, Some(ORIGIN)));
    // A valid approver from outside the quorum's pool does not count.
    let dave = StaffAuthenticator::new("dave", "dave-key-1");
    let mut c = f.claims.clone();
    c.approvers[1] = dave.approve(&intent());
    quorum_not_met(verify_quorum(&c, &staff_set(&[&f.bob, &f.carol, &dave]), Some(ORIGIN)));
}

#[test]
fn every_quorum_of_the_approval_must_be_met() {
    let f = fixture();
    let dave = StaffAuthenticator::new("dave", "dave-key-1");
    let staff = staff_set(&[&f.bob, &f.carol, &dave]);
    let mut c = f.claims.clone();
    c.quorum.push(quorum("new-address", 1, &["dave", "erin"]));
    let m = quorum_not_met(verify_quorum(&c, &staff, Some(ORIGIN)));
    assert!(m.contains("new-address"), "{m}");
    c.approvers.push(dave.approve(&intent()));
    assert_eq!(
        verify_quorum(&c, &staff, Some(ORIGIN)),
        Ok(vec!["bob".to_owned(), "carol".to_owned(), "dave".to_owned()])
    );
}

#[test]
fn one_person_with_two_keys_counts_once() {
    let f = fixture();
    let bob2 = StaffAuthenticator::new("bob", "bob-key-2");
    let staff = staff_set(&[&f.bob, &bob2, &f.carol]);
    let mut c = f.claims.clone();
    c.approvers = vec![f.bob.approve(&intent()), bob2.approve(&intent())];
    quorum_not_met(verify_quorum(&c, &staff, Some(ORIGIN)));
    // The same assertion listed twice is no better.
    let mut c = f.claims.clone();
    c.approvers = vec![f.bob.approve(&intent()); 2];
    quorum_not_met(verify_quorum(&c, &staff, Some(ORIGIN)));
    // Both of Bob's keys do verify: with a 1-of-2 quorum he is one approver.
    let mut c = f.claims.clone();
    c.approvers = vec![f.bob.approve(&intent()), bob2.approve(&intent())];
    c.quorum = vec![quorum("large-withdrawal", 1, &["bob", "carol"])];
    assert_eq!(verify_quorum(&c, &staff, Some(ORIGIN)), Ok(vec!["bob".to_owned()]));
}

#[test]
fn one_key_published_for_two_staff_members_counts_once() {
    // A misconfigured staff set listing Bob's authenticator under Carol's
    // id too: whoever holds it is one person.
    let f = fixture();
    let mut as_carol = f.bob.published();
    as_carol.staff_id = "carol".into();
    let staff = StaffKeySet {
        keys: vec![f.bob.published(), as_carol],
    };
    let mut c = f.claims.clone();
    c.approvers = vec![f.bob.approve(&intent()), f.bob.approve(&intent())];
    c.approvers[1].staff_id = "carol".into();
    let m = quorum_not_met(verify_quorum(&c, &staff, Some(ORIGIN)));
    assert!(m.contains("same public key"), "{m}");
}

#[test]
fn the_subject_cannot_approve_their_own() {
    let f = fixture();
    // A staff member whose staff id is the approval's subject.
    let alice = StaffAuthenticator::new("alice", "alice-key-1");
    assert_eq!(f.claims.sub, "alice");
    let staff = staff_set(&[&f.bob, &f.carol, &alice]);
    let mut c = f.claims.clone();
    c.approvers = vec![f.bob.approve(&intent()), alice.approve(&intent())];
    c.quorum = vec![quorum("large-withdrawal", 2, &["bob", "alice"])];
    let m = quorum_not_met(verify_quorum(&c, &staff, Some(ORIGIN)));
    assert!(m.contains("own"), "{m}");
    // Even when the quorum does not need them.
    c.quorum = vec![quorum("large-withdrawal", 1, &["bob", "carol"])];
    quorum_not_met(verify_quorum(&c, &staff, Some(ORIGIN)));
}

#[test]
fn a_staff_member_holding_the_subjects_account_cannot_approve() {
    let f = fixture();
    let mut key = f.carol.published();
    key.user_id = "alice".into();
    let staff = StaffKeySet {
        keys: vec![f.bob.published(), key.clone()],
    };
    let m = quorum_not_met(verify_quorum(&f.claims, &staff, Some(ORIGIN)));
    assert!(m.contains("carol"), "{m}");
    // Another account is no obstacle.
    let mut other = key.clone();
    other.user_id = "mallory".into();
    let staff = StaffKeySet {
        keys: vec![f.bob.published(), other],
    };
    assert!(verify_quorum(&f.claims, &staff, Some(ORIGIN)).is_ok());
    // The account is the person's: approving with another of their keys,
    // one that does not name it, is refused too.
    let carol2 = StaffAuthenticator::new("carol", "carol-key-2");
    let staff = StaffKeySet {
        keys: vec![f.bob.published(), key, carol2.published()],
    };
    let mut c = f.claims.clone();
    c.approvers[1] = carol2.approve(&intent());
    quorum_not_met(verify_quorum(&c, &staff, Some(ORIGIN)));
}

#[test]
fn assertion_over_another_intent_is_bad_evidence() {
    let f = fixture();
    let other = Intent {
        amount: "50".into(),
        ..intent()
    };
    for i in [0, 1] {
        let mut c = f.claims.clone();
        let who = if i == 0 { &f.bob } else { &f.carol };
        c.approvers[i] = who.approve(&other);
        let why = bad_evidence(verify_quorum(&c, &f.staff, Some(ORIGIN)));
        assert!(why.contains(&who.staff_id) && why.contains("challenge"), "{why}");
    }
    // Nor does a quorum approved for one intent carry over to another.
    let mut c = f.claims.clone();
    c.intent = other.clone();
    c.intent_sha256 = b64url::encode(&other.digest());
    bad_evidence(verify_quorum(&c, &f.staff, Some(ORIGIN)));
}

/// The evidence field `n` (in declaration order), by name.
fn field_mut(e: &mut WebauthnEvidence, n: usize) -> (&'static str, &mut String) {
    match n {
        0 => ("credential_id", &mut e.credential_id),
        1 => ("authenticator_data", &mut e.authenticator_data),
        2 => ("client_data_json", &mut e.client_data_json),
        3 => ("signature", &mut e.signature),
        4 => ("nonce", &mut e.nonce),
        _ => unreachable!(),
    }
}

#[test]
fn every_altered_evidence_byte_is_refused() {
    let f = fixture();
    // Under 2-of-2 every approver is needed anyway; under 1-of-2 the other
    // approver would meet the quorum alone, so only a verifier that refuses
    // any bad evidence (rather than skipping it) passes.
    let one_of_two = {
        let mut c = f.claims.clone();
        c.quorum = vec![quorum("large-withdrawal", 1, &["bob", "carol"])];
        c
    };
    let mut checked = 0;
    for base in [&f.claims, &one_of_two] {
        assert!(verify_quorum(base, &f.staff, Some(ORIGIN)).is_ok());
        for approver in 0..base.approvers.len() {
            for n in 0..5 {
                let mut c = base.clone();
                let (name, value) = field_mut(&mut c.approvers[approver].webauthn, n);
                let bytes = b64url::decode(value).unwrap();
                assert!(!bytes.is_empty(), "{name}");
                for pos in 0..bytes.len() {
                    for mask in [0x01u8, 0x80] {
                        let mut altered = bytes.clone();
                        altered[pos] ^= mask;
                        let mut c = c.clone();
                        *field_mut(&mut c.approvers[approver].webauthn, n).1 = b64url::encode(&altered);
                        let r = verify_quorum(&c, &f.staff, Some(ORIGIN));
                        let ok = match (n, &r) {
                            // The altered credential id names no published key.
                            (0, Err(VerifyError::QuorumNotMet(_))) => true,
                            (1.., Err(VerifyError::BadEvidence(_))) => true,
                            _ => false,
                        };
                        assert!(ok, "approver {approver}, {name}[{pos}] ^ {mask:#04x}: {r:?}");
                        checked += 1;
                    }
                }
            }
        }
    }
    // Two quorums × two approvers × two masks × (9-byte credential id,
    // 37-byte authenticator data, ~110-byte clientDataJSON, ~71-byte
    // signature, 16-byte nonce).
    assert!(checked > 2 * 2 * 2 * 230, "{checked}");
}

#[test]
fn unpublished_credential_is_refused() {
    let f = fixture();
    // Carol's key missing from the published set (revoked, or a stale set).
    let m = quorum_not_met(verify_quorum(&f.claims, &staff_set(&[&f.bob]), Some(ORIGIN)));
    assert!(m.contains("carol") && m.contains("published"), "{m}");
    quorum_not_met(verify_quorum(&f.claims, &StaffKeySet::default(), Some(ORIGIN)));
    // A key that is not published at all, under a published staff id.
    let rogue = StaffAuthenticator::new("carol", "carol-key-rogue");
    let mut c = f.claims.clone();
    c.approvers[1] = rogue.approve(&intent());
    quorum_not_met(verify_quorum(&c, &f.staff, Some(ORIGIN)));
    // Carol's own credential claimed by Bob: the credential is looked up
    // with its staff member.
    let mut c = f.claims.clone();
    c.approvers[1].staff_id = "bob".into();
    quorum_not_met(verify_quorum(&c, &f.staff, Some(ORIGIN)));
    // A published credential id with another key behind it.
    let impostor = StaffAuthenticator::new("carol", "carol-key-1");
    let mut c = f.claims.clone();
    c.approvers[1] = impostor.approve(&intent());
    let why = bad_evidence(verify_quorum(&c, &f.staff, Some(ORIGIN)));
    assert!(why.contains("signature"), "{why}");
}

#[test]
fn malformed_staff_key_is_refused() {
    let f = fixture();
    for public_key in [
        format!("{}=", f.carol.published().public_key),
        String::from("!"),
        b64url::encode(&[4u8; 33]),
        String::new(),
    ] {
        let mut key = f.carol.published();
        key.public_key = public_key.clone();
        let staff = StaffKeySet {
            keys: vec![f.bob.published(), key],
        };
        assert!(
            verify_quorum(&f.claims, &staff, Some(ORIGIN)).is_err(),
            "{public_key:?}"
        );
    }
}

#[test]
fn malformed_quorums_are_refused() {
    let f = fixture();
    for q in [
        quorum("large-withdrawal", 0, &["bob", "carol"]),
        quorum("large-withdrawal", 3, &["bob", "carol"]),
        quorum("large-withdrawal", 1, &[]),
        quorum("large-withdrawal", 0, &[]),
        quorum("large-withdrawal", 2, &["bob", "carol", "bob"]),
        quorum("large-withdrawal", 1, &["bob", "bob"]),
        quorum("large-withdrawal", u32::MAX, &["bob", "carol"]),
    ] {
        let mut c = f.claims.clone();
        c.quorum = vec![q.clone()];
        malformed(verify_quorum(&c, &f.staff, Some(ORIGIN)));
        // Also when another, good quorum comes first.
        let mut c = f.claims.clone();
        c.quorum.push(q);
        malformed(verify_quorum(&c, &f.staff, Some(ORIGIN)));
    }
}

#[test]
fn approvers_without_a_quorum_are_refused() {
    let f = fixture();
    let mut c = f.claims.clone();
    c.quorum.clear();
    let m = quorum_not_met(verify_quorum(&c, &f.staff, Some(ORIGIN)));
    assert!(m.contains("no quorum"), "{m}");
}

#[test]
fn expected_origin_must_match() {
    let f = fixture();
    for origin in [
        "https://localhost:8444",
        "http://localhost:8443",
        "https://localhost",
        "https://evil.example",
        "",
    ] {
        let why = bad_evidence(verify_quorum(&f.claims, &f.staff, Some(origin)));
        assert!(why.contains("origin"), "{why}");
    }
    // An assertion made on another origin, checked against ours.
    let mut c = f.claims.clone();
    c.approvers[1].webauthn = f.carol.assertion(&intent().digest(), "https://evil.example");
    let why = bad_evidence(verify_quorum(&c, &f.staff, Some(ORIGIN)));
    assert!(why.contains("carol") && why.contains("origin"), "{why}");
    // Without an expected origin it is not compared.
    assert!(verify_quorum(&c, &f.staff, None).is_ok());
}

#[test]
fn a_key_removed_before_the_approval_was_issued_is_refused_one_removed_after_is_not() {
    let f = fixture();
    let iat = f.claims.iat;
    for (removed_at, ok) in [(iat - 1, false), (iat, false), (iat + 1, true)] {
        let mut staff = f.staff.clone();
        staff.keys[0].removed_at = Some(removed_at);
        let r = verify_quorum(&f.claims, &staff, Some(ORIGIN));
        assert_eq!(r.is_ok(), ok, "removed at iat{:+}: {r:?}", removed_at - iat);
        if !ok {
            assert!(
                matches!(r, Err(VerifyError::QuorumNotMet(ref m)) if m.contains("removed")),
                "{r:?}"
            );
        }
    }
}
