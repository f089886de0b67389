//! Approval tokens: JWS compact serialisation (RFC 7515) with ES256, and the
//! offline [`Verifier`].

use std::collections::BTreeMap;

use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::{Deserialize, Serialize};

use crate::b64url;
use crate::error::{excerpt, short_error, VerifyError};
use crate::intent::Intent;
use crate::jwk::{json_string, JwkSet};
use crate::quorum::{ApproverEvidence, QuorumClaim};
use crate::webauthn::WebauthnEvidence;

/// The only JWS algorithm accepted.
const ES256: &str = "ES256";
/// The `typ` header of every Sigil approval.
const APPROVAL_TYP: &str = "sigil-approval+jwt";
/// The `typ` header of a signed cancellation list.
const CANCELLATIONS_TYP: &str = "sigil-cancellations+jwt";
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Default clock leeway, in seconds.
const DEFAULT_LEEWAY: i64 = 30;

/// Approval claims (the JWS payload).
///
/// Claim names are a cross-language contract: `iss`, `aud`, `sub`, `jti`,
/// `iat`, `exp`, `nbf` (optional), `act`, `intent` (object with the eight
/// [`Intent`] fields), `intent_sha256` (unpadded base64url of
/// [`Intent::digest`]), `amr` (array of RFC 8176 strings), `webauthn`
/// (optional evidence object), `approvers` and `quorum` (optional arrays,
/// present when staff approved it). Times are integer seconds since the Unix
/// epoch. Unknown claims are ignored (and dropped); unknown keys inside
/// `intent` are refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the Sigil deployment that signed the approval.
    pub iss: String,
    /// Audience: the engine the approval is for.
    pub aud: String,
    /// Subject: the user; always equal to `intent.user_id`.
    pub sub: String,
    /// Single-use approval id; redeem it exactly once (`RedeemApproval`)
    /// before moving funds.
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds); the approval is valid strictly before it.
    pub exp: i64,
    /// Not before (Unix seconds), for delayed approvals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Action name; always equal to `intent.action`.
    pub act: String,
    /// The approved intent.
    pub intent: Intent,
    /// Unpadded base64url of `intent.digest()`.
    pub intent_sha256: String,
    /// Authentication methods used (RFC 8176 values, e.g. `hwk`, `otp`).
    pub amr: Vec<String>,
    /// WebAuthn assertion evidence, when a WebAuthn factor answered; check
    /// it with [`verify_webauthn_evidence`](crate::verify_webauthn_evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webauthn: Option<WebauthnEvidence>,
    /// The staff members who approved it, each with the WebAuthn assertion
    /// their own key made over this intent (empty when no staff quorum was
    /// needed); check them with [`verify_quorum`](crate::verify_quorum).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<ApproverEvidence>,
    /// The staff quorums the approval met, one per policy rule that asked
    /// for one (empty when none did).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quorum: Vec<QuorumClaim>,
}

impl Claims {
    /// True for a delayed approval: it carries an `nbf` after its `iat`, and
    /// may be cancelled until `nbf`. Such an approval is accepted only with
    /// a signed cancellation list issued at or after `nbf`
    /// ([`Verifier::verify_delayed_for`]).
    pub fn is_delayed(&self) -> bool {
        self.nbf.is_some_and(|nbf| nbf > self.iat)
    }
}

/// A signed list of cancelled approvals (the payload of the JWS that
/// `ApprovalService/GetCancellations` returns, header `typ`
/// `sigil-cancellations+jwt`, signed by an approval key).
///
/// It lists every cancelled approval that has not expired at `iat`. A
/// delayed approval can be cancelled only before its `nbf`, so a list
/// issued at or after the approval's `nbf` that does not name its `jti`
/// proves it was never cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationList {
    /// Issuer: the Sigil deployment.
    pub iss: String,
    /// Audience: the engine the approvals are for.
    pub aud: String,
    /// When the list was made (Unix seconds).
    pub iat: i64,
    /// The `jti`s of the cancelled approvals.
    pub cancelled: Vec<String>,
}

