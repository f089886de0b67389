//! The one place domain errors become gRPC statuses.
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// Maps a domain error to a status with rich details (BadRequest naming the
/// field, RetryInfo for lockouts).
pub fn to_status(e: Error) -> Status {
    let msg = e.to_string();
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
