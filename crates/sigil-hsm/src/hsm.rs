//! [`Hsm`]: one token, a session pool, key handles cached by label, and the
//! reconnect-and-retry-once rule.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cryptoki::context::Function;
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::Ulong;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::config::{check_label, HsmConfig, Label};
use crate::context::{lock, Module};
use crate::error::{from_pkcs11, is_session_loss, At, HsmError};
use crate::heal::Health;
use crate::keys::{aes_template, ec_templates, EcPublicKey, KeyKind, KeyProtection};
use crate::pool::{Pool, PoolStats};

/// AES-GCM nonce length (bytes).
const IV_LEN: usize = 12;
/// AES-GCM tag length (bytes).
const TAG_LEN: usize = 16;

/// A handle on one HSM token: cheap to clone, `Send + Sync`, blocking.
///
/// Every operation checks a session out of a fixed pool (waiting if all are
/// busy), runs, and returns it. Call it from blocking threads
/// (`tokio::task::spawn_blocking`), never from an async task directly.
///
/// If an operation fails because the session, the login or a cached key
/// handle was lost (`CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`,
/// `CKR_DEVICE_REMOVED`, `CKR_DEVICE_ERROR`, `CKR_TOKEN_NOT_PRESENT`,
/// `CKR_USER_NOT_LOGGED_IN`, `CKR_OBJECT_HANDLE_INVALID`,
/// `CKR_KEY_HANDLE_INVALID`, also `CKR_OPERATION_ACTIVE`) the session is
/// dropped, a new one is opened and logged in, cached key handles are
/// forgotten and the operation is retried once; a second failure is
/// [`HsmError::Unavailable`]. If a new session cannot be opened on the
/// token's slot, the token is looked up again by label (a reconnected network
/// HSM may present it in another slot).
///
/// If that does not help either, the handle is *down*: operations fail at
/// once and a background thread reconnects with bounded back-off, finalising
/// and initialising the module again when new sessions are not enough (see
/// the `heal` module, [`Hsm::health`] and [`Hsm::probe`]).
#[derive(Clone)]
pub struct Hsm {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) module: Arc<Module>,
    /// The module path as configured (for messages).
    pub(crate) module_path: PathBuf,
    pub(crate) token: String,
    /// Where the token was last seen.
    slot: Mutex<Slot>,
    pin: SecretString,
    pub(crate) pool: Pool,
    /// Object handles by (kind, label), and the module initialisation they
    /// belong to. Handles are valid across the process's sessions but not
    /// across session loss, logout or re-initialisation (after which the
    /// same number may name another object).
    handles: Mutex<(u64, Handles)>,
    /// Serving or down, and why.
    pub(crate) health: Mutex<Health>,
    /// Keys the service cannot work without ([`Hsm::set_required_keys`]).
    pub(crate) required: Mutex<Vec<(KeyKind, String)>>,
}

impl Drop for Inner {
    /// The last handle goes: close its idle sessions inside the module (a
    /// re-initialisation must not run at the same time), or forget them if
    /// they belong to an earlier initialisation.
    fn drop(&mut self) {
        let entered = self.module.enter();
        self.pool.drain(entered.generation);
    }
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("module", &self.inner.module_path)
            .field("token", &self.inner.token)
            .field("slot", &lock(&self.inner.slot).id())
            .field("pool_size", &self.inner.pool.size())
            .finish_non_exhaustive()
    }
}

/// Cached object handles by (kind, label).
type Handles = HashMap<(KeyKind, String), ObjectHandle>;

/// Why an operation attempt failed.
enum Fail {
    /// A PKCS#11 error: the session is discarded; retried once on session loss.
    P11(P11Error),
    /// A final answer; the session is fine and goes back to the pool.
    Hsm(HsmError),
}

impl From<P11Error> for Fail {
    fn from(e: P11Error) -> Self {
        Fail::P11(e)
    }
}

impl From<HsmError> for Fail {
    fn from(e: HsmError) -> Self {
        Fail::Hsm(e)
    }
}

