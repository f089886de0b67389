//! WebAuthn / FIDO2 factor: registration and assertion ceremonies
//! (webauthn-rs-core), with Sigil's policy on top.
//!
//! Synchronous and store-agnostic: every function takes what it needs and
//! returns what the caller must persist.
//!
//! ```text
//! begin_registration ──▶ (options JSON → browser, state JSON → store, single use, TTL)
//! finish_registration(state, browser JSON) ──▶ StoredCredential (caller stores it)
//! begin_assertion(creds, challenge, uv) ──▶ (options JSON → browser, state JSON → store)
//! finish_assertion(state, browser JSON, creds) ──▶ Assertion (new counter + evidence)
//! ```
//!
//! For approvals the assertion challenge is not random: the caller computes
//! [`sigil_verify::webauthn_challenge`]`(nonce, intent_sha256)` and
//! [`Webauthn::begin_assertion`] puts exactly those 32 bytes both into the
//! options the browser signs and into the state the response is checked
//! against, so the user's authenticator signs the intent and a third party
//! can re-verify it from [`Assertion::evidence`].
//!
//! Only ES256 (ECDSA P-256) credentials are requested and accepted, because
//! that is what `sigil-verify` re-verifies. Every authenticator on the
//! market supports it.
//!
//! ## Errors
//! - malformed browser JSON, base64url or CBOR: [`Error::InvalidArgument`]
//!   on field `credential` (registration) or `assertion`;
//! - an assertion by a credential not among the caller's: [`Error::NotFound`];
//! - a response that parses but does not verify (origin, rpId, challenge,
//!   signature, UP/UV, attestation, AAGUID allow-list):
//!   [`Error::PermissionDenied`] naming the reason;
//! - an unreadable state or stored credential: [`Error::Internal`];
//! - a signature counter that did not increase:
//!   [`AssertionError::PossiblyCloned`].
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sigil_verify::{b64url, WebauthnEvidence};
use uuid::Uuid;
use webauthn_rs_core::error::WebauthnError;
use webauthn_rs_core::proto::{
    AttestationCaList, AttestationCaListBuilder, AttestationConveyancePreference, AttestationMetadata,
    AuthenticationState, COSEAlgorithm, COSEKeyType, CollectedClientData, Credential, ECDSACurve,
    ParsedAttestationData, PublicKeyCredential, RegisterPublicKeyCredential, RegistrationState, UserVerificationPolicy,
};
use webauthn_rs_core::WebauthnCore;

use crate::error::{Error, Reason};

mod cbor;
#[cfg(test)]
mod tests;

use cbor::flags;
/// What [`Webauthn::finish_registration`] reads from an attestation object
/// before webauthn-rs-core verifies it, and the reader itself (public for
/// fuzzing; a caller never needs it).
pub use cbor::{registration as read_attestation_object, Registration as AttestationFacts};

/// Largest browser response accepted, in bytes of JSON. Attestations with
/// certificate chains are a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Longest user handle (WebAuthn §5.4.3: at most 64 bytes).
pub const MAX_USER_HANDLE: usize = 64;

/// Format version of the ceremony state JSON this module writes.
const STATE_VERSION: u32 = 1;

/// Action whose approvals synced passkeys may not give (unless allowed).
const WITHDRAWAL: &str = "withdrawal";
/// Action whose presence in `require_uv_for` makes registration require UV.
const ENROLL_FACTOR: &str = "enroll_factor";

/// `[webauthn]` configuration section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebauthnPolicy {
    /// Relying party id: the registrable domain the credentials are scoped
    /// to (`localhost` in development). Every origin must be this host or a
    /// subdomain of it.
    pub rp_id: String,
    /// Relying party name shown by browsers.
    pub rp_name: String,
    /// Allowed origins, exactly (`scheme://host[:port]`, no path). Subdomains
    /// and other ports are not implied.
    pub origins: Vec<String>,
    /// Action names (`withdrawal`, `enroll_factor`, ...) whose approvals need
    /// user verification (PIN or biometric), not only presence. When it
    /// contains `enroll_factor`, registration itself requires UV, and then
    /// webauthn-rs requires UV on every later assertion of that credential.
    pub require_uv_for: Vec<String>,
    /// Attestation conveyance requested at registration: `none`, `indirect`
    /// or `direct`. Must not be `none` when attestation roots or an AAGUID
    /// allow-list are configured.
    pub attestation: String,
    /// AAGUIDs of the authenticator models that may register. Empty: any
    /// authenticator. When set, a registration must carry an attestation
    /// certificate chain (packed or tpm format) that verifies up to one of
    /// [`attestation_ca_pem`](Self::attestation_ca_pem) and names an
    /// AAGUID on this list; `none` and self attestation are refused.
    pub aaguid_allow_list: Vec<Uuid>,
    /// PEM files with the attestation root CA certificates of the allowed
    /// vendors (for example Yubico's FIDO root), one or more certificates
    /// per file. Required when `aaguid_allow_list` is set: without roots an
    /// attestation is only signed by a certificate the authenticator itself
    /// brought, and any software could claim any AAGUID. When set with an
    /// empty allow-list, any model under these roots may register.
    pub attestation_ca_pem: Vec<PathBuf>,
    /// Whether backup-eligible (synced) passkeys may approve withdrawals.
    /// Default false: only device-bound credentials approve withdrawals.
    pub synced_passkeys_may_withdraw: bool,
    /// Lifetime of a ceremony, seconds (1..=3600): the browser timeout in the
    /// options, and the TTL the caller must give the stored state.
    pub ceremony_ttl_seconds: i64,
}

