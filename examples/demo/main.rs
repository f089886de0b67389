//! A demo exchange frontend: the web backend an exchange would run in front
//! of Sigil, with one page for a person to try every ceremony.
//!
//! ```text
//! make demo            # sigild (sigil.dev.toml) if needed, then this on http://localhost:8080
//! cargo run --example demo -- --listen 127.0.0.1:8080 --sigil-url https://127.0.0.1:50051
//! ```
//!
//! The backend holds four client certificates: `frontend` (factors, the
//! account, relaying the user's proofs), `withdrawal-engine` (asking for
//! withdrawal approvals, verifying them offline with `sigil-verify`,
//! redeeming them), `admin` (adding staff members and registering their
//! security keys) and `approver` (the staff view: listing held requests,
//! relaying a staff member's decision). The page (`index.html`, `app.js`,
//! served from the binary) talks JSON to `/api/*`; every body is at most
//! 64 KiB of JSON with known fields, else 400 and nothing reaches Sigil.
//!
//! Sign-in is a typed user name: development only, no password.
//!
//! Approvals. For every action (add an address, set the anti-phishing code,
//! remove a factor, enroll a second factor, withdraw) the page first calls
//! `/api/approval/begin`; the backend opens the challenge in Sigil and keeps
//! what to do once it is answered server-side, keyed by the challenge id,
//! and shows the page the intent Sigil bound the challenge to (recomputing
//! its digest with `sigil-verify`). `/api/approval/complete` relays the
//! proof. For a withdrawal the page sends back the withdrawal record the
//! engine is to execute, as a naive backend would take it from the page:
//! the engine verifies the approval against that record, so a record
//! changed in the browser after the user approved is refused.
//!
//! Held withdrawals. When policy holds a withdrawal for a staff quorum
//! (`[[policy.actions.withdrawal.quorum]]`), CompleteApproval answers with
//! the held request instead of an approval: the page follows it
//! (`/api/approval/pending/<id>`, GetPendingApproval) and, once the
//! approval is issued and past its `nbf`, asks the engine to execute it
//! (`/api/approval/execute`): the engine fetches it, verifies it offline,
//! re-checks every staff member's signature against the published staff
//! keys (`sigil_verify::verify_quorum`), checks a delayed approval against
//! a signed cancellation list (`verify_delayed_for`) and redeems it. Until
//! then the user may cancel it with their own factor (an approval of
//! `cancel_approval` whose memo is the request id, then CancelApproval).
//!
//! Staff view (development only: a typed staff id, no sign-in). Adding a
//! staff member and registering their key go through the `admin`
//! certificate; the list of held requests and the decisions through the
//! `approver` one. Every decision is a WebAuthn assertion of the staff
//! member's own key over the intent the page shows first (BeginStaffDecision
//! / CompleteStaffDecision): the certificate only lets the backend reach
//! the RPCs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use data_encoding::{BASE64URL_NOPAD, HEXLOWER};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use sigil::client::connect_as;
use sigil::pb;
use sigil::pb::account_service_client::AccountServiceClient;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use sigil::pb::staff_service_client::StaffServiceClient;
use sigil_verify::{verify_quorum, verify_webauthn_evidence, Intent, JwkSet, StaffKeySet, Verifier, VerifyError};
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Largest request body the page may send.
const MAX_BODY: usize = 64 * 1024;
/// How long an opened challenge is remembered here (Sigil's own TTL is shorter).
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Most open approvals remembered at once.
const MAX_PENDING: usize = 10_000;
/// Most held requests the staff view lists (newest first).
const MAX_LISTED: usize = 50;

#[derive(Parser, Debug)]
#[command(about = "Demo exchange frontend in front of sigild")]
struct Args {
    /// Address to serve the page on.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// sigild's URL.
    #[arg(long, env = "SIGIL_URL", default_value = "https://127.0.0.1:50051")]
    sigil_url: String,
    /// Directory with ca.pem and the frontend, withdrawal-engine, admin and
    /// approver certificates.
    #[arg(long, env = "SIGIL_CERTS", default_value = "certs/out")]
    certs: PathBuf,
    /// Issuer and audience the engine expects in approvals.
    #[arg(long, default_value = "sigil")]
    issuer: String,
    #[arg(long, default_value = "withdrawal-engine")]
    audience: String,
}

/// What to do once a challenge is answered.
#[derive(Clone, Debug)]
enum Then {
    Withdrawal,
    AddAddress {
        asset: String,
        network: String,
        address: String,
        label: String,
    },
    SetCode {
        code: String,
    },
    RemoveFactor {
        factor_id: String,
    },
    EnrollWebauthn {
        nickname: String,
    },
    EnrollTotp {
        nickname: String,
    },
    CancelRequest {
        request_id: String,
    },
}

struct Pending {
    user: String,
    then: Then,
    opened: Instant,
}

struct App {
    factors: FactorServiceClient<Channel>,
    account: AccountServiceClient<Channel>,
    frontend: ApprovalServiceClient<Channel>,
    engine: ApprovalServiceClient<Channel>,
    /// The engine's view of the staff keys (GetStaffKeys).
    engine_staff: StaffServiceClient<Channel>,
    /// `admin`: adding staff members, registering their keys.
    staff_admin: StaffServiceClient<Channel>,
    /// `approver`: listing staff, relaying decisions.
    staff: StaffServiceClient<Channel>,
    /// `approver`: listing and reading held requests.
    approver: ApprovalServiceClient<Channel>,
    pending: Mutex<HashMap<String, Pending>>,
    issuer: String,
    audience: String,
}

type Shared = Arc<App>;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A JSON answer to the page.
struct Json(Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0.to_string()).into_response()
    }
}

/// A refusal as the page shows it.
struct Refusal {
    http: StatusCode,
    body: Value,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.http, Json(json!({ "error": self.body }))).into_response()
    }
}

/// 400 for what the page sent, before anything reaches Sigil.
fn bad_request(reason: &str, message: impl Into<String>) -> Refusal {
    Refusal {
        http: StatusCode::BAD_REQUEST,
        body: json!({ "source": "demo", "reason": reason, "message": message.into() }),
    }
}

/// A Sigil status with its ErrorInfo reason, retry time and bad fields.
fn from_status(st: tonic::Status) -> Refusal {
    use tonic::Code;
    let http = match st.code() {
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    let info = st.get_details_error_info();
    let reason = info
        .as_ref()
        .map(|i| i.reason.clone())
        .unwrap_or_else(|| format!("{:?}", st.code()));
    let retry_at = info
        .as_ref()
        .and_then(|i| i.metadata.get("retry_at"))
        .and_then(|v| v.parse::<i64>().ok())
        .or_else(|| {
            st.get_details_retry_info()
                .and_then(|r| r.retry_delay)
                .map(|d| now() + d.as_secs() as i64)
        });
    let fields: Vec<Value> = st
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| json!({ "field": v.field, "description": v.description }))
                .collect()
        })
        .unwrap_or_default();
    Refusal {
        http,
        body: json!({
            "source": "sigil",
            "code": format!("{:?}", st.code()),
            "reason": reason,
            "message": st.message(),
            "retry_at": retry_at,
            "fields": fields,
        }),
    }
}

