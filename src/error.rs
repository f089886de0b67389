//! The domain's one error type.
//!
//! Every refusal Sigil makes is one of these variants, and every refusal of
//! state carries a machine-readable [`Reason`] (shared with the verifier
//! crate). They are mapped to gRPC statuses — code, `ErrorInfo`,
//! `RetryInfo`, `BadRequest` — in exactly one place, `api::status`.
//! Messages are written for the person reading them and never carry a
//! secret.
use std::fmt;

pub use crate::model::{excerpt, FieldError, EXCERPT_CHARS};
pub use sigil_verify::Reason;

/// A refusal of the current state: why (machine-readable), what to do
/// (for a person), and when trying again may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The stable reason (`ErrorInfo.reason`).
    pub reason: Reason,
    /// The message for a person.
    pub message: String,
    /// When retrying may succeed (Unix seconds), where waiting helps.
    pub retry_at: Option<i64>,
    /// The service clock when the refusal was made (for the RetryInfo
    /// delay, `retry_at - now`).
    pub now: i64,
    /// Further `ErrorInfo` metadata (e.g. `field`, `attempts_left`).
    pub metadata: Vec<(&'static str, String)>,
}

/// Everything that can go wrong in a Sigil operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A request field is malformed. `field` names it (proto field path).
    InvalidArgument {
        /// The offending field, e.g. `intent.amount`.
        field: String,
        /// What is wrong with it and what is expected.
        reason: String,
    },
    /// Several request fields are malformed; every one is listed.
    BadRequest(Vec<FieldError>),
    /// The named thing (challenge, factor, approval) does not exist.
    NotFound(String),
    /// The request is well formed but the current state refuses it
    /// (expired, already used, suspended, on hold, ...): `FAILED_PRECONDITION`.
    FailedPrecondition(Refusal),
    /// The caller may not do this (wrong role, a wrong proof, another
    /// user's challenge, an approval that does not verify): `PERMISSION_DENIED`.
    PermissionDenied(Refusal),
    /// What the request asks for lies outside what the service still
    /// holds (a log position before the pruned part): `OUT_OF_RANGE`.
    OutOfRange(Refusal),
    /// Too many failed attempts: the factor is locked for `retry_after`
    /// more seconds.
    Locked {
        /// What is locked, for the message.
        what: String,
        /// Seconds until the next attempt is allowed.
        retry_after: u64,
        /// When the lock ends (Unix seconds, service clock).
        until: i64,
    },
    /// A record changed while the operation ran; nothing was written.
    Conflict(String),
    /// A dependency Sigil needs to approve safely (HSM, store, clock) is not
    /// available. Sigil fails closed.
    Unavailable(String),
    /// A stored record cannot be read or a conditional write keeps
    /// conflicting. Nothing was approved.
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Every violation in `v` at once (one becomes [`Error::InvalidArgument`]);
    /// `Ok` when there is none.
    pub fn check_all(mut v: Vec<FieldError>) -> Result<(), Error> {
        match v.len() {
            0 => Ok(()),
            1 => {
                let f = v.remove(0);
                Err(Error::invalid(f.field, f.reason))
            }
            _ => Err(Error::BadRequest(v)),
        }
    }

    /// A refusal of the current state ([`Error::FailedPrecondition`]).
    pub fn refused(reason: Reason, message: impl Into<String>) -> Self {
        Error::FailedPrecondition(Refusal {
            reason,
            message: message.into(),
            retry_at: None,
            now: 0,
            metadata: Vec::new(),
        })
    }

    /// A refusal of the caller ([`Error::PermissionDenied`]).
    pub fn denied(reason: Reason, message: impl Into<String>) -> Self {
        Error::PermissionDenied(Refusal {
            reason,
            message: message.into(),
            retry_at: None,
            now: 0,
            metadata: Vec::new(),
        })
    }

    /// A request outside what the service holds ([`Error::OutOfRange`]).
    pub fn out_of_range(reason: Reason, message: impl Into<String>) -> Self {
        Error::OutOfRange(Refusal {
            reason,
            message: message.into(),
            retry_at: None,
            now: 0,
            metadata: Vec::new(),
        })
    }

    /// The refusal with the time at which retrying may succeed, decided
    /// at `now` (both by the service clock).
    pub fn retry_at(mut self, at: i64, now: i64) -> Self {
        if let Error::FailedPrecondition(r) | Error::PermissionDenied(r) | Error::OutOfRange(r) = &mut self {
            r.retry_at = Some(at);
            r.now = now;
        }
        self
    }

    /// The refusal with one more `ErrorInfo` metadata entry.
    pub fn with_meta(mut self, key: &'static str, value: impl Into<String>) -> Self {
        if let Error::FailedPrecondition(r) | Error::PermissionDenied(r) | Error::OutOfRange(r) = &mut self {
            r.metadata.push((key, value.into()));
        }
        self
    }

    /// The machine-readable reason of this error.
    pub fn reason(&self) -> Reason {
        match self {
            Error::InvalidArgument { .. } | Error::BadRequest(_) => Reason::InvalidArgument,
            Error::NotFound(_) => Reason::NotFound,
            Error::FailedPrecondition(r) | Error::PermissionDenied(r) | Error::OutOfRange(r) => r.reason,
            Error::Locked { .. } => Reason::FactorLocked,
            Error::Conflict(_) => Reason::ConcurrentChange,
            Error::Unavailable(_) => Reason::Unavailable,
            Error::Internal(_) => Reason::Internal,
        }
    }
}

