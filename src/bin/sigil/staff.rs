//! `sigil staff`: the staff members whose security keys approve held
//! withdrawals and policy changes, and their keys.
use std::path::{Path, PathBuf};

use clap::Subcommand;
use sigil::Error;

use crate::conn::Conn;
use crate::rpc::Staff;
use crate::softkey::{self, SoftKey};
use crate::utc;

/// The `sigil staff` commands.
#[derive(Subcommand)]
pub enum StaffCmd {
    /// Add a staff member (admin certificate).
    Add {
        #[command(flatten)]
        conn: Conn,
        /// The staff member's id.
        staff_id: String,
        /// `admin` (adds staff, registers keys, proposes policy, decides)
        /// or `approver` (decides).
        #[arg(long)]
        role: String,
        /// Display name (default: the id).
        #[arg(long, default_value = "")]
        name: String,
        /// The exchange account the staff member holds, if any (they may
        /// never approve its withdrawals).
        #[arg(long, default_value = "")]
        user_id: String,
    },
    /// Register a security key for a staff member (admin certificate). Only
    /// a software key for development can be driven from here (--soft-key);
    /// the key counts for quorums after quorum.staff_key_hold_seconds.
    RegisterKey {
        #[command(flatten)]
        conn: Conn,
        /// The staff member's id.
        staff_id: String,
        /// A software security key FOR DEVELOPMENT ONLY: a new one is
        /// written to FILE (mode 0600); a FILE that already holds a soft key
        /// is used as it is, any other existing file is refused.
        #[arg(long, value_name = "FILE")]
        soft_key: PathBuf,
        /// The origin the key's response names (default: the first of the
        /// config's [webauthn] origins, else https://localhost:8443).
        #[arg(long)]
        origin: Option<String>,
    },
    /// Remove a lost or stolen staff key (--credential CREDENTIAL_ID), or the
    /// staff member with all their keys (admin certificate). What it
    /// approved on requests still waiting for their quorum stops counting.
    Remove {
        #[command(flatten)]
        conn: Conn,
        /// The staff member's id.
        staff_id: String,
        /// One key's credential id (from `sigil staff list`); without it
        /// the staff member is removed. Base64url, so it may start with
        /// `-`: taken as the value, not as an option.
        #[arg(
            long = "credential",
            value_name = "CREDENTIAL_ID",
            default_value = "",
            allow_hyphen_values = true
        )]
        credential_id: String,
        /// Why (audited, and in the staff_changed event).
        #[arg(long)]
        reason: String,
    },
    /// List the staff members and their keys.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the staff keys verifiers check approvers' evidence with (JSON).
    Keys {
        #[command(flatten)]
        conn: Conn,
    },
}

/// Runs a `sigil staff` command.
pub async fn run(cmd: StaffCmd, config: Option<&Path>) -> Result<(), Error> {
    match cmd {
        StaffCmd::Add {
            conn,
            staff_id,
            role,
            name,
            user_id,
        } => add(&conn, &staff_id, &role, name, user_id, config).await,
        StaffCmd::RegisterKey {
            conn,
            staff_id,
            soft_key,
            origin,
        } => register_key(&conn, &staff_id, &soft_key, origin, config).await,
        StaffCmd::Remove {
            conn,
            staff_id,
            credential_id,
            reason,
        } => {
            Staff::connect(&conn, config)
                .await?
                .remove_staff(&staff_id, &credential_id, &reason)
                .await?;
            if credential_id.is_empty() {
                println!("removed staff member {staff_id} and all their keys");
            } else {
                println!("removed key {credential_id} of staff member {staff_id}");
            }
            Ok(())
        }
        StaffCmd::List { conn } => list(&conn, config).await,
        StaffCmd::Keys { conn } => keys(&conn, config).await,
    }
}

/// `sigil staff add`: adds a staff member.
async fn add(
    conn: &Conn,
    staff_id: &str,
    role: &str,
    name: String,
    user_id: String,
    config: Option<&Path>,
) -> Result<(), Error> {
    let m = Staff::connect(conn, config)
        .await?
        .add_staff(staff_id, role, name, user_id)
        .await?;
    println!(
        "added staff member {} ({}, role {}); register their security key next",
        m.staff_id, m.display_name, m.role
    );
    Ok(())
}

