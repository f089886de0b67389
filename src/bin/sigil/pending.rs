//! `sigil pending`: requests held by policy for a staff quorum or a delay
//! (withdrawals and policy changes), and staff decisions on them signed
//! with a staff member's (soft) security key.
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use sigil::{pb, Error};
use sigil_verify::b64url;

use crate::conn::Conn;
use crate::rpc::Staff;
use crate::softkey::{self, SoftKey};
use crate::utc;

/// The action of a staff member's cancel intent (memo = the request id).
const CANCEL_ACTION: &str = "cancel_approval";

/// The `sigil pending` commands.
#[derive(Subcommand)]
pub enum PendingCmd {
    /// List held requests and delayed approvals, newest first (policy
    /// changes too, without --user).
    List {
        #[command(flatten)]
        conn: Conn,
        /// Only this user's requests.
        #[arg(long, default_value = "")]
        user: String,
        /// Closed ones too (cancelled, expired, issued, activated).
        #[arg(long)]
        all: bool,
    },
    /// Show one request: its intent, quorum, approvals and times.
    Show {
        #[command(flatten)]
        conn: Conn,
        request_id: String,
    },
    /// Approve a request (a withdrawal or a policy change) with a staff
    /// member's key. Works with the admin and the approver certificate
    /// (--cert certs/out/approver.pem --key certs/out/approver.key, or a
    /// config whose [client] names them).
    Approve(Decide),
    /// Cancel a request waiting for its quorum or a delayed approval or
    /// policy change, with a staff member's key (admin or approver
    /// certificate, as for approve).
    Cancel(Decide),
}

/// The arguments of `sigil pending approve` and `sigil pending cancel`.
#[derive(Args)]
pub struct Decide {
    #[command(flatten)]
    conn: Conn,
    /// The request (`sigil pending list`).
    request_id: String,
    /// The deciding staff member.
    #[arg(long)]
    staff: String,
    /// Their software security key (development only; written by `sigil
    /// staff register-key`).
    #[arg(long, value_name = "FILE", required_unless_present = "external")]
    soft_key: Option<PathBuf>,
    /// Use any other WebAuthn client, e.g. a hardware security key through
    /// a browser: the request options are printed (one line starting
    /// `WEBAUTHN-OPTIONS `, the JSON for navigator.credentials.get) and the
    /// assertion (the PublicKeyCredential JSON) is read from standard input.
    #[arg(long, conflicts_with = "soft_key")]
    external: bool,
    /// The origin the key's response names (default: the first of the
    /// config's [webauthn] origins, else https://localhost:8443).
    #[arg(long)]
    origin: Option<String>,
}

/// Runs a `sigil pending` command.
pub async fn run(cmd: PendingCmd, config: Option<&Path>) -> Result<(), Error> {
    match cmd {
        PendingCmd::List { conn, user, all } => list(&conn, user, all, config).await,
        PendingCmd::Show { conn, request_id } => show(&conn, &request_id, config).await,
        PendingCmd::Approve(args) => decide(args, pb::StaffDecision::Approve, config).await,
        PendingCmd::Cancel(args) => decide(args, pb::StaffDecision::Cancel, config).await,
    }
}

/// `sigil pending list`: a table of the requests.
async fn list(conn: &Conn, user: String, all: bool, config: Option<&Path>) -> Result<(), Error> {
    let requests = Staff::connect(conn, config).await?.list_pending(user, all).await?;
    if requests.is_empty() {
        println!(
            "no {}requests",
            if all { "" } else { "open (awaiting quorum or delayed) " }
        );
        return Ok(());
    }
    print_table(&requests);
    Ok(())
}

/// `sigil pending show`: one request in full.
async fn show(conn: &Conn, request_id: &str, config: Option<&Path>) -> Result<(), Error> {
    let p = Staff::connect(conn, config).await?.pending(request_id).await?;
    print_request(&p);
    Ok(())
}

/// `sigil pending approve|cancel`: begins the decision, shows what the key
/// is to sign (refusing when it is not the request's intent), has the soft
/// key sign it and completes the decision.
async fn decide(args: Decide, decision: pb::StaffDecision, config: Option<&Path>) -> Result<(), Error> {
    let origin = softkey::origin(args.origin, config)?;
    let mut key = match &args.soft_key {
        Some(path) => {
            let k = SoftKey::open(path)?;
            softkey::warn(path);
            Some(k)
        }
        None => None,
    };
    let mut staff = Staff::connect(&args.conn, config).await?;
    let id = args.request_id.as_str();
    let request = staff.pending(id).await?;
    let begun = staff.begin_decision(id, &args.staff, decision).await?;
    let intent = begun.intent.clone().unwrap_or_default();
    check_signed_intent(&request, &intent, &begun.intent_sha256, decision)?;
    let verb = if decision == pb::StaffDecision::Approve {
        "APPROVE"
    } else {
        "CANCEL"
    };
    println!(
        "{verb} request {id} as staff member {} with {}:",
        args.staff,
        match &key {
            Some(k) => format!("soft key {}", k.credential_id()),
            None => "an external WebAuthn client".into(),
        }
    );
    for line in describe(&request) {
        println!("  {line}");
    }
    println!(
        "  signing intent {} (sha256 {})",
        intent_fields(&intent),
        b64url::encode(&begun.intent_sha256)
    );
    let response = match key.as_mut() {
        Some(k) => k.assert(&begun.options_json, &origin)?,
        None => external_assertion(&begun.options_json)?,
    };
    let after = staff
        .complete_decision(id, &args.staff, begun.ceremony_id, response)
        .await?;
    println!(
        "request {id} is now {} (approvals {}): {}",
        state_name(&after),
        tally(&after),
        when(&after)
    );
    Ok(())
}

