//! A withdrawal engine's whole loop against a running `sigild`.
//!
//! ```text
//! make run                                   # in one terminal
//! cargo run --example withdrawal_engine      # in another
//! ```
//! 1. (as the frontend) enroll a TOTP factor for a fresh demo user and
//!    confirm it with the first code, as the user's app would show it;
//!    then whitelist the destination address (itself approved with a code);
//!    the first withdrawal is refused until the security-change lock and the
//!    address hold end (15 s each under `sigil.dev.toml`, 24 h by default);
//! 2. (as the engine) ask for an approval of one exact withdrawal;
//! 3. (as the user, relayed) answer the challenge with the next code;
//! 4. (as the engine) fetch the JWKS, verify the approval offline against
//!    its own withdrawal record with `sigil-verify`, redeem it exactly once,
//!    and only then "move the funds";
//! 5. show that a changed record, and a second redemption, are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use sigil::client::connect_as;
use sigil::factor::totp;
use sigil::pb;
use sigil::pb::approval_service_client::ApprovalServiceClient;
use sigil::pb::factor_service_client::FactorServiceClient;
use sigil_verify::{Intent, JwkSet, Verifier};

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The user's app: the code of the first step newer than the last one used
/// (a step is accepted once), waiting for it if it is more than one step ahead.
async fn next_code(seed: &[u8], last: &mut u64) -> String {
    loop {
        let current = totp::step_at(now());
        let step = current.max(*last + 1);
        if step <= current + 1 {
            *last = step;
            return totp::code_at_step(seed, step);
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("SIGIL_URL").unwrap_or_else(|_| "https://127.0.0.1:50051".into());
    let certs = PathBuf::from(std::env::var("SIGIL_CERTS").unwrap_or_else(|_| "certs/out".into()));
    let frontend = connect_as(&url, &certs, "frontend").await?;
    let engine = connect_as(&url, &certs, "withdrawal-engine").await?;
    let mut factors = FactorServiceClient::new(frontend.clone());
    let mut user_side = ApprovalServiceClient::new(frontend);
    let mut approvals = ApprovalServiceClient::new(engine);

    // 1. Enrollment (frontend).
    let user = format!("demo-{}", now());
    let e = factors
        .begin_totp_enrollment(pb::BeginTotpEnrollmentRequest {
            user_id: user.clone(),
            nickname: "phone".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "enrolling {user}: scan {} ({} bytes of QR SVG)",
        e.otpauth_uri,
        e.qr_svg.len()
    );
    let seed = data_encoding::BASE32_NOPAD.decode(e.secret_base32.as_bytes())?;
    let mut last = 0u64;
    factors
        .confirm_totp_enrollment(pb::ConfirmTotpEnrollmentRequest {
            user_id: user.clone(),
            factor_id: e.factor_id.clone(),
            code: next_code(&seed, &mut last).await,
        })
        .await?;
    println!("factor {} active", e.factor_id);

    // Whitelist the destination: an add_address approval, then AddAddress.
    let destination = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq";
    let add = Intent {
        action: "add_address".into(),
        user_id: user.clone(),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        destination: destination.into(),
        memo: "cold wallet".into(),
        ..Default::default()
    };
    let ch = user_side
        .begin_approval(pb::BeginApprovalRequest {
            intent: Some(add.into()),
            device: None,
        })
        .await?
        .into_inner();
    let ok = user_side
        .complete_approval(pb::CompleteApprovalRequest {
            challenge_id: ch.challenge_id,
            user_id: user.clone(),
            proof: Some(pb::complete_approval_request::Proof::Totp(pb::TotpProof {
                code: next_code(&seed, &mut last).await,
                factor_id: String::new(),
            })),
        })
        .await?
        .into_inner();
    let mut account =
        pb::account_service_client::AccountServiceClient::new(connect_as(&url, &certs, "frontend").await?);
    let added = account
        .add_address(pb::AddAddressRequest {
            user_id: user.clone(),
            asset: "BTC".into(),
            network: "bitcoin".into(),
            address: destination.into(),
            label: "cold wallet".into(),
            approval: ok.approval,
        })
        .await?
        .into_inner()
        .address
        .unwrap();
    println!("address {destination} whitelisted; usable from {}", added.usable_at);

    // 2. The engine's own withdrawal record, and the approval request.
    let record = Intent {
        action: "withdrawal".into(),
        user_id: user.clone(),
        withdrawal_id: format!("wd-{}", now()),
        asset: "BTC".into(),
        network: "bitcoin".into(),
        amount: "0.5".into(),
        destination: "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into(),
        memo: String::new(),
    };
    let begun = loop {
        match approvals
            .begin_approval(pb::BeginApprovalRequest {
                intent: Some(record.clone().into()),
                device: None,
            })
            .await
        {
            Ok(b) => break b.into_inner(),
            Err(st) if st.code() == tonic::Code::FailedPrecondition => {
                println!("not yet: {} (waiting)", st.message());
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            Err(st) => return Err(st.into()),
        }
    };
    assert_eq!(
        begun.intent_sha256,
        record.digest(),
        "Sigil binds the same digest the engine computes"
    );
    println!("challenge {} (expires at {})", begun.challenge_id, begun.expires_at);

    // 3. The user answers with the app's next code (the first one was used to confirm).
    let done = user_side
        .complete_approval(pb::CompleteApprovalRequest {
            challenge_id: begun.challenge_id,
            user_id: user.clone(),
            proof: Some(pb::complete_approval_request::Proof::Totp(pb::TotpProof {
                code: next_code(&seed, &mut last).await,
                factor_id: String::new(),
            })),
        })
        .await?
        .into_inner();
    println!("approval issued: jti {}, amr {:?}", done.jti, done.amr);

    // 4. Offline verification against the engine's record, then redeem once.
    let keys = approvals
        .get_approval_keys(pb::GetApprovalKeysRequest {})
        .await?
        .into_inner();
    let jwks: JwkSet = serde_json::from_str(&keys.jwks_json)?;
    let verifier = Verifier::new(&jwks, "sigil", "withdrawal-engine")?;
    let claims = verifier.verify_for(&done.approval, &record, now())?;
    println!(
        "verified offline: {} approved {} {} to {}",
        claims.sub, claims.intent.amount, claims.intent.asset, claims.intent.destination
    );
    approvals
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: done.approval.clone(),
            expected_intent: Some(record.clone().into()),
            idempotency_key: String::new(),
        })
        .await?;
    println!("redeemed {}: moving funds now", claims.jti);

    // 5. What an attacker would try.
    let mut altered = record.clone();
    altered.destination = "bc1qattackeraddressxxxxxxxxxxxxxxxxxxxxxxx".into();
    match verifier.verify_for(&done.approval, &altered, now()) {
        Err(e) => println!("changed destination refused: {e}"),
        Ok(_) => panic!("a changed destination must be refused"),
    }
    match approvals
        .redeem_approval(pb::RedeemApprovalRequest {
            approval: done.approval,
            expected_intent: Some(record.into()),
            idempotency_key: String::new(),
        })
        .await
    {
        Err(st) => println!("second redemption refused: {:?}: {}", st.code(), st.message()),
        Ok(_) => panic!("a second redemption must be refused"),
    }
    Ok(())
}
