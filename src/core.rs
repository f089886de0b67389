//! The service core: configuration, store, HSM signer and clock together.
//!
//! Operations are synchronous (they block on the HSM and on durable
//! writes); the gRPC layer runs them on blocking threads. Nothing here knows
//! about tonic or protobuf.
use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};

use crate::clock::Clock;
use crate::config::Config;
use crate::error::Error;
use crate::factor::{self, FactorRecord};
use crate::signer::Signer;
use crate::store::{Store, Versioned};

/// One Sigil instance.
pub struct Sigil {
    pub(crate) cfg: Config,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) signer: Signer,
    pub(crate) clock: Arc<dyn Clock>,
    rng: SystemRandom,
}

impl Sigil {
    /// Assembles a Sigil from its parts.
    pub fn new(cfg: Config, store: Arc<dyn Store>, signer: Signer, clock: Arc<dyn Clock>) -> Sigil {
        Sigil {
            cfg,
            store,
            signer,
            clock,
            rng: SystemRandom::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The signer (keys, JWKS).
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn now(&self) -> Result<i64, Error> {
        self.clock.now()
    }

    /// `n` random bytes from the operating system's CSPRNG.
    pub(crate) fn random(&self, n: usize) -> Result<Vec<u8>, Error> {
        let mut b = vec![0u8; n];
        self.rng
            .fill(&mut b)
            .map_err(|_| Error::Unavailable("the system random generator failed".into()))?;
        Ok(b)
    }

    /// A random id with a readable prefix: `prefix` + 22 base64url chars.
    pub(crate) fn new_id(&self, prefix: &str) -> Result<String, Error> {
        Ok(format!(
            "{prefix}{}",
            sigil_verify::b64url::encode(&self.random(16)?)
        ))
    }

    /// Every factor of a user with its stored version.
    pub(crate) fn factors_of(&self, user_id: &str) -> Result<Vec<(FactorRecord, u64)>, Error> {
        self.store
            .scan_prefix(factor::TABLE, &factor::user_prefix(user_id))?
            .into_iter()
            .map(|(_, v)| Ok((FactorRecord::decode(&v)?, v.version)))
            .collect()
    }

    /// One factor of a user, or NOT_FOUND.
    pub(crate) fn factor(
        &self,
        user_id: &str,
        factor_id: &str,
    ) -> Result<(FactorRecord, u64), Error> {
        let v: Versioned = self
            .store
            .get(factor::TABLE, &FactorRecord::key(user_id, factor_id))?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "factor '{factor_id}' of user '{user_id}' not found"
                ))
            })?;
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