/// Prints the request options for another WebAuthn client and reads its
/// assertion (PublicKeyCredential JSON) from standard input.
fn external_assertion(options_json: &str) -> Result<String, Error> {
    use std::io::{Read, Write};
    let compact: serde_json::Value = serde_json::from_str(options_json)
        .map_err(|e| Error::Internal(format!("the server's WebAuthn options are not JSON: {e}")))?;
    println!("WEBAUTHN-OPTIONS {compact}");
    println!("paste the assertion (the PublicKeyCredential JSON), then end the input (Ctrl-D):");
    std::io::stdout()
        .flush()
        .map_err(|e| Error::Internal(format!("cannot write the options: {e}")))?;
    let mut response = String::new();
    std::io::stdin()
        .take(64 * 1024 + 1)
        .read_to_string(&mut response)
        .map_err(|e| Error::invalid("assertion", format!("cannot read it from standard input: {e}")))?;
    let response = response.trim().to_string();
    if response.is_empty() {
        return Err(Error::invalid(
            "assertion",
            "none was given on standard input; nothing was decided",
        ));
    }
    serde_json::from_str::<serde_json::Value>(&response)
        .map_err(|e| Error::invalid("assertion", format!("is not JSON: {e}; nothing was decided")))?;
    Ok(response)
}

/// Refuses to sign when the intent the server hands out is not the one
/// its digest names, or not what the decision is about: the request's
/// intent (approve; a policy change's memo naming the proposed text's
/// hash) or the request's cancel intent (cancel).
fn check_signed_intent(
    request: &pb::PendingApproval,
    intent: &pb::Intent,
    digest: &[u8],
    decision: pb::StaffDecision,
) -> Result<(), Error> {
    let refuse = |why: String| Error::Internal(format!("refusing to sign: {why}"));
    if sigil_verify::Intent::from(intent.clone()).digest().as_slice() != digest {
        return Err(refuse(
            "the server's intent digest is not the digest of the intent it shows".into(),
        ));
    }
    match decision {
        pb::StaffDecision::Cancel => {
            if intent.action != CANCEL_ACTION || intent.memo != request.request_id || intent.user_id != request.user_id
            {
                return Err(refuse(format!(
                    "the intent to sign ({}) is not the cancellation of request {}",
                    intent_fields(intent),
                    request.request_id
                )));
            }
        }
        _ => {
            if request.intent.as_ref() != Some(intent) {
                return Err(refuse(format!(
                    "the intent to sign ({}) is not request {}'s",
                    intent_fields(intent),
                    request.request_id
                )));
            }
            if request.kind == "policy_change" {
                let sha = ring::digest::digest(&ring::digest::SHA256, request.policy_text.as_bytes());
                if intent.memo != format!("sha256:{}", b64url::encode(sha.as_ref())) {
                    return Err(refuse(format!(
                        "the intent's memo {} is not the SHA-256 of the proposed policy text",
                        intent.memo
                    )));
                }
            }
        }
    }
    Ok(())
}

/// A request's state, in lower case (`awaiting_quorum`, `delayed`, ...).
pub fn state_name(p: &pb::PendingApproval) -> String {
    match pb::PendingState::try_from(p.state) {
        Ok(s) => s
            .as_str_name()
            .trim_start_matches("PENDING_STATE_")
            .to_ascii_lowercase(),
        Err(_) => format!("state {}", p.state),
    }
}

