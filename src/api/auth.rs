//! Caller roles from client certificates.
//!
//! The TLS layer has already checked the certificate chains to the client
//! CA. Here the role is read from the leaf's URI SAN
//! `spiffe://sigil/role/<role>`; a certificate with no such SAN, or with
//! more than one role, has no role and can call nothing but health and
//! reflection. Before any of this, the server's deny-list guard has refused
//! a leaf on the client certificate deny-list (`crate::denylist`).
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::status::to_status;
use crate::denylist::CertId;
use crate::error::{Error, Reason};

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
    /// The staff console through which staff members approve or cancel
    /// held requests with their own security keys.
    Approver,
}

impl Role {
    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "withdrawal-engine" => Some(Role::WithdrawalEngine),
            "frontend" => Some(Role::Frontend),
            "admin" => Some(Role::Admin),
            "approver" => Some(Role::Approver),
            _ => None,
        }
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::WithdrawalEngine => "withdrawal-engine",
            Role::Frontend => "frontend",
            Role::Admin => "admin",
            Role::Approver => "approver",
        }
    }
}

/// The role in a DER certificate, if it names exactly one.
pub fn role_of_der(der: &[u8]) -> Option<Role> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    role_of_cert(&cert)
}

fn role_of_cert(cert: &X509Certificate<'_>) -> Option<Role> {
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

/// What Sigil reads from a caller's leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFacts {
    /// The role it carries, if exactly one.
    pub role: Option<Role>,
    /// Serial and key digest, for the deny-list; None if it does not parse.
    pub id: Option<CertId>,
}

impl LeafFacts {
    /// Reads a DER certificate.
    pub fn of_der(der: &[u8]) -> LeafFacts {
        match X509Certificate::from_der(der) {
            Ok((_, cert)) => LeafFacts {
                role: role_of_cert(&cert),
                id: Some(CertId::of(&cert)),
            },
            Err(_) => LeafFacts { role: None, id: None },
        }
    }
}

/// Distinct certificates remembered by [`cached_facts`]; past this the
/// memo starts again (callers are a handful of services).
const FACTS_MEMO_MAX: usize = 256;

/// [`LeafFacts::of_der`], remembered per certificate: a caller sends the
/// same certificate on every call of a connection, and parsing it costs
/// more than the rest of the role check. Keyed by the exact DER bytes, so a
/// different certificate is always parsed. Only facts of the certificate
/// are remembered, never a decision: the deny-list is matched against them
/// on every call, with the list in force at that moment.
fn cached_facts(der: &[u8]) -> Arc<LeafFacts> {
    type Memo = RwLock<HashMap<Vec<u8>, Arc<LeafFacts>>>;
    static MEMO: OnceLock<Memo> = OnceLock::new();
    let memo = MEMO.get_or_init(Default::default);
    if let Ok(m) = memo.read() {
        if let Some(f) = m.get(der) {
            return f.clone();
        }
    }
    let facts = Arc::new(LeafFacts::of_der(der));
    if let Ok(mut m) = memo.write() {
        if m.len() >= FACTS_MEMO_MAX {
            m.clear();
        }
        m.insert(der.to_vec(), facts.clone());
    }
    facts
}

/// The facts of the caller's leaf certificate (the first one the client
/// presented), from a request's extensions. The role check and the
/// server's deny-list guard both read the leaf through this.
pub fn leaf_facts(ext: &tonic::Extensions) -> Option<Arc<LeafFacts>> {
    let certs = ext.get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    certs.first().map(|c| cached_facts(c.as_ref()))
}

/// Put into a request's extensions by the server's deny-list guard once
/// the caller's certificate was checked against the list in force.
/// [`require`] refuses a call with a client certificate that lacks it, so a
/// service mounted without the guard fails closed instead of skipping the
/// deny-list.
#[derive(Debug, Clone, Copy)]
pub struct DenyListChecked;

/// Refuses the call unless the caller's certificate carries one of `allowed`.
/// `rpc` is `Service/Method`; its roles come from the one role table
/// ([`super::roles::RPC_ROLES`]). An RPC missing from the table is refused
/// (fail closed).
pub fn require<T>(req: &Request<T>, rpc: &str) -> Result<Role, Status> {
    let Some(allowed) = super::roles::allowed(rpc) else {
        tracing::error!(rpc, "an RPC has no entry in the role table");
        return Err(to_status(Error::Internal(format!(
            "{rpc} was refused: it has no entry in the role table (server misconfigured)"
        ))));
    };
    let rpc = rpc.rsplit('/').next().unwrap_or(rpc);
    let facts = leaf_facts(req.extensions());
    if facts.is_some() && req.extensions().get::<DenyListChecked>().is_none() {
        tracing::error!(rpc, "a call reached the role check without the deny-list guard");
        return Err(to_status(Error::Internal(format!(
            "{rpc} was refused: the client certificate deny-list was not checked for this call (server misconfigured)"
        ))));
    }
    let role = facts.and_then(|f| f.role);
    if let Some(r) = role.filter(|r| allowed.contains(r)) {
        return Ok(r);
    }
    let names: Vec<&str> = allowed.iter().map(|r| r.name()).collect();
    match role {
        Some(r) => Err(to_status(Error::denied(
            Reason::RoleNotAllowed,
            format!("role '{}' may not call {rpc}; allowed: {}", r.name(), names.join(", ")),
        ))),
        None => Err(to_status(Error::denied(
            Reason::RoleNotAllowed,
            format!(
                "client certificate carries no Sigil role ({ROLE_URI_PREFIX}<role>); {rpc} needs one of: {}",
                names.join(", ")
            ),
        ))),
    }
}
