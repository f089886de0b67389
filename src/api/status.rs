//! The one place domain errors become gRPC statuses.
//!
//! Every status Sigil returns carries a `google.rpc.ErrorInfo` with the
//! error's [`Reason`] (domain `sigil.v1`), and where it helps:
//! `google.rpc.BadRequest` naming every malformed field, and
//! `google.rpc.RetryInfo` with the `ErrorInfo` metadata `retry_at` when
//! waiting helps (lockouts, holds, time-limited locks and suspensions).
use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::error::{Error, Reason};

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

/// The gRPC code of an error.
pub fn code_of(e: &Error) -> Code {
    match e {
        Error::InvalidArgument { .. } | Error::BadRequest(_) => Code::InvalidArgument,
        Error::NotFound(_) => Code::NotFound,
        Error::FailedPrecondition(_) | Error::Conflict(_) => Code::FailedPrecondition,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::Locked { .. } => Code::ResourceExhausted,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Internal(_) => Code::Internal,
    }
}

/// Seconds from `now` until `at`, at least one.
fn wait_until(at: i64, now: i64) -> Duration {
    Duration::from_secs(at.saturating_sub(now).max(1) as u64)
}

/// Maps a domain error to a status with its details.
pub fn to_status(e: Error) -> Status {
    let msg = bounded(e.to_string());
    let code = code_of(&e);
    let reason: Reason = e.reason();
    let mut details = ErrorDetails::new();
    let mut metadata: HashMap<String, String> = HashMap::new();
    match &e {
        Error::InvalidArgument { field, reason } => {
            details.add_bad_request_violation(bounded(field.clone()), bounded(reason.clone()));
        }
        Error::BadRequest(v) => {
            let violations: Vec<FieldViolation> = v
                .iter()
                .map(|f| FieldViolation::new(bounded(f.field.clone()), bounded(f.reason.clone())))
                .collect();
            details.set_bad_request(violations);
        }
        Error::FailedPrecondition(r) | Error::PermissionDenied(r) | Error::OutOfRange(r) => {
            for (k, v) in &r.metadata {
                metadata.insert((*k).to_string(), bounded(v.clone()));
            }
            if let Some(at) = r.retry_at {
                metadata.insert("retry_at".into(), at.to_string());
                details.set_retry_info(Some(wait_until(at, r.now)));
            }
        }
        Error::Locked { retry_after, until, .. } => {
            metadata.insert("retry_at".into(), until.to_string());
            details.set_retry_info(Some(Duration::from_secs(*retry_after)));
        }
        Error::Unavailable(_) => {
            // During an outage every call is refused: one line a second,
            // with how many were left out, rather than one per call.
            if let Some(suppressed) = UNAVAILABLE_LOG.admit() {
                tracing::error!(error = %msg, suppressed, "refusing: dependency unavailable");
            }
        }
        Error::Internal(_) => {
            tracing::error!(error = %msg, "internal error");
        }
        Error::NotFound(_) | Error::Conflict(_) => {}
    }
    details.set_error_info(reason.as_str(), sigil_verify::reason::DOMAIN, metadata);
    Status::with_error_details(code, msg, details)
}

/// Admits one log line per interval and counts the rest.
struct LogLimit {
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

/// `UNAVAILABLE` refusals logged at most once a second.
static UNAVAILABLE_LOG: LogLimit = LogLimit {
    state: std::sync::Mutex::new((None, 0)),
};

impl LogLimit {
    /// `Some(lines left out since the last one)` if a line may be logged now.
    fn admit(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        match st.0 {
            Some(last) if now.duration_since(last) < std::time::Duration::from_secs(1) => {
                st.1 += 1;
                None
            }
            _ => {
                let left_out = st.1;
                *st = (Some(now), 0);
                Some(left_out)
            }
        }
    }
}

/// The refusal of a client certificate on the deny-list
/// (`UNAUTHENTICATED`, reason `CERTIFICATE_DENIED`).
pub fn certificate_denied(message: impl Into<String>) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(
        Reason::CertificateDenied.as_str(),
        sigil_verify::reason::DOMAIN,
        HashMap::new(),
    );
    Status::with_error_details(Code::Unauthenticated, bounded(message.into()), details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_refusals_are_logged_once_a_second_with_a_count_of_the_rest() {
        let l = LogLimit {
            state: std::sync::Mutex::new((None, 0)),
        };
        assert_eq!(l.admit(), Some(0));
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
        // A second later: one line, saying two were left out.
        l.state.lock().unwrap().0 = Some(std::time::Instant::now() - std::time::Duration::from_millis(1001));
        assert_eq!(l.admit(), Some(2));
        assert_eq!(l.admit(), None);
    }
    use crate::model::FieldError;

    #[test]
    fn every_status_names_its_reason_and_retry_time() {
        let st = to_status(Error::refused(Reason::AddressOnHold, "on hold").retry_at(1_000, 900));
        assert_eq!(st.code(), Code::FailedPrecondition);
        let d = st.get_error_details();
        let info = d.error_info().unwrap();
        assert_eq!(info.reason, "ADDRESS_ON_HOLD");
        assert_eq!(info.domain, "sigil.v1");
        assert_eq!(info.metadata.get("retry_at").map(String::as_str), Some("1000"));
        assert_eq!(d.retry_info().unwrap().retry_delay, Some(Duration::from_secs(100)));

        let st = to_status(Error::Locked {
            what: "factor 'f'".into(),
            retry_after: 60,
            until: 70,
        });
        assert_eq!(st.code(), Code::ResourceExhausted);
        let d = st.get_error_details();
        assert_eq!(d.error_info().unwrap().reason, "FACTOR_LOCKED");
        assert_eq!(
            d.error_info().unwrap().metadata.get("retry_at").map(String::as_str),
            Some("70")
        );
        assert_eq!(d.retry_info().unwrap().retry_delay, Some(Duration::from_secs(60)));

        let st = to_status(Error::Conflict("changed".into()));
        assert_eq!(st.get_error_details().error_info().unwrap().reason, "CONCURRENT_CHANGE");
    }

    #[test]
    fn several_bad_fields_are_all_listed() {
        let e = Error::check_all(vec![FieldError::new("a", "x"), FieldError::new("b", "y")]).unwrap_err();
        let st = to_status(e);
        assert_eq!(st.code(), Code::InvalidArgument);
        let d = st.get_error_details();
        let fields: Vec<String> = d
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(fields, ["a", "b"]);
        assert_eq!(d.error_info().unwrap().reason, "INVALID_ARGUMENT");
    }

    /// `proto/` documents every reason, and names no reason that does
    /// not exist, in its table and in each RPC's `Reasons:` line.
    #[test]
    fn the_proto_documents_every_reason() {
        let proto = include_str!("../../proto/sigil/v1/sigil.proto");
        for r in Reason::ALL {
            let row = format!("//   {} ", r.as_str());
            assert!(proto.contains(&row), "proto error table lacks {}", r.as_str());
        }
        let mut listed = 0;
        let mut text = proto;
        while let Some(i) = text.find("// Reasons: ") {
            let rest = &text[i + "// Reasons: ".len()..];
            let end = rest.find('.').unwrap();
            for name in rest[..end].split(|c: char| !(c.is_ascii_uppercase() || c == '_')) {
                if name.len() > 3 && name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    assert!(Reason::parse(name).is_some(), "proto names unknown reason {name}");
                    listed += 1;
                }
            }
            text = &rest[end..];
        }
        assert!(listed > 50, "only {listed} reasons listed per RPC");
    }
}