/// A refusal by the engine's offline verifier.
fn from_verify(e: sigil_verify::VerifyError) -> Refusal {
    Refusal {
        http: StatusCode::CONFLICT,
        body: json!({ "source": "verifier", "reason": e.reason().as_str(), "message": e.to_string() }),
    }
}

/// The body as `T`: JSON content type, at most [`MAX_BODY`] bytes, known
/// fields only.
async fn read_json<T: DeserializeOwned>(req: Request) -> Result<T, Refusal> {
    let json_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim() == "application/json"));
    if !json_type {
        return Err(bad_request("NOT_JSON", "send Content-Type: application/json"));
    }
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY).await.map_err(|_| {
        bad_request(
            "TOO_LARGE",
            format!("request body over {MAX_BODY} bytes (64 KiB); nothing was sent to Sigil"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        bad_request(
            "MALFORMED_JSON",
            format!("malformed request: {e}; nothing was sent to Sigil"),
        )
    })
}

/// A user name as typed at sign-in: 1..=64 printable characters.
fn user_of(u: &str) -> Result<String, Refusal> {
    let u = u.trim();
    if u.is_empty() || u.len() > 64 || u.chars().any(|c| c.is_control()) {
        return Err(bad_request(
            "BAD_USER",
            "sign in with a user name of 1 to 64 printable characters",
        ));
    }
    Ok(u.to_string())
}

fn factor_json(f: &pb::Factor) -> Value {
    json!({
        "factor_id": f.factor_id,
        "kind": f.kind().as_str_name().trim_start_matches("FACTOR_KIND_"),
        "state": f.state().as_str_name().trim_start_matches("FACTOR_STATE_"),
        "nickname": f.nickname,
        "created_at": f.created_at,
        "last_used_at": f.last_used_at,
        "locked_until": f.locked_until,
        "suspected_cloned": f.suspected_cloned,
        "credential_id": f.credential_id,
        "aaguid": f.aaguid,
        "backup_eligible": f.backup_eligible,
    })
}

fn intent_json(i: &Intent) -> Value {
    json!({
        "action": i.action, "user_id": i.user_id, "withdrawal_id": i.withdrawal_id,
        "asset": i.asset, "network": i.network, "amount": i.amount,
        "destination": i.destination, "memo": i.memo,
    })
}

/// A staff id as typed in the staff view: 1..=64 printable characters.
fn staff_of(s: &str) -> Result<String, Refusal> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 || s.chars().any(|c| c.is_control()) {
        return Err(bad_request(
            "BAD_STAFF_ID",
            "type a staff id of 1 to 64 printable characters",
        ));
    }
    Ok(s.to_string())
}

/// A held request's id as Sigil made it (`qr_…`): 1..=128 printable ASCII
/// characters, no spaces.
fn request_id_of(s: &str) -> Result<String, Refusal> {
    if s.is_empty() || s.len() > 128 || !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err(bad_request(
            "BAD_REQUEST_ID",
            "a request id has 1 to 128 printable ASCII characters",
        ));
    }
    Ok(s.to_string())
}

/// A held request as the page shows it (never the approval itself).
fn pending_json(p: &pb::PendingApproval) -> Value {
    let intent: Intent = p.intent.clone().unwrap_or_default().into();
    // Per rule, the distinct approvers it counts, up to what it needs.
    let mut approved = 0u32;
    let mut required = 0u32;
    let quorum: Vec<Value> = p
        .quorum
        .iter()
        .map(|q| {
            let mut who: Vec<&str> = p
                .approvals
                .iter()
                .map(|a| a.staff_id.as_str())
                .filter(|s| q.staff.iter().any(|o| o == s))
                .collect();
            who.sort_unstable();
            who.dedup();
            approved += (who.len() as u32).min(q.required);
            required += q.required;
            json!({ "rule": q.rule, "required": q.required, "staff": q.staff, "approved_by": who })
        })
        .collect();
    json!({
        "request_id": p.request_id,
        "kind": p.kind,
        "user_id": p.user_id,
        "intent": intent_json(&intent),
        "intent_sha256": HEXLOWER.encode(&p.intent_sha256),
        "state": p.state().as_str_name().trim_start_matches("PENDING_STATE_"),
        "quorum": quorum,
        "approved": approved,
        "required": required,
        "approvals": p.approvals.iter().map(|a| json!({
            "staff_id": a.staff_id, "credential_id": a.credential_id, "at": a.at,
        })).collect::<Vec<_>>(),
        "created_at": p.created_at,
        "expires_at": p.expires_at,
        "not_before": p.not_before,
        "delay_seconds": p.delay_seconds,
        "jti": p.jti,
        "approval_expires_at": p.approval_expires_at,
        "closed_by": p.closed_by,
        "closed_at": p.closed_at,
    })
}

fn staff_member_json(m: &pb::StaffMember) -> Value {
    json!({
        "staff_id": m.staff_id,
        "role": m.role,
        "display_name": m.display_name,
        "user_id": m.user_id,
        "created_at": m.created_at,
        "removed_at": m.removed_at,
        "keys": m.keys.iter().map(|k| json!({
            "credential_id": k.credential_id, "added_at": k.added_at,
            "usable_at": k.usable_at, "suspected_cloned": k.suspected_cloned,
            "approved_at": k.approved_at, "request_id": k.request_id, "removed_at": k.removed_at,
        })).collect::<Vec<_>>(),
    })
}

/// JSON value re-serialized for Sigil: must be an object.
fn object_string(v: &Value, what: &str) -> Result<String, Refusal> {
    if !v.is_object() {
        return Err(bad_request("MALFORMED_JSON", format!("{what} must be a JSON object")));
    }
    Ok(v.to_string())
}

type Reply = Result<Json, Refusal>;

// ---------------------------------------------------------------- handlers

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserOnly {
    user: String,
}