impl Hsm {
    /// Open the token `cfg.token_label` in module `cfg.module`.
    ///
    /// One PKCS#11 context per module path per process: the first call for a
    /// module loads it and runs `C_Initialize` (tolerating
    /// `CKR_CRYPTOKI_ALREADY_INITIALIZED`); later calls share it. Finds the
    /// slot whose token label matches, opens `pool_size` read/write sessions
    /// and logs in as user (tolerating `CKR_USER_ALREADY_LOGGED_IN` when this
    /// process already logged in with the same PIN).
    ///
    /// # Errors
    /// [`HsmError::Unavailable`] if the module cannot load, login fails or a
    /// session cannot be opened; [`HsmError::TokenNotFound`] if no token has
    /// that label; [`HsmError::Config`] for a bad label or `pool_size == 0`.
    pub fn open(cfg: &HsmConfig) -> Result<Hsm, HsmError> {
        check_label(Label::Token, &cfg.token_label)?;
        if cfg.pool_size == 0 {
            return Err(HsmError::Config("pool_size must be at least 1 (default 4)".into()));
        }
        let module = Module::get(&cfg.module)?;
        let slot = {
            let _entered = module.enter();
            module
                .find_token(&cfg.token_label)?
                .ok_or_else(|| token_not_found(&cfg.module, &cfg.token_label))?
        };
        let hsm = Hsm {
            inner: Arc::new(Inner {
                module,
                module_path: cfg.module.clone(),
                token: cfg.token_label.clone(),
                slot: Mutex::new(slot),
                pin: cfg.pin.clone(),
                pool: Pool::new(cfg.pool_size),
                handles: Mutex::new((0, HashMap::new())),
                health: Mutex::new(Health::new()),
                required: Mutex::new(Vec::new()),
            }),
        };
        // Open the whole pool now: a wrong PIN or a dead HSM shows at start-up.
        let entered = hsm.inner.module.enter();
        let mut leases = Vec::with_capacity(cfg.pool_size);
        for _ in 0..cfg.pool_size {
            leases.push(hsm.inner.pool.checkout(entered.generation, || hsm.open_session())?);
        }
        drop(leases);
        drop(entered);
        tracing::info!(
            module = %hsm.inner.module_path.display(),
            token = %hsm.inner.token,
            slot = slot.id(),
            pool_size = cfg.pool_size,
            "HSM token opened"
        );
        Ok(hsm)
    }

