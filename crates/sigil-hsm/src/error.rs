//! [`HsmError`] and the one function that maps PKCS#11 failures onto it.
//!
//! Every message says what to do next and never contains a PIN: PINs are
//! only ever handed to cryptoki, never formatted.

use std::fmt;
use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as P11Error, RvError};

/// Everything that can go wrong talking to the HSM.
///
/// Callers map [`HsmError::Unavailable`] to gRPC `UNAVAILABLE`; nothing in
/// this crate ever produces a signature or plaintext alongside an error
/// (fail closed).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The HSM cannot be used right now: the module does not load, the token
    /// is absent, login fails, or a session cannot be (re)opened. Retrying
    /// later may succeed; never fall back to software keys.
    #[error("HSM unavailable: {0}")]
    Unavailable(String),
    /// Every session of the pool stayed busy past the checkout timeout: the
    /// HSM is slow or the load too high. Not an outage (a reconnect would
    /// not help); retrying later may succeed.
    #[error("HSM busy: {0}")]
    Busy(String),
    /// No token with the configured label exists in the module.
    #[error("HSM token not found: {0}")]
    TokenNotFound(String),
    /// `init_token` was asked to create a token whose label is already taken.
    #[error("HSM token already exists: {0}")]
    TokenExists(String),
    /// No key with that label (of the kind the operation needs) is on the token.
    #[error("HSM key not found: {0}")]
    KeyNotFound(String),
    /// Key generation was asked for a label that is already taken.
    #[error("HSM key already exists: {0}")]
    KeyExists(String),
    /// A cryptographic operation failed: authenticated decryption rejected
    /// the ciphertext or associated data, malformed input, an unexpected
    /// output from the HSM.
    #[error("HSM cryptographic operation failed: {0}")]
    Crypto(String),
    /// The configuration or the request cannot work (bad label, pool size 0,
    /// mechanism not supported by the module, duplicate key labels …).
    #[error("HSM configuration error: {0}")]
    Config(String),
}

/// Where a PKCS#11 call was made, for error messages.
#[derive(Clone, Copy)]
pub(crate) struct At<'a> {
    /// Path of the PKCS#11 module.
    pub module: &'a Path,
    /// Token label, if a token is involved.
    pub token: Option<&'a str>,
    /// Key label, if a key is involved.
    pub key: Option<&'a str>,
    /// What we were doing, in a few words ("signing", "opening a session").
    pub doing: &'static str,
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.doing)?;
        if let Some(key) = self.key {
            write!(f, " with key '{key}'")?;
        }
        if let Some(token) = self.token {
            write!(f, " on token '{token}'")?;
        }
        write!(f, " (module {})", self.module.display())
    }
}

/// PKCS#11 return values after which the session (or the login, or a cached
/// object handle) is presumed lost: the caller drops the session, opens a new
/// one, logs in again, forgets cached handles and retries once.
/// (`CKR_OPERATION_ACTIVE` is included: a session stuck in an operation is
/// no better than a lost one.)
pub(crate) fn is_session_loss(err: &P11Error) -> bool {
    matches!(
        err,
        P11Error::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn
                | RvError::ObjectHandleInvalid
                | RvError::KeyHandleInvalid
                // A session left with an unfinished operation is as good as lost.
                | RvError::OperationActive,
            _
        )
    )
}