/// The JWS signing input of a cancellation list: like [`signing_input`]
/// with the header `typ` `sigil-cancellations+jwt`.
pub fn cancellations_signing_input(kid: &str, list: &CancellationList) -> String {
    let header = format!(
        "{{\"alg\":\"{ES256}\",\"kid\":{},\"typ\":\"{CANCELLATIONS_TYP}\"}}",
        json_string(kid)
    );
    let payload = serde_json::to_vec(list).unwrap_or_default();
    format!("{}.{}", b64url::encode(header.as_bytes()), b64url::encode(&payload))
}

/// The JWS signing input of an approval: unpadded base64url of the header
/// `{"alg":"ES256","kid":<kid>,"typ":"sigil-approval+jwt"}` (exactly that
/// JSON, members in that order, no whitespace), a `.`, and unpadded base64url
/// of the claims as compact JSON.
///
/// Sign its ASCII bytes with ES256 and pass the raw `r || s` signature to
/// [`assemble`].
pub fn signing_input(kid: &str, claims: &Claims) -> String {
    let header = format!(
        "{{\"alg\":\"{ES256}\",\"kid\":{},\"typ\":\"{APPROVAL_TYP}\"}}",
        json_string(kid)
    );
    // Serialising this plain struct cannot fail (string keys, strings and
    // integers only). Should it ever, the empty payload can never verify.
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    format!("{}.{}", b64url::encode(header.as_bytes()), b64url::encode(&payload))
}

/// The compact JWS: `signing_input`, a `.`, and unpadded base64url of the
/// 64-byte ES256 signature `r || s` (each 32 bytes big-endian, RFC 7518
/// §3.4; not ASN.1 DER), in its low-S form ([`to_low_s`]): an approval has
/// exactly one encoding, and [`Verifier::verify`] refuses the other.
pub fn assemble(signing_input: &str, signature_r_s: &[u8; 64]) -> String {
    let mut sig = *signature_r_s;
    to_low_s(&mut sig);
    format!("{signing_input}.{}", b64url::encode(&sig))
}

/// The order `n` of the P-256 group, big-endian.
const P256_N: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xBC, 0xE6, 0xFA,
    0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];
/// `floor(n / 2)`, big-endian: the largest low S.
const P256_HALF_N: [u8; 32] = [
    0x7F, 0xFF, 0xFF, 0xFF, 0x80, 0x00, 0x00, 0x00, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xDE, 0x73, 0x7D,
    0x56, 0xD3, 0x8B, 0xCF, 0x42, 0x79, 0xDC, 0xE5, 0x61, 0x7E, 0x31, 0x92, 0xA8,
];

/// True when the `s` half of an ES256 signature `r || s` is at most `n/2`
/// (the low-S form). `(r, s)` and `(r, n - s)` both verify, so an approval
/// would otherwise have two encodings.
pub fn is_low_s(signature_r_s: &[u8; 64]) -> bool {
    // Big-endian byte strings of one length compare as numbers.
    signature_r_s[32..] <= P256_HALF_N[..]
}

/// Rewrites a signature `r || s` into its low-S form (`s := n - s` when
/// `s > n/2`); the signature stays valid for the same message and key.
///
/// An `s` at or above `n` is not a scalar: no signature carries one (and
/// [`Verifier::verify`] refuses it), so it has no low form and is left
/// unchanged rather than wrapped around.
pub fn to_low_s(signature_r_s: &mut [u8; 64]) {
    if is_low_s(signature_r_s) || signature_r_s[32..] >= P256_N[..] {
        return;
    }
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(P256_N[i]) - i16::from(signature_r_s[32 + i]) - borrow;
        let (v, b) = if d < 0 { (d + 256, 1) } else { (d, 0) };
        signature_r_s[32 + i] = v as u8;
        borrow = b;
    }
}

/// `crit` counts as present whatever its value (`"crit": null` too).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// The protected header as read from a token. Members other than these are
/// ignored, except `crit`, which is refused (no extension is understood).
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default, deserialize_with = "present")]
    crit: Option<serde_json::Value>,
}

#[derive(Clone, Debug)]
struct UsableKey {
    alg: String,
    /// Uncompressed SEC1 point `0x04 || x || y`.
    point: Vec<u8>,
}

