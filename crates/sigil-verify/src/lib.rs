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
pub mod reason;
mod webauthn;

pub use cache::{CachingVerifier, KeySource};
pub use error::VerifyError;
pub use intent::{amount_decimals, is_canonical_amount, webauthn_challenge, Intent, INTENT_TAG, WEBAUTHN_TAG};
pub use jwk::{Jwk, JwkSet};
pub use jws::{assemble, is_low_s, signing_input, to_low_s, Claims, Verifier};
pub use reason::Reason;
pub use webauthn::{cose_key_to_sec1, verify_webauthn_evidence, WebauthnEvidence};
