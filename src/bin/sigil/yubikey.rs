//! `sigil yubikey`: programming attached YubiKeys (OTP applet) and
//! registering them as factors, as the frontend would.
use std::path::Path;

use clap::Subcommand;
use sigil::Error;

use crate::conn::Conn;
use crate::rpc::{Factors, OtpCredentials};

/// The `sigil yubikey` commands.
#[derive(Subcommand)]
pub enum YubikeyCmd {
    /// Write a fresh random HMAC-SHA1 secret into a slot of the attached
    /// YubiKey and register it as a factor of the user (the secret goes to
    /// Sigil once, encrypted there under the HSM key, and is shown nowhere).
    Program {
        #[command(flatten)]
        conn: Conn,
        /// The user.
        #[arg(long)]
        user: String,
        /// Slot 1 or 2.
        #[arg(long, default_value_t = 2)]
        slot: u8,
        /// Require a touch for every response.
        #[arg(long)]
        touch: bool,
        /// Name shown to the user.
        #[arg(long, default_value = "YubiKey")]
        nickname: String,
        /// An enroll_factor approval (JWS), when the user already has a factor.
        #[arg(long, default_value = "")]
        step_up: String,
    },
    /// Answer a challenge (hex) with the attached YubiKey's HMAC-SHA1 slot;
    /// prints the 20-byte response as hex.
    Respond {
        /// The challenge, hex (at most 63 bytes).
        #[arg(long)]
        challenge: String,
        #[arg(long, default_value_t = 2)]
        slot: u8,
    },
    /// Write fresh Yubico OTP credentials into a slot of the attached
    /// YubiKey, register them, and confirm with an OTP read from stdin
    /// (touch the key).
    ProgramOtp {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        user: String,
        #[arg(long, default_value_t = 1)]
        slot: u8,
        #[arg(long, default_value = "YubiKey")]
        nickname: String,
        #[arg(long, default_value = "")]
        step_up: String,
    },
    /// Register Yubico OTP credentials from one line of the YubiKey
    /// Personalization tool's CSV log, and confirm with an OTP (--otp or stdin).
    ImportOtp {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        user: String,
        /// The CSV line.
        #[arg(long)]
        csv_line: String,
        /// A fresh OTP from that key (else read from stdin).
        #[arg(long)]
        otp: Option<String>,
        #[arg(long, default_value = "YubiKey")]
        nickname: String,
        #[arg(long, default_value = "")]
        step_up: String,
    },
}

/// Runs a `sigil yubikey` command. Those that need the key itself fail
/// in a build without the `usb` feature.
pub async fn run(cmd: YubikeyCmd, config: Option<&Path>) -> Result<(), Error> {
    match cmd {
        YubikeyCmd::ImportOtp {
            conn,
            user,
            csv_line,
            otp,
            nickname,
            step_up,
        } => import_otp(&conn, config, &user, csv_line, otp, nickname, step_up).await,
        #[cfg(feature = "usb")]
        YubikeyCmd::Respond { challenge, slot } => attached::respond(&challenge, slot).await,
        #[cfg(feature = "usb")]
        YubikeyCmd::Program {
            conn,
            user,
            slot,
            touch,
            nickname,
            step_up,
        } => attached::program(&conn, config, &user, slot, touch, nickname, step_up).await,
        #[cfg(feature = "usb")]
        YubikeyCmd::ProgramOtp {
            conn,
            user,
            slot,
            nickname,
            step_up,
        } => attached::program_otp(&conn, config, &user, slot, nickname, step_up).await,
        #[cfg(not(feature = "usb"))]
        YubikeyCmd::Respond { .. } | YubikeyCmd::Program { .. } | YubikeyCmd::ProgramOtp { .. } => Err(no_usb()),
    }
}

/// `sigil yubikey import-otp`: registers the credentials of a CSV line,
/// then confirms them with an OTP of that key.
async fn import_otp(
    conn: &Conn,
    config: Option<&Path>,
    user: &str,
    csv_line: String,
    otp: Option<String>,
    nickname: String,
    step_up: String,
) -> Result<(), Error> {
    let e = Factors::connect(conn, config)
        .await?
        .begin_yubikey_otp_enrollment(user, nickname, OtpCredentials::Csv(csv_line), step_up)
        .await?;
    let otp = match otp {
        Some(o) => o,
        None => read_otp_from_stdin()?,
    };
    confirm_otp(conn, config, user, &e.factor_id, otp).await
}

/// Reads the OTP a touched YubiKey types, one line of stdin.
fn read_otp_from_stdin() -> Result<String, Error> {
    eprintln!("touch the YubiKey now (it types the OTP here), then Enter:");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::invalid("otp", format!("cannot read stdin: {e}")))?;
    Ok(line.trim().to_string())
}

