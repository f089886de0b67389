//! `sigil totp-code`: the current code of a TOTP secret (development aid).
use clap::Args;
use sigil::Error;

use crate::unix_now;

/// The arguments of `sigil totp-code`.
#[derive(Args)]
pub struct TotpCode {
    /// The base32 secret.
    #[arg(long)]
    secret: String,
}

/// `sigil totp-code`: prints the 6-digit code of the secret's current time step.
pub fn code(args: TotpCode) -> Result<(), Error> {
    let seed = data_encoding::BASE32_NOPAD
        .decode(args.secret.trim().trim_end_matches('=').to_ascii_uppercase().as_bytes())
        .map_err(|e| Error::invalid("secret", format!("not base32: {e}")))?;
    let now = unix_now()?;
    println!(
        "{}",
        sigil::factor::totp::code_at_step(&seed, sigil::factor::totp::step_at(now))
    );
    Ok(())
}