impl From<FieldError> for Error {
    fn from(f: FieldError) -> Self {
        Error::InvalidArgument {
            field: f.field,
            reason: f.reason,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { field, reason } => write!(f, "{field}: {reason}"),
            Error::BadRequest(v) => {
                let parts: Vec<String> = v.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect();
                f.write_str(&parts.join("; "))
            }
            Error::FailedPrecondition(r) | Error::PermissionDenied(r) | Error::OutOfRange(r) => f.write_str(&r.message),
            Error::NotFound(m) | Error::Conflict(m) | Error::Unavailable(m) | Error::Internal(m) => f.write_str(m),
            Error::Locked { what, retry_after, .. } => {
                write!(f, "{what} is locked after repeated failures; retry in {retry_after} s")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<sigil_hsm::HsmError> for Error {
    fn from(e: sigil_hsm::HsmError) -> Self {
        use sigil_hsm::HsmError as H;
        match e {
            H::Crypto(m) => Error::Internal(format!("HSM refused a cryptographic operation: {m}")),
            H::Unavailable(m) => Error::Unavailable(format!("HSM unavailable, nothing was approved: {m}")),
            H::KeyNotFound(m) => Error::Unavailable(format!("HSM key missing, nothing was approved: {m}")),
            other => Error::Unavailable(format!("HSM unavailable, nothing was approved: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_violations_are_kept_together() {
        assert!(Error::check_all(vec![]).is_ok());
        let one = Error::check_all(vec![FieldError::new("a", "x")]).unwrap_err();
        assert_eq!(one, Error::invalid("a", "x"));
        let two = Error::check_all(vec![FieldError::new("a", "x"), FieldError::new("b", "y")]).unwrap_err();
        assert_eq!(two.to_string(), "a: x; b: y");
        assert_eq!(two.reason(), Reason::InvalidArgument);
    }

    #[test]
    fn refusals_carry_their_reason_and_retry_time() {
        let e = Error::refused(Reason::AddressOnHold, "on hold").retry_at(42, 40);
        assert_eq!(e.reason(), Reason::AddressOnHold);
        assert_eq!(e.to_string(), "on hold");
        match e {
            Error::FailedPrecondition(r) => assert_eq!(r.retry_at, Some(42)),
            other => panic!("{other:?}"),
        }
    }
}
