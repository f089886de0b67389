//! `sigil`: the operator CLI.
//!
//! ```text
//! sigil hsm init                 create the token (if absent) and Sigil's keys (if absent)
//! sigil jwks                     print the published approval keys (JWK Set)
//! sigil health                   ask the server's grpc.health.v1 service
//! sigil revoke --all|--user U --reason R [--yes]   revoke factors (admin)
//! sigil suspend --all|--user U --reason R [--until T]
//! sigil resume --all|--user U
//! sigil keys list|rotate [--now --yes]|rotate-secrets
//! sigil backup --out FILE        write a backup of the running service's store
//! sigil restore FILE [--yes]     restore a backup into the configured store (sigild stopped)
//! sigil audit verify [--checkpoint]  recompute the audit chain and check its signed checkpoints
//! sigil audit read [--user U]    print audit entries
//! sigil totp-code --secret B32   print the current TOTP code of a secret (development)
//! ```
//! Client commands connect with mTLS to the server of `--config FILE`
//! (`[client]`, or `https://` + `[server] listen`), unless `--server`,
//! `--ca`, `--cert`, `--key` say otherwise; without a config, `SIGIL_URL`
//! or the development defaults of `make certs`. Each names the server it
//! acts on (stderr). `revoke --all`, `keys rotate --now` and `restore`
//! ask for the server's (or store's) name to be typed, or `--yes`.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::SecretString;
use sigil::config::Config;
use sigil::{pb, Error};

mod conn;

use conn::{confirm, Conn};

#[derive(Parser)]
#[command(name = "sigil", version, about = "Sigil operator CLI")]
struct Cli {
    /// Configuration file (TOML), as given to sigild.
    #[arg(long, global = true, env = "SIGIL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// HSM token management.
    Hsm {
        #[command(subcommand)]
        cmd: HsmCmd,
    },
    /// Print the published approval keys (JWK Set JSON).
    Jwks(Conn),
    /// Check the server's health service.
    Health(Conn),
    /// Revoke every factor of every user (--all) or of the named users.
    Revoke {
        #[command(flatten)]
        conn: Conn,
        /// Every user (one write, whatever their number).
        #[arg(long, conflicts_with = "user")]
        all: bool,
        /// A user (repeatable).
        #[arg(long)]
        user: Vec<String>,
        /// Why (recorded in the audit log and the events).
        #[arg(long)]
        reason: String,
        /// Confirm without a prompt (required when not at a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Suspend approvals and redemptions (--all or --user), optionally until a time.
    Suspend {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, conflicts_with = "user")]
        all: bool,
        #[arg(long)]
        user: Vec<String>,
        #[arg(long)]
        reason: String,
        /// End of the suspension, Unix seconds (default: until resumed).
        #[arg(long, default_value_t = 0)]
        until: i64,
    },
    /// Lift a suspension.
    Resume {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, conflicts_with = "user")]
        all: bool,
        #[arg(long)]
        user: Vec<String>,
    },
    /// Provision and use YubiKeys (OTP applet: HMAC-SHA1 challenge-response, Yubico OTP).
    Yubikey {
        #[command(subcommand)]
        cmd: YubikeyCmd,
    },
    /// Approval keys and the secrets key.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Write a consistent backup of the running service's store to a file.
    Backup {
        #[command(flatten)]
        conn: Conn,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into the configured store (stop sigild first). The
    /// current store is kept beside it; approvals issued and TOTP steps used
    /// before the restore are refused afterwards.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The highest event cursor consumers were given; required when the
        /// live store is gone, so that new events never reuse a cursor.
        #[arg(long)]
        events_after: Option<u64>,
        /// Confirm without a prompt (required when not at a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Print the current 6-digit code of a base32 TOTP secret (development aid).
    TotpCode {
        /// The base32 secret.
        #[arg(long)]
        secret: String,
    },
}

