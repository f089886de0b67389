//! The one place domain errors become gRPC statuses.
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// Longest message (and detail) a status carries, in bytes: far above any
/// message Sigil writes, and a safety net should input ever be echoed
/// whole (gRPC clients refuse trailers of a few KiB).
pub const MAX_MESSAGE: usize = 1024;

/// `m` cut to [`MAX_MESSAGE`] bytes at a character boundary.
fn bounded(mut m: String) -> String {
    if m.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE - 32;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        let total = m.len();
        m.truncate(end);
        m.push_str(&format!("… (message cut, {total} bytes)"));
    }
    m
}

/// Maps a domain error to a status with rich details (BadRequest naming the
/// field, RetryInfo for lockouts).
pub fn to_status(e: Error) -> Status {
    let msg = bounded(e.to_string());
    let e = match e {
        Error::InvalidArgument { field, reason } => Error::InvalidArgument {
            field: bounded(field),
            reason: bounded(reason),
        },
        other => other,
    };
    match e {
        Error::InvalidArgument { field, reason } => Status::with_error_details(
            Code::InvalidArgument,
            msg,
            ErrorDetails::with_bad_request_violation(field, reason),
        ),
        Error::NotFound(_) => Status::not_found(msg),
        Error::FailedPrecondition(_) => Status::failed_precondition(msg),
        Error::PermissionDenied(_) => Status::permission_denied(msg),
        Error::Locked { retry_after, .. } => Status::with_error_details(
            Code::ResourceExhausted,
            msg,
            ErrorDetails::with_retry_info(Some(Duration::from_secs(retry_after))),
        ),
        Error::Unavailable(_) => {
            tracing::error!(error = %msg, "refusing: dependency unavailable");
            Status::unavailable(msg)
        }
        Error::Internal(_) => {
            tracing::error!(error = %msg, "internal error");
            Status::internal(msg)
        }
    }
}