/// The one place PKCS#11 errors become [`HsmError`]s.
///
/// `err`'s `Display` is never used for login failures (it is harmless, but
/// the return-value name is enough); PINs are never part of any input here.
pub(crate) fn from_pkcs11(err: P11Error, at: At<'_>) -> HsmError {
    let rv = match err {
        P11Error::Pkcs11(rv, function) => (rv, function),
        P11Error::LibraryLoading(e) => {
            return HsmError::Unavailable(format!(
                "PKCS#11 module {} cannot be loaded ({e}): install softhsm2 or point \
                 SIGIL_PKCS11_MODULE at the HSM vendor's PKCS#11 library",
                at.module.display()
            ))
        }
        P11Error::MissingSymbol(_) | P11Error::NullFunctionPointer | P11Error::NotSupported => {
            return HsmError::Config(format!(
                "{at}: the module lacks a PKCS#11 function Sigil needs ({err}); use a \
                 PKCS#11 v2.40+ module"
            ))
        }
        other => {
            return HsmError::Crypto(format!(
                "{at}: unexpected value from the PKCS#11 module ({other}); check the \
                 module and report it"
            ))
        }
    };
    let (rv, function) = rv;
    let token = at.token.unwrap_or("?");
    match rv {
        RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange if matches!(function, Function::Login) => {
            HsmError::Unavailable(format!(
                "login to token '{token}' in module {} failed ({rv:?}): check the configured \
                 user PIN (the PIN itself is never logged)",
                at.module.display()
            ))
        }
        RvError::PinLocked => HsmError::Unavailable(format!(
            "{at}: the user PIN is locked after too many wrong attempts; reset it with the SO \
             PIN (e.g. `pkcs11-tool --init-pin --login --login-type so`)"
        )),
        RvError::UserPinNotInitialized => HsmError::Unavailable(format!(
            "{at}: the token has no user PIN yet; initialise the token with `make hsm`"
        )),
        RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange => HsmError::Config(format!(
            "{at}: PIN rejected ({rv:?}); choose a PIN the token accepts (SoftHSM: 4-255 \
                 bytes)"
        )),
        RvError::CryptokiNotInitialized | RvError::CryptokiAlreadyInitialized => HsmError::Unavailable(format!(
            "{at}: the PKCS#11 library is not initialised in this process ({rv:?}); it is \
             initialised again while reconnecting after an outage"
        )),
        RvError::SlotIdInvalid | RvError::TokenNotRecognized | RvError::TokenNotPresent | RvError::DeviceRemoved => {
            HsmError::Unavailable(format!(
                "{at}: the token is not present ({rv:?}); check the HSM connection"
            ))
        }
        RvError::SessionHandleInvalid
        | RvError::SessionClosed
        | RvError::SessionCount
        | RvError::DeviceError
        | RvError::DeviceMemory
        | RvError::HostMemory
        | RvError::GeneralError
        | RvError::FunctionFailed
        | RvError::UserNotLoggedIn
        | RvError::ObjectHandleInvalid
        | RvError::KeyHandleInvalid
        | RvError::OperationActive => HsmError::Unavailable(format!(
            "{at}: the HSM failed in C_{function:?} ({rv:?}); check the HSM's health and \
             connection (session-loss errors are retried once on a new session first)"
        )),
        RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange => HsmError::Crypto(format!(
            "{at}: the ciphertext or its associated data does not authenticate \
                 ({rv:?}); the data was altered or belongs to another key/context"
        )),
        RvError::MechanismInvalid
        | RvError::MechanismParamInvalid
        | RvError::CurveNotSupported
        | RvError::FunctionNotSupported
        | RvError::KeySizeRange => HsmError::Config(format!(
            "{at}: the module does not support this ({rv:?} in C_{function:?}); Sigil needs \
             CKM_EC_KEY_PAIR_GEN (P-256), CKM_ECDSA, CKM_AES_KEY_GEN and CKM_AES_GCM"
        )),
        RvError::KeyTypeInconsistent | RvError::KeyFunctionNotPermitted => HsmError::Config(format!(
            "{at}: the key cannot be used for this ({rv:?}); the label belongs to a \
                 key of another type or usage"
        )),
        RvError::UserAlreadyLoggedIn
        | RvError::UserAnotherAlreadyLoggedIn
        | RvError::UserTypeInvalid
        | RvError::SessionReadOnlyExists => HsmError::Unavailable(format!(
            "{at}: the token's login state does not allow this ({rv:?}); close other \
             applications' sessions (e.g. an SO login) and retry"
        )),
        _ => HsmError::Crypto(format!("{at}: C_{function:?} failed ({rv:?}); check the HSM's logs")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn at() -> At<'static> {
        At {
            module: Path::new("/m.so"),
            token: Some("sigil"),
            key: Some("k1"),
            doing: "signing",
        }
    }

    #[test]
    fn wrong_pin_is_unavailable() {
        let e = from_pkcs11(P11Error::Pkcs11(RvError::PinIncorrect, Function::Login), at());
        assert!(matches!(e, HsmError::Unavailable(_)), "{e}");
        assert!(e.to_string().contains("check the configured user PIN"));
    }

    #[test]
    fn session_loss_classification() {
        for rv in [
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::DeviceRemoved,
            RvError::DeviceError,
            RvError::TokenNotPresent,
            RvError::UserNotLoggedIn,
            RvError::ObjectHandleInvalid,
            RvError::KeyHandleInvalid,
        ] {
            let err = P11Error::Pkcs11(rv, Function::Sign);
            assert!(is_session_loss(&err), "{rv:?}");
            assert!(matches!(from_pkcs11(err, at()), HsmError::Unavailable(_)));
        }
        assert!(!is_session_loss(&P11Error::Pkcs11(
            RvError::EncryptedDataInvalid,
            Function::Decrypt
        )));
    }

    #[test]
    fn tampered_ciphertext_is_crypto() {
        let e = from_pkcs11(P11Error::Pkcs11(RvError::EncryptedDataInvalid, Function::Decrypt), at());
        assert!(matches!(e, HsmError::Crypto(_)));
        assert!(e.to_string().contains("key 'k1' on token 'sigil'"));
    }
}
