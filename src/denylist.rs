//! Client certificate deny-list: a leaked role certificate is shut out
//! without rotating the client CA.
//!
//! `[server] deny_list` names a plain-text file, one entry a line; `#`
//! starts a comment, blank lines are ignored:
//!
//! ```text
//! # frontend-2 key leaked, INC-1234
//! serial:3F:9A:0C:51:...              # hex, any case, colons allowed, leading zeros ignored
//! spki-sha256:6b1f...e2               # SHA-256 of the SubjectPublicKeyInfo DER: 64 hex digits
//! spki-sha256:axbT...Q                # or 43 base64url characters
//! ```
//!
//! A serial names one certificate; an SPKI digest names its key, so it also
//! shuts out any other certificate issued for the same leaked key. A
//! malformed line refuses the whole file, naming the file and line: at
//! start-up the server does not start, on reload (SIGHUP,
//! [`DenyListHandle::reload`], [`Sigil::reload_deny_list`]) the previous
//! list stays in force.
//!
//! The server checks every call's client certificate (the TLS leaf, as the
//! role check sees it) against the list in force at that moment; nothing
//! caches a decision (see `server` and `api::auth`).
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use data_encoding::{BASE64URL_NOPAD, HEXLOWER_PERMISSIVE};
use x509_parser::prelude::X509Certificate;

use crate::error::{excerpt, Error};

/// Longest serial number a conforming certificate has, in hex digits
/// (20 octets, RFC 5280 §4.1.2.2).
const MAX_SERIAL_HEX: usize = 40;

/// What identifies a client certificate to the deny-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId {
    /// Serial number: lowercase hex, no leading zeros ("0" for zero).
    serial: String,
    /// SHA-256 of the SubjectPublicKeyInfo DER.
    spki_sha256: [u8; 32],
}

impl CertId {
    /// The identity of a parsed certificate.
    pub fn of(cert: &X509Certificate<'_>) -> CertId {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
        let mut spki_sha256 = [0u8; 32];
        spki_sha256.copy_from_slice(digest.as_ref());
        CertId {
            serial: canonical_serial(&HEXLOWER_PERMISSIVE.encode(cert.raw_serial())),
            spki_sha256,
        }
    }

    /// The identity of a DER certificate, if it parses.
    pub fn from_der(der: &[u8]) -> Option<CertId> {
        use x509_parser::prelude::FromDer;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        Some(CertId::of(&cert))
    }

    /// The serial number as shown to callers and operators: uppercase hex
    /// without leading zeros (what `openssl x509 -noout -serial` prints, up
    /// to a leading 0).
    pub fn serial(&self) -> String {
        self.serial.to_ascii_uppercase()
    }

    /// The SPKI SHA-256 digest, lowercase hex.
    pub fn spki_sha256_hex(&self) -> String {
        HEXLOWER_PERMISSIVE.encode(&self.spki_sha256)
    }
}

/// Lowercase hex without leading zeros; "0" when nothing is left.
fn canonical_serial(hex: &str) -> String {
    let t = hex.trim_start_matches('0').to_ascii_lowercase();
    if t.is_empty() {
        "0".into()
    } else {
        t
    }
}

/// Which kind of entry refused a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// A `serial:` entry.
    Serial,
    /// An `spki-sha256:` entry.
    SpkiSha256,
}

impl Match {
    /// The entry kind as written in the file.
    pub fn name(self) -> &'static str {
        match self {
            Match::Serial => "serial",
            Match::SpkiSha256 => "spki-sha256",
        }
    }
}

/// A parsed deny-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DenyList {
    serials: HashSet<String>,
    spkis: HashSet<[u8; 32]>,
}

impl DenyList {
    /// The empty list (denies nothing).
    pub fn empty() -> DenyList {
        DenyList::default()
    }

    /// Distinct entries.
    pub fn len(&self) -> usize {
        self.serials.len() + self.spkis.len()
    }

    /// True when it denies nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `id` is denied, and by which kind of entry.
    pub fn matches(&self, id: &CertId) -> Option<Match> {
        if self.serials.contains(&id.serial) {
            Some(Match::Serial)
        } else if self.spkis.contains(&id.spki_sha256) {
            Some(Match::SpkiSha256)
        } else {
            None
        }
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<DenyList, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("server.deny_list", format!("cannot read {}: {e}", path.display())))?;
        DenyList::parse(&text, path)
    }

    /// Parses deny-list text; `source` names the file in errors.
    pub fn parse(text: &str, source: &Path) -> Result<DenyList, Error> {
        let mut list = DenyList::empty();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, raw) in text.lines().enumerate() {
            let bad = |what: String| {
                Error::invalid(
                    "server.deny_list",
                    format!("{}, line {}: {what}", source.display(), i + 1),
                )
            };
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let Some((kind, value)) = line.split_once(':') else {
                return Err(bad(format!(
                    "expected `serial:<hex>` or `spki-sha256:<hex or base64url>`, found '{}'",
                    excerpt(line)
                )));
            };
            let value = value.trim();
            match kind.trim().to_ascii_lowercase().as_str() {
                "serial" => {
                    list.serials.insert(parse_serial(value).map_err(bad)?);
                }
                "spki-sha256" => {
                    list.spkis.insert(parse_spki(value).map_err(bad)?);
                }
                other => {
                    return Err(bad(format!(
                        "unknown entry kind '{}'; expected `serial:` or `spki-sha256:`",
                        excerpt(other)
                    )))
                }
            }
        }
        Ok(list)
    }
}

