//! A software security key for development: a P-256 key pair in a file
//! that answers WebAuthn registration and assertion options the way a
//! security key and a browser would, so that staff quorums can be tried
//! without hardware. Its private key is only as safe as the file: it is
//! NOT for production.
//!
//! The file (JSON, mode 0600): `{"v":1,"rp_id":…,"credential_id":…,
//! "pkcs8":…,"counter":n}`, binary members in unpadded base64url. Every
//! assertion writes the incremented signature counter back before its
//! response leaves, so that a counter is never used twice (the server
//! takes a counter that does not increase for a cloned key).
//!
//! Registration: `none` attestation, authenticator data
//! `SHA-256(rp id) || UP|UV|AT || counter || 16 zero bytes (AAGUID) ||
//! credential id length || credential id || COSE_Key`. Assertion:
//! `SHA-256(rp id) || UP|UV || counter + 1`, signed (ES256, ASN.1) with
//! `SHA-256(clientDataJSON)`.
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sigil::config::Config;
use sigil::Error;
use sigil_verify::b64url;
use zeroize::Zeroizing;

/// The origin of the development configuration (`[webauthn] origins`'
/// first default), used without `--origin` or a `--config` file.
pub const DEFAULT_ORIGIN: &str = "https://localhost:8443";

/// Authenticator data flags (WebAuthn §6.1): user present, user verified,
/// attested credential data included.
const UP: u8 = 0x01;
const UV: u8 = 0x04;
const AT: u8 = 0x40;

/// COSE algorithm ES256.
const ES256: i64 = -7;

/// The stored form of a soft key.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    /// Format version (1).
    v: u32,
    /// The relying party id the credential is scoped to.
    rp_id: String,
    /// Credential id, unpadded base64url.
    credential_id: String,
    /// PKCS#8 of the P-256 key pair, unpadded base64url.
    pkcs8: String,
    /// Signature counter of the last assertion.
    counter: u32,
}

/// A soft key loaded from (or just written to) its file.
pub struct SoftKey {
    path: PathBuf,
    file: KeyFile,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

/// The origin clientDataJSON names: `--origin`, else the first of the
/// `--config` file's `[webauthn] origins`, else [`DEFAULT_ORIGIN`].
pub fn origin(flag: Option<String>, config: Option<&Path>) -> Result<String, Error> {
    if let Some(o) = flag {
        return Ok(o.trim_end_matches('/').to_string());
    }
    if let Some(p) = config {
        if let Some(o) = Config::load_client(p)?.webauthn.origins.first() {
            return Ok(o.clone());
        }
    }
    Ok(DEFAULT_ORIGIN.to_string())
}

/// The warning every use of a soft key prints.
pub fn warn(path: &Path) {
    eprintln!(
        "sigil: WARNING: DEVELOPMENT KEY, NOT FOR PRODUCTION: the soft key {} is a private key in a file; \
         anyone who can read the file can sign as its staff member. Production staff register hardware \
         security keys.",
        path.display()
    );
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
}

/// CBOR byte string head for `len` bytes (len < 65536).
fn cbor_bytes_head(len: usize) -> Result<Vec<u8>, Error> {
    Ok(match len {
        0..=23 => vec![0x40 | len as u8],
        24..=255 => vec![0x58, len as u8],
        _ => {
            let mut v = vec![0x59];
            v.extend_from_slice(
                &u16::try_from(len)
                    .map_err(|_| Error::Internal("authenticator data too long".into()))?
                    .to_be_bytes(),
            );
            v
        }
    })
}

/// The `publicKey` member of WebAuthn options JSON as the server sends them.
fn public_key_options(options_json: &str) -> Result<Value, Error> {
    let mut v: Value = serde_json::from_str(options_json)
        .map_err(|e| Error::Internal(format!("the server's WebAuthn options are not JSON: {e}")))?;
    match v.get_mut("publicKey").map(Value::take) {
        Some(pk @ Value::Object(_)) => Ok(pk),
        _ => Err(Error::Internal(
            "the server's WebAuthn options have no publicKey member".into(),
        )),
    }
}

/// A string member of WebAuthn options, or an error naming it.
fn member<'a>(v: &'a Value, path: &[&str]) -> Result<&'a str, Error> {
    let mut slot = v;
    for key in path {
        slot = &slot[*key];
    }
    slot.as_str()
        .ok_or_else(|| Error::Internal(format!("the server's WebAuthn options have no {}", path.join("."))))
}

/// The credential ids listed in `options[name]` (`excludeCredentials`,
/// `allowCredentials`), as bytes.
fn credential_ids(options: &Value, name: &str) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    for c in options[name].as_array().into_iter().flatten() {
        let id = c["id"]
            .as_str()
            .ok_or_else(|| Error::Internal(format!("an entry of {name} has no id")))?;
        out.push(b64url::decode(id).map_err(|e| Error::Internal(format!("a credential id of {name}: {e}")))?);
    }
    Ok(out)
}

