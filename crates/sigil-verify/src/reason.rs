//! Why Sigil refused a call: the stable, machine-readable reasons.
//!
//! Every error Sigil returns over gRPC carries a `google.rpc.ErrorInfo`
//! detail whose `reason` is one of these names (domain [`DOMAIN`]), so a
//! client tells "address on hold" from "approval already redeemed" without
//! reading English. Where waiting helps, the status also carries
//! `google.rpc.RetryInfo` and the `ErrorInfo` metadata key `retry_at`
//! (Unix seconds). Names never change meaning; new ones may be added, so a
//! client treats an unknown name by its gRPC code.
//!
//! [`VerifyError::reason`](crate::VerifyError::reason) gives the same names
//! for refusals made offline by this crate.

use std::fmt;

/// The `ErrorInfo.domain` of every Sigil error.
pub const DOMAIN: &str = "sigil.v1";

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal ),+ $(,)?) => {
        /// A machine-readable reason for a refusal (see the [module
        /// docs](self)). [`Reason::as_str`] is the `ErrorInfo.reason` text.
        #[non_exhaustive]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )+
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[ $( Reason::$variant, )+ ];

            /// The stable name sent as `ErrorInfo.reason`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Reason::$variant => $name, )+
                }
            }
        }
    };
}

reasons! {
    /// One or more request fields are malformed (`BadRequest` names each).
    InvalidArgument = "INVALID_ARGUMENT",
    /// The named challenge, factor, address or approval does not exist.
    NotFound = "NOT_FOUND",
    /// The HSM, the store or the clock cannot serve: nothing was approved
    /// or changed. Retry later (another replica may serve).
    Unavailable = "UNAVAILABLE",
    /// A record changed while the call ran (a concurrent call won); nothing
    /// was written. Read again and retry.
    ConcurrentChange = "CONCURRENT_CHANGE",
    /// A stored record cannot be read. Operators must look.
    Internal = "INTERNAL",
    /// The client certificate's role may not call this RPC.
    RoleNotAllowed = "ROLE_NOT_ALLOWED",
    /// The client certificate is on the server's deny-list.
    CertificateDenied = "CERTIFICATE_DENIED",

    /// The challenge expired before it was answered: begin a new approval.
    ChallengeExpired = "CHALLENGE_EXPIRED",
    /// The challenge was already answered (it answers once): begin a new
    /// approval.
    ChallengeAlreadyAnswered = "CHALLENGE_ALREADY_ANSWERED",
    /// The challenge was issued to another user.
    ChallengeNotForUser = "CHALLENGE_NOT_FOR_USER",
    /// The challenge, approval or enrollment predates a restore from backup
    /// (or a revocation of the user's factors) and is dead.
    Superseded = "SUPERSEDED",

    /// The approval's `exp` has passed: request a new one.
    ApprovalExpired = "APPROVAL_EXPIRED",
    /// The approval's `nbf`/`iat` is in the future.
    ApprovalNotYetValid = "APPROVAL_NOT_YET_VALID",
    /// The approval was already redeemed (by a call with another
    /// idempotency key, or with none).
    ApprovalAlreadyRedeemed = "APPROVAL_ALREADY_REDEEMED",
    /// The approval's factors were revoked after it was issued.
    ApprovalRevoked = "APPROVAL_REVOKED",
    /// This deployment never issued the approval.
    ApprovalUnknown = "APPROVAL_UNKNOWN",
    /// The approval does not verify: signature, key, algorithm, issuer,
    /// audience, digest or form. Never retry with the same token.
    ApprovalInvalid = "APPROVAL_INVALID",
    /// The approved intent differs from the withdrawal presented
    /// (`ErrorInfo.metadata.field` names the first differing field).
    IntentMismatch = "INTENT_MISMATCH",
    /// The call needs a step-up approval of another action or user than
    /// the one given, or none was given.
    StepUpRequired = "STEP_UP_REQUIRED",

    /// The user has no active factor that may answer (none enrolled, none
    /// of the kinds policy allows, or only one suspected cloned).
    NoUsableFactor = "NO_USABLE_FACTOR",
    /// Policy does not let this kind of factor answer this challenge.
    FactorNotAllowed = "FACTOR_NOT_ALLOWED",
    /// The proof was wrong (code, assertion, OTP, HMAC response); the
    /// attempt counted (`ErrorInfo.metadata.attempts_left`).
    FactorRejected = "FACTOR_REJECTED",
    /// Too many failed attempts: refused unchecked until `retry_at`.
    FactorLocked = "FACTOR_LOCKED",
    /// The factor is pending (not confirmed) or not in the state the call
    /// needs (already active, already confirmed).
    FactorState = "FACTOR_STATE",
    /// The factor was revoked: enroll again.
    FactorRevoked = "FACTOR_REVOKED",
    /// The authenticator's counter went backwards: the factor answers
    /// nothing until it is enrolled again.
    FactorSuspectedCloned = "FACTOR_SUSPECTED_CLONED",
    /// The credential or YubiKey is already enrolled (for this or another
    /// user).
    AlreadyEnrolled = "ALREADY_ENROLLED",
    /// The enrollment was not confirmed in time: begin it again.
    EnrollmentExpired = "ENROLLMENT_EXPIRED",
    /// The user already holds as many factors as the service allows
    /// (`[protection] max_factors_per_user`): remove one first.
    TooManyFactors = "TOO_MANY_FACTORS",
    /// The security key's model or attestation is not accepted by the
    /// WebAuthn policy.
    AuthenticatorNotAllowed = "AUTHENTICATOR_NOT_ALLOWED",

    /// Approvals are suspended, for everyone or for this user (`retry_at`
    /// when the suspension has an end).
    Suspended = "SUSPENDED",
    /// Withdrawals are locked for a while after a security change
    /// (`retry_at`).
    SecurityChangeLock = "SECURITY_CHANGE_LOCK",
    /// The destination is not on the user's withdrawal whitelist.
    AddressNotWhitelisted = "ADDRESS_NOT_WHITELISTED",
    /// The destination was added recently and is in its hold (`retry_at`).
    AddressOnHold = "ADDRESS_ON_HOLD",
    /// The address is already on the whitelist.
    AddressAlreadyWhitelisted = "ADDRESS_ALREADY_WHITELISTED",
    /// A policy rule refuses this request (device signals, app attestation,
    /// amount or velocity rule).
    PolicyRefused = "POLICY_REFUSED",

    /// An approval-key rotation is already pending (`retry_at` when the
    /// next key becomes active).
    RotationPending = "ROTATION_PENDING",
    /// The operation needs something this server does not have (for
    /// example a deny-list to reload).
    NotConfigured = "NOT_CONFIGURED",

    /// What was asked for was pruned from its log: events past retention,
    /// or audit entries archived (`ErrorInfo.metadata.pruned_through`
    /// names the last entry gone). An event consumer resumes only by
    /// accepting the gap, after that cursor.
    Pruned = "PRUNED",
    /// No signed audit checkpoint covers the entry where an archive was
    /// cut: have one signed there first.
    AuditNotCheckpointed = "AUDIT_NOT_CHECKPOINTED",
    /// The chain hash an archive gives for its cut is not the live log's:
    /// the archive is not of this log (or was altered). Nothing was pruned.
    AuditChainMismatch = "AUDIT_CHAIN_MISMATCH",

    /// The approval or request was cancelled during its delay or while it
    /// waited for its quorum.
    ApprovalCancelled = "APPROVAL_CANCELLED",
    /// The staff quorum an approval names is not met.
    QuorumNotMet = "QUORUM_NOT_MET",
    /// This staff member may not take this decision: not among the rule's
    /// approvers, approving their own withdrawal or proposal, or already
    /// counted.
    StaffNotAllowed = "STAFF_NOT_ALLOWED",
    /// The quorum request waited longer than allowed and was cancelled, or
    /// its delay is over and it can no longer be cancelled.
    RequestClosed = "REQUEST_CLOSED",
}

impl Reason {
    /// The reason named `s` (`ErrorInfo.reason`), if this version knows it.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_screaming_snake_case_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let s = r.as_str();
            assert!(seen.insert(s), "duplicate reason name {s}");
            assert!(s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{s}");
            assert_eq!(Reason::parse(s), Some(*r));
        }
        assert_eq!(Reason::parse("address_on_hold"), None);
    }
}
