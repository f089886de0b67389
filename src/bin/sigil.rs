//! `sigil`: the operator CLI.
//!
//! ```text
//! sigil hsm init                 create the token (if absent) and Sigil's keys (if absent)
//! sigil jwks                     print the published approval keys (JWK Set)
//! sigil health                   ask the server's grpc.health.v1 service
//! sigil totp-code --secret B32   print the current TOTP code of a secret (development)
//! ```
//! Client commands connect with mTLS using `--ca`, `--cert`, `--key`
//! (default: the development admin certificate from `make certs`).
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use sigil::client::{connect, ClientTls};
use sigil::config::Config;
use sigil::{pb, Error};

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
    /// Print the current 6-digit code of a base32 TOTP secret (development aid).
    TotpCode {
        /// The base32 secret.
        #[arg(long)]
        secret: String,
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

#[derive(Args)]
struct Conn {
    /// Server URL.
    #[arg(long, default_value = "https://127.0.0.1:50051", env = "SIGIL_URL")]
    server: String,
    /// CA certificate that issued the server's certificate.
    #[arg(long, default_value = "certs/out/ca.pem")]
    ca: PathBuf,
    /// Client certificate (its URI SAN carries the role).
    #[arg(long, default_value = "certs/out/admin.pem")]
    cert: PathBuf,
    /// Client private key.
    #[arg(long, default_value = "certs/out/admin.key")]
    key: PathBuf,
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

async fn channel(c: &Conn) -> Result<tonic::transport::Channel, Error> {
    connect(
        &c.server,
        &ClientTls {
            ca: &c.ca,
            cert: &c.cert,
            key: &c.key,
        },
    )
    .await
}

async fn run(cli: Cli) -> Result<(), Error> {
    match cli.cmd {
        Cmd::Hsm {
            cmd: HsmCmd::Init { so_pin_file },
        } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let so_pin = match std::env::var("SIGIL_HSM_SO_PIN") {
                Ok(p) if !p.is_empty() => SecretString::from(p),
                _ => SecretString::from(
                    std::fs::read_to_string(&so_pin_file)
                        .map_err(|e| {
                            Error::invalid(
                                "so_pin",
                                format!(
                                    "set SIGIL_HSM_SO_PIN or create {}: {e}",
                                    so_pin_file.display()
                                ),
                            )
                        })?
                        .trim()
                        .to_string(),
                ),
            };
            let pin = sigil::signer::read_pin(&cfg.hsm)?;
            let done =
                tokio::task::spawn_blocking(move || sigil::signer::init_token(&cfg, &so_pin, &pin))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))??;
            if done.is_empty() {
                println!("token and keys already present; nothing to do");
            }
            for line in done {
                println!("{line}");
            }
            Ok(())
        }
        Cmd::Jwks(c) => {
            let mut client =
                pb::approval_service_client::ApprovalServiceClient::new(channel(&c).await?);
            let r = client
                .get_approval_keys(pb::GetApprovalKeysRequest {})
                .await
                .map_err(|s| Error::Unavailable(s.message().to_string()))?
                .into_inner();
            println!("{}", r.jwks_json);
            Ok(())
        }
        Cmd::Health(c) => {
            let mut client = tonic_health::pb::health_client::HealthClient::new(channel(&c).await?);
            let r = client
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(|s| Error::Unavailable(s.message().to_string()))?
                .into_inner();
            println!("{:?}", r.status());
            Ok(())
        }
        Cmd::TotpCode { secret } => {
            let seed = data_encoding::BASE32_NOPAD
                .decode(
                    secret
                        .trim()
                        .trim_end_matches('=')
                        .to_ascii_uppercase()
                        .as_bytes(),
                )
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
