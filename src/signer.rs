//! Everything Sigil does with the HSM: approval signing keys (published as a
//! JWK Set), JWS signing, and encryption of factor secrets.
//!
//! The PKCS#11 work (sessions, reconnects) lives in the `sigil-hsm` crate;
//! this module decides which keys are used for what. All calls block: run
//! them on blocking threads.
use std::path::PathBuf;
use std::time::Instant;

use secrecy::SecretString;
use sigil_hsm::{Hsm, HsmConfig, HsmError};
use sigil_verify::{Claims, Jwk, JwkSet, Verifier};
use zeroize::Zeroizing;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::metrics::{self, HsmOutcome};

/// What the signer needs from the configuration: `[hsm]`, and the issuer,
/// audience and leeway of approvals.
#[derive(Debug, Clone)]
pub struct SignerSettings {
    /// `[hsm]`.
    pub hsm: HsmSection,
    /// `iss` of approvals.
    pub issuer: String,
    /// `aud` of approvals.
    pub audience: String,
    /// Clock leeway when Sigil verifies approvals, seconds.
    pub leeway_seconds: i64,
}

/// A secret encrypted by an HSM key. Names the key that wrapped it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedSecret {
    /// Label of the HSM AES key.
    pub key_label: String,
    /// base64url of IV || ciphertext || tag.
    pub blob: String,
}

impl std::fmt::Debug for WrappedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrappedSecret")
            .field("key_label", &self.key_label)
            .finish_non_exhaustive()
    }
}

/// Prefix of the labels of approval-signing keys on the token.
pub const APPROVAL_KEY_PREFIX: &str = "sigil-approval";

/// Approval keys and the secrets key, on one token.
pub struct Signer {
    hsm: Hsm,
    view: std::sync::RwLock<std::sync::Arc<KeyView>>,
    issuer: String,
    audience: String,
    leeway: i64,
    secrets_label: std::sync::RwLock<String>,
    audit_label: String,
    audit_jwk: Jwk,
}

/// The approval keys in force: which one signs, and the published set.
#[derive(Debug, Clone)]
pub struct KeyView {
    /// HSM label of the signing key.
    pub active_label: String,
    /// Its kid.
    pub active_kid: String,
    /// The published set (keys with their `status`).
    pub jwks: JwkSet,
    /// A verifier over the published set.
    pub verifier: Verifier,
}

/// One approval key and its life-cycle state, as the key ring holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    /// HSM label.
    pub label: String,
    /// `next`, `active` or `retiring` (retired keys are not published).
    pub status: String,
}

/// Resolves the PKCS#11 module: configured, else SoftHSM2.
pub fn module_path(cfg: &HsmSection) -> PathBuf {
    if cfg.module.as_os_str().is_empty() {
        sigil_hsm::softhsm_module_path()
    } else {
        cfg.module.clone()
    }
}

/// Reads the HSM user PIN: from the configured environment variable, else
/// from the configured file. The PIN is never logged.
pub fn read_pin(cfg: &HsmSection) -> Result<SecretString, Error> {
    if let Ok(pin) = std::env::var(&cfg.pin_env) {
        if !pin.is_empty() {
            return Ok(SecretString::from(pin));
        }
    }
    let text = std::fs::read_to_string(&cfg.pin_file).map_err(|e| {
        Error::Unavailable(format!(
            "no HSM PIN: set {} or create {} ({e}); `make hsm` creates it for development",
            cfg.pin_env,
            cfg.pin_file.display()
        ))
    })?;
    Ok(SecretString::from(text.trim().to_string()))
}

impl Signer {
    /// Opens the token and loads the public halves of every approval key.
    pub fn open(cfg: impl Into<SignerSettings>, pin: SecretString) -> Result<Signer, Error> {
        let cfg: SignerSettings = cfg.into();
        let hsm = Hsm::open(&HsmConfig {
            module: module_path(&cfg.hsm),
            token_label: cfg.hsm.token_label.clone(),
            pin,
            pool_size: cfg.hsm.pool_size,
        })?;
        Signer::with_hsm(cfg, hsm)
    }