/// Activates a pending Yubico OTP factor with its first OTP, over a
/// connection of its own.
async fn confirm_otp(
    conn: &Conn,
    config: Option<&Path>,
    user: &str,
    factor_id: &str,
    otp: String,
) -> Result<(), Error> {
    Factors::connect(conn, config)
        .await?
        .confirm_yubikey_otp(user, factor_id, otp)
        .await?;
    println!("YubiKey OTP factor {factor_id} active for {user}");
    Ok(())
}

/// The refusal of the commands that need an attached key, in a build
/// without USB support.
#[cfg(not(feature = "usb"))]
fn no_usb() -> Error {
    Error::Unavailable(
        "this sigil was built without USB support (cargo feature `usb`); no YubiKey can be reached".into(),
    )
}

/// The commands that talk to an attached YubiKey over USB.
#[cfg(feature = "usb")]
mod attached {
    use std::path::Path;

    use ring::rand::SecureRandom;
    use sigil::factor::yubikey::{modhex, usb};
    use sigil::Error;

    use super::{confirm_otp, read_otp_from_stdin};
    use crate::conn::Conn;
    use crate::off_runtime;
    use crate::rpc::{Factors, OtpCredentials};

    /// `sigil yubikey respond`: prints the key's HMAC-SHA1 response to a
    /// hex challenge.
    pub async fn respond(challenge: &str, slot: u8) -> Result<(), Error> {
        let ch = data_encoding::HEXLOWER_PERMISSIVE
            .decode(challenge.trim().as_bytes())
            .map_err(|e| Error::invalid("challenge", format!("not hex: {e}")))?;
        if ch.is_empty() || ch.len() > 63 {
            return Err(Error::invalid(
                "challenge",
                format!("must be 1 to 63 bytes, got {}", ch.len()),
            ));
        }
        let r = off_runtime(move || usb::challenge_response(slot, &ch)).await?;
        println!("{}", data_encoding::HEXLOWER.encode(&r));
        Ok(())
    }

    /// `sigil yubikey program`: writes a fresh HMAC-SHA1 secret into the
    /// slot, registers it, and confirms it with the key's response to the
    /// enrollment challenge.
    pub async fn program(
        conn: &Conn,
        config: Option<&Path>,
        user: &str,
        slot: u8,
        touch: bool,
        nickname: String,
        step_up: String,
    ) -> Result<(), Error> {
        off_runtime(usb::find_yubikey).await?;
        let mut secret = zeroize::Zeroizing::new([0u8; 20]);
        ring::rand::SystemRandom::new()
            .fill(&mut secret[..])
            .map_err(|_| Error::Unavailable("random generator failed".into()))?;
        let s2 = secret.clone();
        off_runtime(move || usb::program_hmac_slot(slot, &s2, touch)).await?;
        let mut factors = Factors::connect(conn, config).await?;
        let e = factors
            .begin_yubikey_hmac_enrollment(user, nickname, &secret[..], slot, step_up)
            .await?;
        if touch {
            eprintln!("touch the YubiKey to confirm");
        }
        let ch = e.challenge.clone();
        let resp = off_runtime(move || usb::challenge_response(slot, &ch)).await?;
        factors.confirm_yubikey_hmac(user, &e.factor_id, &resp[..]).await?;
        println!(
            "YubiKey HMAC-SHA1 factor {} active for {user} (slot {slot})",
            e.factor_id
        );
        Ok(())
    }

    /// `sigil yubikey program-otp`: writes fresh Yubico OTP credentials
    /// into the slot, registers them, and confirms them with an OTP the
    /// key types on stdin.
    pub async fn program_otp(
        conn: &Conn,
        config: Option<&Path>,
        user: &str,
        slot: u8,
        nickname: String,
        step_up: String,
    ) -> Result<(), Error> {
        off_runtime(usb::find_yubikey).await?;
        let rng = ring::rand::SystemRandom::new();
        let mut material = zeroize::Zeroizing::new([0u8; 28]);
        rng.fill(&mut material[..])
            .map_err(|_| Error::Unavailable("random generator failed".into()))?;
        // Public ids starting with "vv" are the customary prefix for self-programmed keys.
        let public_id = format!("vv{}", modhex::encode(&material[..5]));
        let mut private_id = [0u8; 6];
        private_id.copy_from_slice(&material[6..12]);
        let mut aes_key = zeroize::Zeroizing::new([0u8; 16]);
        aes_key.copy_from_slice(&material[12..28]);
        let (p, k, pid) = (public_id.clone(), aes_key.clone(), private_id);
        off_runtime(move || usb::program_otp_slot(slot, &p, &pid, &k)).await?;
        let credentials = OtpCredentials::Fields {
            public_id,
            private_id: private_id.to_vec(),
            aes_key: aes_key.to_vec(),
        };
        let e = Factors::connect(conn, config)
            .await?
            .begin_yubikey_otp_enrollment(user, nickname, credentials, step_up)
            .await?;
        let otp = read_otp_from_stdin()?;
        confirm_otp(conn, config, user, &e.factor_id, otp).await
    }
}
