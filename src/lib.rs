//! # Sigil
//!
//! A gRPC service (mTLS only) that enrolls second factors and issues
//! withdrawal approvals signed inside an HSM and bound to one exact intent.
//! A withdrawal engine verifies them offline with the `sigil-verify` crate
//! and redeems each exactly once.
//!
//! ## Layout
//! Modules are layered; each uses only layers below it (checked by
//! `tests/layers.rs`), so nothing imports in a circle and nothing below
//! `api` knows tonic or protobuf. From the bottom:
//! 1. [`model`]: leaf types — actions, factor kinds, device signals,
//!    revocation epochs, id syntax; [`metrics`]: the Prometheus registry
//!    every layer records into. Both import nothing of Sigil's.
//! 2. [`error`]: the one error type, with its machine-readable reasons.
//! 3. [`clock`]; [`store`]: the storage trait, its sled backend, the one
//!    record codec (`store::codec`) and the meta keys (`store::meta`).
//! 4. [`signer`] (HSM keys via `sigil-hsm`, JWKS, secret wrapping),
//!    [`audit`] (hash-chained audit log, its incremental verifier and
//!    archive files), [`events`] (durable event outbox, consumers'
//!    acknowledgements), [`denylist`] (client certificates refused).
//! 5. [`kernel`]: what every service shares — store, signer, clock,
//!    random ids, commit with event wake-up.
//! 6. [`protect`]: protection state and policy — suspensions, revocation
//!    epochs, locks, whitelist records, assets, address formats.
//! 7. [`factor`]: factor records and the [`factor::Factors`] service that
//!    checks proofs (TOTP, WebAuthn, YubiKey) with attempts counted first.
//! 8. [`approval`]: the [`approval::Approvals`] service — begin,
//!    complete, issue, redeem, step-up, one file each; staff quorums,
//!    delays and cancellation ([`approval::quorum`]) and the stored policy
//!    with its guarded changes ([`approval::governance`]).
//! 9. [`enroll`] (enroll, list and remove factors), [`ops`] (whitelist,
//!    anti-phishing code, revocation, suspension, sweep, logs and their
//!    retention and archiving), [`keys`]
//!    (approval-key rotation, secrets key).
//! 10. [`backup`]: backup and restore files.
//! 11. [`config`]: the TOML file; each section is owned by the module that
//!     uses it and re-exported here.
//! 12. [`core`]: [`Sigil`], the composition root that builds the services
//!     with their sections.
//! 13. [`pb`]: the generated protobuf types.
//! 14. [`api`] (tonic services, role table, pb <-> domain, Error ->
//!     Status), [`client`] (mTLS client for tools and tests).
//! 15. [`server`]: mTLS listener, deny-list guard, health, reflection,
//!     graceful shutdown, the RPC metrics layer and the `/metrics`
//!     endpoint.
//!
//! Beside the crate: `crates/sigil-verify` (what a withdrawal engine
//! embeds) and `crates/sigil-hsm` (PKCS#11 sessions and keys).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod approval;
pub mod audit;
pub mod backup;
pub mod client;
pub mod clock;
pub mod config;
pub mod core;
pub mod denylist;
pub mod enroll;
pub mod error;
pub mod events;
pub mod factor;
pub mod kernel;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod protect;
pub mod server;
pub mod signer;
pub mod store;

pub use crate::approval::{Approvals, Begun, Issued, Proof, Redeemed};
pub use crate::config::Config;
pub use crate::core::Sigil;
pub use crate::enroll::Enrollment;
pub use crate::error::{Error, Reason, Refusal};
pub use crate::factor::{Factors, Kind};
pub use crate::keys::Keys;
pub use crate::model::{Action, DeviceSignals};
pub use crate::ops::Ops;
pub use crate::signer::Signer;
pub use crate::store::{SledStore, Store};

/// Generated protobuf types and gRPC stubs for `sigil.v1`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    tonic::include_proto!("sigil.v1");
}
