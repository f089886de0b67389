//! Keeping the logs bounded: the `[retention]` section and the part of the
//! sweep that prunes.
//!
//! **Audit.** The audit log is pruned only behind an archive (`sigil audit
//! archive`, [`Ops::prune_audit`]); the sweep finishes a cut an
//! interruption left.
use serde::Deserialize;

use super::*;

/// `[retention]`: how much one prune deletes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Most log entries one prune deletes (one write each).
    pub prune_batch: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { prune_batch: 10_000 }
    }
}

impl RetentionConfig {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), Error> {
        if !(100..=1_000_000).contains(&self.prune_batch) {
            return Err(Error::invalid(
                "retention.prune_batch",
                "must be between 100 and 1000000",
            ));
        }
        Ok(())
    }
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Audit entries deleted (finishing an archive cut).
    pub audit: u64,
}

impl Ops {
    /// The retention part of the sweep: finishes an interrupted audit cut.
    pub fn apply_retention(&self) -> Result<Pruned, Error> {
        let audit = self.finish_audit_prune()?;
        if audit > 0 {
            tracing::info!(audit, "logs pruned");
        }
        Ok(Pruned { audit })
    }
}
