//! Intent validation: which fields each action carries, and their syntax.
//!
//! The digest itself lives in `sigil_verify` (one implementation of the
//! contract, shared with withdrawal engines). This module decides whether
//! an intent is acceptable before anything is stored or signed.
use sigil_verify::{amount_decimals, is_canonical_amount, Intent};

use crate::error::Error;
use crate::model::{check_id, check_symbol, check_text, excerpt, Action, FieldError};
use crate::protect::assets::Assets;

/// Whether an action carries a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Required,
    Optional,
    Forbidden,
}

/// Rules for (withdrawal_id, asset, network, amount, destination, memo).
fn rules(action: Action) -> [Rule; 6] {
    use Rule::*;
    match action {
        Action::Withdrawal => [Required, Required, Required, Required, Required, Optional],
        Action::AddAddress | Action::RemoveAddress => [Forbidden, Required, Required, Forbidden, Required, Optional],
        Action::RemoveFactor | Action::CancelApproval => {
            [Forbidden, Forbidden, Forbidden, Forbidden, Forbidden, Required]
        }
        Action::EnrollFactor | Action::ChangeAntiPhishingCode | Action::CreateApiKey => {
            [Forbidden, Forbidden, Forbidden, Forbidden, Forbidden, Optional]
        }
    }
}