impl Default for WebauthnPolicy {
    fn default() -> Self {
        Self {
            rp_id: "localhost".into(),
            rp_name: "Sigil".into(),
            origins: vec!["https://localhost:8443".into(), "http://localhost:8080".into()],
            require_uv_for: vec![WITHDRAWAL.into()],
            attestation: "direct".into(),
            aaguid_allow_list: Vec::new(),
            attestation_ca_pem: Vec::new(),
            synced_passkeys_may_withdraw: false,
            ceremony_ttl_seconds: 300,
        }
    }
}

impl WebauthnPolicy {
    /// True when approving `action` needs user verification.
    pub fn uv_required_for(&self, action: &str) -> bool {
        self.require_uv_for.iter().any(|a| a == action)
    }
}

/// What the caller stores per WebAuthn credential. Public data only: the
/// credential id, the public key and flags; no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCredential {
    /// Credential id, unpadded base64url.
    pub credential_id: String,
    /// The webauthn-rs-core `Credential` (its serde JSON). Opaque to the
    /// caller; its counter is ignored in favour of [`counter`](Self::counter).
    pub credential: serde_json::Value,
    /// Signature counter last accepted (update it from [`Assertion::counter`]).
    pub counter: u32,
    /// AAGUID the authenticator reported (None when all zero). Vouched for by
    /// an attestation chain only when the policy has an allow-list.
    pub aaguid: Option<Uuid>,
    /// Backup eligible at registration: a synced passkey.
    pub backup_eligible: bool,
    /// Public key as an uncompressed SEC1 P-256 point `0x04||X||Y`, unpadded
    /// base64url, as [`sigil_verify::verify_webauthn_evidence`] takes it.
    pub public_key_sec1: String,
    /// Attestation statement format (`packed`, `tpm`, `none`, ...).
    pub attestation_format: String,
    /// The user was verified (PIN/biometric) at registration.
    pub user_verified_at_registration: bool,
}

/// A verified assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assertion {
    /// The credential that signed, unpadded base64url.
    pub credential_id: String,
    /// The authenticator's signature counter; store it as the new counter.
    pub counter: u32,
    /// UP flag (always true: an assertion without it is refused).
    pub user_present: bool,
    /// UV flag.
    pub user_verified: bool,
    /// BE flag: a synced passkey.
    pub backup_eligible: bool,
    /// BS flag: currently backed up.
    pub backup_state: bool,
    /// The origin exactly as `clientDataJSON` carries it (already checked
    /// against the policy), for `verify_webauthn_evidence`'s
    /// `expected_origin`.
    pub origin: String,
    /// Raw authenticator data.
    pub authenticator_data: Vec<u8>,
    /// Raw `clientDataJSON`.
    pub client_data_json: Vec<u8>,
    /// Signature (ASN.1 DER ECDSA as the authenticator produced it).
    pub signature: Vec<u8>,
}

impl Assertion {
    /// The evidence an approval carries, for the challenge that was made from
    /// `nonce` (see [`sigil_verify::webauthn_challenge`]).
    pub fn evidence(&self, nonce: &[u8]) -> WebauthnEvidence {
        WebauthnEvidence {
            credential_id: self.credential_id.clone(),
            authenticator_data: b64url::encode(&self.authenticator_data),
            client_data_json: b64url::encode(&self.client_data_json),
            signature: b64url::encode(&self.signature),
            nonce: b64url::encode(nonce),
        }
    }
}

/// Why an assertion was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    /// Refused; see the error.
    Failed(Error),
    /// The assertion verified, but its signature counter is not greater than
    /// the stored one although one of them is non-zero: two copies of the
    /// key may exist. The caller should mark the credential and refuse.
    PossiblyCloned {
        /// The credential, unpadded base64url.
        credential_id: String,
    },
}

impl From<Error> for AssertionError {
    fn from(e: Error) -> Self {
        AssertionError::Failed(e)
    }
}

impl From<AssertionError> for Error {
    fn from(e: AssertionError) -> Self {
        match e {
            AssertionError::Failed(e) => e,
            AssertionError::PossiblyCloned { credential_id } => Error::denied(Reason::FactorSuspectedCloned, format!(
                "WebAuthn credential {credential_id} may be cloned: its signature counter did not increase; it must be reviewed or re-enrolled"
            )),
        }
    }
}

impl std::fmt::Display for AssertionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssertionError::Failed(e) => e.fmt(f),
            AssertionError::PossiblyCloned { credential_id } => write!(
                f,
                "WebAuthn credential {credential_id} may be cloned: its signature counter did not increase"
            ),
        }
    }
}

impl std::error::Error for AssertionError {}

/// Server-side state of a registration (serialized for the caller).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrationCeremony {
    v: u32,
    ceremony: String,
    /// Credential ids (base64url) the user already has.
    excluded: Vec<String>,
    state: RegistrationState,
}

/// Server-side state of an assertion (serialized for the caller).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssertionCeremony {
    v: u32,
    ceremony: String,
    /// The challenge (base64url), also inside `state`.
    challenge: String,
    uv_required: bool,
    /// Credential ids (base64url) offered in allowCredentials.
    allowed: Vec<String>,
    state: AuthenticationState,
}

