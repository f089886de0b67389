//! Integration tests: real sigild code over real mTLS, real SoftHSM tokens,
//! real sled stores. See `support/harness.rs`; the helpers of every test
//! file are in `support/`, the files here hold tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod approvals;
mod audit_log;
mod bad_input;
mod binary;
mod cli;
mod cli_staff;
mod crash;
mod denylist;
mod hsm_outage;
mod lifecycle;
mod logs;
mod metrics;
mod one_call;
mod pg_outage;
mod pg_tools;
mod protections;
mod quorum;
mod reasons;
mod replicas;
mod retention;
mod roles;
mod support;
mod totp;
mod webauthn;
mod yubikey;