async fn state(State(app): State<Shared>, req: Request) -> Reply {
    let r: UserOnly = read_json(req).await?;
    let user = user_of(&r.user)?;
    let factors = app
        .factors
        .clone()
        .list_factors(pb::ListFactorsRequest { user_id: user.clone() })
        .await
        .map_err(from_status)?
        .into_inner()
        .factors;
    let addresses = app
        .account
        .clone()
        .list_addresses(pb::ListAddressesRequest { user_id: user.clone() })
        .await
        .map_err(from_status)?
        .into_inner()
        .addresses;
    Ok(Json(json!({
        "user": user,
        "now": now(),
        "factors": factors.iter().map(factor_json).collect::<Vec<_>>(),
        "addresses": addresses.iter().map(|a| json!({
            "asset": a.asset, "network": a.network, "address": a.address,
            "label": a.label, "added_at": a.added_at, "usable_at": a.usable_at,
        })).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBegin {
    user: String,
    #[serde(default)]
    nickname: String,
}

async fn webauthn_begin(app: &App, user: &str, nickname: &str, step_up: String) -> Reply {
    let r = app
        .factors
        .clone()
        .begin_webauthn_registration(pb::BeginWebauthnRegistrationRequest {
            user_id: user.into(),
            nickname: nickname.into(),
            display_name: user.into(),
            step_up_approval: step_up,
        })
        .await
        .map_err(from_status)?
        .into_inner();
    let options: Value = serde_json::from_str(&r.options_json).unwrap_or(Value::Null);
    Ok(Json(json!({
        "next": "webauthn_create", "ceremony_id": r.ceremony_id, "options": options, "expires_at": r.expires_at,
    })))
}

async fn totp_begin(app: &App, user: &str, nickname: &str, step_up: String) -> Reply {
    let r = app
        .factors
        .clone()
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: user.into(),
            nickname: nickname.into(),
            account_name: user.into(),
            step_up_approval: step_up,
        })
        .await
        .map_err(from_status)?
        .into_inner();
    Ok(Json(json!({
        "next": "totp_confirm", "factor_id": r.factor_id, "secret_base32": r.secret_base32,
        "otpauth_uri": r.otpauth_uri, "qr_svg": String::from_utf8_lossy(&r.qr_svg),
        "confirm_before": r.confirm_before,
    })))
}

/// First factor: enrolls at once. Later ones need an `enroll_factor`
/// approval first (the page then goes through the approval dialog).
async fn enroll_begin(app: &App, req: Request, kind: &str) -> Reply {
    let r: EnrollBegin = read_json(req).await?;
    let user = user_of(&r.user)?;
    let nickname = r.nickname.trim().to_string();
    if nickname.len() > 64 {
        return Err(bad_request("BAD_NICKNAME", "a nickname has at most 64 bytes"));
    }
    let factors = app
        .factors
        .clone()
        .list_factors(pb::ListFactorsRequest { user_id: user.clone() })
        .await
        .map_err(from_status)?
        .into_inner()
        .factors;
    if factors.iter().any(|f| f.state() == pb::FactorState::Active) {
        let then = if kind == "webauthn" {
            Then::EnrollWebauthn {
                nickname: nickname.clone(),
            }
        } else {
            Then::EnrollTotp {
                nickname: nickname.clone(),
            }
        };
        let intent = Intent {
            action: "enroll_factor".into(),
            user_id: user.clone(),
            memo: format!("{kind}:{nickname}"),
            ..Default::default()
        };
        return open_approval(app, &user, intent, then, false).await;
    }
    if kind == "webauthn" {
        webauthn_begin(app, &user, &nickname, String::new()).await
    } else {
        totp_begin(app, &user, &nickname, String::new()).await
    }
}

async fn webauthn_register_begin(State(app): State<Shared>, req: Request) -> Reply {
    enroll_begin(&app, req, "webauthn").await
}

async fn totp_enroll_begin(State(app): State<Shared>, req: Request) -> Reply {
    enroll_begin(&app, req, "totp").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterFinish {
    user: String,
    ceremony_id: String,
    credential: Value,
}

async fn webauthn_register_finish(State(app): State<Shared>, req: Request) -> Reply {
    let r: RegisterFinish = read_json(req).await?;
    let user = user_of(&r.user)?;
    let response_json = object_string(&r.credential, "credential")?;
    let f = app
        .factors
        .clone()
        .finish_webauthn_registration(pb::FinishWebauthnRegistrationRequest {
            user_id: user,
            ceremony_id: r.ceremony_id,
            response_json,
        })
        .await
        .map_err(from_status)?
        .into_inner();
    Ok(Json(json!({ "factor": f.factor.as_ref().map(factor_json) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TotpConfirm {
    user: String,
    factor_id: String,
    code: String,
}

async fn totp_confirm(State(app): State<Shared>, req: Request) -> Reply {
    let r: TotpConfirm = read_json(req).await?;
    let user = user_of(&r.user)?;
    let f = app
        .factors
        .clone()
        .confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
            user_id: user,
            factor_id: r.factor_id,
            code: r.code.trim().to_string(),
        })
        .await
        .map_err(from_status)?
        .into_inner();
    Ok(Json(json!({ "factor": f.factor.as_ref().map(factor_json) })))
}

/// What the page asks to approve.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "action", rename_all = "snake_case")]
enum Ask {
    Withdrawal {
        user: String,
        asset: String,
        network: String,
        amount: String,
        destination: String,
        #[serde(default)]
        memo: String,
    },
    AddAddress {
        user: String,
        asset: String,
        network: String,
        address: String,
        #[serde(default)]
        label: String,
    },
    ChangeAntiPhishingCode {
        user: String,
        code: String,
    },
    RemoveFactor {
        user: String,
        factor_id: String,
    },
    /// Cancels one of the user's held withdrawals (waiting for staff, or
    /// approved and in its delay) with the user's own factor.
    CancelApproval {
        user: String,
        request_id: String,
    },
}

/// Opens a challenge for `intent` (as the engine for withdrawals, else as
/// the frontend) and remembers what to do once it is answered.
async fn open_approval(app: &App, user: &str, intent: Intent, then: Then, as_engine: bool) -> Reply {
    let mut client = if as_engine {
        app.engine.clone()
    } else {
        app.frontend.clone()
    };
    let begun = client
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(intent.clone().into()),
            device: Some(pb::DeviceSignals {
                jailbroken: false,
                platform: "web".into(),
                app_attestation: String::new(),
            }),
        })
        .await
        .map_err(from_status)?
        .into_inner();
    // What you see is what you sign: the intent shown is the one whose
    // digest Sigil bound the challenge to, checked here.
    let digest = intent.digest();
    if begun.intent_sha256.as_slice() != digest.as_slice() {
        return Err(Refusal {
            http: StatusCode::BAD_GATEWAY,
            body: json!({ "source": "demo", "reason": "DIGEST_MISMATCH", "message": "Sigil bound the challenge to another intent" }),
        });
    }
    {
        let mut p = app.pending.lock().unwrap();
        p.retain(|_, v| v.opened.elapsed() < PENDING_TTL);
        if p.len() >= MAX_PENDING {
            return Err(Refusal {
                http: StatusCode::TOO_MANY_REQUESTS,
                body: json!({ "source": "demo", "reason": "BUSY", "message": "too many open approvals; try again in a few minutes" }),
            });
        }
        p.insert(
            begun.challenge_id.clone(),
            Pending {
                user: user.into(),
                then,
                opened: Instant::now(),
            },
        );
    }
    let webauthn: Value = if begun.webauthn_request_options_json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&begun.webauthn_request_options_json).unwrap_or(Value::Null)
    };
    Ok(Json(json!({
        "next": "approve",
        "challenge_id": begun.challenge_id,
        "intent": intent_json(&intent),
        "intent_sha256": HEXLOWER.encode(&digest),
        "allowed_kinds": begun.allowed_kinds().map(|k| k.as_str_name().trim_start_matches("FACTOR_KIND_").to_string()).collect::<Vec<_>>(),
        "factors": begun.factors.iter().map(factor_json).collect::<Vec<_>>(),
        "expires_at": begun.expires_at,
        "anti_phishing_code": begun.anti_phishing_code,
        "webauthn": webauthn,
    })))
}

async fn approval_begin(State(app): State<Shared>, req: Request) -> Reply {
    let ask: Ask = read_json(req).await?;
    match ask {
        Ask::Withdrawal {
            user,
            asset,
            network,
            amount,
            destination,
            memo,
        } => {
            let user = user_of(&user)?;
            let intent = Intent {
                action: "withdrawal".into(),
                user_id: user.clone(),
                withdrawal_id: format!("wd-{}", uuid::Uuid::new_v4().simple()),
                asset: asset.trim().into(),
                network: network.trim().into(),
                amount: amount.trim().into(),
                destination: destination.trim().into(),
                memo: memo.trim().into(),
            };
            open_approval(&app, &user, intent, Then::Withdrawal, true).await
        }
        Ask::AddAddress {
            user,
            asset,
            network,
            address,
            label,
        } => {
            let user = user_of(&user)?;
            let (asset, network, address, label) = (
                asset.trim().to_string(),
                network.trim().to_string(),
                address.trim().to_string(),
                label.trim().to_string(),
            );
            let intent = Intent {
                action: "add_address".into(),
                user_id: user.clone(),
                asset: asset.clone(),
                network: network.clone(),
                destination: address.clone(),
                memo: label.clone(),
                ..Default::default()
            };
            open_approval(
                &app,
                &user,
                intent,
                Then::AddAddress {
                    asset,
                    network,
                    address,
                    label,
                },
                false,
            )
            .await
        }
        Ask::ChangeAntiPhishingCode { user, code } => {
            let user = user_of(&user)?;
            let code = code.trim().to_string();
            let intent = Intent {
                action: "change_anti_phishing_code".into(),
                user_id: user.clone(),
                memo: code.clone(),
                ..Default::default()
            };
            open_approval(&app, &user, intent, Then::SetCode { code }, false).await
        }
        Ask::RemoveFactor { user, factor_id } => {
            let user = user_of(&user)?;
            // A pending factor goes without an approval.
            let factors = app
                .factors
                .clone()
                .list_factors(pb::ListFactorsRequest { user_id: user.clone() })
                .await
                .map_err(from_status)?
                .into_inner()
                .factors;
            if !factors.iter().any(|f| f.state() == pb::FactorState::Active) {
                app.factors
                    .clone()
                    .remove_factor(pb::RemoveFactorRequest {
                        user_id: user,
                        factor_id,
                        step_up_approval: String::new(),
                    })
                    .await
                    .map_err(from_status)?;
                return Ok(Json(json!({ "next": "done", "done": "factor removed" })));
            }
            let intent = Intent {
                action: "remove_factor".into(),
                user_id: user.clone(),
                memo: factor_id.clone(),
                ..Default::default()
            };
            open_approval(&app, &user, intent, Then::RemoveFactor { factor_id }, false).await
        }
        Ask::CancelApproval { user, request_id } => {
            let user = user_of(&user)?;
            let request_id = request_id_of(request_id.trim())?;
            let intent = Intent {
                action: "cancel_approval".into(),
                user_id: user.clone(),
                memo: request_id.clone(),
                ..Default::default()
            };
            open_approval(&app, &user, intent, Then::CancelRequest { request_id }, false).await
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum ProofIn {
    Webauthn(Value),
    Totp {
        code: String,
        #[serde(default)]
        factor_id: String,
    },
}

/// The withdrawal the engine will execute, as the page sends it back.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WithdrawalRecord {
    withdrawal_id: String,
    asset: String,
    network: String,
    amount: String,
    destination: String,
    #[serde(default)]
    memo: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Complete {
    user: String,
    challenge_id: String,
    proof: ProofIn,
    #[serde(default)]
    withdrawal: Option<WithdrawalRecord>,
}

/// Decoded header and claims of a compact JWS, for display.
fn decode_jws(token: &str) -> Value {
    let part = |s: Option<&str>| -> Value {
        s.and_then(|p| BASE64URL_NOPAD.decode(p.as_bytes()).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let mut it = token.split('.');
    json!({ "header": part(it.next()), "claims": part(it.next()) })
}

async fn approval_complete(State(app): State<Shared>, req: Request) -> Reply {
    let c: Complete = read_json(req).await?;
    let user = user_of(&c.user)?;
    let then = app
        .pending
        .lock()
        .unwrap()
        .get(&c.challenge_id)
        .filter(|p| p.user == user)
        .map(|p| p.then.clone())
        .ok_or_else(|| {
            bad_request(
                "UNKNOWN_CHALLENGE",
                "no challenge of this user by that id here; begin again",
            )
        })?;
    let proof = match c.proof {
        ProofIn::Webauthn(v) => pb::complete_approval_request::Proof::Webauthn(pb::WebauthnProof {
            response_json: object_string(&v, "proof.webauthn")?,
        }),
        ProofIn::Totp { code, factor_id } => pb::complete_approval_request::Proof::Totp(pb::TotpProof {
            code: code.trim().into(),
            factor_id,
        }),
    };
    let done = app
        .frontend
        .clone()
        .complete_approval(pb::CompleteApprovalRequest {
            challenge_id: c.challenge_id.clone(),
            user_id: user.clone(),
            proof: Some(proof),
        })
        .await
        .map_err(from_status)?
        .into_inner();
    let approval = json!({ "jti": done.jti, "amr": done.amr, "expires_at": done.expires_at, "decoded": decode_jws(&done.approval) });
    match then {
        Then::Withdrawal => {
            let w = c.withdrawal.ok_or_else(|| {
                bad_request(
                    "MISSING_WITHDRAWAL",
                    "a withdrawal approval needs the withdrawal record",
                )
            })?;
            // Held by policy: for staff approvals (no approval yet) or a
            // delay (an approval valid only from its nbf). The page follows
            // the request and asks the engine to execute it once it is valid.
            if let Some(p) = &done.pending {
                return Ok(Json(json!({
                    "next": "held",
                    "pending": pending_json(p),
                    "not_before": done.not_before,
                    "now": now(),
                })));
            }
            let record = Intent {
                action: "withdrawal".into(),
                user_id: user.clone(),
                withdrawal_id: w.withdrawal_id,
                asset: w.asset,
                network: w.network,
                amount: w.amount,
                destination: w.destination,
                memo: w.memo,
            };
            engine_execute(&app, &user, &done.approval, record, approval).await
        }
        Then::AddAddress {
            asset,
            network,
            address,
            label,
        } => {
            let a = app
                .account
                .clone()
                .add_address(pb::AddAddressRequest {
                    user_id: user,
                    asset,
                    network,
                    address,
                    label,
                    approval: done.approval,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            let usable_at = a.address.map(|a| a.usable_at).unwrap_or_default();
            Ok(Json(
                json!({ "next": "done", "done": "address added", "usable_at": usable_at, "approval": approval }),
            ))
        }
        Then::SetCode { code } => {
            app.account
                .clone()
                .set_anti_phishing_code(pb::SetAntiPhishingCodeRequest {
                    user_id: user,
                    code,
                    approval: done.approval,
                })
                .await
                .map_err(from_status)?;
            Ok(Json(
                json!({ "next": "done", "done": "anti-phishing code set", "approval": approval }),
            ))
        }
        Then::RemoveFactor { factor_id } => {
            app.factors
                .clone()
                .remove_factor(pb::RemoveFactorRequest {
                    user_id: user,
                    factor_id,
                    step_up_approval: done.approval,
                })
                .await
                .map_err(from_status)?;
            Ok(Json(
                json!({ "next": "done", "done": "factor removed", "approval": approval }),
            ))
        }
        Then::CancelRequest { request_id } => {
            let p = app
                .frontend
                .clone()
                .cancel_approval(pb::CancelApprovalRequest {
                    request_id: request_id.clone(),
                    approval: done.approval,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            Ok(Json(json!({
                "next": "done",
                "done": format!("held withdrawal {request_id} cancelled"),
                "pending": pending_json(&p),
                "approval": approval,
            })))
        }
        Then::EnrollWebauthn { nickname } => webauthn_begin(&app, &user, &nickname, done.approval).await,
        Then::EnrollTotp { nickname } => totp_begin(&app, &user, &nickname, done.approval).await,
    }
}

/// The engine's side: verify offline against its record (a delayed
/// approval against a fresh signed cancellation list), re-verify the
/// user's WebAuthn signature from the evidence and, when staff approved it,
/// every staff member's signature against the published staff keys; then
/// redeem exactly once.
async fn engine_execute(app: &App, user: &str, token: &str, record: Intent, approval: Value) -> Reply {
    let mut engine = app.engine.clone();
    let keys = engine
        .get_approval_keys(pb::GetApprovalKeysRequest {})
        .await
        .map_err(from_status)?
        .into_inner();
    let jwks: JwkSet = serde_json::from_str(&keys.jwks_json)
        .map_err(|e| bad_request("BAD_JWKS", format!("Sigil's key set does not parse: {e}")))?;
    let verifier = Verifier::new(&jwks, &app.issuer, &app.audience).map_err(from_verify)?;
    let mut cancellations = Value::Null;
    let mut list_issued_at = None;
    let verified = match verifier.verify_for(token, &record, now()) {
        // A delayed approval could be cancelled until its nbf: accepted
        // only with a signed cancellation list issued since that does not
        // name it.
        Err(VerifyError::CancellationListNeeded(_)) => {
            let list = engine
                .get_cancellations(pb::GetCancellationsRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            cancellations = json!({ "issued_at": list.issued_at, "cancelled": list.cancelled.len() });
            list_issued_at = Some(list.issued_at);
            verifier.verify_delayed_for(token, &record, &list.cancellations, now())
        }
        other => other,
    };
    let claims = match verified {
        Ok(c) => c,
        // Sigil dates its cancellation lists a little in the past (a list
        // names every cancellation decided before its date, on any
        // replica), so a delayed approval can be verified offline only that
        // long after its nbf. Not a refusal: the page tries again then.
        // Sigil is not asked to redeem it meanwhile: it would, and the
        // approval would be used up without the withdrawal.
        Err(VerifyError::CancellationListNeeded(why)) => {
            let nbf = decode_jws(token)["claims"]["nbf"].as_i64().unwrap_or_else(now);
            let lag = list_issued_at.map_or(0, |iat| (now() - iat).max(0));
            return Err(Refusal {
                http: StatusCode::CONFLICT,
                body: json!({
                    "source": "verifier",
                    "reason": "CANCELLATION_LIST_PENDING",
                    "message": format!("the engine waits for a signed cancellation list dated at or after the approval's nbf ({why})"),
                    "retry_at": nbf.max(now()) + lag + 1,
                }),
            });
        }
        Err(e) => {
            // Sigil would refuse it too: show its answer for the same record.
            let sigil = engine
                .redeem_approval(pb::RedeemApprovalRequest {
                    approval: token.into(),
                    expected_intent: Some(record.into()),
                    idempotency_key: String::new(),
                })
                .await
                .err()
                .map(|st| from_status(st).body);
            let mut r = from_verify(e);
            r.body["sigil"] = sigil.unwrap_or(Value::Null);
            r.body["approval"] = approval;
            return Err(r);
        }
    };
    let mut evidence = json!(null);
    if let Some(ev) = &claims.webauthn {
        let factors = app
            .factors
            .clone()
            .list_factors(pb::ListFactorsRequest { user_id: user.into() })
            .await
            .map_err(from_status)?
            .into_inner()
            .factors;
        let key = factors
            .iter()
            .find(|f| f.credential_id == ev.credential_id)
            .and_then(|f| jwk_sec1(&f.public_key_jwk));
        let origin = BASE64URL_NOPAD
            .decode(ev.client_data_json.as_bytes())
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v.get("origin").cloned());
        let digest: [u8; 32] = claims.intent.digest();
        evidence = match key {
            Some(k) => match verify_webauthn_evidence(ev, &digest, &k, None) {
                Ok(()) => json!({ "ok": true, "credential_id": ev.credential_id, "origin": origin }),
                Err(e) => json!({ "ok": false, "reason": e.reason().as_str(), "message": e.to_string() }),
            },
            None => json!({ "ok": false, "message": "credential not among the user's factors" }),
        };
    }
    // Staff approvals: each approver's assertion over this intent, with the
    // keys Sigil publishes. A quorum that does not verify is not executed
    // (and not redeemed).
    let mut quorum = Value::Null;
    if !claims.quorum.is_empty() || !claims.approvers.is_empty() {
        let published = app
            .engine_staff
            .clone()
            .get_staff_keys(pb::GetStaffKeysRequest {})
            .await
            .map_err(from_status)?
            .into_inner();
        let staff: StaffKeySet = serde_json::from_str(&published.staff_keys_json)
            .map_err(|e| bad_request("BAD_STAFF_KEYS", format!("Sigil's staff key set does not parse: {e}")))?;
        let approvers = verify_quorum(&claims, &staff, None).map_err(|e| {
            let mut r = from_verify(e);
            r.body["approval"] = approval.clone();
            r
        })?;
        quorum = json!({
            "ok": true,
            "approvers": approvers,
            "rules": claims.quorum.iter().map(|q| json!({ "rule": q.rule, "m": q.m, "of": q.of })).collect::<Vec<_>>(),
        });
    }
    let redeemed = engine
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: token.into(),
            expected_intent: Some(record.clone().into()),
            idempotency_key: record.withdrawal_id.clone(),
        })
        .await
        .map_err(|st| {
            let mut r = from_status(st);
            r.body["approval"] = approval.clone();
            r
        })?
        .into_inner();
    let done = match quorum.get("approvers").and_then(Value::as_array) {
        Some(a) => format!(
            "withdrawal approved by staff ({}), verified and redeemed",
            a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")
        ),
        None => "withdrawal approved, verified and redeemed".to_string(),
    };
    Ok(Json(json!({
        "next": "done",
        "done": done,
        "approval": approval,
        "verified": {
            "sub": claims.sub, "jti": claims.jti, "act": claims.act, "amr": claims.amr,
            "intent": intent_json(&claims.intent), "exp": claims.exp, "nbf": claims.nbf,
            "webauthn_evidence": evidence,
            "quorum": quorum,
            "cancellations": cancellations,
        },
        "redeemed": { "redeemed_at": redeemed.redeemed_at, "replayed": redeemed.replayed },
    })))
}

// ---------------------------------------------------------------- held withdrawals

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Execute {
    user: String,
    request_id: String,
    withdrawal: WithdrawalRecord,
}

/// One of the user's held requests (GetPendingApproval as the frontend);
/// another user's is NOT_FOUND here.
async fn user_request(app: &App, user: &str, request_id: &str) -> Result<pb::PendingApproval, Refusal> {
    let p = app
        .frontend
        .clone()
        .get_pending_approval(pb::GetPendingApprovalRequest {
            request_id: request_id.into(),
        })
        .await
        .map_err(from_status)?
        .into_inner();
    if p.user_id != user {
        return Err(not_users(user, request_id));
    }
    Ok(p)
}

/// A request that is not the signed-in user's, as if it did not exist.
fn not_users(user: &str, request_id: &str) -> Refusal {
    Refusal {
        http: StatusCode::NOT_FOUND,
        body: json!({ "source": "demo", "reason": "NOT_FOUND", "message": format!("no held request {request_id} of user {user}") }),
    }
}

async fn approval_pending(State(app): State<Shared>, Path(id): Path<String>, req: Request) -> Reply {
    let r: UserOnly = read_json(req).await?;
    let user = user_of(&r.user)?;
    let id = request_id_of(&id)?;
    let p = user_request(&app, &user, &id).await?;
    Ok(Json(json!({ "now": now(), "pending": pending_json(&p) })))
}

/// The engine executes a held withdrawal once its approval is issued: it
/// fetches the approval (GetPendingApproval as the engine) and goes on as
/// for any other (offline checks against the record the page sends back,
/// then redemption).
async fn approval_execute(State(app): State<Shared>, req: Request) -> Reply {
    let x: Execute = read_json(req).await?;
    let user = user_of(&x.user)?;
    let id = request_id_of(x.request_id.trim())?;
    let p = app
        .engine
        .clone()
        .get_pending_approval(pb::GetPendingApprovalRequest { request_id: id.clone() })
        .await
        .map_err(from_status)?
        .into_inner();
    if p.user_id != user {
        return Err(not_users(&user, &id));
    }
    if p.approval.is_empty() {
        return Err(Refusal {
            http: StatusCode::CONFLICT,
            body: json!({
                "source": "demo", "reason": "NOT_ISSUED",
                "message": format!("request {id} has no approval yet ({})", p.state().as_str_name()),
                "pending": pending_json(&p),
            }),
        });
    }
    let w = x.withdrawal;
    let record = Intent {
        action: "withdrawal".into(),
        user_id: user.clone(),
        withdrawal_id: w.withdrawal_id,
        asset: w.asset,
        network: w.network,
        amount: w.amount,
        destination: w.destination,
        memo: w.memo,
    };
    let approval = json!({
        "jti": p.jti, "expires_at": p.approval_expires_at, "not_before": p.not_before,
        "request_id": p.request_id, "decoded": decode_jws(&p.approval),
    });
    engine_execute(&app, &user, &p.approval, record, approval).await
}

// ---------------------------------------------------------------- staff view

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaffAdd {
    staff_id: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    display_name: String,
}

async fn staff_add(State(app): State<Shared>, req: Request) -> Reply {
    let r: StaffAdd = read_json(req).await?;
    let staff_id = staff_of(&r.staff_id)?;
    let role = r.role.as_deref().unwrap_or("approver").trim();
    if role != "approver" && role != "admin" {
        return Err(bad_request("BAD_ROLE", "a staff member is an approver or an admin"));
    }
    let display_name = r.display_name.trim();
    if display_name.len() > 64 || display_name.chars().any(|c| c.is_control()) {
        return Err(bad_request("BAD_NAME", "a display name has at most 64 printable bytes"));
    }
    let m = app
        .staff_admin
        .clone()
        .add_staff(pb::AddStaffRequest {
            staff_id,
            role: role.into(),
            display_name: display_name.into(),
            user_id: String::new(),
        })
        .await
        .map_err(from_status)?
        .into_inner();
    Ok(Json(json!({ "staff": staff_member_json(&m) })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaffOnly {
    staff_id: String,
}

async fn staff_register_begin(State(app): State<Shared>, req: Request) -> Reply {
    let r: StaffOnly = read_json(req).await?;
    let staff_id = staff_of(&r.staff_id)?;
    let b = app
        .staff_admin
        .clone()
        .begin_staff_key_registration(pb::BeginStaffKeyRegistrationRequest { staff_id })
        .await
        .map_err(from_status)?
        .into_inner();
    let options: Value = serde_json::from_str(&b.options_json).unwrap_or(Value::Null);
    Ok(Json(
        json!({ "ceremony_id": b.ceremony_id, "options": options, "expires_at": b.expires_at }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaffRegisterFinish {
    staff_id: String,
    ceremony_id: String,
    credential: Value,
}

async fn staff_register_finish(State(app): State<Shared>, req: Request) -> Reply {
    let r: StaffRegisterFinish = read_json(req).await?;
    let staff_id = staff_of(&r.staff_id)?;
    let response_json = object_string(&r.credential, "credential")?;
    let m = app
        .staff_admin
        .clone()
        .finish_staff_key_registration(pb::FinishStaffKeyRegistrationRequest {
            staff_id,
            ceremony_id: r.ceremony_id,
            response_json,
        })
        .await
        .map_err(from_status)?
        .into_inner();
    Ok(Json(json!({ "staff": staff_member_json(&m), "now": now() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

async fn staff_members(State(app): State<Shared>, req: Request) -> Reply {
    let _: NoFields = read_json(req).await?;
    let list = app
        .staff
        .clone()
        .list_staff(pb::ListStaffRequest {})
        .await
        .map_err(from_status)?
        .into_inner()
        .staff;
    Ok(Json(
        json!({ "now": now(), "staff": list.iter().map(staff_member_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingList {
    #[serde(default)]
    include_closed: bool,
}

/// Everyone's held requests (and policy changes), newest first.
async fn staff_pending(State(app): State<Shared>, req: Request) -> Reply {
    let r: PendingList = read_json(req).await?;
    let list = app
        .approver
        .clone()
        .list_pending_approvals(pb::ListPendingApprovalsRequest {
            user_id: String::new(),
            include_closed: r.include_closed,
        })
        .await
        .map_err(from_status)?
        .into_inner()
        .requests;
    Ok(Json(json!({
        "now": now(),
        "requests": list.iter().take(MAX_LISTED).map(pending_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum DecisionIn {
    Approve,
    Cancel,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideBegin {
    request_id: String,
    staff_id: String,
    decision: DecisionIn,
}

/// Opens a staff decision: the options for the staff member's key, the
/// intent it signs (checked against its digest) and the request it decides.
async fn staff_decide_begin(State(app): State<Shared>, req: Request) -> Reply {
    let r: DecideBegin = read_json(req).await?;
    let staff_id = staff_of(&r.staff_id)?;
    let request_id = request_id_of(r.request_id.trim())?;
    let decision = match r.decision {
        DecisionIn::Approve => pb::StaffDecision::Approve,
        DecisionIn::Cancel => pb::StaffDecision::Cancel,
    };
    let held = app
        .approver
        .clone()
        .get_pending_approval(pb::GetPendingApprovalRequest {
            request_id: request_id.clone(),
        })
        .await
        .map_err(from_status)?
        .into_inner();
    let b = app
        .staff
        .clone()
        .begin_staff_decision(pb::BeginStaffDecisionRequest {
            request_id,
            staff_id: staff_id.clone(),
            decision: decision as i32,
        })
        .await
        .map_err(from_status)?
        .into_inner();
    // What the staff member sees is what their key signs: the request
    // shown is the one whose intent (to approve) or whose cancellation (to
    // cancel) Sigil bound the challenge to.
    let signs: Intent = b.intent.clone().unwrap_or_default().into();
    let digest = signs.digest();
    let shown: Intent = held.intent.clone().unwrap_or_default().into();
    let same = match r.decision {
        DecisionIn::Approve => signs == shown,
        DecisionIn::Cancel => {
            signs.action == "cancel_approval" && signs.memo == held.request_id && signs.user_id == held.user_id
        }
    };
    if b.intent_sha256.as_slice() != digest.as_slice() || !same {
        return Err(Refusal {
            http: StatusCode::BAD_GATEWAY,
            body: json!({ "source": "demo", "reason": "DIGEST_MISMATCH", "message": "Sigil bound the challenge to another intent" }),
        });
    }
    let options: Value = serde_json::from_str(&b.options_json).unwrap_or(Value::Null);
    Ok(Json(json!({
        "ceremony_id": b.ceremony_id,
        "staff_id": staff_id,
        "decision": if matches!(r.decision, DecisionIn::Approve) { "approve" } else { "cancel" },
        "options": options,
        "signs": intent_json(&signs),
        "signs_sha256": HEXLOWER.encode(&digest),
        "request": pending_json(&held),
        "expires_at": b.expires_at,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideComplete {
    request_id: String,
    staff_id: String,
    ceremony_id: String,
    response: Value,
}

async fn staff_decide_complete(State(app): State<Shared>, req: Request) -> Reply {
    let r: DecideComplete = read_json(req).await?;
    let staff_id = staff_of(&r.staff_id)?;
    let request_id = request_id_of(r.request_id.trim())?;
    let response_json = object_string(&r.response, "response")?;
    let p = app
        .staff
        .clone()
        .complete_staff_decision(pb::CompleteStaffDecisionRequest {
            request_id,
            staff_id,
            ceremony_id: r.ceremony_id,
            response_json,
        })
        .await
        .map_err(from_status)?
        .into_inner();
    Ok(Json(json!({ "now": now(), "pending": pending_json(&p) })))
}

/// `04 || x || y` of an EC P-256 JWK.
fn jwk_sec1(jwk: &str) -> Option<Vec<u8>> {
    let v: Value = serde_json::from_str(jwk).ok()?;
    let x = BASE64URL_NOPAD.decode(v.get("x")?.as_str()?.as_bytes()).ok()?;
    let y = BASE64URL_NOPAD.decode(v.get("y")?.as_str()?.as_bytes()).ok()?;
    let mut out = vec![4u8];
    out.extend(x);
    out.extend(y);
    Some(out)
}

// ---------------------------------------------------------------- page

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

fn page_headers(kind: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'"),
    );
    h
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": { "source": "demo", "reason": "NOT_FOUND", "message": "no such page" } })),
    )
        .into_response()
}

async fn connect(url: &str, certs: &std::path::Path, role: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match connect_as(url, certs, role).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("demo: waiting for sigild ({e})");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                eprintln!("demo: cannot connect to sigild as {role}: {e}");
                std::process::exit(1);
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let frontend = connect(&args.sigil_url, &args.certs, "frontend").await;
    let engine = connect(&args.sigil_url, &args.certs, "withdrawal-engine").await;
    let admin = connect(&args.sigil_url, &args.certs, "admin").await;
    let approver = connect(&args.sigil_url, &args.certs, "approver").await;
    let app = Arc::new(App {
        factors: FactorServiceClient::new(frontend.clone()),
        account: AccountServiceClient::new(frontend.clone()),
        frontend: ApprovalServiceClient::new(frontend),
        engine_staff: StaffServiceClient::new(engine.clone()),
        engine: ApprovalServiceClient::new(engine),
        staff_admin: StaffServiceClient::new(admin),
        staff: StaffServiceClient::new(approver.clone()),
        approver: ApprovalServiceClient::new(approver),
        pending: Mutex::new(HashMap::new()),
        issuer: args.issuer,
        audience: args.audience,
    });
    let router = Router::new()
        .route("/", get(|| async { (page_headers("text/html; charset=utf-8"), INDEX) }))
        .route(
            "/app.js",
            get(|| async { (page_headers("text/javascript; charset=utf-8"), APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { (page_headers("text/css; charset=utf-8"), STYLE) }),
        )
        .route("/api/state", post(state))
        .route("/api/webauthn/register/begin", post(webauthn_register_begin))
        .route("/api/webauthn/register/finish", post(webauthn_register_finish))
        .route("/api/totp/begin", post(totp_enroll_begin))
        .route("/api/totp/confirm", post(totp_confirm))
        .route("/api/approval/begin", post(approval_begin))
        .route("/api/approval/complete", post(approval_complete))
        .route("/api/approval/pending/{id}", post(approval_pending))
        .route("/api/approval/execute", post(approval_execute))
        .route("/api/staff/add", post(staff_add))
        .route("/api/staff/register/begin", post(staff_register_begin))
        .route("/api/staff/register/finish", post(staff_register_finish))
        .route("/api/staff/members", post(staff_members))
        .route("/api/staff/pending", post(staff_pending))
        .route("/api/staff/decide/begin", post(staff_decide_begin))
        .route("/api/staff/decide/complete", post(staff_decide_complete))
        .fallback(not_found)
        .with_state(app);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    let port = args.listen.port();
    println!(
        "demo exchange on http://localhost:{port} (relaying to {})",
        args.sigil_url
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = axum::serve(listener, router.into_make_service())
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("demo: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use sigil::api::status::to_status;
    use sigil::{Error, Reason};

    fn post(body: impl Into<Body>, content_type: &str) -> Request {
        Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, content_type)
            .body(body.into())
            .unwrap()
    }

    #[test]
    fn a_refusal_carries_sigils_reason_and_retry_time() {
        let st = to_status(
            Error::refused(Reason::AddressOnHold, "destination in its hold").retry_at(1_800_000_000, 1_799_999_990),
        );
        let r = from_status(st);
        assert_eq!(r.http, StatusCode::CONFLICT);
        assert_eq!(r.body["source"], "sigil");
        assert_eq!(r.body["reason"], "ADDRESS_ON_HOLD");
        assert_eq!(r.body["retry_at"], 1_800_000_000);
        assert_eq!(r.body["message"], "destination in its hold");
    }

    #[test]
    fn bad_fields_are_listed() {
        let st = to_status(Error::invalid("intent.amount", "not canonical"));
        let r = from_status(st);
        assert_eq!(r.http, StatusCode::BAD_REQUEST);
        assert_eq!(r.body["reason"], "INVALID_ARGUMENT");
        assert_eq!(r.body["fields"][0]["field"], "intent.amount");
        assert_eq!(r.body["retry_at"], Value::Null);
    }

    #[tokio::test]
    async fn oversized_malformed_or_unknown_json_is_a_400() {
        let big = format!("{{\"user\":\"{}\"}}", "x".repeat(MAX_BODY));
        for (req, reason) in [
            (post(big, "application/json"), "TOO_LARGE"),
            (post("{\"user\":", "application/json"), "MALFORMED_JSON"),
            (
                post("{\"user\":\"a\",\"admin\":true}", "application/json"),
                "MALFORMED_JSON",
            ),
            (post("{\"user\":\"a\"}", "text/plain"), "NOT_JSON"),
        ] {
            let r = read_json::<UserOnly>(req).await.err().unwrap();
            assert_eq!(r.http, StatusCode::BAD_REQUEST);
            assert_eq!(r.body["reason"], reason);
        }
        let ok: UserOnly = read_json(post("{\"user\":\"alice\"}", "application/json; charset=utf-8"))
            .await
            .ok()
            .unwrap();
        assert_eq!(ok.user, "alice");
    }

    #[test]
    fn a_held_request_counts_each_approver_once_per_rule() {
        let approval = |s: &str| pb::StaffApprovalInfo {
            staff_id: s.into(),
            credential_id: format!("cred-{s}"),
            at: 1,
        };
        let p = pb::PendingApproval {
            request_id: "qr_1".into(),
            kind: "withdrawal".into(),
            user_id: "u".into(),
            state: pb::PendingState::AwaitingQuorum as i32,
            quorum: vec![
                pb::QuorumRequirement {
                    rule: "large".into(),
                    required: 1,
                    staff: vec!["alice".into(), "bob".into()],
                },
                pb::QuorumRequirement {
                    rule: "huge".into(),
                    required: 2,
                    staff: vec!["bob".into(), "carol".into(), "dave".into()],
                },
            ],
            // alice twice (two keys), bob once, erin is in no pool.
            approvals: vec![approval("alice"), approval("bob"), approval("alice"), approval("erin")],
            ..Default::default()
        };
        let v = pending_json(&p);
        assert_eq!(v["state"], "AWAITING_QUORUM");
        assert_eq!(v["required"], 3);
        // large: alice and bob, capped at 1; huge: bob.
        assert_eq!(v["approved"], 2);
        assert_eq!(v["quorum"][0]["approved_by"], json!(["alice", "bob"]));
        assert_eq!(v["quorum"][1]["approved_by"], json!(["bob"]));
        assert!(v.get("approval").is_none(), "the page never gets the approval itself");
    }

    #[test]
    fn staff_and_request_ids_are_bounded() {
        assert!(staff_of(" ").is_err());
        assert!(staff_of(&"s".repeat(65)).is_err());
        assert!(staff_of("al\u{7}ice").is_err());
        assert_eq!(staff_of(" alice ").ok().unwrap(), "alice");
        assert!(request_id_of("").is_err());
        assert!(request_id_of("qr_a b").is_err());
        assert!(request_id_of("qr_../../x\n").is_err());
        assert!(request_id_of(&"q".repeat(129)).is_err());
        assert_eq!(request_id_of("qr_aRH5-_x").ok().unwrap(), "qr_aRH5-_x");
    }

    #[test]
    fn user_names_are_bounded() {
        assert!(user_of("").is_err());
        assert!(user_of(&"a".repeat(65)).is_err());
        assert!(user_of("bad\nname").is_err());
        assert_eq!(user_of(" alice ").ok().unwrap(), "alice");
    }
}