/// The WebAuthn relying party, built once from the policy.
#[derive(Debug, Clone)]
pub struct Webauthn {
    core: WebauthnCore,
    policy: WebauthnPolicy,
    conveyance: AttestationConveyancePreference,
    registration_uv: UserVerificationPolicy,
    attestation_cas: Option<AttestationCaList>,
}

impl Webauthn {
    /// Validates the policy and reads the attestation roots it names.
    pub fn new(policy: &WebauthnPolicy) -> Result<Webauthn, Error> {
        let mut roots = Vec::with_capacity(policy.attestation_ca_pem.len());
        for path in &policy.attestation_ca_pem {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Error::invalid(
                    "webauthn.attestation_ca_pem",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            roots.push(text);
        }
        Self::with_attestation_roots(policy, &roots)
    }

    /// Like [`new`](Self::new), with the attestation root certificates given
    /// as PEM text (each string may hold several certificates) instead of
    /// read from `policy.attestation_ca_pem`, which is ignored.
    pub fn with_attestation_roots(policy: &WebauthnPolicy, roots_pem: &[String]) -> Result<Webauthn, Error> {
        let rp_id = policy.rp_id.as_str();
        if rp_id.is_empty()
            || rp_id.starts_with('.')
            || rp_id.ends_with('.')
            || !rp_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(Error::invalid(
                "webauthn.rp_id",
                format!("'{rp_id}' is not a lower-case domain name like example.com or localhost"),
            ));
        }
        if policy.rp_name.trim().is_empty() {
            return Err(Error::invalid("webauthn.rp_name", "must not be empty"));
        }
        if !(1..=3600).contains(&policy.ceremony_ttl_seconds) {
            return Err(Error::invalid(
                "webauthn.ceremony_ttl_seconds",
                "must be between 1 and 3600",
            ));
        }
        if let Some(bad) = policy
            .require_uv_for
            .iter()
            .find(|a| a.is_empty() || !a.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        {
            return Err(Error::invalid(
                "webauthn.require_uv_for",
                format!("'{bad}' is not a lower-case action name like withdrawal"),
            ));
        }
        let conveyance = match policy.attestation.as_str() {
            "none" => AttestationConveyancePreference::None,
            "indirect" => AttestationConveyancePreference::Indirect,
            "direct" => AttestationConveyancePreference::Direct,
            other => {
                return Err(Error::invalid(
                    "webauthn.attestation",
                    format!("'{other}' is not one of none, indirect, direct"),
                ))
            }
        };
        if !policy.aaguid_allow_list.is_empty() && roots_pem.is_empty() {
            return Err(Error::invalid(
                "webauthn.attestation_ca_pem",
                "an AAGUID allow-list needs the attestation root certificates of the allowed authenticators; without them any software can claim an allowed AAGUID",
            ));
        }
        if !roots_pem.is_empty() && policy.attestation == "none" {
            return Err(Error::invalid(
                "webauthn.attestation",
                "must be direct (or indirect) when attestation roots or an AAGUID allow-list are configured; with none, browsers strip the attestation",
            ));
        }

        // Url values come from webauthn-rs-proto's own `url` parsing, so the
        // origins are parsed exactly as clientDataJSON origins will be.
        let parse_origin = |s: &str| {
            serde_json::from_value::<CollectedClientData>(serde_json::json!({
                "type": "webauthn.get", "challenge": "", "origin": s
            }))
            .map(|c| c.origin)
            .map_err(|e| {
                Error::invalid(
                    "webauthn.origins",
                    format!("'{s}' is not an origin like https://example.com: {e}"),
                )
            })
        };
        if policy.origins.is_empty() {
            return Err(Error::invalid("webauthn.origins", "at least one origin is required"));
        }
        let mut origins = Vec::with_capacity(policy.origins.len());
        for s in &policy.origins {
            let url = parse_origin(s)?;
            let host = url.host_str().unwrap_or_default().to_owned();
            let https = url.scheme() == "https";
            let local_http = url.scheme() == "http" && host == "localhost";
            if !(https || local_http)
                || url.path() != "/"
                || url.query().is_some()
                || url.fragment().is_some()
                || !url.username().is_empty()
            {
                return Err(Error::invalid(
                    "webauthn.origins",
                    format!("'{s}' must be https://host[:port] (http only for localhost), without path, query or credentials"),
                ));
            }
            if host != rp_id && !host.ends_with(&format!(".{rp_id}")) {
                return Err(Error::invalid(
                    "webauthn.origins",
                    format!("the host of '{s}' is neither rp_id '{rp_id}' nor a subdomain of it; browsers would refuse every ceremony"),
                ));
            }
            origins.push(url);
        }

        let attestation_cas = attestation_ca_list(&policy.aaguid_allow_list, roots_pem)?;
        let ttl = u64::try_from(policy.ceremony_ttl_seconds).unwrap_or(300);
        let core = WebauthnCore::new_unsafe_experts_only(
            &policy.rp_name,
            rp_id,
            origins,
            Duration::from_secs(ttl),
            Some(false),
            Some(false),
        );
        let registration_uv = if policy.uv_required_for(ENROLL_FACTOR) {
            UserVerificationPolicy::Required
        } else {
            UserVerificationPolicy::Preferred
        };
        Ok(Webauthn {
            core,
            policy: policy.clone(),
            conveyance,
            registration_uv,
            attestation_cas,
        })
    }

    /// The policy this relying party was built from.
    pub fn policy(&self) -> &WebauthnPolicy {
        &self.policy
    }

    /// True when approving `action` needs user verification.
    pub fn uv_required_for(&self, action: &str) -> bool {
        self.policy.uv_required_for(action)
    }

    /// Whether `cred` may approve `action`: a backup-eligible (synced)
    /// passkey may not approve a withdrawal unless the policy allows it.
    pub fn may_approve(&self, action: &str, cred: &StoredCredential) -> Result<(), Error> {
        if action == WITHDRAWAL && cred.backup_eligible && !self.policy.synced_passkeys_may_withdraw {
            return Err(Error::denied(Reason::FactorNotAllowed, format!(
                "WebAuthn credential {} is a synced passkey (backup eligible); only a device-bound security key may approve withdrawals",
                cred.credential_id
            )));
        }
        Ok(())
    }

    /// Starts a registration. Returns the `{"publicKey": {...}}` options
    /// JSON for `navigator.credentials.create` and the state JSON the caller
    /// stores single-use with a TTL of `ceremony_ttl_seconds`.
    ///
    /// `user_handle` is the stable, opaque WebAuthn user id (1 to 64 bytes,
    /// e.g. 16 random bytes kept per user; not the user name). `exclude` are
    /// the user's existing credentials, which may not register again.
    pub fn begin_registration(
        &self,
        user_handle: &[u8],
        user_name: &str,
        display_name: &str,
        exclude: &[StoredCredential],
    ) -> Result<(String, String), Error> {
        if user_handle.is_empty() || user_handle.len() > MAX_USER_HANDLE {
            return Err(Error::invalid(
                "user_handle",
                format!("must be 1 to {MAX_USER_HANDLE} bytes, got {}", user_handle.len()),
            ));
        }
        if user_name.trim().is_empty() || display_name.trim().is_empty() {
            return Err(Error::invalid(
                "user_name",
                "user name and display name must not be empty",
            ));
        }
        let mut excluded_ids = Vec::with_capacity(exclude.len());
        for c in exclude {
            excluded_ids.push(stored_id(c)?);
        }
        let builder = self
            .core
            .new_challenge_register_builder(user_handle, user_name, display_name)
            .map_err(|e| Error::invalid("user_name", format!("refused by webauthn-rs: {e}")))?
            .attestation(self.conveyance.clone())
            .user_verification_policy(self.registration_uv)
            .exclude_credentials((!excluded_ids.is_empty()).then(|| excluded_ids.clone()))
            .credential_algorithms(vec![COSEAlgorithm::ES256])
            .require_resident_key(false)
            .reject_synchronised_authenticators(false);
        let (options, state) = self
            .core
            .generate_challenge_register(builder)
            .map_err(|e| Error::Internal(format!("cannot start a WebAuthn registration: {e}")))?;
        let ceremony = RegistrationCeremony {
            v: STATE_VERSION,
            ceremony: "registration".into(),
            excluded: excluded_ids.iter().map(|id| b64url::encode(id)).collect(),
            state,
        };
        Ok((to_json(&options)?, to_json(&ceremony)?))
    }

    /// Verifies the browser's `RegisterPublicKeyCredential` JSON against the
    /// state: challenge, origin, rpId hash, UP, UV when registration requires
    /// it, ES256 key, attestation signature and, with an allow-list, the
    /// attestation chain and AAGUID. Returns the credential to store.
    pub fn finish_registration(&self, state_json: &str, response_json: &str) -> Result<StoredCredential, Error> {
        let ceremony: RegistrationCeremony = read_state(state_json, "registration")?;
        let reg: RegisterPublicKeyCredential = parse_response(response_json, "credential")?;
        if reg.type_ != "public-key" {
            return Err(Error::invalid(
                "credential",
                format!("type is '{}', expected 'public-key'", excerpt(&reg.type_)),
            ));
        }
        check_id(&reg.id, &reg.raw_id, "credential")?;
        let origin = client_origin(&reg.response.client_data_json, "credential")?;
        let facts = cbor::registration(&reg.response.attestation_object).map_err(|why| {
            Error::invalid(
                "credential",
                format!("response.attestationObject is not a valid attestation object: {why}"),
            )
        })?;
        if facts.credential_id != reg.raw_id {
            return Err(Error::invalid(
                "credential",
                "rawId differs from the credential id in the authenticator data",
            ));
        }
        let credential_id = b64url::encode(&facts.credential_id);
        if ceremony.excluded.contains(&credential_id) {
            return Err(Error::denied(
                Reason::AlreadyEnrolled,
                format!("WebAuthn credential {credential_id} is already registered for this user"),
            ));
        }
        let aaguid = Uuid::from_bytes(facts.aaguid);
        let ctx = Ctx {
            field: "credential",
            origin: &origin,
            fmt: &facts.fmt,
            aaguid: Some(aaguid),
        };
        let cred = self
            .core
            .register_credential(&reg, &ceremony.state, self.attestation_cas.as_ref())
            .map_err(|e| self.refusal(e, &ctx))?;

        if !self.policy.aaguid_allow_list.is_empty() {
            // webauthn-rs-core has already enforced this through the CA list;
            // checked again here so the rule does not rest on one mechanism.
            let chained = matches!(
                cred.attestation.data,
                ParsedAttestationData::Basic(_) | ParsedAttestationData::AttCa(_) | ParsedAttestationData::AnonCa(_)
            );
            let attested = match &cred.attestation.metadata {
                AttestationMetadata::Packed { aaguid } | AttestationMetadata::Tpm { aaguid, .. } => Some(*aaguid),
                _ => None,
            };
            if !chained || attested != Some(aaguid) || !self.policy.aaguid_allow_list.contains(&aaguid) {
                return Err(Error::denied(
                    Reason::AuthenticatorNotAllowed,
                    format!(
                    "authenticator AAGUID {aaguid} ({} attestation) is not attested by an allowed authenticator model",
                    facts.fmt
                ),
                ));
            }
        }

        let public_key_sec1 = sec1_public_key(&cred)?;
        let credential = serde_json::to_value(&cred)
            .map_err(|e| Error::Internal(format!("cannot encode the WebAuthn credential: {e}")))?;
        Ok(StoredCredential {
            credential_id,
            credential,
            counter: cred.counter,
            aaguid: (!aaguid.is_nil()).then_some(aaguid),
            backup_eligible: cred.backup_eligible,
            public_key_sec1: b64url::encode(&public_key_sec1),
            attestation_format: facts.fmt,
            user_verified_at_registration: cred.user_verified,
        })
    }

    /// Starts an assertion whose challenge is exactly `challenge`. Returns
    /// the `{"publicKey": {...}}` options JSON for `navigator.credentials.get`
    /// (allowCredentials = `creds`; userVerification `required` when
    /// `uv_required` or when every credential in `creds` verified the user
    /// at registration, else `preferred`) and the state JSON the caller
    /// stores single-use with a TTL.
    ///
    /// Whatever is asked here, a credential that verified the user at
    /// registration must verify the user again (webauthn-rs-core rule).
    ///
    /// webauthn-rs-core draws a random challenge; it is replaced in both the
    /// options and the state before either leaves this function.
    pub fn begin_assertion(
        &self,
        creds: &[StoredCredential],
        challenge: &[u8; 32],
        uv_required: bool,
    ) -> Result<(String, String), Error> {
        if creds.is_empty() {
            return Err(Error::refused(
                Reason::NoUsableFactor,
                "no WebAuthn credential to ask for an assertion",
            ));
        }
        let mut credentials = Vec::with_capacity(creds.len());
        let mut allowed = Vec::with_capacity(creds.len());
        for c in creds {
            credentials.push(core_credential(c)?);
            allowed.push(c.credential_id.clone());
        }
        // webauthn-rs-core demands UV from a credential that did UV at
        // registration whatever this ceremony asks, so when every offered
        // credential did, the options ask for it too (no client may skip it).
        let uv_required = uv_required || creds.iter().all(|c| c.user_verified_at_registration);
        let policy = if uv_required {
            UserVerificationPolicy::Required
        } else {
            UserVerificationPolicy::Preferred
        };
        let builder = self
            .core
            .new_challenge_authenticate_builder(credentials, Some(policy))
            .map_err(|e| Error::Internal(format!("cannot start a WebAuthn assertion: {e}")))?
            .allow_backup_eligible_upgrade(false);
        let (mut options, state) = self
            .core
            .generate_challenge_authenticate(builder)
            .map_err(|e| Error::Internal(format!("cannot start a WebAuthn assertion: {e}")))?;

        let challenge_b64 = b64url::encode(challenge);
        options.public_key.challenge = challenge.to_vec();
        let state = with_challenge(&state, &challenge_b64)?;

        let ceremony = AssertionCeremony {
            v: STATE_VERSION,
            ceremony: "assertion".into(),
            challenge: challenge_b64,
            uv_required,
            allowed,
            state,
        };
        Ok((to_json(&options)?, to_json(&ceremony)?))
    }

    /// The checks of [`Webauthn::finish_assertion`] that need no
    /// signature: the response's shape, its credential and origin. A
    /// response refused here was not an attempt at the credential (it is
    /// refused as INVALID_ARGUMENT and not counted).
    pub fn precheck_assertion(
        &self,
        state_json: &str,
        response_json: &str,
        creds: &[StoredCredential],
    ) -> Result<(), AssertionError> {
        self.parse_assertion(state_json, response_json, creds).map(|_| ())
    }

    #[allow(clippy::type_complexity)]
    fn parse_assertion<'c>(
        &self,
        state_json: &str,
        response_json: &str,
        creds: &'c [StoredCredential],
    ) -> Result<
        (
            AssertionCeremony,
            PublicKeyCredential,
            String,
            &'c StoredCredential,
            String,
        ),
        AssertionError,
    > {
        let ceremony: AssertionCeremony = read_state(state_json, "assertion")?;
        let rsp: PublicKeyCredential = parse_response(response_json, "assertion")?;
        if rsp.type_ != "public-key" {
            return Err(Error::invalid(
                "assertion",
                format!("type is '{}', expected 'public-key'", excerpt(&rsp.type_)),
            )
            .into());
        }
        check_id(&rsp.id, &rsp.raw_id, "assertion")?;
        let credential_id = b64url::encode(&rsp.raw_id);
        let stored = creds.iter().find(|c| c.credential_id == credential_id).ok_or_else(|| {
            Error::NotFound(format!(
                "WebAuthn credential {} is not registered for this user",
                excerpt(&credential_id)
            ))
        })?;
        if !ceremony.allowed.contains(&credential_id) {
            return Err(Error::denied(
                Reason::FactorRejected,
                format!("WebAuthn credential {credential_id} was not offered in this ceremony"),
            )
            .into());
        }
        let origin = client_origin(&rsp.response.client_data_json, "assertion")?;
        let auth_data = &rsp.response.authenticator_data;
        if auth_data.len() < cbor::AUTH_DATA_MIN {
            return Err(Error::invalid(
                "assertion",
                format!(
                    "response.authenticatorData is {} bytes, at least {} are required",
                    auth_data.len(),
                    cbor::AUTH_DATA_MIN
                ),
            )
            .into());
        }
        Ok((ceremony, rsp, credential_id, stored, origin))
    }

