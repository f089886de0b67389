//! The factor service: reading a user's factors, their secrets, and
//! checking proofs against them with the attempt counting of
//! [`super::lockout`].
use std::sync::Arc;

use crate::error::Error;
use crate::kernel::Kernel;
use crate::protect::Snapshot;
use crate::store::Versioned;

use super::lockout::LockoutConfig;
use super::totp::TotpConfig;
use super::webauthn::Webauthn;
use super::{FactorRecord, TABLE};

/// The configuration sections the factor service uses.
#[derive(Debug, Clone, Default)]
pub struct FactorsConfig {
    /// Attempt counting and lockout.
    pub lockout: LockoutConfig,
    /// TOTP enrollment.
    pub totp: TotpConfig,
}

/// Factors: records, secrets and proof checks.
pub struct Factors {
    pub(crate) k: Arc<Kernel>,
    pub(crate) cfg: FactorsConfig,
    /// The WebAuthn relying party.
    pub(crate) webauthn: Webauthn,
}

impl Factors {
    /// The factor service over `k`.
    pub fn new(k: Arc<Kernel>, cfg: FactorsConfig, webauthn: Webauthn) -> Factors {
        Factors { k, cfg, webauthn }
    }

    /// A factor's secret, decrypted in the HSM with the key that wrapped it.
    pub(crate) fn factor_secret(&self, f: &FactorRecord) -> Result<crate::signer::SecretBytes, Error> {
        let wrapped = f
            .secret()
            .ok_or_else(|| Error::Internal(format!("factor '{}' has no stored secret", f.factor_id)))?;
        self.k
            .signer
            .unwrap_secret(wrapped, &secret_aad(&f.user_id, &f.factor_id))
    }

    /// The factor with its secret re-encrypted under the AES key `to`.
    pub(crate) fn rewrapped(&self, f: &FactorRecord, to: &str) -> Result<FactorRecord, Error> {
        let plain = self.factor_secret(f)?;
        let mut moved = f.clone();
        let wrapped = self
            .k
            .signer
            .wrap_with(to, &plain, &secret_aad(&f.user_id, &f.factor_id))?;
        match moved.secret_mut() {
            Some(s) => *s = wrapped,
            None => {
                return Err(Error::Internal(format!(
                    "factor '{}' has no stored secret",
                    f.factor_id
                )))
            }
        }
        Ok(moved)
    }

    /// A user's confirmed, unrevoked factors.
    pub(crate) fn live_factors(&self, user_id: &str, snap: &Snapshot) -> Result<Vec<(FactorRecord, u64)>, Error> {
        Ok(self
            .factors_of(user_id)?
            .into_iter()
            .filter(|(f, _)| f.is_active() && f.is_live(snap.epochs()))
            .collect())
    }

    /// Every factor of a user with its stored version.
    pub(crate) fn factors_of(&self, user_id: &str) -> Result<Vec<(FactorRecord, u64)>, Error> {
        self.k
            .store
            .scan_prefix(TABLE, &super::user_prefix(user_id))?
            .into_iter()
            .map(|(_, v)| Ok((FactorRecord::decode(&v)?, v.version)))
            .collect()
    }

    /// One factor of a user, or NOT_FOUND.
    pub(crate) fn factor(&self, user_id: &str, factor_id: &str) -> Result<(FactorRecord, u64), Error> {
        let v: Versioned = self
            .k
            .store
            .get(TABLE, &FactorRecord::key(user_id, factor_id))?
            .ok_or_else(|| Error::NotFound(format!("factor '{factor_id}' of user '{user_id}' not found")))?;
        Ok((FactorRecord::decode(&v)?, v.version))
    }
}

/// Additional authenticated data binding an encrypted secret to its factor.
pub(crate) fn secret_aad(user_id: &str, factor_id: &str) -> Vec<u8> {
    let mut aad = b"sigil-secret-v1\0".to_vec();
    aad.extend_from_slice(user_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(factor_id.as_bytes());
    aad
}