/// `sigil staff register-key`: registers the soft key of `path` (created
/// if absent) for `staff_id`.
async fn register_key(
    conn: &Conn,
    staff_id: &str,
    path: &Path,
    origin: Option<String>,
    config: Option<&Path>,
) -> Result<(), Error> {
    let origin = softkey::origin(origin, config)?;
    // An existing file that is not a soft key is refused before the server is asked.
    let existing = SoftKey::load(path)?;
    softkey::warn(path);
    let mut staff = Staff::connect(conn, config).await?;
    let begun = staff.begin_key_registration(staff_id).await?;
    let key = match existing {
        Some(k) => {
            eprintln!(
                "sigil: {} already holds a soft key (credential {}); registering that one",
                path.display(),
                k.credential_id()
            );
            k
        }
        None => {
            let options: serde_json::Value = serde_json::from_str(&begun.options_json)
                .map_err(|e| Error::Internal(format!("the server's WebAuthn options are not JSON: {e}")))?;
            let rp_id = options["publicKey"]["rp"]["id"]
                .as_str()
                .ok_or_else(|| Error::Internal("the server's WebAuthn options name no relying party id".into()))?;
            let k = SoftKey::create(path, rp_id)?;
            eprintln!(
                "sigil: wrote a new soft key to {} (credential {})",
                path.display(),
                k.credential_id()
            );
            k
        }
    };
    let response = key.register(&begun.options_json, &origin)?;
    let member = staff
        .finish_key_registration(staff_id, begun.ceremony_id, response)
        .await
        .inspect_err(|_| {
            eprintln!(
                "sigil: the soft key stays in {}; the same command registers it once the problem is solved",
                path.display()
            )
        })?;
    let info = member.keys.iter().find(|k| k.credential_id == key.credential_id());
    println!(
        "registered DEVELOPMENT soft key {} (credential {}) for staff member {}; NOT FOR PRODUCTION",
        key.path().display(),
        key.credential_id(),
        member.staff_id
    );
    match info {
        Some(k) if k.approved_at == 0 => println!(
            "it waits for the staff quorum's approval: request {} (sigil pending approve {} --staff ID --soft-key FILE), then quorum.staff_key_hold_seconds",
            k.request_id, k.request_id
        ),
        Some(k) => println!(
            "it counts for quorums from {} ({}), quorum.staff_key_hold_seconds after its approval",
            utc(k.usable_at),
            k.usable_at
        ),
        None => {}
    }
    Ok(())
}

/// `sigil staff list`: one line per staff member, one per key under it.
async fn list(conn: &Conn, config: Option<&Path>) -> Result<(), Error> {
    let staff = Staff::connect(conn, config).await?.list_staff().await?;
    if staff.is_empty() {
        println!("no staff members");
    }
    for m in staff {
        println!(
            "{}  {:8}  name {:?}  user {}  added {}  {} key(s){}",
            m.staff_id,
            m.role,
            m.display_name,
            if m.user_id.is_empty() { "-" } else { &m.user_id },
            utc(m.created_at),
            m.keys.len(),
            if m.removed_at != 0 {
                format!("  REMOVED at {}", utc(m.removed_at))
            } else {
                String::new()
            }
        );
        for k in &m.keys {
            let standing = if k.removed_at != 0 {
                format!("REMOVED at {}", utc(k.removed_at))
            } else if k.approved_at == 0 {
                format!("waits for the staff quorum (request {})", k.request_id)
            } else {
                format!("usable from {}", utc(k.usable_at))
            };
            println!(
                "    key {}  added {}  {standing}{}",
                k.credential_id,
                utc(k.added_at),
                if k.suspected_cloned {
                    "  SUSPECTED CLONED (answers nothing)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// `sigil staff keys`: prints the staff key set (JSON).
async fn keys(conn: &Conn, config: Option<&Path>) -> Result<(), Error> {
    println!("{}", Staff::connect(conn, config).await?.staff_keys().await?);
    Ok(())
}
