//! # Sigil
//!
//! A gRPC service (mTLS only) that enrolls second factors and issues
//! withdrawal approvals signed inside an HSM and bound to one exact intent.
//! A withdrawal engine verifies them offline with the `sigil-verify` crate
//! and redeems each exactly once.
//!
//! ## Layout
//! Calls flow downwards only; nothing below `api` knows tonic or protobuf.
//! - [`api`]: tonic services, role guard, pb <-> domain, Error -> Status
//! - [`server`]: mTLS listener, health, reflection, graceful shutdown
//! - [`approval`]: intents, challenges, JWS approvals, redemption
//! - [`factor`]: factor records; [`factor::totp`], [`factor::lockout`]
//! - [`protect`]: policy, address whitelist, locks, suspension, revocation epochs
//! - [`events`], [`audit`]: durable event outbox; hash-chained audit log
//! - [`keys`]: approval-key rotation (next → active → retiring → retired)
//! - [`signer`]: HSM keys (via `sigil-hsm`), JWKS, secret encryption
//! - [`store`]: the storage trait and its sled backend
//! - [`config`], [`clock`], [`error`]
//! - `crates/sigil-verify`: what a withdrawal engine embeds
//! - `crates/sigil-hsm`: PKCS#11 sessions and keys
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
pub mod error;
pub mod events;
pub mod factor;
pub mod keys;
pub mod protect;
pub mod server;
pub mod signer;
pub mod store;

pub use crate::core::Sigil;
pub use crate::error::Error;

/// Generated protobuf types and gRPC stubs for `sigil.v1`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod pb {
    tonic::include_proto!("sigil.v1");
}