    /// Verifies the browser's `PublicKeyCredential` (assertion) JSON against
    /// the state: the credential is among `creds` (else `NotFound`) and was
    /// offered, then challenge, origin, rpId hash, UP, UV per state and
    /// registration, backup eligibility unchanged, signature, and the
    /// counter against the stored one (see
    /// [`AssertionError::PossiblyCloned`]; a credential that always reports
    /// 0 is accepted).
    pub fn finish_assertion(
        &self,
        state_json: &str,
        response_json: &str,
        creds: &[StoredCredential],
    ) -> Result<Assertion, AssertionError> {
        let (ceremony, rsp, credential_id, stored, origin) = self.parse_assertion(state_json, response_json, creds)?;
        let auth_data = &rsp.response.authenticator_data;
        let cred = core_credential(stored)?;
        let ctx = Ctx {
            field: "assertion",
            origin: &origin,
            fmt: &stored.attestation_format,
            aaguid: stored.aaguid,
        };
        let result = match self.core.authenticate_single_credential(&rsp, &ceremony.state, &cred) {
            Ok(r) => r,
            Err(WebauthnError::CredentialPossibleCompromise) => {
                return Err(AssertionError::PossiblyCloned { credential_id })
            }
            Err(e) => return Err(self.refusal(e, &ctx).into()),
        };
        let flag_byte = auth_data.get(32).copied().unwrap_or(0);
        let user_verified = flag_byte & flags::UV != 0;
        if ceremony.uv_required && !(user_verified && result.user_verified()) {
            // webauthn-rs-core enforced this already (policy Required).
            return Err(Error::denied(
                Reason::FactorRejected,
                "user verification (PIN or biometric) is required but the authenticator did not verify the user",
            )
            .into());
        }
        Ok(Assertion {
            credential_id,
            counter: result.counter(),
            user_present: flag_byte & flags::UP != 0,
            user_verified,
            backup_eligible: flag_byte & flags::BE != 0,
            backup_state: flag_byte & flags::BS != 0,
            origin,
            authenticator_data: rsp.response.authenticator_data.clone(),
            client_data_json: rsp.response.client_data_json.clone(),
            signature: rsp.response.signature.clone(),
        })
    }