    /// Builds the signer over an opened HSM.
    pub fn with_hsm(cfg: impl Into<SignerSettings>, hsm: Hsm) -> Result<Signer, Error> {
        let cfg: SignerSettings = cfg.into();
        // The configured key is the first approval key. Once rotations have
        // happened the stored key ring says which keys are in force (and the
        // first one may be retired and destroyed): see `Keys::sync_keys`.
        let active_label = cfg.hsm.approval_key_label.clone();
        let configured_present = timed("key_exists", || hsm.key_exists(&active_label))?;
        let audit_label = cfg.hsm.audit_key_label.clone();
        let apk = timed("public_key", || hsm.ec_public_key(&audit_label)).map_err(|e| {
            Error::Unavailable(format!(
                "audit key '{audit_label}' unusable: {e} (on a new installation `make hsm` (or `sigil hsm init`) creates it; if it existed before, restore it from the HSM's backup instead of creating another)"
            ))
        })?;
        let audit_jwk = Jwk::from_p256_point(&apk.x, &apk.y);
        let signer = Signer {
            hsm,
            view: std::sync::RwLock::new(std::sync::Arc::new(KeyView {
                active_label: String::new(),
                active_kid: String::new(),
                jwks: JwkSet::default(),
                verifier: Verifier::new(
                    &JwkSet {
                        keys: vec![audit_jwk.clone()],
                    },
                    &cfg.issuer,
                    &cfg.audience,
                )
                .map_err(|e| Error::Internal(e.to_string()))?,
            })),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_seconds,
            secrets_label: std::sync::RwLock::new(cfg.hsm.secrets_key_label.clone()),
            audit_label,
            audit_jwk,
        };
        if configured_present {
            signer.publish(&[PublishedKey {
                label: active_label,
                status: "active".into(),
            }])?;
        } else {
            signer.declare_required_keys();
        }
        Ok(signer)
    }

    /// Replaces the published keys (the key ring's non-retired keys); the
    /// one with status `active` signs from now on.
    pub fn publish(&self, keys: &[PublishedKey]) -> Result<(), Error> {
        let mut jwks = JwkSet::default();
        let mut active = None;
        for k in keys {
            let pk = timed("public_key", || self.hsm.ec_public_key(&k.label))?;
            let mut jwk = Jwk::from_p256_point(&pk.x, &pk.y);
            jwk.status = Some(k.status.clone());
            if k.status == "active" {
                active = Some((k.label.clone(), jwk.kid.clone()));
            }
            jwks.keys.push(jwk);
        }
        let (active_label, active_kid) =
            active.ok_or_else(|| Error::Internal("the key ring has no active approval key".into()))?;
        let verifier = Verifier::new(&jwks, &self.issuer, &self.audience)
            .map_err(|e| Error::Internal(format!("published keys do not form a valid key set: {e}")))?
            .with_leeway(self.leeway);
        let view = std::sync::Arc::new(KeyView {
            active_label,
            active_kid,
            jwks,
            verifier,
        });
        let mut w = self
            .view
            .write()
            .map_err(|_| Error::Internal("key view lock poisoned".into()))?;
        *w = view;
        drop(w);
        self.declare_required_keys();
        Ok(())
    }

    /// Tells the HSM handle which keys serving needs (the active approval
    /// key, the audit key, the secrets key): its readiness probe checks
    /// them, and one of them vanishing is an outage rather than a missing
    /// key.
    fn declare_required_keys(&self) {
        let view = self.keys();
        let secrets = self.secrets_label();
        let mut signing = vec![self.audit_label.as_str()];
        if !view.active_label.is_empty() {
            signing.push(view.active_label.as_str());
        }
        self.hsm.set_required_keys(&signing, &[secrets.as_str()]);
    }

    /// Whether the HSM can serve now: the token answers and holds every
    /// key serving needs (a readiness check; see [`sigil_hsm::Hsm::probe`]).
    pub fn ready(&self) -> Result<(), Error> {
        Ok(self.hsm.probe()?)
    }

