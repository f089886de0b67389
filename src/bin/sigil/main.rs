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
//! sigil audit verify [--checkpoint] [--archive FILE]...  recompute the audit chain (archives, then
//!                                the live log) and check its signed checkpoints
//! sigil audit read [--user U]    print audit entries
//! sigil audit archive --out FILE [--up-to SEQ | --keep N]  archive the oldest entries, then prune them
//! sigil totp-code --secret B32   print the current TOTP code of a secret (development)
//! sigil staff add ID --role admin|approver [--name N] [--user-id U]   add a staff member (admin)
//! sigil staff register-key ID --soft-key FILE   register a software security key (DEVELOPMENT only)
//! sigil staff list|keys          staff members and their keys; the staff key set (JSON)
//! sigil pending list [--user U] [--all]   requests held for a staff quorum or a delay
//! sigil pending show REQ         one request in full
//! sigil pending approve|cancel REQ --staff ID --soft-key FILE   a staff decision, signed by the key
//! sigil policy show              the stored policy in force and its pending changes
//! sigil policy propose FILE --by ID   propose a new policy (decided with sigil pending approve|cancel)
//! ```
//! Client commands connect with mTLS to the server of `--config FILE`
//! (`[client]`, or `https://` + `[server] listen`), unless `--server`,
//! `--ca`, `--cert`, `--key` say otherwise; without a config, `SIGIL_URL`
//! or the development defaults of `make certs`. Each names the server it
//! acts on (stderr). `revoke --all`, `keys rotate --now` and `restore`
//! ask for the server's (or store's) name to be typed, or `--yes`. Staff
//! decisions (`pending approve|cancel`, `policy show`, `pending list`) take
//! the admin or the approver certificate: `--cert certs/out/approver.pem
//! --key certs/out/approver.key`, or a config whose `[client]` names them.
//!
//! One module per command group; [`conn`] resolves where client commands
//! connect, and [`rpc`] holds the typed calls they make.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sigil::Error;

mod audit;
mod backup;
mod conn;
mod hsm;
mod keys;
mod migrate;
mod pending;
mod policy;
mod revoke;
mod rpc;
mod server;
mod softkey;
mod staff;
mod totp;
mod yubikey;

/// The command line.
#[derive(Parser)]
#[command(name = "sigil", version, about = "Sigil operator CLI")]
struct Cli {
    /// Configuration file (TOML), as given to sigild.
    #[arg(long, global = true, env = "SIGIL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The commands, by group.
#[derive(Subcommand)]
enum Cmd {
    /// HSM token management.
    Hsm {
        #[command(subcommand)]
        cmd: hsm::HsmCmd,
    },
    /// Print the published approval keys (JWK Set JSON).
    Jwks(conn::Conn),
    /// Check the server's health service.
    Health(conn::Conn),
    /// Revoke every factor of every user (--all) or of the named users.
    Revoke(revoke::Revoke),
    /// Suspend approvals and redemptions (--all or --user), optionally until a time.
    Suspend(revoke::Suspend),
    /// Lift a suspension.
    Resume(revoke::Resume),
    /// Provision and use YubiKeys (OTP applet: HMAC-SHA1 challenge-response, Yubico OTP).
    Yubikey {
        #[command(subcommand)]
        cmd: yubikey::YubikeyCmd,
    },
    /// Approval keys and the secrets key.
    Keys {
        #[command(subcommand)]
        cmd: keys::KeysCmd,
    },
    /// Write a consistent backup of the running service's store to a file.
    Backup(backup::Backup),
    /// Restore a backup into the configured store (stop sigild first). The
    /// current store is kept beside it; approvals issued and TOTP steps used
    /// before the restore are refused afterwards.
    Restore(backup::Restore),
    /// Copy the embedded store into an empty PostgreSQL database (stop
    /// sigild first): `--from sled:PATH --to postgres`.
    Migrate(migrate::Migrate),
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// Print the current 6-digit code of a base32 TOTP secret (development aid).
    TotpCode(totp::TotpCode),
    /// Staff members and their security keys (staff quorums).
    Staff {
        #[command(subcommand)]
        cmd: staff::StaffCmd,
    },
    /// Requests held for a staff quorum or a delay, and staff decisions on them.
    Pending {
        #[command(subcommand)]
        cmd: pending::PendingCmd,
    },
    /// The stored policy and proposals to change it.
    Policy {
        #[command(subcommand)]
        cmd: policy::PolicyCmd,
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

/// Runs the command in the module of its group.
async fn run(cli: Cli) -> Result<(), Error> {
    let config = cli.config.as_deref();
    match cli.cmd {
        Cmd::Hsm { cmd } => hsm::run(cmd, config).await,
        Cmd::Jwks(conn) => server::jwks(&conn, config).await,
        Cmd::Health(conn) => server::health(&conn, config).await,
        Cmd::Revoke(args) => revoke::revoke(args, config).await,
        Cmd::Suspend(args) => revoke::suspend(args, config).await,
        Cmd::Resume(args) => revoke::resume(args, config).await,
        Cmd::Yubikey { cmd } => yubikey::run(cmd, config).await,
        Cmd::Keys { cmd } => keys::run(cmd, config).await,
        Cmd::Backup(args) => backup::backup(args, config).await,
        Cmd::Restore(args) => backup::restore(args, config),
        Cmd::Migrate(args) => migrate::migrate(args, config),
        Cmd::Audit { cmd } => audit::run(cmd, config).await,
        Cmd::TotpCode(args) => totp::code(args),
        Cmd::Staff { cmd } => staff::run(cmd, config).await,
        Cmd::Pending { cmd } => pending::run(cmd, config).await,
        Cmd::Policy { cmd } => policy::run(cmd, config).await,
    }
}

/// Runs blocking work (HSM set-up, USB transfers) off the async runtime.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
}

/// The current time, Unix seconds.
fn unix_now() -> Result<i64, Error> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Error::Unavailable("clock before 1970".into()))?
        .as_secs() as i64)
}

/// A Unix time as UTC (`2027-01-15T08:00:00Z`), `-` for 0 (not set).
fn utc(t: i64) -> String {
    if t == 0 {
        return "-".into();
    }
    // Days to civil date (H. Hinnant's algorithm, proleptic Gregorian).
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3_600,
        secs % 3_600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every subcommand's arguments are consistent (unique long names,
    /// valid defaults): clap checks it here, not first when an operator
    /// runs the command.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