/// Validates an intent and returns its action. Errors name the field as
/// `intent.<field>`.
pub fn validate(cfg: &Assets, intent: &Intent) -> Result<Action, Error> {
    let action = Action::parse(&intent.action).ok_or_else(|| {
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        if intent.action.is_empty() {
            Error::invalid("intent.action", format!("is required; one of {}", names.join(", ")))
        } else {
            Error::invalid(
                "intent.action",
                format!(
                    "unknown action '{}'; expected one of {}",
                    excerpt(&intent.action),
                    names.join(", ")
                ),
            )
        }
    })?;
    // Every malformed field is reported at once (one violation per field).
    let mut errors: Vec<FieldError> = Vec::new();
    if let Err(e) = check_id("intent.user_id", &intent.user_id) {
        errors.push(e);
    }
    let fields = [
        ("intent.withdrawal_id", &intent.withdrawal_id),
        ("intent.asset", &intent.asset),
        ("intent.network", &intent.network),
        ("intent.amount", &intent.amount),
        ("intent.destination", &intent.destination),
        ("intent.memo", &intent.memo),
    ];
    for ((field, value), rule) in fields.into_iter().zip(rules(action)) {
        let checked = match rule {
            Rule::Required if value.is_empty() => Err(FieldError::new(
                field,
                format!("is required for action {}", action.name()),
            )),
            Rule::Forbidden if !value.is_empty() => Err(FieldError::new(
                field,
                format!("must be empty for action {}", action.name()),
            )),
            _ => check_text(field, value),
        };
        if let Err(e) = checked {
            errors.push(e);
        }
    }
    let failed = |errors: &[FieldError], field: &str| errors.iter().any(|e| e.field == field);
    if !intent.asset.is_empty() && !failed(&errors, "intent.asset") {
        if let Err(e) = check_symbol("intent.asset", &intent.asset) {
            errors.push(e);
        }
    }
    if !intent.network.is_empty() && !failed(&errors, "intent.network") {
        if let Err(e) = check_symbol("intent.network", &intent.network) {
            errors.push(e);
        }
    }
    if matches!(action, Action::Withdrawal | Action::AddAddress | Action::RemoveAddress)
        && !failed(&errors, "intent.asset")
        && !failed(&errors, "intent.network")
    {
        match cfg.check_asset_network("intent.", &intent.asset, &intent.network) {
            Ok(()) => {}
            Err(Error::InvalidArgument { field, reason }) => errors.push(FieldError { field, reason }),
            Err(other) => return Err(other),
        }
    }
    if action == Action::Withdrawal && !failed(&errors, "intent.amount") {
        if !is_canonical_amount(&intent.amount) {
            errors.push(FieldError::new(
                "intent.amount",
                format!(
                    "'{}' is not a canonical decimal greater than zero (like 0.5, 12, 1.05; no sign, exponent, leading zeros or trailing zeros)",
                    excerpt(&intent.amount)
                ),
            ));
        } else if let Some(max) = cfg.max_decimals(&intent.asset) {
            let decimals = amount_decimals(&intent.amount);
            if decimals > max {
                errors.push(FieldError::new(
                    "intent.amount",
                    format!("has {decimals} decimals; {} allows at most {max}", intent.asset),
                ));
            }
        } else if !failed(&errors, "intent.asset") {
            errors.push(FieldError::new(
                "intent.asset",
                format!("asset '{}' is not configured", excerpt(&intent.asset)),
            ));
        }
    }
    Error::check_all(errors)?;
    Ok(action)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    fn withdrawal() -> Intent {
        Intent {
            action: "withdrawal".into(),
            user_id: "alice".into(),
            withdrawal_id: "wd-1".into(),
            asset: "BTC".into(),
            network: "bitcoin".into(),
            amount: "0.5".into(),
            destination: "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq".into(),
            memo: String::new(),
        }
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    /// Several malformed fields are reported together, each once.
    #[test]
    fn reports_every_bad_field_at_once() {
        let mut i = withdrawal();
        i.user_id = String::new();
        i.amount = "1.50".into();
        i.memo = "a\nb".into();
        match validate(&Config::default().asset_rules(), &i).unwrap_err() {
            Error::BadRequest(v) => {
                let fields: Vec<&str> = v.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(fields, ["intent.user_id", "intent.memo", "intent.amount"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accepts_good_withdrawal() {
        assert_eq!(
            validate(&Config::default().asset_rules(), &withdrawal()).unwrap(),
            Action::Withdrawal
        );
    }

    /// Assets and networks are exact and configured: never case-folded,
    /// never defaulted.
    #[test]
    fn assets_and_networks_are_exact_and_configured() {
        let cfg = Config::default().asset_rules();
        type Mutate = Box<dyn Fn(&mut Intent)>;
        let cases: Vec<(Mutate, &str, &str)> = vec![
            (
                Box::new(|i| i.asset = "btc".into()),
                "intent.asset",
                "'btc' is not configured",
            ),
            (
                Box::new(|i| i.asset = "PEPE".into()),
                "intent.asset",
                "'PEPE' is not configured",
            ),
            (
                Box::new(|i| i.network = "Bitcoin".into()),
                "intent.network",
                "'Bitcoin' is not configured",
            ),
            (
                Box::new(|i| i.network = "monero".into()),
                "intent.network",
                "'monero' is not configured",
            ),
            (
                Box::new(|i| i.network = "eos".into()),
                "intent.network",
                "'eos' is not configured",
            ),
            (
                Box::new(|i| i.network = "ethereum".into()),
                "intent.network",
                "BTC is not withdrawn on 'ethereum'",
            ),
        ];
        for (mutate, field, needle) in cases {
            let mut i = withdrawal();
            mutate(&mut i);
            match validate(&cfg, &i).unwrap_err() {
                Error::InvalidArgument { field: f, reason } => {
                    assert_eq!(f, field);
                    assert!(reason.contains(needle), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        // An asset without decimals gets no default: the amount rule needs them.
        let mut cfg = Config::default();
        cfg.assets.decimals.remove("BTC");
        assert_eq!(
            field_of(validate(&cfg.asset_rules(), &withdrawal()).unwrap_err()),
            "intent.asset"
        );
        // A configuration that still names default_decimals is refused.
        let mut cfg = Config::default();
        cfg.assets.default_decimals = Some(18);
        assert!(cfg.validate().unwrap_err().to_string().contains("no longer supported"));
        // Every asset needs networks that exist.
        let mut cfg = Config::default();
        cfg.assets.networks.insert("BTC".into(), vec!["lightning".into()]);
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("'lightning' is not in [networks]"));
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn names_the_bad_field() {
        let cfg = Config::default().asset_rules();
        type Mutate = Box<dyn Fn(&mut Intent)>;
        let cases: Vec<(Mutate, &str)> = vec![
            (Box::new(|i| i.action = "withdraw".into()), "intent.action"),
            (Box::new(|i| i.action = "Withdrawal".into()), "intent.action"),
            (Box::new(|i| i.user_id = String::new()), "intent.user_id"),
            (Box::new(|i| i.user_id = "u".repeat(257)), "intent.user_id"),
            (Box::new(|i| i.withdrawal_id = String::new()), "intent.withdrawal_id"),
            (Box::new(|i| i.destination = "a".repeat(257)), "intent.destination"),
            (Box::new(|i| i.amount = "1.50".into()), "intent.amount"),
            (Box::new(|i| i.amount = "0".into()), "intent.amount"),
            (Box::new(|i| i.amount = "0.000000001".into()), "intent.amount"),
            (Box::new(|i| i.asset = "B TC".into()), "intent.asset"),
            (Box::new(|i| i.memo = "a\nb".into()), "intent.memo"),
        ];
        for (mutate, field) in cases {
            let mut i = withdrawal();
            mutate(&mut i);
            assert_eq!(field_of(validate(&cfg, &i).unwrap_err()), field);
        }
        let mut i = withdrawal();
        i.action = "add_address".into();
        match validate(&cfg, &i).unwrap_err() {
            Error::BadRequest(v) => {
                let fields: Vec<&str> = v.iter().map(|e| e.field.as_str()).collect();
                assert_eq!(fields, ["intent.withdrawal_id", "intent.amount"]);
            }
            other => panic!("{other:?}"),
        }
        // 256 bytes is fine.
        let mut i = withdrawal();
        i.withdrawal_id = "w".repeat(256);
        assert!(validate(&cfg, &i).is_ok());
    }

    /// Property tests: the amount rule as `validate` applies it, and the
    /// digest of equal amounts (`proptest`).
    mod props {
        use proptest::prelude::*;

        use super::*;
        use crate::protect::amount;

        proptest! {
            /// Two spellings of one BTC amount: the canonical one passes and
            /// the padded ones are refused as INVALID_ARGUMENT on the amount,
            /// so every accepted spelling of a value has the same digest.
            #[test]
            fn equal_amounts_have_one_accepted_spelling(sats in 1u128..=2_100_000_000_000_000, zeros in 1usize..3) {
                let cfg = Config::default().asset_rules();
                // 8 decimals: satoshis in units of 10^-18.
                let canonical = amount::format(sats * 10u128.pow(10));
                let z = "0".repeat(zeros);
                let padded = if canonical.contains('.') { format!("{canonical}{z}") } else { format!("{canonical}.{z}") };
                let mut ok = withdrawal();
                ok.amount = canonical.clone();
                prop_assert!(validate(&cfg, &ok).is_ok(), "{}", canonical);
                for spelling in [padded, format!("0{canonical}"), format!("+{canonical}")] {
                    let mut other = withdrawal();
                    other.amount = spelling.clone();
                    let refused = validate(&cfg, &other).map_err(field_of);
                    prop_assert_eq!(refused, Err("intent.amount".to_string()), "{}", spelling);
                    if let Some(v) = amount::parse(&spelling) {
                        // Whatever parses to the same value is the same string.
                        prop_assert_eq!(amount::format(v), spelling.clone());
                    }
                }
                let mut same = withdrawal();
                same.amount = amount::format(amount::parse(&canonical).unwrap_or(0));
                prop_assert_eq!(same.digest(), ok.digest());
            }

            /// More decimals than the asset allows are refused.
            #[test]
            fn too_many_decimals_are_refused(int in 0u64..1000, frac in "[0-9]{8}[1-9]") {
                let cfg = Config::default().asset_rules();
                let mut i = withdrawal();
                i.amount = format!("{int}.{frac}");
                prop_assert_eq!(validate(&cfg, &i).map_err(field_of), Err("intent.amount".to_string()));
            }
        }
    }
}