/// The approvals counted per quorum rule: `x/m` (one rule), `rule x/m, …`
/// (several), `-` (a delay alone).
pub fn tally(p: &pb::PendingApproval) -> String {
    let count = |q: &pb::QuorumRequirement| {
        let mut ids: Vec<&str> = p
            .approvals
            .iter()
            .map(|a| a.staff_id.as_str())
            .filter(|s| q.staff.iter().any(|o| o == s))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    };
    match p.quorum.as_slice() {
        [] => "-".into(),
        [q] => format!("{}/{}", count(q), q.required),
        qs => qs
            .iter()
            .map(|q| format!("{} {}/{}", q.rule, count(q), q.required))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The time that matters in the request's state.
pub fn when(p: &pb::PendingApproval) -> String {
    match pb::PendingState::try_from(p.state) {
        Ok(pb::PendingState::AwaitingQuorum) => format!("expires {}", utc(p.expires_at)),
        Ok(pb::PendingState::Delayed) => format!("not before {}", utc(p.not_before)),
        Ok(pb::PendingState::Issued) => format!("redeem until {}", utc(p.approval_expires_at)),
        _ => format!("closed {} ({})", utc(p.closed_at), p.closed_by),
    }
}

/// What the request is about, in a few words.
fn what(p: &pb::PendingApproval) -> String {
    let i = p.intent.clone().unwrap_or_default();
    if p.kind == "policy_change" {
        format!("policy by {} (replaces v{})", p.proposed_by, p.base_version)
    } else if !i.amount.is_empty() {
        format!("{} {} -> {}", i.amount, i.asset, i.destination)
    } else {
        intent_fields(&i)
    }
}

/// The non-empty fields of an intent, `name value, …`.
fn intent_fields(i: &pb::Intent) -> String {
    sigil_verify::Intent::from(i.clone())
        .fields()
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The request as lines for the operator who decides on it.
fn describe(p: &pb::PendingApproval) -> Vec<String> {
    let i = p.intent.clone().unwrap_or_default();
    let mut out = Vec::new();
    if p.kind == "policy_change" {
        out.push(format!(
            "policy change proposed by {}, replacing policy version {}, text {}:",
            p.proposed_by, p.base_version, i.memo
        ));
        out.extend(
            p.policy_text
                .lines()
                .map(|l| format!("    | {l}").trim_end().to_string()),
        );
    } else if p.kind == "withdrawal" {
        out.push(format!(
            "withdrawal of {} {} on {} to {} for user {} (withdrawal id {}{})",
            i.amount,
            i.asset,
            i.network,
            i.destination,
            i.user_id,
            i.withdrawal_id,
            if i.memo.is_empty() {
                String::new()
            } else {
                format!(", memo {}", i.memo)
            }
        ));
    } else {
        out.push(format!("{} for user {}: {}", p.kind, p.user_id, intent_fields(&i)));
    }
    out.push(format!(
        "state {}, approvals {} ({}), {}",
        state_name(p),
        tally(p),
        approvers(p),
        when(p)
    ));
    out
}

/// Who approved, or `none yet`.
fn approvers(p: &pb::PendingApproval) -> String {
    if p.approvals.is_empty() {
        return "none yet".into();
    }
    let ids: Vec<&str> = p.approvals.iter().map(|a| a.staff_id.as_str()).collect();
    format!("by {}", ids.join(", "))
}

/// A table of requests, one line each.
pub fn print_table(requests: &[pb::PendingApproval]) {
    let mut rows = vec![[
        "REQUEST".to_string(),
        "KIND".into(),
        "USER".into(),
        "WHAT".into(),
        "STATE".into(),
        "APPROVALS".into(),
        "WHEN".into(),
    ]];
    for p in requests {
        rows.push([
            p.request_id.clone(),
            p.kind.clone(),
            if p.user_id.is_empty() {
                "-".into()
            } else {
                p.user_id.clone()
            },
            what(p),
            state_name(p),
            tally(p),
            when(p),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in &rows {
        let mut line = String::new();
        for (n, (c, w)) in r.iter().zip(widths).enumerate() {
            if n + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:w$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// One request in full.
fn print_request(p: &pb::PendingApproval) {
    let i = p.intent.clone().unwrap_or_default();
    println!("request        {}", p.request_id);
    println!("kind           {}", p.kind);
    println!("state          {}", state_name(p));
    if !p.user_id.is_empty() {
        println!("user           {}", p.user_id);
    }
    println!("intent         {}", intent_fields(&i));
    println!("intent sha256  {}", b64url::encode(&p.intent_sha256));
    for q in &p.quorum {
        println!("quorum         {}: {} of [{}]", q.rule, q.required, q.staff.join(", "));
    }
    for a in &p.approvals {
        println!(
            "approved by    {} with key {} at {}",
            a.staff_id,
            a.credential_id,
            utc(a.at)
        );
    }
    println!("created        {}", utc(p.created_at));
    println!("quorum by      {}", utc(p.expires_at));
    println!("delay          {} s", p.delay_seconds);
    if p.not_before != 0 {
        println!("not before     {}", utc(p.not_before));
    }
    if !p.jti.is_empty() {
        println!("approval jti   {} (valid until {})", p.jti, utc(p.approval_expires_at));
    }
    if !p.closed_by.is_empty() || p.closed_at != 0 {
        println!("closed         {} ({})", utc(p.closed_at), p.closed_by);
    }
    if p.kind == "policy_change" {
        println!("proposed by    {}", p.proposed_by);
        println!("replaces       version {}", p.base_version);
        println!("policy text:");
        for l in p.policy_text.lines() {
            println!("{}", format!("    | {l}").trim_end());
        }
    }
}
