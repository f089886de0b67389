//! Caller roles from client certificates.
//!
//! The TLS layer has already checked the certificate chains to the client
//! CA. Here the role is read from the leaf's URI SAN
//! `spiffe://sigil/role/<role>`; a certificate with no such SAN, or with
//! more than one role, has no role and can call nothing but health and
//! reflection.
use std::collections::HashMap;

use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// URI SAN prefix carrying the role.
pub const ROLE_URI_PREFIX: &str = "spiffe://sigil/role/";

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The exchange's withdrawal engine.
    WithdrawalEngine,
    /// The frontend backend relaying the user's browser.
    Frontend,
    /// Operators.
    Admin,
}

impl Role {
    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "withdrawal-engine" => Some(Role::WithdrawalEngine),
            "frontend" => Some(Role::Frontend),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::WithdrawalEngine => "withdrawal-engine",
            Role::Frontend => "frontend",
            Role::Admin => "admin",
        }
    }
}

/// The role in a DER certificate, if it names exactly one.
pub fn role_of_der(der: &[u8]) -> Option<Role> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut roles = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => u.strip_prefix(ROLE_URI_PREFIX),
        _ => None,
    });
    let first = roles.next()?;
    if roles.next().is_some() {
        return None;
    }
    Role::parse(first)
}

/// Distinct certificates remembered by [`cached_role_of_der`]; past this
/// the memo starts again (callers are a handful of services).
const ROLE_MEMO_MAX: usize = 256;

/// [`role_of_der`], remembered per certificate: a caller sends the same
/// certificate on every call of a connection, and parsing it costs more
/// than the rest of the role check. Keyed by the exact DER bytes, so a
/// different certificate is always parsed.
fn cached_role_of_der(der: &[u8]) -> Option<Role> {
    static MEMO: std::sync::OnceLock<std::sync::RwLock<HashMap<Vec<u8>, Option<Role>>>> = std::sync::OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    if let Ok(m) = memo.read() {
        if let Some(r) = m.get(der) {
            return *r;
        }
    }
    let role = role_of_der(der);
    if let Ok(mut m) = memo.write() {
        if m.len() >= ROLE_MEMO_MAX {
            m.clear();
        }
        m.insert(der.to_vec(), role);
    }
    role
}

/// Refuses the call unless the caller's certificate carries one of `allowed`.
pub fn require<T>(req: &Request<T>, rpc: &str, allowed: &[Role]) -> Result<Role, Status> {
    let role = req
        .peer_certs()
        .and_then(|certs| certs.first().and_then(|c| cached_role_of_der(c.as_ref())));
    if let Some(r) = role.filter(|r| allowed.contains(r)) {
        return Ok(r);
    }
    let names: Vec<&str> = allowed.iter().map(|r| r.name()).collect();
    match role {
        Some(r) => Err(Status::permission_denied(format!(
            "role '{}' may not call {rpc}; allowed: {}",
            r.name(),
            names.join(", ")
        ))),
        None => Err(Status::permission_denied(format!(
            "client certificate carries no Sigil role ({ROLE_URI_PREFIX}<role>); {rpc} needs one of: {}",
            names.join(", ")
        ))),
    }
}