    /// Maps a webauthn-rs-core refusal to Sigil's error, naming the reason.
    fn refusal(&self, e: WebauthnError, ctx: &Ctx<'_>) -> Error {
        use WebauthnError as W;
        let field = ctx.field;
        let denied = |m: String| Error::denied(Reason::FactorRejected, m);
        // The authenticator model or its attestation is not accepted: not a
        // failed proof, and no retry with the same authenticator helps.
        let not_allowed = |m: String| Error::denied(Reason::AuthenticatorNotAllowed, m);
        match e {
            W::ParseBase64Failure(_)
            | W::ParseCBORFailure(_)
            | W::ParseJSONFailure(_)
            | W::ParseNOMFailure
            | W::ParseInsufficientBytesAvailable
            | W::COSEKeyInvalidCBORValue
            | W::MissingAttestationCredentialData
            | W::AttestationStatementMapInvalid
            | W::AttestationStatementResponseMissing
            | W::AttestationStatementSigMissing
            | W::AttestationStatementVerMissing
            | W::AttestationStatementX5CMissing
            | W::AttestationStatementX5CInvalid
            | W::AttestationStatementAlgMissing
            | W::AttestationStatementCertInfoMissing
            | W::AttestationStatementPubAreaMissing
            | W::AttestationLeafCertMissing
            | W::X509DerInvalid => Error::invalid(
                field,
                format!("the authenticator response is malformed: {e}"),
            ),
            W::Configuration
            | W::ChallengePersistenceError
            | W::MissingAttestationCaList
            | W::AttestationCertificateTrustStoreEmpty
            | W::InconsistentUserVerificationPolicy
            | W::InvalidUsername
            | W::CredentialExistCheckError
            | W::CredentialPersistenceError
            | W::CredentialRetrievalError
            | W::CredentialCounterUpdateFailure
            | W::CredentialCompromiseReportFailure => {
                Error::Internal(format!("WebAuthn relying party misconfigured: {e}"))
            }
            W::InvalidClientDataType => denied(format!(
                "clientDataJSON type is not webauthn.{}",
                if field == "assertion" { "get" } else { "create" }
            )),
            W::MismatchedChallenge => denied(
                "the response signs a different challenge than this ceremony issued (replayed, or for another intent)".into(),
            ),
            W::InvalidRPOrigin => denied(format!(
                "origin {} is not allowed; allowed origins: {}",
                excerpt(ctx.origin),
                self.policy.origins.join(", ")
            )),
            W::CredentialCrossOrigin => {
                denied("the ceremony ran in a cross-origin frame, which is not allowed".into())
            }
            W::InvalidRPIDHash => denied(format!(
                "the authenticator data is scoped to another relying party id than '{}'",
                self.policy.rp_id
            )),
            W::UserNotPresent => {
                denied("the authenticator did not assert user presence (UP flag clear)".into())
            }
            W::UserNotVerified => denied(
                "user verification (PIN or biometric) is required but the authenticator did not verify the user".into(),
            ),
            W::AuthenticationFailure | W::SignatureInvalid => denied(
                "the assertion signature does not verify with the credential public key".into(),
            ),
            W::CredentialNotFound => denied("the credential does not match this ceremony".into()),
            W::CredentialBackupEligibilityInconsistent => denied(
                "the credential's backup eligibility changed since registration; it must be re-enrolled".into(),
            ),
            W::CredentialMayNotBeHardwareBound => denied(
                "the authenticator reports a backed-up credential without backup eligibility".into(),
            ),
            W::CredentialAlteredAlgFromRequest => not_allowed(
                "the credential does not use ES256 (ECDSA P-256), the only algorithm Sigil accepts".into(),
            ),
            W::AttestationNotSupported => not_allowed(format!(
                "attestation format '{}' is not supported",
                excerpt(ctx.fmt)
            )),
            W::AttestationNotVerifiable => not_allowed(format!(
                "the authenticator gave no verifiable attestation ({} attestation{}); the AAGUID allow-list requires an attestation certificate chain",
                excerpt(ctx.fmt),
                ctx.aaguid.map(|a| format!(", claimed AAGUID {a}")).unwrap_or_default()
            )),
            W::AttestationChainNotTrusted(_) => not_allowed(
                "the attestation certificate does not chain to a configured attestation root".into(),
            ),
            W::AttestationUntrustedAaguid => not_allowed(format!(
                "authenticator AAGUID {} is not on the allow-list",
                ctx.aaguid.map(|a| a.to_string()).unwrap_or_else(|| "(none)".into())
            )),
            W::AttestationFormatMissingAaguid => not_allowed(format!(
                "{} attestation carries no AAGUID, so the allow-list cannot admit it",
                excerpt(ctx.fmt)
            )),
            W::AttestationCertificateAAGUIDMismatch => not_allowed(
                "the attestation certificate names another AAGUID than the authenticator data".into(),
            ),
            other => denied(format!("WebAuthn verification failed: {other}")),
        }
    }
}

