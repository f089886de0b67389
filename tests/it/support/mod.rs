//! Helpers of the integration tests; the test files next to this directory
//! hold the tests. `harness` (the in-process server) and `daemon` (the real
//! binaries) serve every file; the others are named for what they help
//! with.
pub mod calls;
pub mod cli;
pub mod crash;
pub mod daemon;
pub mod denylist;
pub mod files;
pub mod harness;
pub mod lifecycle;
pub mod logs;
pub mod observe;
pub mod pg;
pub mod tokens;
pub mod webauthn;
pub mod yubikey;
