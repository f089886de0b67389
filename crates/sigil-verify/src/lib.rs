//! Offline verifier for Sigil withdrawal approvals.
//!
//! Sigil signs every approval it issues as a compact JWS (RFC 7515) with
//! ES256, using a key held in an HSM. The approval is bound to one exact
//! action — its [`Intent`]: who, what asset, how much, to which address —
//! through the intent digest (`intent_sha256`). A withdrawal engine embeds
//! this crate to check an approval without calling Sigil, before it moves
//! funds.
//!
//! # How an engine uses it
//!
//! 1. Fetch Sigil's approval keys (a JWK Set, [`JwkSet`]) and build a
//!    [`Verifier`] with the issuer and audience it expects. Rebuild it when
//!    Sigil rotates keys (a token naming an unknown `kid` is
//!    [`VerifyError::UnknownKey`]: reload the keys, then retry once) — or
//!    let a [`CachingVerifier`] do that (see [Caching the key
//!    set](#caching-the-key-set)).
//! 2. For each withdrawal, build the [`Intent`] from the engine's **own**
//!    record of the withdrawal (not from the approval) and call
//!    [`Verifier::verify_for`]. It checks the signature (algorithm pinned to
//!    ES256, `none`/`HS256`/… refused), `typ`, `iss`, `aud`, `exp`/`nbf`/`iat`
//!    with a small leeway, that `intent_sha256` is the digest of the approved
//!    intent, and that the approved intent equals the engine's record field
//!    by field.
//! 3. Redeem the approval's `jti` with Sigil (`RedeemApproval`) exactly once,
//!    and only then move funds. This crate cannot see replays.
//! 4. Optionally, for approvals answered with WebAuthn, re-check the user's
//!    own signature over the intent with [`verify_webauthn_evidence`].
//!
//! A delayed approval (one that could still be cancelled when issued) is
//! refused by `verify_for` until the engine shows it was not cancelled: see
//! [Delayed approvals](#delayed-approvals-and-cancellation-lists). An
//! approval that staff members approved carries their signatures, which
//! [`verify_quorum`] re-checks: see [Staff quorums](#staff-quorums).
//!
//! Any `Err` means: do not move funds. Errors print a message a person can
//! act on.
//!
//! ```
//! use ring::rand::SystemRandom;
//! use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
//! use sigil_verify::{
//!     assemble, b64url, signing_input, Claims, Intent, Jwk, JwkSet, Verifier, VerifyError,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // --- Sigil's side (normally inside the HSM), so that the example runs ---
//! let rng = SystemRandom::new();
//! let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
//!     .map_err(|_| "key generation failed")?;
//! let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
//!     .map_err(|_| "bad key")?;
//! let point = key.public_key().as_ref(); // 0x04 || x || y
//! let jwk = Jwk::from_p256_point(point[1..33].try_into()?, point[33..65].try_into()?);
//! let jwks_json = serde_json::to_string(&JwkSet { keys: vec![jwk.clone()] })?;
//!
//! let intent = Intent {
//!     action: "withdrawal".into(),
//!     user_id: "alice".into(),
//!     withdrawal_id: "wd-0001".into(),
//!     asset: "BTC".into(),
//!     network: "bitcoin".into(),
//!     amount: "0.5".into(),
//!     destination: "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into(),
//!     memo: String::new(),
//! };
//! let now = 1_700_000_000;
//! let claims = Claims {
//!     iss: "https://sigil.example".into(),
//!     aud: "withdrawal-engine".into(),
//!     sub: intent.user_id.clone(),
//!     jti: "01HZX3".into(),
//!     iat: now,
//!     exp: now + 120,
//!     nbf: None,
//!     act: intent.action.clone(),
//!     intent_sha256: b64url::encode(&intent.digest()),
//!     intent: intent.clone(),
//!     amr: vec!["hwk".into()],
//!     webauthn: None,
//!     approvers: Vec::new(),
//!     quorum: Vec::new(),
//! };
//! let input = signing_input(&jwk.kid, &claims);
//! let sig = key.sign(&rng, input.as_bytes()).map_err(|_| "signing failed")?;
//! let token = assemble(&input, sig.as_ref().try_into()?);
//!
//! // --- The engine's side ---
//! let keys: JwkSet = serde_json::from_str(&jwks_json)?;
//! let verifier = Verifier::new(&keys, "https://sigil.example", "withdrawal-engine")?;
//!
//! // The engine's own record of the withdrawal it is about to execute.
//! let record = intent.clone();
//! let approved = verifier.verify_for(&token, &record, now + 5)?;
//! assert_eq!(approved.jti, "01HZX3"); // now redeem the jti with Sigil, once
//!
//! // The same approval does not cover another amount...
//! let other = Intent { amount: "5".into(), ..record.clone() };
//! assert_eq!(
//!     verifier.verify_for(&token, &other, now + 5),
//!     Err(VerifyError::IntentMismatch { field: "amount" })
//! );
//! // ...nor does it live forever.
//! assert_eq!(verifier.verify_for(&token, &record, now + 600), Err(VerifyError::Expired));
//! # Ok(())
//! # }
//! ```
//!
//! # Caching the key set
//!
//! Sigil rotates its approval keys. Each key in the set carries a `status`:
//! `"next"` (published ahead of use), `"active"` (signing), `"retiring"` (no
//! longer signing, its approvals stay valid until they expire) and
//! `"retired"` (never verifies). A [`CachingVerifier`] keeps the set
//! current by itself. Give it a [`KeySource`] — any
//! `Fn() -> Result<JwkSet, String> + Send + Sync` closure, or a type
//! implementing the trait — and pass the clock to each call:
//!
//! - **Unknown `kid`** (a new key signed the approval): the verifier fetches
//!   the set again and checks the token once more. It does so only if the
//!   last refresh is at least [`with_min_refresh_interval`] seconds old
//!   (default 60), so a flood of tokens naming forged kids costs at most one
//!   fetch per interval; a kid still unknown is
//!   [`VerifyError::UnknownKey`]. Sigil publishes a key as `"next"` before
//!   signing with it, so a refresh normally brings it in before the first
//!   approval it signs.
//! - **Maximum age** ([`with_max_age`], default 300 seconds, the
//!   `cache_max_age_seconds` of Sigil's `GetApprovalKeys` answer): the first
//!   verification after the cached set has grown older than this fetches it
//!   again (also at most once per refresh interval). This is how a key
//!   turning `"retired"` reaches the engine: the verifier cannot learn it
//!   from the tokens. A retired kid is refused at once
//!   ([`VerifyError::RetiredKey`]) and never causes a refresh.
//!
//! A failed fetch (or a fetched set that [`Verifier::new`] refuses) keeps
//! the previous set: keys already known keep verifying, unknown kids are
//! refused, and the failure counts as a refresh for the rate limit, so a
//! source that is down is retried once per interval.
//! [`fetches`](CachingVerifier::fetches) counts fetches, for monitoring.
//!
//! ```
//! # use ring::rand::SystemRandom;
//! # use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
//! use std::sync::{Arc, Mutex};
//! use sigil_verify::{CachingVerifier, Jwk, JwkSet, VerifyError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let rng = SystemRandom::new();
//! # let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
//! #     .map_err(|_| "key generation failed")?;
//! # let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
//! #     .map_err(|_| "bad key")?;
//! # let point = key.public_key().as_ref();
//! # let jwk = Jwk::from_p256_point(point[1..33].try_into()?, point[33..65].try_into()?);
//! // Stands in for Sigil: the JWKS JSON it currently publishes.
//! let published = Arc::new(Mutex::new(serde_json::to_string(&JwkSet { keys: vec![jwk] })?));
//!
//! let sigil = Arc::clone(&published);
//! let source = move || -> Result<JwkSet, String> {
//!     let json = sigil.lock().map_err(|_| "poisoned")?.clone(); // the fetch
//!     serde_json::from_str(&json).map_err(|e| format!("Sigil sent a bad JWKS: {e}"))
//! };
//! let verifier = CachingVerifier::new(source, "https://sigil.example", "withdrawal-engine")?
//!     .with_max_age(300) // GetApprovalKeys' cache_max_age_seconds
//!     .with_min_refresh_interval(60);
//! assert_eq!(verifier.fetches(), 1);
//!
//! // A token naming a kid Sigil does not publish: one refresh, then refused.
//! let forged = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImZvcmdlZCIsInR5cCI6InNpZ2lsLWFwcHJvdmFsK2p3dCJ9.e30.";
//! let now = 1_700_000_000;
//! assert!(matches!(verifier.verify(forged, now), Err(VerifyError::UnknownKey(_))));
//! assert_eq!(verifier.fetches(), 2);
//! // More of them within the interval: no more fetches.
//! assert!(matches!(verifier.verify(forged, now + 30), Err(VerifyError::UnknownKey(_))));
//! assert_eq!(verifier.fetches(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! `fetch` runs synchronously inside `new`, `verify` and `verify_for`, so it
//! should time out after a few seconds. With Sigil's gRPC API, an engine
//! can wrap an `ApprovalService` client (mTLS, withdrawal-engine
//! certificate) in a small runtime of its own; an async engine then calls
//! `verify` from a blocking context (e.g. `tokio::task::spawn_blocking`),
//! since a Tokio runtime cannot block on another from its own threads:
//!
//! ```ignore
//! use std::time::Duration;
//! use sigil::pb::{approval_service_client::ApprovalServiceClient, GetApprovalKeysRequest};
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let client = ApprovalServiceClient::new(rt.block_on(sigil::client::connect(&url, &tls))?);
//! let source = move || -> Result<JwkSet, String> {
//!     let mut client = client.clone();
//!     let answer = rt
//!         .block_on(tokio::time::timeout(
//!             Duration::from_secs(5),
//!             client.get_approval_keys(GetApprovalKeysRequest {}),
//!         ))
//!         .map_err(|_| "GetApprovalKeys timed out".to_owned())?
//!         .map_err(|status| format!("GetApprovalKeys failed: {status}"))?
//!         .into_inner();
//!     serde_json::from_str(&answer.jwks_json).map_err(|e| format!("bad JWKS from Sigil: {e}"))
//! };
//! let verifier = CachingVerifier::new(source, "sigil", "withdrawal-engine")?.with_max_age(300);
//! ```
//!
//! Any other transport works the same way: a closure doing a blocking HTTP
//! GET of a JWKS document with a timeout, and `serde_json::from_slice` of
//! the body.
//!
//! [`with_min_refresh_interval`]: CachingVerifier::with_min_refresh_interval
//! [`with_max_age`]: CachingVerifier::with_max_age
//!
//! # Delayed approvals and cancellation lists
//!
//! Policy can delay an approval: Sigil issues it at once with an `nbf` after
//! its `iat` ([`Claims::is_delayed`]), and the user or staff can cancel it
//! until `nbf`. [`Verifier::verify`] and [`Verifier::verify_for`] refuse
//! such an approval ([`VerifyError::NotYetValid`] before `nbf`,
//! [`VerifyError::CancellationListNeeded`] after): the engine needs proof
//! that it was not cancelled. That proof is a cancellation list
//! ([`CancellationList`]): a JWS signed by an approval key, header `typ`
//! `sigil-cancellations+jwt`, whose payload names the `jti` of every
//! cancelled approval that has not expired at its `iat`
//! (`ApprovalService/GetCancellations`). Since nothing can be cancelled
//! after its `nbf`, a list issued at or after an approval's `nbf` that does
//! not name it settles the matter for good.
//!
//! [`Verifier::verify_delayed_for`] takes the approval, the engine's record
//! and the list: it makes the checks of `verify_for`, verifies the list
//! ([`Verifier::verify_cancellations`]: signature, `typ`, `iss`, `aud`, `iat`
//! not in the future), then refuses the approval with
//! [`VerifyError::CancellationListNeeded`] if the list was issued before its
//! `nbf` (fetch a fresh one), [`VerifyError::Cancelled`] if the list names
//! it, and [`VerifyError::Expired`] if the list was issued at or after its
//! `exp` (it no longer lists it). It accepts approvals that are not delayed
//! as well, so an engine can call it for every approval.
//! [`CachingVerifier::verify_delayed_for`] does the same over the cached key
//! set, fetching it again when the list is signed by a key it does not know
//! yet. Only Sigil itself, which knows from its own store whether
//! an approval was cancelled, builds its verifier
//! [`with_cancellations_checked_elsewhere`](Verifier::with_cancellations_checked_elsewhere).
//!
//! # Staff quorums
//!
//! Policy can also require, besides the user, `m` of `n` staff members to
//! approve an action. The approval then lists in `approvers` each staff
//! member's WebAuthn assertion over the same intent digest (with its own
//! nonce), and in `quorum` each rule's requirement (`rule`, `m`, `of`).
//! Sigil checked them before signing; an engine that wants to re-check
//! them offline calls [`verify_quorum`] on the verified claims, with the
//! staff keys Sigil publishes ([`StaffKeySet`],
//! `StaffService/GetStaffKeys`) and the origin the staff use. It refuses
//! the approval if any approver's evidence fails (one altered byte is
//! enough), if an approver is the subject or holds the subject's account,
//! if a quorum is malformed or not met by distinct staff members (one
//! person counts once, whatever number of keys they used), or if there are
//! approvers but no quorum; it returns the staff ids that approved.
//!
//! ```
//! # use ring::digest::{digest, SHA256};
//! # use ring::rand::SystemRandom;
//! # use ring::signature::{
//! #     EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING,
//! # };
//! use sigil_verify::{verify_quorum, Intent, StaffKeySet, Verifier, VerifyError};
//! # use sigil_verify::{
//! #     assemble, b64url, cancellations_signing_input, signing_input, webauthn_challenge, ApproverEvidence,
//! #     CancellationList, Claims, Jwk, JwkSet, QuorumClaim, StaffKey, WebauthnEvidence,
//! # };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # // --- Sigil's side, so that the example runs ---
//! # let rng = SystemRandom::new();
//! # let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
//! #     .map_err(|_| "key generation failed")?;
//! # let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
//! #     .map_err(|_| "bad key")?;
//! # let point = key.public_key().as_ref();
//! # let jwk = Jwk::from_p256_point(point[1..33].try_into()?, point[33..65].try_into()?);
//! # let keys = JwkSet { keys: vec![jwk.clone()] };
//! # let sign = |input: String| -> Result<String, Box<dyn std::error::Error>> {
//! #     let sig = key.sign(&rng, input.as_bytes()).map_err(|_| "signing failed")?;
//! #     Ok(assemble(&input, sig.as_ref().try_into()?))
//! # };
//! # let record = Intent {
//! #     action: "withdrawal".into(),
//! #     user_id: "alice".into(),
//! #     withdrawal_id: "wd-0002".into(),
//! #     asset: "BTC".into(),
//! #     network: "bitcoin".into(),
//! #     amount: "250".into(),
//! #     destination: "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into(),
//! #     memo: String::new(),
//! # };
//! # // Two staff members' security keys, published, and their assertions.
//! # let mut staff_keys = StaffKeySet::default();
//! # let mut approvers = Vec::new();
//! # for (n, staff_id) in [(1u8, "bob"), (2, "carol")] {
//! #     let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
//! #         .map_err(|_| "key generation failed")?;
//! #     let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
//! #         .map_err(|_| "bad key")?;
//! #     let credential_id = b64url::encode(format!("{staff_id}-key").as_bytes());
//! #     staff_keys.keys.push(StaffKey {
//! #         staff_id: staff_id.into(),
//! #         user_id: String::new(),
//! #         credential_id: credential_id.clone(),
//! #         public_key: b64url::encode(k.public_key().as_ref()),
//! #         removed_at: None,
//! #     });
//! #     let nonce = [n; 16];
//! #     let challenge = webauthn_challenge(&nonce, &record.digest());
//! #     let client_data = format!(
//! #         r#"{{"type":"webauthn.get","challenge":"{}","origin":"https://sigil.example"}}"#,
//! #         b64url::encode(&challenge)
//! #     );
//! #     let mut auth_data = digest(&SHA256, b"sigil.example").as_ref().to_vec();
//! #     auth_data.extend_from_slice(&[0x05, 0, 0, 0, 1]);
//! #     let mut signed = auth_data.clone();
//! #     signed.extend_from_slice(digest(&SHA256, client_data.as_bytes()).as_ref());
//! #     let sig = k.sign(&rng, &signed).map_err(|_| "signing failed")?;
//! #     approvers.push(ApproverEvidence {
//! #         staff_id: staff_id.into(),
//! #         webauthn: WebauthnEvidence {
//! #             credential_id,
//! #             authenticator_data: b64url::encode(&auth_data),
//! #             client_data_json: b64url::encode(client_data.as_bytes()),
//! #             signature: b64url::encode(sig.as_ref()),
//! #             nonce: b64url::encode(&nonce),
//! #         },
//! #     });
//! # }
//! let now = 1_700_000_000;
//! // An approval issued at `now`, delayed by an hour, that Bob and Carol
//! // approved under a 2-of-2 quorum.
//! # let claims = Claims {
//! #     iss: "https://sigil.example".into(),
//! #     aud: "withdrawal-engine".into(),
//! #     sub: record.user_id.clone(),
//! #     jti: "01HZX4".into(),
//! #     iat: now,
//! #     exp: now + 7200,
//! #     nbf: Some(now + 3600),
//! #     act: record.action.clone(),
//! #     intent_sha256: b64url::encode(&record.digest()),
//! #     intent: record.clone(),
//! #     amr: vec!["hwk".into()],
//! #     webauthn: None,
//! #     approvers,
//! #     quorum: vec![QuorumClaim { rule: "large-withdrawal".into(), m: 2, of: vec!["bob".into(), "carol".into()] }],
//! # };
//! # let token = sign(signing_input(&jwk.kid, &claims))?;
//! # let list = |iat: i64, cancelled: &[&str]| {
//! #     sign(cancellations_signing_input(&jwk.kid, &CancellationList {
//! #         iss: "https://sigil.example".into(),
//! #         aud: "withdrawal-engine".into(),
//! #         iat,
//! #         cancelled: cancelled.iter().map(|j| j.to_string()).collect(),
//! #     }))
//! # };
//! let verifier = Verifier::new(&keys, "https://sigil.example", "withdrawal-engine")?;
//! let later = now + 3600; // the delay is over
//!
//! // Without a cancellation list, the approval is refused.
//! assert!(matches!(
//!     verifier.verify_for(&token, &record, later),
//!     Err(VerifyError::CancellationListNeeded(_))
//! ));
//! // GetCancellations, called now that the delay is over: a list that does
//! // not name the approval.
//! let cancellations = list(later, &["01HZX1"])?;
//! let approved = verifier.verify_delayed_for(&token, &record, &cancellations, later)?;
//!
//! // Then the staff quorum, against the keys GetStaffKeys publishes.
//! let staff: StaffKeySet = staff_keys;
//! assert_eq!(verify_quorum(&approved, &staff, Some("https://sigil.example"))?, ["bob", "carol"]);
//!
//! // Had it been cancelled during its delay, or were the list too old:
//! let cancelled = list(later, &["01HZX4"])?;
//! assert_eq!(
//!     verifier.verify_delayed_for(&token, &record, &cancelled, later),
//!     Err(VerifyError::Cancelled)
//! );
//! let stale = list(now + 60, &[])?;
//! assert!(matches!(
//!     verifier.verify_delayed_for(&token, &record, &stale, later),
//!     Err(VerifyError::CancellationListNeeded(_))
//! ));
//! # Ok(())
//! # }
//! ```
//!
//! # Cross-language contract
//!
//! The intent digest, canonical amounts and the WebAuthn challenge are
//! defined byte for byte (see [`Intent::preimage`], [`is_canonical_amount`],
//! [`webauthn_challenge`]) so that engines in other languages can recompute
//! them; the crate's tests check them against independent test vectors.

#![forbid(unsafe_code)]

pub mod b64url;
mod cache;
mod error;
mod intent;
mod jwk;
mod jws;
mod quorum;
pub mod reason;
mod webauthn;

pub use cache::{CachingVerifier, KeySource};
pub use error::VerifyError;
pub use intent::{amount_decimals, is_canonical_amount, webauthn_challenge, Intent, INTENT_TAG, WEBAUTHN_TAG};
pub use jwk::{Jwk, JwkSet};
pub use jws::{
    assemble, cancellations_signing_input, is_low_s, signing_input, to_low_s, CancellationList, Claims, Verifier,
};
pub use quorum::{verify_quorum, ApproverEvidence, QuorumClaim, StaffKey, StaffKeySet};
pub use reason::Reason;
pub use webauthn::{cose_key_to_sec1, verify_webauthn_evidence, WebauthnEvidence};