/// Verifies approvals offline against Sigil's published key set.
///
/// Build one per key-set refresh with [`Verifier::new`]; it is cheap to clone
/// and immutable, so it can be shared between threads.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: BTreeMap<String, UsableKey>,
    /// kid → published status, for keys that must never verify.
    unusable: BTreeMap<String, String>,
    issuer: String,
    audience: String,
    leeway: i64,
    /// The caller checks cancellations itself (Sigil, against its store).
    cancellations_elsewhere: bool,
}

/// Parses a JSON object (not an array, which serde would also map onto a
/// struct) into `T`, refusing duplicate members and trailing data.
fn json_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, String> {
    match json.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => serde_json::from_slice(json).map_err(|e| short_error(&e)),
        _ => Err("not a JSON object".to_owned()),
    }
}

fn decode_coordinate(kid: &str, name: &str, value: &str) -> Result<[u8; 32], VerifyError> {
    let bytes = b64url::decode(value).map_err(|e| {
        VerifyError::Malformed(format!("key {:?}: {name} is not unpadded base64url: {e}", excerpt(kid)))
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        VerifyError::Malformed(format!(
            "key {:?}: {name} is {} bytes, a P-256 coordinate is 32",
            excerpt(kid),
            bytes.len()
        ))
    })
}

/// The three dot-separated parts of a compact JWS, after the size check.
fn split_token(token: &str) -> Result<[&str; 3], VerifyError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(VerifyError::Malformed(format!(
            "token is {} bytes, more than the {MAX_TOKEN_LEN} accepted",
            token.len()
        )));
    }
    let parts: Vec<&str> = token.splitn(4, '.').collect();
    match parts.as_slice() {
        [header, payload, signature] => Ok([header, payload, signature]),
        _ => Err(VerifyError::Malformed(format!(
            "a compact JWS has 3 dot-separated parts, this token has {}",
            token.split('.').count()
        ))),
    }
}

fn decode_header_part(header_b64: &str) -> Result<Vec<u8>, VerifyError> {
    b64url::decode(header_b64).map_err(|e| VerifyError::Malformed(format!("header is not unpadded base64url: {e}")))
}

/// Checks the protected header (JSON object, `alg` exactly ES256, no `crit`,
/// the approval `typ`, a `kid`) and returns its `kid`.
fn check_header(header_json: &[u8], typ: &str) -> Result<String, VerifyError> {
    let header: Header = json_object(header_json)
        .map_err(|e| VerifyError::Malformed(format!("header is not a JSON object with a string alg: {e}")))?;
    if header.alg != ES256 {
        return Err(VerifyError::UnsupportedAlgorithm(excerpt(&header.alg)));
    }
    if header.crit.is_some() {
        return Err(VerifyError::Malformed(
            "header has a crit member; no JWS extension is supported".to_owned(),
        ));
    }
    match header.typ.as_deref() {
        Some(t) if t == typ => {}
        Some(other) => {
            return Err(VerifyError::Malformed(format!(
                "header typ is {:?}, expected {typ:?}",
                excerpt(other)
            )))
        }
        None => return Err(VerifyError::Malformed(format!("header has no typ, expected {typ:?}"))),
    }
    header
        .kid
        .ok_or_else(|| VerifyError::Malformed("header has no kid naming the signing key".to_owned()))
}

/// The `kid` of a JWS's protected header of type `typ`, read without a key
/// set and with the same checks [`Verifier::verify`] applies to the header
/// (size, three parts, canonical base64url, a JSON object without
/// duplicate members, `alg` ES256, no `crit`, the `typ`). Nothing is
/// verified: this only says which key the token claims, so that a caller
/// can decide which key set to verify it with.
fn header_kid(token: &str, typ: &str) -> Result<String, VerifyError> {
    let [header_b64, _, _] = split_token(token)?;
    check_header(&decode_header_part(header_b64)?, typ)
}

/// The `kid` an approval token claims ([`header_kid`]).
pub(crate) fn token_kid(token: &str) -> Result<String, VerifyError> {
    header_kid(token, APPROVAL_TYP)
}

/// The `kid` a signed cancellation list claims ([`header_kid`]).
pub(crate) fn cancellations_kid(list: &str) -> Result<String, VerifyError> {
    header_kid(list, CANCELLATIONS_TYP)
}