/// Context for error messages.
struct Ctx<'a> {
    field: &'static str,
    origin: &'a str,
    fmt: &'a str,
    aaguid: Option<Uuid>,
}

/// Builds the attestation trust store: every root restricted to the
/// allow-listed AAGUIDs, or (empty allow-list) trusted for any model.
fn attestation_ca_list(allow_list: &[Uuid], roots_pem: &[String]) -> Result<Option<AttestationCaList>, Error> {
    if roots_pem.is_empty() {
        return Ok(None);
    }
    let field = "webauthn.attestation_ca_pem";
    let mut blocks = Vec::new();
    for (i, text) in roots_pem.iter().enumerate() {
        let found = pem_certificates(text);
        if found.is_empty() {
            return Err(Error::invalid(
                field,
                format!("entry {i} holds no PEM CERTIFICATE block"),
            ));
        }
        blocks.extend(found);
    }
    if allow_list.is_empty() {
        let mut list = AttestationCaList::default();
        for block in &blocks {
            let one = AttestationCaList::try_from(block.as_bytes())
                .map_err(|e| Error::invalid(field, format!("not a usable CA certificate: {e}")))?;
            list.union(&one);
        }
        return Ok(Some(list));
    }
    let mut builder = AttestationCaListBuilder::new();
    for block in &blocks {
        for aaguid in allow_list {
            builder
                .insert_device_pem(
                    block.as_bytes(),
                    *aaguid,
                    format!("allow-listed authenticator {aaguid}"),
                    BTreeMap::new(),
                )
                .map_err(|e| Error::invalid(field, format!("not a usable CA certificate: {e}")))?;
        }
    }
    Ok(Some(builder.build()))
}

