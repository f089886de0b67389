//! Helpers of the integration tests; the test files next to this directory
//! hold the tests.
pub mod daemon;
pub mod harness;
pub mod webauthn;
