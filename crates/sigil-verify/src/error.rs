//! The single error type of the crate.

use std::fmt;

/// Why an approval (or its WebAuthn evidence) was refused.
///
/// Every variant means "do not move funds". The [`Display`](fmt::Display)
/// text says what went wrong and what to do about it, and is safe to log: it
/// never contains a signature or more than a short excerpt of the token.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// The token, a key, or a piece of evidence is not well formed (wrong
    /// number of parts, bad base64url, not JSON, a missing or mistyped claim,
    /// inconsistent claims, a malformed key set). The text says which.
    Malformed(String),
    /// The token's header names an algorithm other than ES256 (e.g. `none`,
    /// `HS256`), or a key in the set is not an EC P-256 ES256 key.
    UnsupportedAlgorithm(String),
    /// The header's `kid` is not in the key set given to the
    /// [`Verifier`](crate::Verifier).
    UnknownKey(String),
    /// The header's `kid` names a key the set marks as retired (or with a
    /// status this version does not know, which is treated the same way).
    RetiredKey(String),
    /// The ES256 signature does not verify with the named key.
    BadSignature,
    /// The `iss` claim is not the configured issuer.
    WrongIssuer,
    /// The `aud` claim is not the configured audience.
    WrongAudience,
    /// `exp` (plus leeway) has passed.
    Expired,
    /// `nbf` or `iat` is still in the future (beyond the leeway).
    NotYetValid,
    /// `intent_sha256` is not the digest of the `intent` claim.
    DigestMismatch,
    /// The approved intent differs from the engine's own record; `field`
    /// names the first differing field in digest order.
    IntentMismatch {
        /// Name of the first differing field (an [`Intent`](crate::Intent)
        /// field name, e.g. `"amount"`).
        field: &'static str,
    },
    /// WebAuthn assertion evidence does not verify. The text says which check
    /// failed.
    BadEvidence(String),
    /// A staff quorum named in the approval is not met by approvers whose
    /// evidence verifies (or names keys that are not published). The text
    /// says which.
    QuorumNotMet(String),
    /// The signed cancellation list names this approval: it was cancelled
    /// during its delay.
    Cancelled,
    /// A delayed approval was checked without a cancellation list, or with
    /// one issued before the approval's `nbf`. The text says which.
    CancellationListNeeded(String),
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::Malformed(why) => write!(
                f,
                "approval refused: malformed input ({why}); do not retry with the same token, request a new approval"
            ),
            VerifyError::UnsupportedAlgorithm(alg) => write!(
                f,
                "approval refused: unsupported algorithm or key type: {alg}; only ES256 with an EC P-256 key from Sigil's key set is accepted"
            ),
            VerifyError::UnknownKey(kid) => write!(
                f,
                "approval refused: it names key {kid:?}, which is not in the configured key set; if Sigil has rotated keys, reload its JWKS, otherwise treat the approval as forged"
            ),
            VerifyError::RetiredKey(kid) => write!(
                f,
                "approval refused: it names key {kid:?}, which Sigil has retired; request a new approval"
            ),
            VerifyError::BadSignature => write!(
                f,
                "approval refused: the signature does not verify with the named key; the token was altered or not signed by Sigil"
            ),
            VerifyError::WrongIssuer => write!(
                f,
                "approval refused: its iss claim is not the configured issuer; check the issuer the engine is configured with, otherwise the token is not for this Sigil"
            ),
            VerifyError::WrongAudience => write!(
                f,
                "approval refused: its aud claim is not this engine's audience; the token was issued for another recipient"
            ),
            VerifyError::Expired => write!(
                f,
                "approval refused: it has expired; request a new approval (and check the engine's clock if this happens for fresh approvals)"
            ),
            VerifyError::NotYetValid => write!(
                f,
                "approval refused: it is not valid yet (nbf or iat is in the future); wait for the delay to pass, or check the engine's clock"
            ),
            VerifyError::DigestMismatch => write!(
                f,
                "approval refused: intent_sha256 is not the digest of the intent it carries; the token is inconsistent and must not be used"
            ),
            VerifyError::IntentMismatch { field } => write!(
                f,
                "approval refused: it approves a different {field} than the engine's record of this action; do not execute, request an approval for the actual action"
            ),
            VerifyError::BadEvidence(why) => write!(
                f,
                "WebAuthn evidence refused: {why}; the user's authenticator did not sign this intent"
            ),
            VerifyError::QuorumNotMet(why) => write!(
                f,
                "approval refused: its staff quorum is not met ({why}); do not execute"
            ),
            VerifyError::Cancelled => write!(
                f,
                "approval refused: it was cancelled during its delay; do not execute"
            ),
            VerifyError::CancellationListNeeded(why) => write!(
                f,
                "delayed approval refused without a cancellation list issued at or after its nbf: {why}"
            ),
        }
    }
}

impl VerifyError {
    /// The machine-readable reason Sigil gives for the same refusal (see
    /// [`Reason`](crate::Reason)).
    pub fn reason(&self) -> crate::Reason {
        use crate::Reason as R;
        match self {
            VerifyError::Expired => R::ApprovalExpired,
            VerifyError::NotYetValid => R::ApprovalNotYetValid,
            VerifyError::IntentMismatch { .. } => R::IntentMismatch,
            VerifyError::Cancelled => R::ApprovalCancelled,
            VerifyError::QuorumNotMet(_) => R::QuorumNotMet,
            VerifyError::CancellationListNeeded(_) => R::ApprovalNotYetValid,
            VerifyError::Malformed(_)
            | VerifyError::UnsupportedAlgorithm(_)
            | VerifyError::UnknownKey(_)
            | VerifyError::RetiredKey(_)
            | VerifyError::BadSignature
            | VerifyError::WrongIssuer
            | VerifyError::WrongAudience
            | VerifyError::DigestMismatch
            | VerifyError::BadEvidence(_) => R::ApprovalInvalid,
        }
    }
}

impl std::error::Error for VerifyError {}

/// `s` cut to at most `max` characters (then ending in `…`).
fn cut(s: &str, max: usize) -> String {
    let mut chars = s.chars();
    let mut head: String = chars.by_ref().take(max).collect();
    if chars.next().is_some() {
        head.push('…');
    }
    head
}

/// At most 64 characters of attacker-controlled text, for error messages.
pub(crate) fn excerpt(s: &str) -> String {
    cut(s, 64)
}

/// At most 160 characters of a message from outside the crate (e.g. a key
/// source's error), for error messages.
pub(crate) fn short_message(s: &str) -> String {
    cut(s, 160)
}

/// A library error message, cut to a length fit for a log line (such
/// messages can quote parts of the input).
pub(crate) fn short_error(e: &dyn std::error::Error) -> String {
    cut(&e.to_string(), 160)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn excerpt_truncates() {
        assert_eq!(excerpt("none"), "none");
        let long = "x".repeat(1000);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), 65, "{e}");
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(&"x".repeat(64)), "x".repeat(64));
    }

    #[test]
    fn messages_name_the_problem() {
        let m = VerifyError::IntentMismatch { field: "amount" }.to_string();
        assert!(m.contains("amount"), "{m}");
        let m = VerifyError::UnknownKey("k1".into()).to_string();
        assert!(m.contains("k1") && m.contains("JWKS"), "{m}");
        let e: Box<dyn std::error::Error> = Box::new(VerifyError::Expired);
        assert!(e.to_string().contains("expired"));
    }
}