/// clientDataJSON of a ceremony (`webauthn.create` or `webauthn.get`).
fn client_data(kind: &str, challenge: &str, origin: &str) -> Vec<u8> {
    json!({
        "type": kind,
        "challenge": challenge,
        "origin": origin,
        "crossOrigin": false,
    })
    .to_string()
    .into_bytes()
}

impl SoftKey {
    /// Loads the soft key of `path`; `None` when there is no such file.
    /// A file that is not a soft key is an error (it is never overwritten).
    pub fn load(path: &Path) -> Result<Option<Self>, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::invalid(
                    "soft-key",
                    format!("cannot read {}: {e}", path.display()),
                ))
            }
        };
        let not_a_key = |why: String| {
            Error::invalid(
                "soft-key",
                format!(
                    "{} exists and is not a sigil soft key ({why}); it is left as it is",
                    path.display()
                ),
            )
        };
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| not_a_key(e.to_string()))?;
        if file.v != 1 {
            return Err(not_a_key(format!("format version {}, expected 1", file.v)));
        }
        let pkcs8 = Zeroizing::new(b64url::decode(&file.pkcs8).map_err(|e| not_a_key(format!("pkcs8: {e}")))?);
        b64url::decode(&file.credential_id).map_err(|e| not_a_key(format!("credential_id: {e}")))?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
            .map_err(|e| not_a_key(format!("pkcs8 is not a P-256 key pair: {e}")))?;
        Ok(Some(Self {
            path: path.to_path_buf(),
            file,
            key,
            rng,
        }))
    }

    /// Loads the soft key of `path`, which must exist.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::load(path)?.ok_or_else(|| {
            Error::invalid(
                "soft-key",
                format!(
                    "{} does not exist; register a soft key first (sigil staff register-key STAFF_ID --soft-key FILE)",
                    path.display()
                ),
            )
        })
    }

    /// Generates a new key pair and credential id for `rp_id` and writes
    /// them to `path`, which must not exist (mode 0600).
    pub fn create(path: &Path, rp_id: &str) -> Result<Self, Error> {
        let rng = SystemRandom::new();
        let unavailable = |what: &str| Error::Unavailable(format!("cannot generate the soft key's {what}"));
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).map_err(|_| unavailable("key pair"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| unavailable("key pair"))?;
        let mut id = [0u8; 16];
        rng.fill(&mut id).map_err(|_| unavailable("credential id"))?;
        let k = Self {
            path: path.to_path_buf(),
            file: KeyFile {
                v: 1,
                rp_id: rp_id.into(),
                credential_id: b64url::encode(&id),
                pkcs8: b64url::encode(pkcs8.as_ref()),
                counter: 0,
            },
            key,
            rng,
        };
        k.write_new(path)?;
        Ok(k)
    }

    /// The credential id, unpadded base64url.
    pub fn credential_id(&self) -> &str {
        &self.file.credential_id
    }

    /// The file the key lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's JSON text.
    fn text(&self) -> Result<String, Error> {
        let mut s = serde_json::to_string_pretty(&self.file)
            .map_err(|e| Error::Internal(format!("cannot encode the soft key: {e}")))?;
        s.push('\n');
        Ok(s)
    }

    /// Writes the key to `path`, which must not exist, readable by its
    /// owner only, and syncs it.
    fn write_new(&self, path: &Path) -> Result<(), Error> {
        let text = Zeroizing::new(self.text()?);
        let failed = |e: std::io::Error| {
            Error::invalid(
                "soft-key",
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    format!("{} already exists; refusing to overwrite it", path.display())
                } else {
                    format!("cannot write {}: {e}", path.display())
                },
            )
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(failed)?;
        f.write_all(text.as_bytes()).map_err(failed)?;
        f.sync_all().map_err(failed)
    }

    /// Replaces the file with the current state (a new file renamed over
    /// the old one, so that a crash leaves one or the other).
    fn save(&self) -> Result<(), Error> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        self.write_new(&tmp)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::invalid(
                "soft-key",
                format!("cannot replace {}: {e}; the key was not used", self.path.display()),
            )
        })
    }

    /// Answers registration options (`{"publicKey": …}`, as from
    /// BeginStaffKeyRegistration) as a browser at `origin` with this key
    /// would: the RegisterPublicKeyCredential JSON.
    pub fn register(&self, options_json: &str, origin: &str) -> Result<String, Error> {
        let options = public_key_options(options_json)?;
        let rp_id = member(&options, &["rp", "id"])?;
        let challenge = member(&options, &["challenge"])?;
        if rp_id != self.file.rp_id {
            return Err(Error::invalid(
                "soft-key",
                format!(
                    "the soft key in {} is scoped to relying party '{}', the server is '{rp_id}'; use another file",
                    self.path.display(),
                    self.file.rp_id
                ),
            ));
        }
        let es256 = options["pubKeyCredParams"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["alg"].as_i64() == Some(ES256));
        if !es256 {
            return Err(Error::Internal(
                "the server does not accept ES256 keys, the only kind a soft key has".into(),
            ));
        }
        let id = b64url::decode(&self.file.credential_id)
            .map_err(|e| Error::Internal(format!("soft key credential id: {e}")))?;
        if credential_ids(&options, "excludeCredentials")?.contains(&id) {
            return Err(Error::invalid(
                "soft-key",
                format!(
                    "the soft key in {} (credential {}) is already registered for this staff member",
                    self.path.display(),
                    self.file.credential_id
                ),
            ));
        }
        let pk = self.key.public_key().as_ref();
        // COSE_Key {1: 2 (EC2), 3: -7 (ES256), -1: 1 (P-256), -2: x, -3: y}
        let mut cose = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
        cose.extend_from_slice(&pk[1..33]);
        cose.extend_from_slice(&[0x22, 0x58, 0x20]);
        cose.extend_from_slice(&pk[33..65]);
        let mut auth = sha256(rp_id.as_bytes());
        auth.push(UP | UV | AT);
        auth.extend_from_slice(&self.file.counter.to_be_bytes());
        auth.extend_from_slice(&[0; 16]); // AAGUID: none
        auth.extend_from_slice(
            &u16::try_from(id.len())
                .map_err(|_| Error::Internal("credential id too long".into()))?
                .to_be_bytes(),
        );
        auth.extend_from_slice(&id);
        auth.extend_from_slice(&cose);
        // {"fmt": "none", "attStmt": {}, "authData": auth}
        let mut ao = vec![0xa3, 0x63];
        ao.extend_from_slice(b"fmt");
        ao.push(0x64);
        ao.extend_from_slice(b"none");
        ao.push(0x67);
        ao.extend_from_slice(b"attStmt");
        ao.push(0xa0);
        ao.push(0x68);
        ao.extend_from_slice(b"authData");
        ao.extend(cbor_bytes_head(auth.len())?);
        ao.extend_from_slice(&auth);
        let client_data = client_data("webauthn.create", challenge, origin);
        Ok(json!({
            "id": self.file.credential_id,
            "rawId": self.file.credential_id,
            "type": "public-key",
            "response": {
                "attestationObject": b64url::encode(&ao),
                "clientDataJSON": b64url::encode(&client_data),
            },
            "extensions": {},
        })
        .to_string())
    }

    /// Answers assertion options (`{"publicKey": …}`, as from
    /// BeginStaffDecision) as a browser at `origin` with this key would,
    /// after saving the incremented signature counter: the
    /// PublicKeyCredential JSON.
    pub fn assert(&mut self, options_json: &str, origin: &str) -> Result<String, Error> {
        let options = public_key_options(options_json)?;
        let rp_id = member(&options, &["rpId"])?;
        let challenge = member(&options, &["challenge"])?;
        if rp_id != self.file.rp_id {
            return Err(Error::invalid(
                "soft-key",
                format!(
                    "the soft key in {} is scoped to relying party '{}', the server asks for '{rp_id}'",
                    self.path.display(),
                    self.file.rp_id
                ),
            ));
        }
        let id = b64url::decode(&self.file.credential_id)
            .map_err(|e| Error::Internal(format!("soft key credential id: {e}")))?;
        let allowed = credential_ids(&options, "allowCredentials")?;
        if !allowed.contains(&id) {
            return Err(Error::invalid(
                "soft-key",
                format!(
                    "the soft key in {} (credential {}) is not among the staff member's usable keys ({}); \
                     is it this staff member's key, and past its hold?",
                    self.path.display(),
                    self.file.credential_id,
                    allowed.iter().map(|a| b64url::encode(a)).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        self.file.counter = self.file.counter.checked_add(1).ok_or_else(|| {
            Error::invalid(
                "soft-key",
                "the signature counter is exhausted; register a new soft key",
            )
        })?;
        self.save()?;
        let mut auth = sha256(rp_id.as_bytes());
        auth.push(UP | UV);
        auth.extend_from_slice(&self.file.counter.to_be_bytes());
        let client_data = client_data("webauthn.get", challenge, origin);
        let mut signed = auth.clone();
        signed.extend_from_slice(&sha256(&client_data));
        let sig = self
            .key
            .sign(&self.rng, &signed)
            .map_err(|_| Error::Unavailable("the soft key could not sign".into()))?;
        Ok(json!({
            "id": self.file.credential_id,
            "rawId": self.file.credential_id,
            "type": "public-key",
            "response": {
                "authenticatorData": b64url::encode(&auth),
                "clientDataJSON": b64url::encode(&client_data),
                "signature": b64url::encode(sig.as_ref()),
                "userHandle": null,
            },
            "extensions": {},
        })
        .to_string())
    }
}