    /// Create token `label` in `module`: take a slot with an uninitialised
    /// token (SoftHSM always offers one), `C_InitToken` with `so_pin`, log in
    /// as SO and `C_InitPIN` with `user_pin`. Uses the process-wide context;
    /// token creation is serialised within the process.
    ///
    /// # Errors
    /// [`HsmError::TokenExists`] if a token with that label exists;
    /// [`HsmError::Config`] if the module has no free slot or rejects a PIN;
    /// [`HsmError::Unavailable`] if the module cannot be used.
    pub fn init_token(
        module: &Path,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<(), HsmError> {
        check_label(Label::Token, label)?;
        let m = Module::get(module)?;
        let _admin = m.admin_lock();
        let _entered = m.enter();
        let at = |doing| At {
            module,
            token: Some(label),
            key: None,
            doing,
        };
        if m.find_token(label)?.is_some() {
            return Err(HsmError::TokenExists(format!(
                "token '{label}' already exists in module {}: use it, or delete it first \
                 (softhsm2-util --delete-token --token {label})",
                module.display()
            )));
        }
        let free = m.find_free_slot(label)?.ok_or_else(|| {
            HsmError::Config(format!(
                "module {} has no slot with an uninitialised token: create the token with the \
                 HSM vendor's tools, or check SOFTHSM2_CONF points at a writable token directory",
                module.display()
            ))
        })?;
        m.ctx()
            .init_token(free, so_pin, label)
            .map_err(|e| from_pkcs11(e, at("initialising the token")))?;
        // SoftHSM renumbers the slot once the token is initialised: find it again.
        let slot = m.find_token(label)?.ok_or_else(|| {
            HsmError::Unavailable(format!(
                "token '{label}' was initialised in module {} but cannot be found again; \
                 check the module's token directory",
                module.display()
            ))
        })?;
        let session = m
            .ctx()
            .open_rw_session(slot)
            .map_err(|e| from_pkcs11(e, at("opening an SO session")))?;
        session
            .login(UserType::So, Some(so_pin))
            .map_err(|e| from_pkcs11(e, at("logging in as SO")))?;
        session
            .init_pin(user_pin)
            .map_err(|e| from_pkcs11(e, at("setting the user PIN")))?;
        if let Err(e) = session.logout() {
            tracing::debug!(error = %e, "SO logout failed (ignored; closing the session)");
        }
        drop(session);
        tracing::info!(module = %module.display(), token = label, "HSM token created");
        Ok(())
    }

    /// Whether module `module` has an initialised token labelled `label`.
    ///
    /// # Errors
    /// [`HsmError::Unavailable`] if the module cannot be used.
    pub fn token_exists(module: &Path, label: &str) -> Result<bool, HsmError> {
        check_label(Label::Token, label)?;
        let m = Module::get(module)?;
        let _entered = m.enter();
        Ok(m.find_token(label)?.is_some())
    }

    /// Generate an EC P-256 key pair labelled `label` on the token
    /// (`CKA_LABEL` and `CKA_ID` = the label). The private key is a token
    /// object, private, sensitive, non-extractable, sign-only; the public key
    /// can only verify.
    ///
    /// # Errors
    /// [`HsmError::KeyExists`] if any key with that label exists.
    pub fn generate_ec_key(&self, label: &str) -> Result<EcPublicKey, HsmError> {
        check_label(Label::Key, label)?;
        // "Does the label exist? then create" must not interleave in this process.
        let _admin = self.inner.module.admin_lock();
        self.refuse_existing(label)?;
        let (public_t, private_t) = ec_templates(label);
        let public = self.run("generating an EC P-256 key pair", Some(label), |s| {
            // A retry after session loss may find the pair the first attempt made.
            if let [public] = self.find_all(s, KeyKind::EcPublic, label)?.as_slice() {
                return self.read_ec_point(s, *public, label);
            }
            let (public, private) = s.generate_key_pair(&Mechanism::EccKeyPairGen, &public_t, &private_t)?;
            self.cache(KeyKind::EcPublic, label, public);
            self.cache(KeyKind::EcPrivate, label, private);
            self.read_ec_point(s, public, label)
        })?;
        tracing::info!(token = %self.inner.token, key = label, "EC P-256 key generated");
        Ok(public)
    }

    /// Generate an AES-256 key labelled `label` on the token: a token object,
    /// private, sensitive, non-extractable, encrypt/decrypt only.
    ///
    /// # Errors
    /// [`HsmError::KeyExists`] if any key with that label exists.
    pub fn generate_aes_key(&self, label: &str) -> Result<(), HsmError> {
        check_label(Label::Key, label)?;
        // "Does the label exist? then create" must not interleave in this process.
        let _admin = self.inner.module.admin_lock();
        self.refuse_existing(label)?;
        let template = aes_template(label);
        self.run("generating an AES-256 key", Some(label), |s| {
            // A retry after session loss may find the key the first attempt made.
            if !self.find_all(s, KeyKind::Aes, label)?.is_empty() {
                return Ok(());
            }
            let key = s.generate_key(&Mechanism::AesKeyGen, &template)?;
            self.cache(KeyKind::Aes, label, key);
            Ok(())
        })?;
        tracing::info!(token = %self.inner.token, key = label, "AES-256 key generated");
        Ok(())
    }

    /// Whether a key (EC pair or AES key) labelled `label` is on the token.
    pub fn key_exists(&self, label: &str) -> Result<bool, HsmError> {
        check_label(Label::Key, label)?;
        self.run("looking up a key", Some(label), |s| {
            for kind in KeyKind::ALL {
                if !self.find_all(s, kind, label)?.is_empty() {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    /// The public half of the EC key labelled `label`, from `CKA_EC_POINT`
    /// (DER OCTET STRING around `0x04||X||Y`, or the raw 65-byte point).
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`] if there is no EC public key with that label.
    pub fn ec_public_key(&self, label: &str) -> Result<EcPublicKey, HsmError> {
        check_label(Label::Key, label)?;
        self.run("reading an EC public key", Some(label), |s| {
            let h = self.lookup(s, KeyKind::EcPublic, label)?;
            self.read_ec_point(s, h, label)
        })
    }

    /// Labels of all EC private keys on the token whose label starts with
    /// `prefix`, sorted.
    pub fn list_ec_keys(&self, prefix: &str) -> Result<Vec<String>, HsmError> {
        let mut labels = self.run("listing EC keys", None, |s| {
            let mut labels = Vec::new();
            let handles = s.find_objects(&KeyKind::EcPrivate.template(None))?;
            if handles.is_empty() {
                ensure_logged_in(s)?;
            }
            for h in handles {
                for attr in s.get_attributes(h, &[AttributeType::Label])? {
                    if let Attribute::Label(bytes) = attr {
                        // Labels we did not write may not be UTF-8; skip those.
                        if let Ok(label) = String::from_utf8(bytes) {
                            if label.starts_with(prefix) {
                                labels.push(label);
                            }
                        }
                    }
                }
            }
            Ok(labels)
        })?;
        labels.sort();
        labels.dedup();
        Ok(labels)
    }

    /// ES256: SHA-256 of `message` (computed here, with ring), signed with
    /// `CKM_ECDSA` by the private key labelled `label`. Returns `r || s`
    /// (64 bytes), the JWS signature format.
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`] if there is no EC private key with that
    /// label; [`HsmError::Unavailable`] if the HSM cannot be reached.
    pub fn sign_es256(&self, label: &str, message: &[u8]) -> Result<[u8; 64], HsmError> {
        check_label(Label::Key, label)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        self.run("signing (ES256)", Some(label), |s| {
            let key = self.lookup(s, KeyKind::EcPrivate, label)?;
            let sig = s.sign(&Mechanism::Ecdsa, key, digest.as_ref())?;
            <[u8; 64]>::try_from(sig.as_slice()).map_err(|_| {
                Fail::Hsm(HsmError::Crypto(format!(
                    "signing with key '{label}': the HSM returned a {}-byte ECDSA signature, \
                     expected 64 (r||s); is the key P-256?",
                    sig.len()
                )))
            })
        })
    }

    /// AES-256-GCM encryption in the HSM (`CKM_AES_GCM`) with the key
    /// labelled `label`, a random 12-byte IV (from ring) and a 128-bit tag,
    /// binding `aad`. Returns `iv || ciphertext || tag`.
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`] if there is no AES key with that label.
    pub fn encrypt(&self, label: &str, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, HsmError> {
        check_label(Label::Key, label)?;
        let rng = SystemRandom::new();
        self.run("encrypting (AES-256-GCM)", Some(label), |s| {
            let key = self.lookup(s, KeyKind::Aes, label)?;
            // A fresh IV per attempt: never reuse one with the same key.
            let mut iv = [0u8; IV_LEN];
            rng.fill(&mut iv)
                .map_err(|_| HsmError::Unavailable("the system random generator failed; check /dev/urandom".into()))?;
            let mut iv_param = iv;
            let params = GcmParams::new(&mut iv_param, aad, tag_bits()?)?;
            let sealed = s.encrypt(&Mechanism::AesGcm(params), key, plaintext)?;
            if sealed.len() != plaintext.len() + TAG_LEN {
                return Err(Fail::Hsm(HsmError::Crypto(format!(
                    "encrypting with key '{label}': the HSM returned {} bytes for {} bytes of \
                     plaintext, expected ciphertext plus a 16-byte tag",
                    sealed.len(),
                    plaintext.len()
                ))));
            }
            let mut out = Vec::with_capacity(IV_LEN + sealed.len());
            out.extend_from_slice(&iv);
            out.extend_from_slice(&sealed);
            Ok(out)
        })
    }

    /// Decrypt `iv || ciphertext || tag` (from [`Hsm::encrypt`]) with the AES
    /// key labelled `label`, checking `aad`.
    ///
    /// # Errors
    /// [`HsmError::Crypto`] if the blob is malformed or does not authenticate
    /// (tampered data, wrong `aad`, wrong key); [`HsmError::KeyNotFound`] if
    /// there is no AES key with that label.
    pub fn decrypt(&self, label: &str, blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        check_label(Label::Key, label)?;
        if blob.len() < IV_LEN + TAG_LEN {
            return Err(HsmError::Crypto(format!(
                "decrypting with key '{label}': the blob is {} bytes, shorter than IV plus tag \
                 ({} bytes); it is truncated or not from Hsm::encrypt",
                blob.len(),
                IV_LEN + TAG_LEN
            )));
        }
        let (iv, sealed) = blob.split_at(IV_LEN);
        self.run("decrypting (AES-256-GCM)", Some(label), |s| {
            let key = self.lookup(s, KeyKind::Aes, label)?;
            let mut iv_param = [0u8; IV_LEN];
            iv_param.copy_from_slice(iv);
            let params = GcmParams::new(&mut iv_param, aad, tag_bits()?)?;
            match s.decrypt(&Mechanism::AesGcm(params), key, sealed) {
                Ok(plain) => Ok(Zeroizing::new(plain)),
                Err(e) if is_session_loss(&e) => Err(Fail::P11(e)),
                // Whatever else the module says (SoftHSM 2.6: CKR_GENERAL_ERROR;
                // others CKR_ENCRYPTED_DATA_INVALID …), the data did not
                // authenticate. A failed C_Decrypt ends the operation, so the
                // session stays usable and goes back to the pool: a stream of
                // forged ciphertexts must not churn sessions (closing the
                // last one logs the token out).
                Err(e) => {
                    tracing::debug!(key = label, error = ?e, "AES-GCM decryption rejected");
                    Err(Fail::Hsm(HsmError::Crypto(format!(
                        "decrypting with key '{label}' on token '{}': the ciphertext or its \
                         associated data does not authenticate; the data was altered or belongs \
                         to another key or context",
                        self.inner.token
                    ))))
                }
            }
        })
    }

    /// Destroy the key labelled `label`: both objects of an EC pair, or the
    /// AES key.
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`] if no such key exists.
    pub fn destroy_key(&self, label: &str) -> Result<(), HsmError> {
        check_label(Label::Key, label)?;
        // "Does the label exist? then create" must not interleave in this process.
        let _admin = self.inner.module.admin_lock();
        let destroyed = self.run("destroying a key", Some(label), |s| {
            let mut n = 0usize;
            for kind in KeyKind::ALL {
                for h in self.find_all(s, kind, label)? {
                    s.destroy_object(h)?;
                    n += 1;
                }
                self.uncache(kind, label);
            }
            Ok(n)
        })?;
        if destroyed == 0 {
            return Err(self.key_not_found(label, "key"));
        }
        tracing::info!(token = %self.inner.token, key = label, objects = destroyed, "key destroyed");
        Ok(())
    }

    /// Close every session this handle (and its clones) has on the token:
    /// idle ones now, busy ones when their operation finishes. Simulates
    /// session loss for tests and lets operators force a reconnect; the next
    /// call opens and logs in a new session transparently. Cached key handles
    /// are kept on purpose, so the next call also exercises re-lookup.
    ///
    /// cryptoki 0.12 does not expose `C_CloseAllSessions`, so sessions opened
    /// by other `Hsm` values on the same token are not touched; when the last
    /// session of the process on the token closes, the token logs the user out.
    pub fn close_all_sessions(&self) -> Result<(), HsmError> {
        let _entered = self.inner.module.enter();
        let n = self.inner.pool.close_all();
        tracing::info!(token = %self.inner.token, closed = n, "HSM sessions closed on request");
        Ok(())
    }

    /// `C_CloseAllSessions` on the token's slot: every session this process
    /// has on the token ends, whichever handle opened it, and the token logs
    /// out. What a network HSM's restart does to its clients; every handle
    /// then reconnects on its next call. For fault drills and tests.
    pub fn close_every_session(&self) -> Result<(), HsmError> {
        // Between calls, never during one: a session freed under a call in
        // progress is a use after free in the module.
        let _alone = self.inner.module.enter_alone();
        self.on_token_slot(|slot| self.inner.module.close_all_sessions_raw(slot, &self.inner.token))?;
        tracing::warn!(token = %self.inner.token, "every session on the token closed on request");
        Ok(())
    }

    /// How many PKCS#11 sessions this handle's pool holds now (for
    /// metrics: a count that only grows points at a session leak).
    pub fn sessions(&self) -> PoolStats {
        self.inner.pool.stats()
    }

    /// Whether the key labelled `label` (EC private key, else AES key) has
    /// `CKA_EXTRACTABLE` set. Sigil's keys never do; a caller may refuse to
    /// start if a signing key is extractable.
    pub fn is_extractable(&self, label: &str) -> Result<bool, HsmError> {
        Ok(self.key_protection(label)?.extractable)
    }

    /// The protection attributes (`CKA_SENSITIVE`, `CKA_EXTRACTABLE`,
    /// `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE`) of the key labelled
    /// `label` (EC private key, else AES key).
    ///
    /// # Errors
    /// [`HsmError::KeyNotFound`] if there is no such key.
    pub fn key_protection(&self, label: &str) -> Result<KeyProtection, HsmError> {
        check_label(Label::Key, label)?;
        self.run("reading key attributes", Some(label), |s| {
            let key = match self.lookup(s, KeyKind::EcPrivate, label) {
                Ok(h) => h,
                Err(Fail::Hsm(HsmError::KeyNotFound(_))) => self.lookup(s, KeyKind::Aes, label)?,
                Err(e) => return Err(e),
            };
            let mut p = KeyProtection {
                sensitive: false,
                extractable: true,
                always_sensitive: false,
                never_extractable: false,
            };
            let wanted = [
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::AlwaysSensitive,
                AttributeType::NeverExtractable,
            ];
            for attr in s.get_attributes(key, &wanted)? {
                match attr {
                    Attribute::Sensitive(v) => p.sensitive = v,
                    Attribute::Extractable(v) => p.extractable = v,
                    Attribute::AlwaysSensitive(v) => p.always_sensitive = v,
                    Attribute::NeverExtractable(v) => p.never_extractable = v,
                    _ => {}
                }
            }
            Ok(p)
        })
    }

    // ----- internals -------------------------------------------------------

    /// Run `op` on a pooled session; on session loss reconnect and retry once.
    fn run<T>(
        &self,
        doing: &'static str,
        key: Option<&str>,
        mut op: impl FnMut(&Session) -> Result<T, Fail>,
    ) -> Result<T, HsmError> {
        if let Some(e) = self.outage_error() {
            return Err(e);
        }
        let result = self.run_entered(doing, key, &mut op);
        match &result {
            // A key the service needs is gone: an outage, not a missing key
            // (the reconnect loop tells the two apart).
            Err(HsmError::KeyNotFound(_)) if key.is_some_and(|k| self.is_required(k)) => {
                let e = HsmError::Unavailable(format!(
                    "token '{}' shows key '{}' no more, though it did before",
                    self.inner.token,
                    key.unwrap_or_default()
                ));
                self.mark_down(&e);
                Err(self.outage_error().unwrap_or(e))
            }
            Err(e @ (HsmError::Unavailable(_) | HsmError::TokenNotFound(_))) => {
                self.mark_down(e);
                result
            }
            _ => result,
        }
    }

    /// [`Hsm::run`] inside the module.
    fn run_entered<T>(
        &self,
        doing: &'static str,
        key: Option<&str>,
        op: &mut impl FnMut(&Session) -> Result<T, Fail>,
    ) -> Result<T, HsmError> {
        let at = At {
            module: &self.inner.module_path,
            token: Some(&self.inner.token),
            key,
            doing,
        };
        let entered = self.inner.module.enter();
        {
            let mut h = lock(&self.inner.handles);
            if h.0 != entered.generation {
                *h = (entered.generation, HashMap::new());
            }
        }
        let lease = self.inner.pool.checkout(entered.generation, || self.open_session())?;
        let err = match op(lease.session()?) {
            Ok(v) => return Ok(v),
            Err(Fail::Hsm(e)) => return Err(e),
            Err(Fail::P11(e)) => e,
        };
        if !is_session_loss(&err) {
            // Never put a session that saw an error back: its state is unknown.
            lease.discard();
            return Err(from_pkcs11(err, at));
        }
        // The session is gone, and so probably are the idle ones: abandon
        // them without C_CloseSession, whose handle numbers the module may
        // already have given to new sessions.
        lease.abandon();
        self.inner.pool.abandon_idle();
        tracing::warn!(
            token = %self.inner.token,
            key = key.unwrap_or(""),
            doing,
            error = ?err,
            "HSM session lost; reconnecting and retrying once"
        );
        self.forget_handles();
        let lease = self
            .inner
            .pool
            .checkout_fresh(entered.generation, || self.open_session())?;
        match op(lease.session()?) {
            Ok(v) => Ok(v),
            Err(Fail::Hsm(e)) => Err(e),
            Err(Fail::P11(e)) => {
                if is_session_loss(&e) {
                    lease.abandon();
                    self.forget_handles();
                } else {
                    lease.discard();
                }
                Err(from_pkcs11(e, at))
            }
        }
    }

    pub(crate) fn open_session(&self) -> Result<Session, HsmError> {
        let i = &self.inner;
        self.on_token_slot(|slot| i.module.open_user_session(slot, &i.token, &i.pin))
    }

    /// Runs `f` on the token's slot. If that is refused as unavailable and
    /// the token is now in another slot (a reconnected network HSM, or a
    /// module re-initialised by another handle: SoftHSM renumbers its
    /// slots), the slot is updated and `f` runs once more there.
    fn on_token_slot<T>(&self, f: impl Fn(Slot) -> Result<T, HsmError>) -> Result<T, HsmError> {
        let i = &self.inner;
        let slot = *lock(&i.slot);
        match f(slot) {
            Err(HsmError::Unavailable(why)) => match i.module.find_token(&i.token) {
                Ok(Some(moved)) if moved != slot => {
                    tracing::warn!(
                        token = %i.token,
                        from = slot.id(),
                        to = moved.id(),
                        "HSM token moved to another slot"
                    );
                    *lock(&i.slot) = moved;
                    f(moved)
                }
                _ => Err(HsmError::Unavailable(why)),
            },
            other => other,
        }
    }

    /// The handle of the one `kind` object labelled `label`, from the cache
    /// or the token.
    fn lookup(&self, s: &Session, kind: KeyKind, label: &str) -> Result<ObjectHandle, Fail> {
        if let Some(h) = lock(&self.inner.handles).1.get(&(kind, label.to_owned())) {
            return Ok(*h);
        }
        let found = self.find_all(s, kind, label)?;
        match found.as_slice() {
            [h] => {
                self.cache(kind, label, *h);
                Ok(*h)
            }
            [] => Err(Fail::Hsm(self.key_not_found(label, kind.describe()))),
            _ => Err(Fail::Hsm(HsmError::Config(format!(
                "{} objects of kind {} are labelled '{label}' on token '{}': remove the \
                 duplicates (pkcs11-tool --list-objects / --delete-object)",
                found.len(),
                kind.describe(),
                self.inner.token
            )))),
        }
    }

    /// All `kind` objects labelled `label`. If there are none, make sure the
    /// session is still logged in (private objects are invisible otherwise)
    /// so a lost login triggers a reconnect instead of a false "not found".
    fn find_all(&self, s: &Session, kind: KeyKind, label: &str) -> Result<Vec<ObjectHandle>, Fail> {
        let found = s.find_objects(&kind.template(Some(label)))?;
        if found.is_empty() {
            ensure_logged_in(s)?;
        }
        Ok(found)
    }

    /// Refuse key generation if anything is labelled `label` already.
    fn refuse_existing(&self, label: &str) -> Result<(), HsmError> {
        if self.key_exists(label)? {
            return Err(HsmError::KeyExists(format!(
                "a key labelled '{label}' already exists on token '{}': choose another label, or \
                 destroy the old key first",
                self.inner.token
            )));
        }
        Ok(())
    }

    fn read_ec_point(&self, s: &Session, h: ObjectHandle, label: &str) -> Result<EcPublicKey, Fail> {
        for attr in s.get_attributes(h, &[AttributeType::EcPoint])? {
            if let Attribute::EcPoint(bytes) = attr {
                return EcPublicKey::from_ec_point(&bytes).ok_or_else(|| {
                    Fail::Hsm(HsmError::Crypto(format!(
                        "key '{label}' on token '{}': CKA_EC_POINT ({} bytes) is not an \
                         uncompressed P-256 point; is it a P-256 key?",
                        self.inner.token,
                        bytes.len()
                    )))
                });
            }
        }
        Err(Fail::Hsm(HsmError::Crypto(format!(
            "key '{label}' on token '{}' has no CKA_EC_POINT; is it an EC public key?",
            self.inner.token
        ))))
    }

    fn key_not_found(&self, label: &str, what: &str) -> HsmError {
        HsmError::KeyNotFound(format!(
            "token '{}' (module {}) is reachable but holds no {what} labelled '{label}': check \
             the configured key label; if the key existed before, restore it from the HSM's \
             backup rather than creating a new one",
            self.inner.token,
            self.inner.module_path.display()
        ))
    }

    fn cache(&self, kind: KeyKind, label: &str, h: ObjectHandle) {
        lock(&self.inner.handles).1.insert((kind, label.to_owned()), h);
    }

    fn uncache(&self, kind: KeyKind, label: &str) {
        lock(&self.inner.handles).1.remove(&(kind, label.to_owned()));
    }

    pub(crate) fn forget_handles(&self) {
        lock(&self.inner.handles).1.clear();
    }
}

/// Fail with `CKR_USER_NOT_LOGGED_IN` (a session-loss error, so the caller
/// reconnects) unless `s` is logged in as user. Private objects are invisible
/// to a session that lost its login, which would otherwise read as "no key".
fn ensure_logged_in(s: &Session) -> Result<(), Fail> {
    ensure_logged_in_p11(s).map_err(Fail::P11)
}

/// [`ensure_logged_in`] with the PKCS#11 error itself.
pub(crate) fn ensure_logged_in_p11(s: &Session) -> Result<(), P11Error> {
    let info = s.get_session_info()?;
    if matches!(info.session_state(), SessionState::RwUser | SessionState::RoUser) {
        Ok(())
    } else {
        Err(P11Error::Pkcs11(RvError::UserNotLoggedIn, Function::FindObjects))
    }
}

fn tag_bits() -> Result<Ulong, Fail> {
    Ulong::try_from(TAG_LEN * 8).map_err(Fail::P11)
}

fn token_not_found(module: &Path, label: &str) -> HsmError {
    HsmError::TokenNotFound(format!(
        "token '{label}' not found in module {}: check the HSM connection, SOFTHSM2_CONF and the \
         configured token label (on a new installation, `make hsm` creates the development \
         token; never create a new token for an installation that had one)",
        module.display()
    ))
}
