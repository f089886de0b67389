//! Sigil's HSM access: EC P-256 (ES256) signing keys and AES-256-GCM
//! encryption keys that never leave a PKCS#11 token, reached with the
//! [`cryptoki`] crate. SoftHSM2 for development and tests; a network HSM is
//! the same code with another module path.
//!
//! The API is blocking. [`Hsm`] is `Clone + Send + Sync`; call it from
//! blocking threads (`tokio::task::spawn_blocking`). An unavailable HSM is an
//! error ([`HsmError::Unavailable`]), never a signature made some other way.
//!
//! # Layout
//!
//! - `config.rs` — [`HsmConfig`], [`softhsm_module_path`],
//!   [`write_softhsm_conf`], label checks.
//! - `context.rs` — the process-wide registry of PKCS#11 contexts (one per
//!   module path), token discovery, user login.
//! - `pool.rs` — the fixed-size session pool (`Mutex` + `Condvar`).
//! - `hsm.rs` — [`Hsm`]: token set-up, key generation, signing, AES-GCM,
//!   the handle cache and the reconnect-and-retry-once rule.
//! - `heal.rs` — outages: health state, required keys, readiness probe and
//!   the background reconnect loop (re-initialising the module if needed).
//! - `keys.rs` — [`EcPublicKey`], [`KeyProtection`], key templates,
//!   `CKA_EC_POINT` parsing.
//! - `error.rs` — [`HsmError`] and the one function mapping PKCS#11 errors.
//!
//! # The process-wide context rule
//!
//! PKCS#11 permits one `C_Initialize` per module per process, and a token's
//! login state is shared by all of the process's sessions on it. So this
//! crate keeps exactly one context per module path (canonicalised) for the
//! life of the process, created on first use by [`Hsm::open`],
//! [`Hsm::init_token`] or [`Hsm::token_exists`], and finalised (then
//! initialised again) only by the reconnect loop after an outage, while no
//! PKCS#11 call is in progress.
//! Consequences for callers:
//!
//! - SoftHSM reads `SOFTHSM2_CONF` at `C_Initialize`, i.e. at the first call:
//!   set it before anything touches the HSM; changing it later has no effect.
//! - Several [`Hsm`] values (several tokens, or the same token twice) can
//!   coexist in one process; they share the context, and on one token they
//!   share the login. Logging in to a token that this process is already
//!   logged in to succeeds only with the same PIN (checked against an HMAC of
//!   the PIN that logged in).
//! - Do not use `cryptoki` (or another PKCS#11 wrapper) directly on the same
//!   module in the same process.
//!
//! # Example
//!
//! ```no_run
//! use sigil_hsm::{softhsm_module_path, Hsm, HsmConfig};
//! use secrecy::SecretString;
//!
//! # fn main() -> Result<(), sigil_hsm::HsmError> {
//! let cfg = HsmConfig::new(softhsm_module_path(), "sigil", SecretString::from("1234"));
//! let hsm = Hsm::open(&cfg)?;
//! let signature: [u8; 64] = hsm.sign_es256("approval-2025-01", b"header.payload")?;
//! # let _ = signature; Ok(()) }
//! ```

mod config;
mod context;
mod error;
mod heal;
mod hsm;
mod keys;
mod pool;

pub use config::{softhsm_module_path, write_softhsm_conf, HsmConfig, DEFAULT_POOL_SIZE, MODULE_ENV};
pub use error::HsmError;
pub use heal::{HsmHealth, MAX_BACKOFF, MIN_BACKOFF};
pub use hsm::Hsm;
pub use keys::{EcPublicKey, KeyProtection};
pub use pool::PoolStats;