    /// The keys in force (a consistent snapshot).
    pub fn keys(&self) -> std::sync::Arc<KeyView> {
        match self.view.read() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The published key set.
    pub fn jwks(&self) -> JwkSet {
        self.keys().jwks.clone()
    }

    /// A verifier over the published keys, for Sigil's own checks: it
    /// accepts delayed approvals without a cancellation list, because
    /// Sigil reads cancellations (and `nbf`) from its store when it
    /// redeems.
    pub fn verifier(&self) -> Verifier {
        self.keys().verifier.clone().with_cancellations_checked_elsewhere()
    }

    /// `kid` of the key that signs new approvals.
    pub fn active_kid(&self) -> String {
        self.keys().active_kid.clone()
    }

    /// Signs claims as a compact JWS with the active key, inside the HSM.
    /// Returns the token and the kid that signed it.
    pub fn sign(&self, claims: &Claims) -> Result<(String, String), Error> {
        let keys = self.keys();
        let input = sigil_verify::signing_input(&keys.active_kid, claims);
        let sig = timed("sign_approval", || {
            self.hsm.sign_es256(&keys.active_label, input.as_bytes())
        })?;
        Ok((sigil_verify::assemble(&input, &sig), keys.active_kid.clone()))
    }

    /// Signs a cancellation list as a compact JWS (`typ`
    /// `sigil-cancellations+jwt`) with the active approval key, inside the
    /// HSM.
    pub fn sign_cancellations(&self, list: &sigil_verify::CancellationList) -> Result<String, Error> {
        let keys = self.keys();
        let input = sigil_verify::cancellations_signing_input(&keys.active_kid, list);
        let sig = timed("sign_cancellations", || {
            self.hsm.sign_es256(&keys.active_label, input.as_bytes())
        })?;
        Ok(sigil_verify::assemble(&input, &sig))
    }

    /// The audit checkpoint key (public half, as a JWK).
    pub fn audit_jwk(&self) -> &Jwk {
        &self.audit_jwk
    }

    /// Signs with the audit key, inside the HSM.
    ///
    /// The approval key signs approvals only: raw signing with it
    /// (`sign_raw`, the benchmarks' reference) exists only with the cargo
    /// feature `bench`, so this does not compile in a normal build:
    ///
    /// ```compile_fail
    /// fn raw(s: &sigil::signer::Signer) {
    ///     let _ = s.sign_raw(b"anything");
    /// }
    /// ```
    pub fn sign_audit(&self, message: &[u8]) -> Result<[u8; 64], Error> {
        Ok(timed("sign_audit", || self.hsm.sign_es256(&self.audit_label, message))?)
    }

    /// Raw ES256 signature with the active key over any message: the
    /// benchmarks' reference. Only with the cargo feature `bench`: the
    /// signer's API signs nothing but approvals with the approval key in a
    /// normal build (the PKCS#11 handle, [`Signer::hsm`], stays reachable
    /// for key management inside the crate and its tests).
    #[cfg(feature = "bench")]
    pub fn sign_raw(&self, message: &[u8]) -> Result<[u8; 64], Error> {
        let keys = self.keys();
        Ok(timed("sign_raw", || self.hsm.sign_es256(&keys.active_label, message))?)
    }

    /// Encrypts a factor secret under the secrets key, bound to `aad`.
    pub fn wrap(&self, secret: &[u8], aad: &[u8]) -> Result<WrappedSecret, Error> {
        self.wrap_with(&self.secrets_label(), secret, aad)
    }

    /// Encrypts under a named AES key.
    pub fn wrap_with(&self, label: &str, secret: &[u8], aad: &[u8]) -> Result<WrappedSecret, Error> {
        let blob = timed("encrypt", || self.hsm.encrypt(label, secret, aad))?;
        Ok(WrappedSecret {
            key_label: label.to_string(),
            blob: sigil_verify::b64url::encode(&blob),
        })
    }

    /// Label of the AES key that encrypts new secrets.
    pub fn secrets_label(&self) -> String {
        match self.secrets_label.read() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Switches the AES key that encrypts new secrets (after checking it exists).
    pub fn set_secrets_label(&self, label: &str) -> Result<(), Error> {
        if !timed("key_exists", || self.hsm.key_exists(label))? {
            return Err(Error::Unavailable(format!(
                "secrets key '{label}' is not on the token: on a new installation `make hsm` (or `sigil hsm init`) creates it; if it existed before, restore it from the HSM's backup instead of creating another"
            )));
        }
        match self.secrets_label.write() {
            Ok(mut l) => *l = label.to_string(),
            Err(p) => *p.into_inner() = label.to_string(),
        }
        self.declare_required_keys();
        Ok(())
    }

    /// Decrypts a factor secret with the key that wrapped it.
    pub fn unwrap_secret(&self, w: &WrappedSecret, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        let blob = sigil_verify::b64url::decode(&w.blob)
            .map_err(|_| Error::Internal("stored secret is not valid base64url".into()))?;
        Ok(timed("decrypt", || self.hsm.decrypt(&w.key_label, &blob, aad))?)
    }

    /// The underlying HSM handle.
    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }
}

/// Runs one HSM operation `op`, recording its latency and outcome
/// (`sigil_hsm_operation_duration_seconds`, `sigil_hsm_errors_total`,
/// `sigil_hsm_up`).
fn timed<T>(op: &'static str, f: impl FnOnce() -> Result<T, HsmError>) -> Result<T, HsmError> {
    let t0 = Instant::now();
    let r = f();
    let outcome = match &r {
        Ok(_) => HsmOutcome::Ok,
        Err(HsmError::Unavailable(_) | HsmError::TokenNotFound(_) | HsmError::Busy(_)) => HsmOutcome::Unavailable,
        Err(_) => HsmOutcome::Refused,
    };
    metrics::hsm_operation(op, t0.elapsed(), outcome);
    r
}

/// Creates what a fresh token needs: the token itself (if absent) and the
/// approval and secrets keys (if absent). Idempotent. Returns a line per
/// thing created, for the operator.
pub fn init_token(
    cfg: impl Into<SignerSettings>,
    so_pin: &SecretString,
    pin: &SecretString,
) -> Result<Vec<String>, Error> {
    let cfg: SignerSettings = cfg.into();
    let module = module_path(&cfg.hsm);
    let mut done = Vec::new();
    if !Hsm::token_exists(&module, &cfg.hsm.token_label)? {
        Hsm::init_token(&module, &cfg.hsm.token_label, so_pin, pin)?;
        done.push(format!("created token '{}'", cfg.hsm.token_label));
    }
    let hsm = Hsm::open(&HsmConfig {
        module,
        token_label: cfg.hsm.token_label.clone(),
        pin: pin.clone(),
        pool_size: 1,
    })?;
    if !hsm.key_exists(&cfg.hsm.approval_key_label)? {
        let pk = hsm.generate_ec_key(&cfg.hsm.approval_key_label)?;
        let kid = Jwk::from_p256_point(&pk.x, &pk.y).kid;
        done.push(format!(
            "generated approval key '{}' (EC P-256, kid {kid})",
            cfg.hsm.approval_key_label
        ));
    }
    if !hsm.key_exists(&cfg.hsm.secrets_key_label)? {
        hsm.generate_aes_key(&cfg.hsm.secrets_key_label)?;
        done.push(format!(
            "generated secrets key '{}' (AES-256)",
            cfg.hsm.secrets_key_label
        ));
    }
    if !hsm.key_exists(&cfg.hsm.audit_key_label)? {
        hsm.generate_ec_key(&cfg.hsm.audit_key_label)?;
        done.push(format!(
            "generated audit checkpoint key '{}' (EC P-256)",
            cfg.hsm.audit_key_label
        ));
    }
    Ok(done)
}

/// Zeroizing byte buffer alias used for decrypted secrets.
pub type SecretBytes = Zeroizing<Vec<u8>>;

/// `[hsm]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HsmSection {
    /// PKCS#11 module. Empty: SoftHSM2 from its usual Debian locations.
    pub module: PathBuf,
    /// Label of the token holding Sigil's keys.
    pub token_label: String,
    /// Environment variable holding the user PIN (checked first).
    pub pin_env: String,
    /// File holding the user PIN (used when the variable is unset).
    pub pin_file: PathBuf,
    /// Label of the EC P-256 key that signs approvals.
    pub approval_key_label: String,
    /// Label of the AES-256 key that encrypts factor secrets.
    pub secrets_key_label: String,
    /// Label of the EC P-256 key that signs audit checkpoints.
    pub audit_key_label: String,
    /// Number of PKCS#11 sessions kept open.
    pub pool_size: usize,
    /// Where approval RPCs (Begin, Complete, Redeem) make their HSM calls.
    /// `false` (default; SoftHSM and other in-process modules, whose calls
    /// are CPU work): on the async workers, with the wait for the store's
    /// sync made asynchronously. `true` (an HSM reached over the network,
    /// whose calls wait on I/O): on the blocking thread pool. On the
    /// workers, a call that finds all `pool_size` sessions busy waits for
    /// one, which with an in-process module lasts about one HSM operation.
    pub offload_calls: bool,
}

impl Default for HsmSection {
    fn default() -> Self {
        Self {
            module: PathBuf::new(),
            token_label: "sigil".into(),
            pin_env: "SIGIL_HSM_PIN".into(),
            pin_file: "hsm/pin".into(),
            approval_key_label: "sigil-approval-1".into(),
            secrets_key_label: "sigil-secrets-1".into(),
            audit_key_label: "sigil-audit-1".into(),
            pool_size: 4,
            offload_calls: false,
        }
    }
}
