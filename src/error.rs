//! The domain's one error type.
//!
//! Every refusal Sigil makes is one of these variants. They are mapped to
//! gRPC statuses in exactly one place, `api::status`. Messages are written
//! for the person reading them and never carry a secret.
use std::fmt;

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
    /// The named thing (challenge, factor, approval) does not exist.
    NotFound(String),
    /// The request is well formed but the current state refuses it
    /// (expired, already used, no active factor, ...).
    FailedPrecondition(String),
    /// The caller may not do this (wrong role, another user's challenge,
    /// an approval whose signature does not verify).
    PermissionDenied(String),
    /// Too many failed attempts: the factor is locked for `retry_after`
    /// more seconds.
    Locked {
        /// What is locked, for the message.
        what: String,
        /// Seconds until the next attempt is allowed.
        retry_after: u64,
    },
    /// A dependency Sigil needs to approve safely (HSM, store, clock) is not
    /// available. Sigil fails closed.
    Unavailable(String),
    /// A stored record cannot be read or a conditional write keeps
    /// conflicting. Nothing was approved.
    Internal(String),
}

/// Longest piece of caller input echoed in a message, in characters.
pub const EXCERPT_CHARS: usize = 64;

/// A caller-supplied value as it may be echoed in a message: control
/// characters escaped, at most [`EXCERPT_CHARS`] characters, with the
/// whole length said when it was cut. Never echo input without it.
pub fn excerpt(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(EXCERPT_CHARS)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if s.chars().count() > EXCERPT_CHARS {
        out.push_str(&format!("… ({} bytes in all)", s.len()));
    }
    out
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument { field, reason } => write!(f, "{field}: {reason}"),
            Error::NotFound(m)
            | Error::FailedPrecondition(m)
            | Error::PermissionDenied(m)
            | Error::Unavailable(m)
            | Error::Internal(m) => f.write_str(m),
            Error::Locked { what, retry_after } => {
                write!(f, "{what} is locked after repeated failures; retry in {retry_after} s")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Conflict => {
                Error::FailedPrecondition("the record changed concurrently; nothing was written, retry".into())
            }
            crate::store::StoreError::Unavailable(m) => Error::Unavailable(format!("store unavailable: {m}")),
            crate::store::StoreError::Corrupt(m) => Error::Internal(format!("store data unusable: {m}")),
        }
    }
}

impl From<sigil_hsm::HsmError> for Error {
    fn from(e: sigil_hsm::HsmError) -> Self {
        use sigil_hsm::HsmError as H;
        match e {
            H::Crypto(m) => Error::Internal(format!("HSM refused a cryptographic operation: {m}")),
            other => Error::Unavailable(format!("HSM unavailable, nothing was approved: {other}")),
        }
    }
}