impl Verifier {
    /// A verifier for approvals issued by `issuer` for `audience`, signed by
    /// a key of `keys`.
    ///
    /// Keys with status `"retired"` (or any status other than `"next"`,
    /// `"active"`, `"retiring"` or none) are not loaded; a token naming one
    /// is refused with [`VerifyError::RetiredKey`]. Every other key must be
    /// `kty` `EC`, `crv` `P-256`, `alg` `ES256` (else
    /// [`VerifyError::UnsupportedAlgorithm`]), `use` `sig`, have 32-byte
    /// coordinates, and a `kid` equal to its RFC 7638 thumbprint (else
    /// [`VerifyError::Malformed`]). Duplicate `kid`s, an empty issuer or
    /// audience, and a set without any usable key are refused as
    /// [`VerifyError::Malformed`].
    pub fn new(keys: &JwkSet, issuer: &str, audience: &str) -> Result<Verifier, VerifyError> {
        if issuer.is_empty() {
            return Err(VerifyError::Malformed("the configured issuer is empty".to_owned()));
        }
        if audience.is_empty() {
            return Err(VerifyError::Malformed("the configured audience is empty".to_owned()));
        }
        let mut usable = BTreeMap::new();
        let mut unusable = BTreeMap::new();
        for jwk in &keys.keys {
            let kid = jwk.kid.as_str();
            if usable.contains_key(kid) || unusable.contains_key(kid) {
                return Err(VerifyError::Malformed(format!(
                    "the key set lists kid {:?} more than once",
                    excerpt(kid)
                )));
            }
            match jwk.status.as_deref() {
                None | Some("next" | "active" | "retiring") => {}
                Some(status) => {
                    unusable.insert(jwk.kid.clone(), excerpt(status));
                    continue;
                }
            }
            if jwk.kty != "EC" || jwk.crv != "P-256" || jwk.alg != ES256 {
                return Err(VerifyError::UnsupportedAlgorithm(format!(
                    "key {:?} has kty {:?}, crv {:?}, alg {:?} (expected EC, P-256, ES256)",
                    excerpt(kid),
                    excerpt(&jwk.kty),
                    excerpt(&jwk.crv),
                    excerpt(&jwk.alg)
                )));
            }
            if jwk.use_ != "sig" {
                return Err(VerifyError::Malformed(format!(
                    "key {:?} has use {:?}; approval keys have use \"sig\"",
                    excerpt(kid),
                    excerpt(&jwk.use_)
                )));
            }
            let x = decode_coordinate(kid, "x", &jwk.x)?;
            let y = decode_coordinate(kid, "y", &jwk.y)?;
            let thumbprint = jwk.thumbprint();
            if thumbprint != jwk.kid {
                return Err(VerifyError::Malformed(format!(
                    "key {:?}: kid is not the key's RFC 7638 thumbprint ({thumbprint})",
                    excerpt(kid)
                )));
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            usable.insert(
                jwk.kid.clone(),
                UsableKey {
                    alg: jwk.alg.clone(),
                    point,
                },
            );
        }
        if usable.is_empty() {
            return Err(VerifyError::Malformed(
                "the key set has no usable key (all retired, or empty); load Sigil's current JWKS".to_owned(),
            ));
        }
        Ok(Verifier {
            keys: usable,
            unusable,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: DEFAULT_LEEWAY,
            cancellations_elsewhere: false,
        })
    }

    /// Sets the clock leeway applied to `exp`, `nbf` and `iat` (default 30
    /// seconds). A negative value is taken as 0.
    pub fn with_leeway(mut self, seconds: i64) -> Self {
        self.leeway = seconds.max(0);
        self
    }

    /// Accepts delayed approvals from [`Verifier::verify`] and
    /// [`Verifier::verify_for`] without a cancellation list. Only for a
    /// caller that knows by other means whether an approval was cancelled:
    /// Sigil itself, which reads its store when redeeming. An engine uses
    /// [`Verifier::verify_delayed_for`] instead.
    pub fn with_cancellations_checked_elsewhere(mut self) -> Self {
        self.cancellations_elsewhere = true;
        self
    }

    /// Whether the set lists `kid`, usable or not (a retired key is known).
    pub(crate) fn knows_kid(&self, kid: &str) -> bool {
        self.keys.contains_key(kid) || self.unusable.contains_key(kid)
    }

    /// Verifies an approval token at time `now_unix` (Unix seconds) and
    /// returns its claims.
    ///
    /// Checks, in this order (the first failure is returned):
    /// 1. the token is at most 64 KiB and has three base64url parts with a
    ///    JSON header;
    /// 2. the header `alg` is exactly `ES256` (`none`, `HS256`, … are
    ///    [`VerifyError::UnsupportedAlgorithm`]); no `crit`; `typ` is
    ///    `sigil-approval+jwt`;
    /// 3. `kid` names a usable key of the set ([`VerifyError::RetiredKey`],
    ///    [`VerifyError::UnknownKey`]) whose `alg` equals the header's;
    /// 4. the ES256 signature (raw `r || s`) verifies
    ///    ([`VerifyError::BadSignature`]);
    /// 5. the claims parse; `iss` and `aud` are the configured ones;
    /// 6. `exp`, `nbf` and `iat` against `now_unix` with the leeway
    ///    ([`VerifyError::Expired`], [`VerifyError::NotYetValid`]);
    /// 7. `intent_sha256` is the digest of `intent`
    ///    ([`VerifyError::DigestMismatch`]), `act == intent.action`,
    ///    `sub == intent.user_id` and `amr` is not empty.
    ///
    /// It does not check single use: redeem `jti` with Sigil before acting.
    /// Prefer [`Verifier::verify_for`], which also compares the intent with
    /// the engine's own record.
    ///
    /// A delayed approval ([`Claims::is_delayed`]) that passes these checks
    /// (so once its `nbf` is reached; before, it is
    /// [`VerifyError::NotYetValid`]) is refused with
    /// [`VerifyError::CancellationListNeeded`]: check it with
    /// [`Verifier::verify_delayed_for`], unless the verifier was built
    /// [`with_cancellations_checked_elsewhere`](Verifier::with_cancellations_checked_elsewhere).
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Claims, VerifyError> {
        let claims = self.verify_any(token, now_unix)?;
        if claims.is_delayed() && !self.cancellations_elsewhere {
            return Err(VerifyError::CancellationListNeeded(
                "it could be cancelled until its nbf (after its iat); check it with verify_delayed_for".to_owned(),
            ));
        }
        Ok(claims)
    }

    /// The checks of [`Verifier::verify`] except the one for delayed
    /// approvals.
    fn verify_any(&self, token: &str, now_unix: i64) -> Result<Claims, VerifyError> {
        let payload = self.verified_payload(token, APPROVAL_TYP)?;
        let claims: Claims = json_object(&payload)
            .map_err(|e| VerifyError::Malformed(format!("claims do not match the approval schema: {e}")))?;
        self.check_claims(claims, now_unix)
    }

    /// Steps 1–4 of [`Verifier::verify`] for a token of header `typ`:
    /// returns the signed payload bytes.
    fn verified_payload(&self, token: &str, typ: &str) -> Result<Vec<u8>, VerifyError> {
        let [header_b64, payload_b64, signature_b64] = split_token(token)?;

        // Syntax first: all three parts must be canonical base64url.
        let header_json = decode_header_part(header_b64)?;
        let payload = b64url::decode(payload_b64)
            .map_err(|e| VerifyError::Malformed(format!("payload is not unpadded base64url: {e}")))?;
        let signature = b64url::decode(signature_b64)
            .map_err(|e| VerifyError::Malformed(format!("signature is not unpadded base64url: {e}")))?;

        let kid = check_header(&header_json, typ)?;
        let kid = kid.as_str();
        if self.unusable.contains_key(kid) {
            return Err(VerifyError::RetiredKey(kid.to_owned()));
        }
        let Some(key) = self.keys.get(kid) else {
            return Err(VerifyError::UnknownKey(excerpt(kid)));
        };
        // The algorithm is pinned by the key, not chosen by the token.
        if key.alg != ES256 {
            return Err(VerifyError::UnsupportedAlgorithm(excerpt(&key.alg)));
        }

        if signature.len() != 64 {
            return Err(VerifyError::BadSignature);
        }
        let signed_len = header_b64.len() + 1 + payload_b64.len();
        let signed = token
            .as_bytes()
            .get(..signed_len)
            .ok_or_else(|| VerifyError::Malformed("token is shorter than its parts".to_owned()))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.point)
            .verify(signed, &signature)
            .map_err(|_| VerifyError::BadSignature)?;
        // Valid, but only the low-S form is Sigil's: one approval, one token.
        if <[u8; 64]>::try_from(signature.as_slice()).is_ok_and(|s| !is_low_s(&s)) {
            return Err(VerifyError::Malformed(
                "signature has a high S value; Sigil issues only the low-S form, so this is another encoding \
                 of an approval, refused"
                    .to_owned(),
            ));
        }

        Ok(payload)
    }

