//! Operations on the protections and the logs: whitelist, anti-phishing code,
//! revocation, suspension, the background sweep, the account protection
//! report, reading events and audit, archiving the audit log and keeping
//! both logs bounded (`retention`).
use std::sync::Arc;

use crate::approval::Approvals;
use crate::error::{Error, Reason};
use crate::factor::Factors;
use crate::kernel::Kernel;
use crate::protect::assets::Assets;
use crate::protect::policy::Policy;
use crate::protect::ProtectionConfig;

mod account;
mod admin;
mod logs;
mod retention;

pub use retention::{parse_duration, Pruned, RetentionConfig};

/// The configuration sections the operations use.
#[derive(Debug, Clone, Default)]
pub struct OpsConfig {
    /// Holds and locks.
    pub protection: ProtectionConfig,
    /// Assets and networks (whitelist entries).
    pub assets: Assets,
    /// Which factors approve what (for the protection report).
    pub policy: Policy,
    /// How long events are kept; how much one prune deletes.
    pub retention: RetentionConfig,
}

/// Account and operator operations: the whitelist, the anti-phishing
/// code, revocation, suspension, the background sweep, the protection
/// report, and reading events and audit.
pub struct Ops {
    pub(crate) k: Arc<Kernel>,
    pub(crate) factors: Arc<Factors>,
    pub(crate) approvals: Arc<Approvals>,
    pub(crate) cfg: OpsConfig,
}

impl Ops {
    /// The operations over the factor and approval services.
    pub fn new(k: Arc<Kernel>, factors: Arc<Factors>, approvals: Arc<Approvals>, cfg: OpsConfig) -> Ops {
        Ops {
            k,
            factors,
            approvals,
            cfg,
        }
    }
}

/// Most users one per-user revocation call may name.
pub const MAX_REVOKE_USERS: usize = 10_000;
/// Days an anti-phishing code must have been set for the protection programme.
pub const ANTI_PHISHING_MIN_DAYS: i64 = 21;

/// Who a revocation or suspension applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every user.
    All,
    /// These users.
    Users(Vec<String>),
}

/// One item of the account protection report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportItem {
    /// Stable name, e.g. `anti_phishing_code_set_21_days`.
    pub name: &'static str,
    /// Whether the condition holds.
    pub ok: bool,
    /// What it was decided on.
    pub evidence: String,
}

fn label_ok(label: &str) -> Result<(), Error> {
    if label.len() > 64 || label.chars().any(char::is_control) {
        return Err(Error::invalid("label", "at most 64 bytes, no control characters"));
    }
    Ok(())
}