/// The `-----BEGIN CERTIFICATE-----` blocks of a PEM text.
fn pem_certificates(text: &str) -> Vec<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let after = &rest[start..];
        match after.find(END) {
            Some(end) => {
                let stop = end + END.len();
                out.push(format!("{}\n", &after[..stop]));
                rest = &after[stop..];
            }
            None => break,
        }
    }
    out
}

fn to_json<T: Serialize>(v: &T) -> Result<String, Error> {
    serde_json::to_string(v).map_err(|e| Error::Internal(format!("cannot encode WebAuthn JSON: {e}")))
}

/// Reads a ceremony state written by this module.
fn read_state<T: for<'de> Deserialize<'de>>(json: &str, kind: &str) -> Result<T, Error> {
    #[derive(Deserialize)]
    struct Head {
        v: u32,
        ceremony: String,
    }
    let head: Head =
        serde_json::from_str(json).map_err(|e| Error::Internal(format!("WebAuthn {kind} state unreadable: {e}")))?;
    if head.v != STATE_VERSION {
        return Err(Error::Internal(format!(
            "WebAuthn {kind} state version {} is not supported",
            head.v
        )));
    }
    if head.ceremony != kind {
        return Err(Error::Internal(format!(
            "WebAuthn state is for a {} ceremony, not a {kind}",
            excerpt(&head.ceremony)
        )));
    }
    serde_json::from_str(json).map_err(|e| Error::Internal(format!("WebAuthn {kind} state unreadable: {e}")))
}

