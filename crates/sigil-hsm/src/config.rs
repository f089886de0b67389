//! [`HsmConfig`] and SoftHSM2 helpers (module discovery, `softhsm2.conf`).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use crate::error::HsmError;

/// Pool size used by [`HsmConfig::new`].
pub const DEFAULT_POOL_SIZE: usize = 4;

/// Environment variable that overrides the PKCS#11 module path in
/// [`softhsm_module_path`].
pub const MODULE_ENV: &str = "SIGIL_PKCS11_MODULE";

/// Where SoftHSM2's module is installed on Debian/Ubuntu, in search order.
const SOFTHSM_CANDIDATES: [&str; 3] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
];

/// How to reach one token: module, token label, user PIN, session pool size.
///
/// `Debug` shows the PIN as `[REDACTED]` (it is a [`SecretString`]).
#[derive(Clone, Debug)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (`libsofthsm2.so`, or the network HSM's client library).
    pub module: PathBuf,
    /// Label of the token (at most 32 bytes, no trailing blanks).
    pub token_label: String,
    /// The token's user PIN.
    pub pin: SecretString,
    /// Number of PKCS#11 sessions kept open; at most this many HSM operations
    /// run at once. Size it to the blocking threads that sign concurrently.
    pub pool_size: usize,
}

impl HsmConfig {
    /// A config with the default pool size ([`DEFAULT_POOL_SIZE`]).
    pub fn new(module: impl Into<PathBuf>, token_label: impl Into<String>, pin: SecretString) -> Self {
        Self {
            module: module.into(),
            token_label: token_label.into(),
            pin,
            pool_size: DEFAULT_POOL_SIZE,
        }
    }
}

/// The PKCS#11 module to use by default: `$SIGIL_PKCS11_MODULE` if set, else
/// the first SoftHSM2 module that exists in the usual Debian/Ubuntu places,
/// else the first of those places (so the error names a sensible path).
pub fn softhsm_module_path() -> PathBuf {
    if let Some(p) = std::env::var_os(MODULE_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    SOFTHSM_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(SOFTHSM_CANDIDATES[0]))
}

/// Write a SoftHSM2 configuration file that keeps tokens in `token_dir`
/// (created if missing).
///
/// SoftHSM reads the file named by `SOFTHSM2_CONF` once, at `C_Initialize`,
/// i.e. at the first PKCS#11 call of the process: set the variable before
/// anything touches the HSM.
pub fn write_softhsm_conf(conf_path: &Path, token_dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(token_dir)?;
    let dir = token_dir.to_str().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "SoftHSM token directory path must be valid UTF-8",
        )
    })?;
    if dir.contains('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "SoftHSM token directory path must not contain a newline",
        ));
    }
    if let Some(parent) = conf_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        conf_path,
        format!(
            "directories.tokendir = {dir}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
        ),
    )
}

/// Check a token or key label: 1..=32 bytes (the PKCS#11 token label field is
/// 32 blank-padded bytes), no leading/trailing blanks, no control characters.
pub(crate) fn check_label(what: Label, label: &str) -> Result<(), HsmError> {
    let max = match what {
        Label::Token => 32,
        Label::Key => 128,
    };
    if label.is_empty() || label.len() > max || label.trim() != label || label.chars().any(char::is_control) {
        return Err(HsmError::Config(format!(
            "{what} label {label:?} is invalid: use 1 to {max} bytes without leading/trailing \
             blanks or control characters"
        )));
    }
    Ok(())
}

/// Which kind of label [`check_label`] checks.
#[derive(Clone, Copy)]
pub(crate) enum Label {
    Token,
    Key,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Label::Token => "token",
            Label::Key => "key",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn conf_file_contents() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("sub/softhsm2.conf");
        let tokens = dir.path().join("tokens");
        write_softhsm_conf(&conf, &tokens).unwrap();
        assert!(tokens.is_dir());
        let text = std::fs::read_to_string(&conf).unwrap();
        assert_eq!(
            text,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            )
        );
    }

    #[test]
    fn labels() {
        assert!(check_label(Label::Token, "sigil").is_ok());
        assert!(check_label(Label::Token, &"a".repeat(32)).is_ok());
        assert!(check_label(Label::Token, &"a".repeat(33)).is_err());
        assert!(check_label(Label::Token, "").is_err());
        assert!(check_label(Label::Token, "sigil ").is_err());
        assert!(check_label(Label::Key, "approval\n").is_err());
        assert!(check_label(Label::Key, "approval-2025-01").is_ok());
    }

    #[test]
    fn config_debug_hides_pin() {
        let cfg = HsmConfig::new("/m.so", "sigil", SecretString::from("s3cr3t-pin"));
        assert_eq!(cfg.pool_size, DEFAULT_POOL_SIZE);
        assert!(!format!("{cfg:?}").contains("s3cr3t-pin"));
    }
}
