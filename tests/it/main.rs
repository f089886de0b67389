//! Integration tests: real sigild code over real mTLS, real SoftHSM tokens,
//! real sled stores. See `harness.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod approvals;
mod bad_input;
mod binary;
mod cli;
mod crash;
mod daemon;
mod denylist;
mod harness;
mod lifecycle;
mod protections;
mod roles;
mod totp;
mod webauthn;
mod yubikey;