#[derive(Subcommand)]
enum YubikeyCmd {
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

#[derive(Subcommand)]
enum KeysCmd {
    /// Rotate the approval key: publish a new key now as `next`, active
    /// after the pre-publication delay (or at once with --now).
    Rotate {
        #[command(flatten)]
        conn: Conn,
        /// Activate the new key at once (verifiers that have not fetched it
        /// yet refuse its approvals until they do).
        #[arg(long)]
        now: bool,
        /// Confirm without a prompt (required when not at a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// List approval keys and their states.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Re-wrap every factor secret under a new HSM AES key (online,
    /// resumable: run it again after an interruption).
    RotateSecrets {
        #[command(flatten)]
        conn: Conn,
        /// Records per batch.
        #[arg(long, default_value_t = 500)]
        batch: u32,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Fetch the whole audit log and its signed checkpoints, recompute the
    /// hash chain here, check every checkpoint signature against the audit
    /// key, and report the first entry that does not fit (exit 1).
    Verify {
        #[command(flatten)]
        conn: Conn,
        /// Ask the server to sign a checkpoint of the current head first.
        #[arg(long)]
        checkpoint: bool,
    },
    /// Print audit entries (optionally of one user / time range) as JSON lines.
    Read {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, default_value = "")]
        user: String,
        #[arg(long, default_value_t = 0)]
        from: i64,
        #[arg(long, default_value_t = 0)]
        to: i64,
    },
}

#[derive(Subcommand)]
enum HsmCmd {
    /// Create the token if absent, then the approval and secrets keys if absent.
    /// The SO PIN comes from SIGIL_HSM_SO_PIN or --so-pin-file; the user PIN
    /// as configured for sigild (SIGIL_HSM_PIN or hsm.pin_file).
    Init {
        /// File holding the security officer PIN.
        #[arg(long, default_value = "hsm/so-pin")]
        so_pin_file: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigil: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs blocking work (HSM set-up, USB transfers) off the async runtime.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

fn status_error(s: tonic::Status) -> Error {
    Error::Unavailable(format!("{:?}: {}", s.code(), s.message()))
}

/// Opens the channel of `conn`, saying on stderr which server it is.
async fn channel(conn: &Conn, config: Option<&Path>) -> Result<tonic::transport::Channel, Error> {
    conn.resolve(config)?.open().await
}

/// Opens a channel as the frontend (enrollment commands).
async fn frontend_channel(conn: &Conn, config: Option<&Path>) -> Result<tonic::transport::Channel, Error> {
    conn.resolve_as(config, Some("frontend"))?.open().await
}

async fn run(cli: Cli) -> Result<(), Error> {
    let config = cli.config.as_deref();
    match cli.cmd {
        Cmd::Hsm {
            cmd: HsmCmd::Init { so_pin_file },
        } => {
            let cfg = Config::load(config)?;
            let so_pin = match std::env::var("SIGIL_HSM_SO_PIN") {
                Ok(p) if !p.is_empty() => SecretString::from(p),
                _ => SecretString::from(
                    std::fs::read_to_string(&so_pin_file)
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
        Cmd::Jwks(c) => {
            let mut client = pb::approval_service_client::ApprovalServiceClient::new(channel(&c, config).await?);
            let r = client
                .get_approval_keys(pb::GetApprovalKeysRequest {})
                .await
                .map_err(|s| Error::Unavailable(s.message().to_string()))?
                .into_inner();
            println!("{}", r.jwks_json);
            Ok(())
        }
        Cmd::Health(c) => {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel(&c, config).await?);
            let r = client
                .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
                .await
                .map_err(|s| Error::Unavailable(s.message().to_string()))?
                .into_inner();
            println!("{:?}", r.status());
            Ok(())
        }
        Cmd::Revoke {
            conn,
            all,
            user,
            reason,
            yes,
        } => {
            let target = conn.resolve(config)?;
            if all {
                confirm("revoke every factor of every user", &target.url, yes)?;
            }
            let mut c = pb::admin_service_client::AdminServiceClient::new(target.open().await?);
            let r = c
                .revoke_factors(pb::RevokeFactorsRequest {
                    all,
                    user_ids: user,
                    reason,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if r.users < 0 {
                println!("revoked every factor of every user");
            } else {
                println!("revoked every factor of {} user(s)", r.users);
            }
            Ok(())
        }
        Cmd::Suspend {
            conn,
            all,
            user,
            reason,
            until,
        } => {
            let mut c = pb::admin_service_client::AdminServiceClient::new(channel(&conn, config).await?);
            c.suspend_approvals(pb::SuspendApprovalsRequest {
                all,
                user_ids: user,
                reason,
                until,
            })
            .await
            .map_err(status_error)?;
            println!("suspended");
            Ok(())
        }
        Cmd::Resume { conn, all, user } => {
            let mut c = pb::admin_service_client::AdminServiceClient::new(channel(&conn, config).await?);
            c.resume_approvals(pb::ResumeApprovalsRequest { all, user_ids: user })
                .await
                .map_err(status_error)?;
            println!("resumed");
            Ok(())
        }
        Cmd::Audit {
            cmd: AuditCmd::Read { conn, user, from, to },
        } => {
            let mut c = pb::admin_service_client::AdminServiceClient::new(channel(&conn, config).await?);
            let mut after = 0;
            loop {
                let r = c
                    .read_audit(pb::ReadAuditRequest {
                        after_seq: after,
                        limit: 1000,
                        user_id: user.clone(),
                        from,
                        to,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                for e in &r.entries {
                    println!("{} {}", e.seq, String::from_utf8_lossy(&e.raw));
                }
                if r.next_after_seq == after {
                    return Ok(());
                }
                after = r.next_after_seq;
            }
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { conn, checkpoint },
        } => {
            let mut c = pb::admin_service_client::AdminServiceClient::new(channel(&conn, config).await?);
            if checkpoint {
                c.checkpoint_audit(pb::CheckpointAuditRequest {})
                    .await
                    .map_err(status_error)?;
            }
            let mut entries = Vec::new();
            let mut after = 0;
            loop {
                let r = c
                    .read_audit(pb::ReadAuditRequest {
                        after_seq: after,
                        limit: 10_000,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                for e in r.entries {
                    let hash: [u8; 32] = e
                        .chain_hash
                        .as_slice()
                        .try_into()
                        .map_err(|_| Error::Internal(format!("entry {} has a malformed chain hash", e.seq)))?;
                    entries.push(sigil::store::LogEntry {
                        seq: e.seq,
                        hash,
                        value: e.raw,
                    });
                }
                if r.next_after_seq == after {
                    break;
                }
                after = r.next_after_seq;
            }
            let cps = c
                .get_audit_checkpoints(pb::GetAuditCheckpointsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            let key: sigil_verify::Jwk = serde_json::from_str(&cps.audit_key_jwk_json)
                .map_err(|e| Error::Internal(format!("audit key unreadable: {e}")))?;
            let checkpoints: Vec<sigil::audit::Checkpoint> = cps
                .checkpoints
                .into_iter()
                .map(|c| sigil::audit::Checkpoint {
                    v: 1,
                    seq: c.seq,
                    hash: c.hash,
                    at: c.at,
                    kid: c.kid,
                    signature: c.signature,
                })
                .collect();
            let report = sigil::audit::verify(&entries, &checkpoints, &key);
            match report.first_broken {
                None => {
                    println!(
                        "audit log ok: {} entries, {} signed checkpoint(s) verified with key {}",
                        report.entries, report.checkpoints, key.kid
                    );
                    Ok(())
                }
                Some((seq, why)) => Err(Error::Internal(format!("audit log BROKEN at entry {seq}: {why}"))),
            }
        }
        Cmd::Yubikey { cmd } => yubikey(cmd, config).await,
        Cmd::Keys {
            cmd: KeysCmd::Rotate { conn, now, yes },
        } => {
            let target = conn.resolve(config)?;
            if now {
                confirm("rotate the approval key with immediate activation", &target.url, yes)?;
            }
            let mut c = pb::admin_service_client::AdminServiceClient::new(target.open().await?);
            let k = c
                .rotate_approval_key(pb::RotateApprovalKeyRequest { now })
                .await
                .map_err(status_error)?
                .into_inner()
                .key
                .ok_or_else(|| Error::Internal("no key in the answer".into()))?;
            println!("new approval key {} ({}), active at {}", k.kid, k.state, k.activate_at);
            Ok(())
        }
        Cmd::Keys {
            cmd: KeysCmd::List { conn },
        } => {
            let mut c = pb::admin_service_client::AdminServiceClient::new(channel(&conn, config).await?);
            let r = c
                .list_approval_keys(pb::ListApprovalKeysRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            for k in r.keys {
                println!(
                    "{}  {:8}  label {}  created {}  active from {}  retires {}",
                    k.kid, k.state, k.label, k.created_at, k.activate_at, k.retire_at
                );
            }
            Ok(())
        }
        Cmd::Keys {
            cmd: KeysCmd::RotateSecrets { conn, batch },
        } => {
            let mut c = pb::admin_service_client::AdminServiceClient::new(channel(&conn, config).await?);
            let mut stream = c
                .rotate_secrets_key(pb::RotateSecretsKeyRequest { batch_size: batch })
                .await
                .map_err(status_error)?
                .into_inner();
            while let Some(p) = stream.message().await.map_err(status_error)? {
                if p.done {
                    println!("done: every secret is under {}; {} destroyed", p.to_key, p.from_key);
                } else {
                    println!(
                        "{} -> {}: {} moved, {} remaining",
                        p.from_key, p.to_key, p.moved, p.remaining
                    );
                }
            }
            Ok(())
        }
        Cmd::Backup { conn, out } => {
            let mut c = pb::admin_service_client::AdminServiceClient::new(channel(&conn, config).await?);
            let start = std::time::Instant::now();
            let mut stream = c.backup(pb::BackupRequest {}).await.map_err(status_error)?.into_inner();
            let mut data = Vec::new();
            while let Some(chunk) = stream.message().await.map_err(status_error)? {
                data.extend_from_slice(&chunk.data);
            }
            sigil::backup::decode(&data)?;
            let tmp = out.with_extension("partial");
            std::fs::write(&tmp, &data)
                .map_err(|e| Error::Unavailable(format!("cannot write {}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, &out)
                .map_err(|e| Error::Unavailable(format!("cannot write {}: {e}", out.display())))?;
            println!(
                "backup written to {} ({} bytes, {:.1} s)",
                out.display(),
                data.len(),
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::Restore {
            file,
            events_after,
            yes,
        } => {
            let cfg = Config::load(config)?;
            let store = cfg.store.path.display().to_string();
            confirm(
                &format!("replace the store with the backup {}", file.display()),
                &store,
                yes,
            )?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| Error::Unavailable("clock before 1970".into()))?
                .as_secs() as i64;
            let opts = sigil::backup::RestoreOptions { events_after };
            let (h, previous) = sigil::backup::restore_with(&file, &cfg.store.path, now, &opts)?;
            println!(
                "restored {} records taken at {} into {}; approvals issued and challenges opened before now, and TOTP codes up to the next time step, are refused",
                h.records,
                h.taken_at,
                cfg.store.path.display()
            );
            if let Some(p) = previous {
                println!("the previous store is kept at {}", p.display());
            }
            Ok(())
        }
        Cmd::TotpCode { secret } => {
            let seed = data_encoding::BASE32_NOPAD
                .decode(secret.trim().trim_end_matches('=').to_ascii_uppercase().as_bytes())
                .map_err(|e| Error::invalid("secret", format!("not base32: {e}")))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| Error::Unavailable("clock before 1970".into()))?
                .as_secs() as i64;
            println!(
                "{}",
                sigil::factor::totp::code_at_step(&seed, sigil::factor::totp::step_at(now))
            );
            Ok(())
        }
    }
}

fn read_otp_from_stdin() -> Result<String, Error> {
    eprintln!("touch the YubiKey now (it types the OTP here), then Enter:");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::invalid("otp", format!("cannot read stdin: {e}")))?;
    Ok(line.trim().to_string())
}

async fn confirm_otp(
    conn: &Conn,
    config: Option<&Path>,
    user: &str,
    factor_id: &str,
    otp: String,
) -> Result<(), Error> {
    let mut c = pb::factor_service_client::FactorServiceClient::new(frontend_channel(conn, config).await?);
    c.confirm_yubikey_enrollment(pb::ConfirmYubikeyEnrollmentRequest {
        user_id: user.into(),
        factor_id: factor_id.into(),
        proof: Some(pb::confirm_yubikey_enrollment_request::Proof::Otp(otp)),
    })
    .await
    .map_err(status_error)?;
    println!("YubiKey OTP factor {factor_id} active for {user}");
    Ok(())
}

#[cfg(not(feature = "usb"))]
fn no_usb() -> Error {
    Error::Unavailable(
        "this sigil was built without USB support (cargo feature `usb`); no YubiKey can be reached".into(),
    )
}

async fn yubikey(cmd: YubikeyCmd, config: Option<&Path>) -> Result<(), Error> {
    match cmd {
        YubikeyCmd::ImportOtp {
            conn,
            user,
            csv_line,
            otp,
            nickname,
            step_up,
        } => {
            let mut c = pb::factor_service_client::FactorServiceClient::new(frontend_channel(&conn, config).await?);
            let e = c
                .begin_yubikey_otp_enrollment(pb::BeginYubikeyOtpEnrollmentRequest {
                    user_id: user.clone(),
                    nickname,
                    personalization_csv: csv_line,
                    step_up_approval: step_up,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let otp = match otp {
                Some(o) => o,
                None => read_otp_from_stdin()?,
            };
            confirm_otp(&conn, config, &user, &e.factor_id, otp).await
        }
        #[cfg(feature = "usb")]
        YubikeyCmd::Respond { challenge, slot } => {
            let ch = data_encoding::HEXLOWER_PERMISSIVE
                .decode(challenge.trim().as_bytes())
                .map_err(|e| Error::invalid("challenge", format!("not hex: {e}")))?;
            if ch.is_empty() || ch.len() > 63 {
                return Err(Error::invalid(
                    "challenge",
                    format!("must be 1 to 63 bytes, got {}", ch.len()),
                ));
            }
            let r = off_runtime(move || sigil::factor::yubikey::usb::challenge_response(slot, &ch)).await?;
            println!("{}", data_encoding::HEXLOWER.encode(&r));
            Ok(())
        }
        #[cfg(feature = "usb")]
        YubikeyCmd::Program {
            conn,
            user,
            slot,
            touch,
            nickname,
            step_up,
        } => {
            use ring::rand::SecureRandom;
            off_runtime(sigil::factor::yubikey::usb::find_yubikey).await?;
            let mut secret = zeroize::Zeroizing::new([0u8; 20]);
            ring::rand::SystemRandom::new()
                .fill(&mut secret[..])
                .map_err(|_| Error::Unavailable("random generator failed".into()))?;
            let s2 = secret.clone();
            off_runtime(move || sigil::factor::yubikey::usb::program_hmac_slot(slot, &s2, touch)).await?;
            let mut c = pb::factor_service_client::FactorServiceClient::new(frontend_channel(&conn, config).await?);
            let e = c
                .begin_yubikey_hmac_enrollment(pb::BeginYubikeyHmacEnrollmentRequest {
                    user_id: user.clone(),
                    nickname,
                    secret: secret.to_vec(),
                    slot: u32::from(slot),
                    step_up_approval: step_up,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if touch {
                eprintln!("touch the YubiKey to confirm");
            }
            let ch = e.challenge.clone();
            let resp = off_runtime(move || sigil::factor::yubikey::usb::challenge_response(slot, &ch)).await?;
            c.confirm_yubikey_enrollment(pb::ConfirmYubikeyEnrollmentRequest {
                user_id: user.clone(),
                factor_id: e.factor_id.clone(),
                proof: Some(pb::confirm_yubikey_enrollment_request::Proof::HmacResponse(
                    resp.to_vec(),
                )),
            })
            .await
            .map_err(status_error)?;
            println!(
                "YubiKey HMAC-SHA1 factor {} active for {user} (slot {slot})",
                e.factor_id
            );
            Ok(())
        }
        #[cfg(feature = "usb")]
        YubikeyCmd::ProgramOtp {
            conn,
            user,
            slot,
            nickname,
            step_up,
        } => {
            use ring::rand::SecureRandom;
            off_runtime(sigil::factor::yubikey::usb::find_yubikey).await?;
            let rng = ring::rand::SystemRandom::new();
            let mut material = zeroize::Zeroizing::new([0u8; 28]);
            rng.fill(&mut material[..])
                .map_err(|_| Error::Unavailable("random generator failed".into()))?;
            // Public ids starting with "vv" are the customary prefix for self-programmed keys.
            let public_id = format!("vv{}", sigil::factor::yubikey::modhex::encode(&material[..5]));
            let mut private_id = [0u8; 6];
            private_id.copy_from_slice(&material[6..12]);
            let mut aes_key = zeroize::Zeroizing::new([0u8; 16]);
            aes_key.copy_from_slice(&material[12..28]);
            let (p, k, pid) = (public_id.clone(), aes_key.clone(), private_id);
            off_runtime(move || sigil::factor::yubikey::usb::program_otp_slot(slot, &p, &pid, &k)).await?;
            let mut c = pb::factor_service_client::FactorServiceClient::new(frontend_channel(&conn, config).await?);
            let e = c
                .begin_yubikey_otp_enrollment(pb::BeginYubikeyOtpEnrollmentRequest {
                    user_id: user.clone(),
                    nickname,
                    public_id,
                    private_id: private_id.to_vec(),
                    aes_key: aes_key.to_vec(),
                    personalization_csv: String::new(),
                    step_up_approval: step_up,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let otp = read_otp_from_stdin()?;
            confirm_otp(&conn, config, &user, &e.factor_id, otp).await
        }
        #[cfg(not(feature = "usb"))]
        YubikeyCmd::Respond { .. } | YubikeyCmd::Program { .. } | YubikeyCmd::ProgramOtp { .. } => Err(no_usb()),
    }
}
