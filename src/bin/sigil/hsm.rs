//! `sigil hsm`: the HSM token (local; no server involved).
use std::path::{Path, PathBuf};

use clap::Subcommand;
use secrecy::SecretString;
use sigil::config::Config;
use sigil::Error;

use crate::off_runtime;

/// The `sigil hsm` commands.
#[derive(Subcommand)]
pub enum HsmCmd {
    /// Create the token if absent, then the approval and secrets keys if absent.
    /// The SO PIN comes from SIGIL_HSM_SO_PIN or --so-pin-file; the user PIN
    /// as configured for sigild (SIGIL_HSM_PIN or hsm.pin_file).
    Init {
        /// File holding the security officer PIN.
        #[arg(long, default_value = "hsm/so-pin")]
        so_pin_file: PathBuf,
    },
}

/// Runs a `sigil hsm` command.
pub async fn run(cmd: HsmCmd, config: Option<&Path>) -> Result<(), Error> {
    match cmd {
        HsmCmd::Init { so_pin_file } => init(&so_pin_file, config).await,
    }
}

/// `sigil hsm init`: creates what is missing of the token and its keys,
/// and says what it did.
async fn init(so_pin_file: &Path, config: Option<&Path>) -> Result<(), Error> {
    let cfg = Config::load(config)?;
    let so_pin = match std::env::var("SIGIL_HSM_SO_PIN") {
        Ok(p) if !p.is_empty() => SecretString::from(p),
        _ => SecretString::from(
            std::fs::read_to_string(so_pin_file)
                .map_err(|e| {
                    Error::invalid(
                        "so_pin",
                        format!("set SIGIL_HSM_SO_PIN or create {}: {e}", so_pin_file.display()),
                    )
                })?
                .trim()
                .to_string(),
        ),
    };
    let pin = sigil::signer::read_pin(&cfg.hsm)?;
    let done = off_runtime(move || sigil::signer::init_token(&cfg, &so_pin, &pin)).await?;
    if done.is_empty() {
        println!("token and keys already present; nothing to do");
    }
    for line in done {
        println!("{line}");
    }
    Ok(())
}
