//! WebAuthn / FIDO2 factor (in progress).