    /// Steps 5–7 of [`Verifier::verify`].
    fn check_claims(&self, claims: Claims, now_unix: i64) -> Result<Claims, VerifyError> {
        if claims.iss != self.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(VerifyError::WrongAudience);
        }

        if claims.exp < claims.iat {
            return Err(VerifyError::Malformed("exp is before iat".to_owned()));
        }
        // Valid while now < exp + leeway; saturating arithmetic so that no
        // claim value can overflow.
        if now_unix.saturating_sub(self.leeway) >= claims.exp {
            return Err(VerifyError::Expired);
        }
        let late_now = now_unix.saturating_add(self.leeway);
        if claims.nbf.is_some_and(|nbf| late_now < nbf) || late_now < claims.iat {
            return Err(VerifyError::NotYetValid);
        }

        if claims.intent_sha256 != b64url::encode(&claims.intent.digest()) {
            return Err(VerifyError::DigestMismatch);
        }
        if claims.act != claims.intent.action {
            return Err(VerifyError::Malformed(
                "act claim differs from intent.action".to_owned(),
            ));
        }
        if claims.sub != claims.intent.user_id {
            return Err(VerifyError::Malformed(
                "sub claim differs from intent.user_id".to_owned(),
            ));
        }
        if claims.amr.is_empty() {
            return Err(VerifyError::Malformed(
                "amr is empty: the approval names no verified factor".to_owned(),
            ));
        }
        Ok(claims)
    }

    /// [`Verifier::verify`], then checks that the approved intent equals
    /// `expected` — the engine's own record of the action — byte for byte,
    /// field by field. The first differing field (in digest order) is named
    /// in [`VerifyError::IntentMismatch`].
    pub fn verify_for(&self, token: &str, expected: &Intent, now_unix: i64) -> Result<Claims, VerifyError> {
        let claims = self.verify(token, now_unix)?;
        same_intent(&claims, expected)?;
        Ok(claims)
    }

    /// Verifies a signed cancellation list (`ApprovalService/GetCancellations`)
    /// at `now_unix`: the checks of [`Verifier::verify`] steps 1–4 with the
    /// header `typ` `sigil-cancellations+jwt`, then `iss` and `aud`, and
    /// `iat` not in the future (beyond the leeway).
    pub fn verify_cancellations(&self, token: &str, now_unix: i64) -> Result<CancellationList, VerifyError> {
        let payload = self.verified_payload(token, CANCELLATIONS_TYP)?;
        let list: CancellationList = json_object(&payload)
            .map_err(|e| VerifyError::Malformed(format!("cancellation list does not match its schema: {e}")))?;
        if list.iss != self.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if list.aud != self.audience {
            return Err(VerifyError::WrongAudience);
        }
        if now_unix.saturating_add(self.leeway) < list.iat {
            return Err(VerifyError::Malformed(
                "the cancellation list is dated in the future; check the engine's clock".to_owned(),
            ));
        }
        Ok(list)
    }

    /// [`Verifier::verify_for`] for any approval, delayed or not: a delayed
    /// approval ([`Claims::is_delayed`]) must also be absent from
    /// `cancellations`, a signed cancellation list
    /// ([`Verifier::verify_cancellations`]) issued at or after the
    /// approval's `nbf` ([`VerifyError::CancellationListNeeded`] when it is
    /// older, [`VerifyError::Cancelled`] when it names the approval). An
    /// approval that is not delayed is checked against the list too. A list
    /// issued at or after the approval's `exp` no longer lists it, cancelled
    /// or not: the approval is then [`VerifyError::Expired`] (even within
    /// the clock leeway).
    ///
    /// The approval's own checks come first (so a delayed approval before
    /// its `nbf` is [`VerifyError::NotYetValid`]), then the list's.
    pub fn verify_delayed_for(
        &self,
        token: &str,
        expected: &Intent,
        cancellations: &str,
        now_unix: i64,
    ) -> Result<Claims, VerifyError> {
        let claims = self.verify_any(token, now_unix)?;
        same_intent(&claims, expected)?;
        let list = self.verify_cancellations(cancellations, now_unix)?;
        if let Some(nbf) = claims.nbf.filter(|_| claims.is_delayed()) {
            if list.iat < nbf {
                return Err(VerifyError::CancellationListNeeded(format!(
                    "the cancellation list was issued at {}, before the approval's nbf {nbf}; fetch a fresh one",
                    list.iat
                )));
            }
        }
        // The list names only approvals not expired at its iat: one issued
        // at or after exp says nothing about this approval (which the leeway
        // could otherwise still accept).
        if list.iat >= claims.exp {
            return Err(VerifyError::Expired);
        }
        if list.cancelled.contains(&claims.jti) {
            return Err(VerifyError::Cancelled);
        }
        Ok(claims)
    }
}