fn parse_serial(value: &str) -> Result<String, String> {
    let hex: String = value.chars().filter(|c| *c != ':').collect();
    if hex.is_empty() {
        return Err("serial: is empty; expected the serial number in hex".into());
    }
    if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "serial '{}' is not hexadecimal ('{}' is not a hex digit)",
            excerpt(value),
            c.escape_debug()
        ));
    }
    let canonical = canonical_serial(&hex);
    if canonical.len() > MAX_SERIAL_HEX {
        return Err(format!(
            "serial has {} hex digits; a certificate serial has at most {MAX_SERIAL_HEX} \
             (20 bytes) — is this an spki-sha256 digest?",
            canonical.len()
        ));
    }
    Ok(canonical)
}

fn parse_spki(value: &str) -> Result<[u8; 32], String> {
    let hex: String = value.chars().filter(|c| *c != ':').collect();
    let bytes = if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        HEXLOWER_PERMISSIVE.decode(hex.as_bytes()).ok()
    } else {
        BASE64URL_NOPAD.decode(value.trim_end_matches('=').as_bytes()).ok()
    };
    match bytes {
        Some(b) if b.len() == 32 => {
            let mut d = [0u8; 32];
            d.copy_from_slice(&b);
            Ok(d)
        }
        _ => Err(format!(
            "spki-sha256 '{}' is not a SHA-256 digest; expected 64 hex digits or 43 base64url characters",
            excerpt(value)
        )),
    }
}

/// The deny-list in force and where it comes from; shared by the server's
/// call guard and whatever reloads it. A reload swaps the whole list at
/// once: a call sees the old list or the new one, never a mix.
#[derive(Debug)]
pub struct DenyListHandle {
    path: Option<PathBuf>,
    current: RwLock<Arc<DenyList>>,
}

impl DenyListHandle {
    /// Loads the list at `path`; None (or an empty path) is no deny-list.
    pub fn open(path: Option<&Path>) -> Result<DenyListHandle, Error> {
        let path = path.filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf);
        let list = match &path {
            Some(p) => DenyList::load(p)?,
            None => DenyList::empty(),
        };
        Ok(DenyListHandle {
            path,
            current: RwLock::new(Arc::new(list)),
        })
    }

    /// The file, if one is configured.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The list in force.
    pub fn current(&self) -> Arc<DenyList> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the file and puts the new list in force; returns its
    /// number of entries. On any error the previous list stays in force.
    /// Without a configured file there is nothing to read: Ok(0).
    pub fn reload(&self) -> Result<usize, Error> {
        let Some(p) = &self.path else {
            return Ok(0);
        };
        let list = DenyList::load(p)?;
        let n = list.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(list);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DenyList, Error> {
        DenyList::parse(text, Path::new("deny.txt"))
    }

    fn id(serial: &str, spki: u8) -> CertId {
        CertId {
            serial: canonical_serial(serial),
            spki_sha256: [spki; 32],
        }
    }

    #[test]
    fn serials_ignore_case_colons_and_leading_zeros() {
        let l = parse("# comment\n\nserial:00:0A:bc:DE  # trailing comment\n").unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l.matches(&id("abcde", 1)), Some(Match::Serial));
        assert_eq!(l.matches(&id("00abcde", 1)), Some(Match::Serial));
        assert_eq!(l.matches(&id("abcdf", 1)), None);
    }

    #[test]
    fn spki_in_hex_or_base64url() {
        let d = [7u8; 32];
        let text = format!(
            "spki-sha256:{}\nSPKI-SHA256: {}\n",
            HEXLOWER_PERMISSIVE.encode(&d).to_uppercase(),
            BASE64URL_NOPAD.encode(&[9u8; 32])
        );
        let l = parse(&text).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.matches(&id("1", 7)), Some(Match::SpkiSha256));
        assert_eq!(l.matches(&id("1", 9)), Some(Match::SpkiSha256));
        assert_eq!(l.matches(&id("1", 8)), None);
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        for (text, line, what) in [
            ("serial:01\nserial:xyz\n", 2, "not hexadecimal"),
            ("\n\nfingerprint:00\n", 3, "unknown entry kind"),
            ("just-a-line\n", 1, "expected `serial:<hex>`"),
            ("serial:\n", 1, "empty"),
            ("spki-sha256:abcd\n", 1, "not a SHA-256 digest"),
            (&format!("serial:{}\n", "ab".repeat(32)), 1, "spki-sha256 digest?"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("deny.txt, line {line}: ")), "{e}");
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn reload_keeps_the_previous_list_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("deny.txt");
        std::fs::write(&p, "serial:01\n").unwrap();
        let h = DenyListHandle::open(Some(&p)).unwrap();
        assert_eq!(h.current().len(), 1);
        std::fs::write(&p, "serial:01\nserial:02\n").unwrap();
        assert_eq!(h.reload().unwrap(), 2);
        std::fs::write(&p, "serial:zz\n").unwrap();
        assert!(h.reload().is_err());
        assert_eq!(h.current().len(), 2);
        assert!(DenyListHandle::open(Some(Path::new(""))).unwrap().path().is_none());
    }
}