/// Parses the browser's JSON, with an actionable message when it is not.
fn parse_response<T: for<'de> Deserialize<'de>>(json: &str, field: &str) -> Result<T, Error> {
    if json.len() > MAX_RESPONSE_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "the response is {} bytes; at most {MAX_RESPONSE_BYTES} are accepted",
                json.len()
            ),
        ));
    }
    let what = if field == "credential" {
        "navigator.credentials.create() result (id, rawId, type, response.attestationObject, response.clientDataJSON)"
    } else {
        "navigator.credentials.get() result (id, rawId, type, response.authenticatorData, response.clientDataJSON, response.signature)"
    };
    serde_json::from_str(json).map_err(|e| {
        Error::invalid(
            field,
            format!("not the JSON of a {what} with binary members as unpadded base64url: {e}"),
        )
    })
}

/// `id` must be the base64url of `rawId`.
fn check_id(id: &str, raw_id: &[u8], field: &str) -> Result<(), Error> {
    if raw_id.is_empty() {
        return Err(Error::invalid(field, "rawId is empty"));
    }
    match b64url::decode(id) {
        Ok(bytes) if bytes == raw_id => Ok(()),
        Ok(_) => Err(Error::invalid(field, "id and rawId name different credentials")),
        Err(e) => Err(Error::invalid(field, format!("id is not unpadded base64url: {e}"))),
    }
}

/// The `origin` member of clientDataJSON, which must be JSON with string
/// `type`, `challenge` and `origin`.
fn client_origin(client_data_json: &[u8], field: &str) -> Result<String, Error> {
    #[derive(Deserialize)]
    struct Members {
        #[serde(rename = "type")]
        _type: String,
        #[serde(rename = "challenge")]
        _challenge: String,
        origin: String,
    }
    serde_json::from_slice::<Members>(client_data_json)
        .map(|m| m.origin)
        .map_err(|e| {
            Error::invalid(
                field,
                format!("response.clientDataJSON is not JSON with string type, challenge and origin: {e}"),
            )
        })
}

/// Credential id bytes of a stored credential.
fn stored_id(c: &StoredCredential) -> Result<Vec<u8>, Error> {
    b64url::decode(&c.credential_id).map_err(|e| {
        Error::Internal(format!(
            "stored WebAuthn credential id '{}' unreadable: {e}",
            excerpt(&c.credential_id)
        ))
    })
}

/// The webauthn-rs-core credential of a stored one, with the stored counter.
fn core_credential(c: &StoredCredential) -> Result<Credential, Error> {
    let id = stored_id(c)?;
    let mut cred: Credential = serde_json::from_value(c.credential.clone()).map_err(|e| {
        Error::Internal(format!(
            "stored WebAuthn credential {} unreadable: {e}",
            c.credential_id
        ))
    })?;
    if cred.cred_id != id {
        return Err(Error::Internal(format!(
            "stored WebAuthn credential {} holds another credential id",
            c.credential_id
        )));
    }
    cred.counter = c.counter;
    Ok(cred)
}

/// Sets the challenge of an authentication state. Its fields are private to
/// webauthn-rs-core, so this goes through its serde form (`"challenge"`:
/// unpadded base64url) and checks the result reads back as intended.
fn with_challenge(state: &AuthenticationState, challenge_b64: &str) -> Result<AuthenticationState, Error> {
    let broken = |why: &str| {
        Error::Internal(format!(
            "cannot bind the WebAuthn challenge: the webauthn-rs-core authentication state {why}"
        ))
    };
    let mut value = serde_json::to_value(state).map_err(|e| broken(&format!("does not serialize: {e}")))?;
    match value.get_mut("challenge") {
        Some(slot @ serde_json::Value::String(_)) => *slot = serde_json::Value::String(challenge_b64.to_owned()),
        _ => return Err(broken("has no string member 'challenge'")),
    }
    let bound: AuthenticationState =
        serde_json::from_value(value).map_err(|e| broken(&format!("does not read back: {e}")))?;
    let check = serde_json::to_value(&bound).map_err(|e| broken(&format!("does not serialize: {e}")))?;
    if check.get("challenge").and_then(|c| c.as_str()) != Some(challenge_b64) {
        return Err(broken("did not keep the challenge"));
    }
    Ok(bound)
}

/// The credential's key as an uncompressed SEC1 P-256 point.
fn sec1_public_key(cred: &Credential) -> Result<Vec<u8>, Error> {
    match &cred.cred.key {
        COSEKeyType::EC_EC2(k)
            if cred.cred.type_ == COSEAlgorithm::ES256
                && k.curve == ECDSACurve::SECP256R1
                && k.x.len() == 32
                && k.y.len() == 32 =>
        {
            let mut out = Vec::with_capacity(65);
            out.push(0x04);
            out.extend_from_slice(&k.x);
            out.extend_from_slice(&k.y);
            Ok(out)
        }
        _ => Err(Error::denied(
            Reason::AuthenticatorNotAllowed,
            "the credential is not an ES256 (ECDSA P-256) key, the only kind Sigil accepts",
        )),
    }
}

/// A bounded, printable excerpt of untrusted text for messages.
fn excerpt(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}