/// Refuses `claims` unless its intent equals `expected` field for field.
fn same_intent(claims: &Claims, expected: &Intent) -> Result<(), VerifyError> {
    for ((field, approved), (_, wanted)) in claims.intent.fields().into_iter().zip(expected.fields()) {
        if approved.as_bytes() != wanted.as_bytes() {
            return Err(VerifyError::IntentMismatch { field });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "sigil".into(),
            aud: "engine".into(),
            sub: "alice".into(),
            jti: "j1".into(),
            iat: 100,
            exp: 220,
            nbf: None,
            act: "withdrawal".into(),
            intent: Intent::default(),
            intent_sha256: String::new(),
            amr: vec!["hwk".into()],
            webauthn: None,
            approvers: Vec::new(),
            quorum: Vec::new(),
        }
    }

    #[test]
    fn header_is_exact_json() {
        let si = signing_input("k\"1", &claims());
        let (h, _) = si.split_once('.').unwrap();
        assert_eq!(
            String::from_utf8(b64url::decode(h).unwrap()).unwrap(),
            r#"{"alg":"ES256","kid":"k\"1","typ":"sigil-approval+jwt"}"#
        );
    }

    #[test]
    fn payload_uses_contract_claim_names() {
        let si = signing_input("k", &claims());
        let (_, p) = si.split_once('.').unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b64url::decode(p).unwrap()).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        // nbf and webauthn are omitted when absent.
        assert_eq!(
            keys,
            [
                "act",
                "amr",
                "aud",
                "exp",
                "iat",
                "intent",
                "intent_sha256",
                "iss",
                "jti",
                "sub"
            ]
        );
    }

    /// Found by fuzzing (`jws_verify`): an `s` at or above the group order
    /// used to be "normalised" into a wrapped-around value; it is left as
    /// it is. In range, `s` and `n - s` meet in one low form.
    #[test]
    fn to_low_s_leaves_non_scalars_alone() {
        for s in [[0xFF; 32], P256_N] {
            let mut sig = [0u8; 64];
            sig[32..].copy_from_slice(&s);
            let before = sig;
            to_low_s(&mut sig);
            assert_eq!(sig, before);
        }
        let mut sig = [0u8; 64];
        sig[32..].copy_from_slice(&P256_N);
        sig[63] -= 1; // n - 1
        to_low_s(&mut sig);
        let mut one = [0u8; 64];
        one[63] = 1;
        assert_eq!(sig, one);
        assert!(is_low_s(&sig));
    }

    #[test]
    fn assemble_appends_b64_signature() {
        assert_eq!(assemble("a.b", &[0u8; 64]), format!("a.b.{}", "A".repeat(86)));
    }
}
