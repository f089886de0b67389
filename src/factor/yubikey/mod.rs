//! YubiKey factors (in progress).
