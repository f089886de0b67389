//! Action policy: which factor kinds may approve each action, thresholds
//! that demand a hardware factor, device-signal rules and velocity rules.
//!
//! Every action type needs an approval: the policy only narrows *which*
//! factors may give it. An action missing from the file gets the defaults:
//! any factor kind; withdrawals refuse jailbroken devices and, above the
//! amounts of [`DEFAULT_THRESHOLDS`] (1 BTC, 10 ETH, 20,000 USDT, …), need
//! a hardware factor.
//!
//! ```toml
//! [actions.withdrawal]
//! kinds = ["totp", "webauthn", "yubikey_hmac", "yubikey_otp"]
//! deny_jailbroken = true
//! [[actions.withdrawal.thresholds]]    # over 1 BTC: TOTP alone is not enough
//! asset = "BTC"
//! above = "1"
//! kinds = ["webauthn", "yubikey_hmac", "yubikey_otp"]
//!
//! [[velocity]]
//! asset = "BTC"
//! max_amount_24h = "5"      # per user, rolling 24 h, including this one
//! max_count_1h = 10         # per user, rolling hour
//! on_exceed = "suspend"     # or "require_hardware"
//!
//! [[actions.withdrawal.quorum]]   # over 10 BTC: 2 of 3 staff keys, then 48 h
//! name = "large-btc"
//! asset = "BTC"
//! above = "10"
//! staff = ["alice", "bob", "carol"]
//! required = 2
//! delay_seconds = 172800
//!
//! [governance]           # who changes this policy, and how long it waits
//! staff = []             # empty: any enrolled staff member
//! required = 2
//! delay_seconds = 172800
//! ```
//!
//! A quorum rule applies when every condition it names holds: `asset`,
//! an amount strictly `above`, a destination among `destinations`, or the
//! user's withdrawals of the asset in 24 h (this one included) strictly
//! above `velocity_24h_above`. Every rule that applies must be met (each
//! counts the staff it names); the longest delay of them applies. The
//! policy is stored in Sigil and versioned: the file is its first version
//! only, and every change needs the `[governance]` quorum and delay.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sigil_verify::Intent;

use super::amount;
use super::{RecentWithdrawal, UserRecord, COUNT_WINDOW, VELOCITY_WINDOW};
use crate::error::{Error, Reason};
use crate::model::{Action, DeviceSignals, Kind};

/// All factor kinds.
pub const ALL_KINDS: [Kind; 4] = [Kind::Totp, Kind::Webauthn, Kind::YubikeyHmac, Kind::YubikeyOtp];
/// Kinds backed by hardware.
pub const HARDWARE_KINDS: [Kind; 3] = [Kind::Webauthn, Kind::YubikeyHmac, Kind::YubikeyOtp];

/// The built-in withdrawal thresholds, used when the policy has no
/// `[actions.withdrawal]` section: above these amounts (each roughly
/// 20,000 USD when they were chosen; review them for your exchange) only a
/// hardware factor — a security key or a YubiKey — may approve; TOTP alone
/// is not enough. One per asset of the built-in asset list.
pub const DEFAULT_THRESHOLDS: [(&str, &str); 8] = [
    ("BTC", "1"),
    ("ETH", "10"),
    ("BNB", "40"),
    ("SOL", "150"),
    ("XRP", "20000"),
    ("TRX", "200000"),
    ("USDT", "20000"),
    ("USDC", "20000"),
];

/// [`DEFAULT_THRESHOLDS`] as policy thresholds.
pub fn default_thresholds() -> Vec<Threshold> {
    DEFAULT_THRESHOLDS
        .iter()
        .map(|(asset, above)| Threshold {
            asset: (*asset).to_string(),
            above: (*above).to_string(),
            kinds: HARDWARE_KINDS.to_vec(),
        })
        .collect()
}

/// The policy (a TOML file, or the `[policy]` section of the config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Per action name.
    pub actions: BTreeMap<String, ActionPolicy>,
    /// Velocity rules for withdrawals.
    pub velocity: Vec<VelocityRule>,
    /// Who may change the policy, and the delay before a change applies.
    pub governance: Governance,
}

/// `[governance]`: changes to the policy need `required` staff approvals
/// (at least 2, from `staff`, or from any enrolled staff member when empty;
/// the proposer's key counting like anyone's) and apply `delay_seconds` after the quorum is met.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Governance {
    /// Staff ids that may approve a change; empty: every staff member.
    pub staff: Vec<String>,
    /// Approvals needed (at least 2: no single insider changes the policy).
    pub required: u32,
    /// Seconds between the quorum and the change taking effect.
    pub delay_seconds: i64,
}

impl Default for Governance {
    fn default() -> Self {
        Self {
            staff: Vec::new(),
            required: 2,
            delay_seconds: 172_800,
        }
    }
}

/// A rule that holds an action for staff approvals and/or a delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumRule {
    /// The rule's name, quoted in messages and in the approval's `quorum`
    /// claim.
    pub name: String,
    /// Applies to this asset only (any asset when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    /// Applies to amounts strictly above this canonical amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<String>,
    /// Applies to these destinations only (any when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<String>,
    /// Applies when the user's withdrawals of the asset in 24 h, this one
    /// included, would exceed this canonical amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velocity_24h_above: Option<String>,
    /// The staff members who may approve (the pool of N).
    #[serde(default)]
    pub staff: Vec<String>,
    /// How many distinct staff members of `staff` must approve (M; 0 for
    /// a delay alone).
    #[serde(default)]
    pub required: u32,
    /// Once approved, the approval is valid only this many seconds later
    /// (its `nbf`) and may be cancelled until then.
    #[serde(default)]
    pub delay_seconds: i64,
}

/// One quorum an intent needs: `m` of the staff in `of`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumNeed {
    /// The rule's name.
    pub rule: String,
    /// Approvals needed.
    pub m: u32,
    /// Staff ids that may approve.
    pub of: Vec<String>,
}

/// Rules for one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionPolicy {
    /// Factor kinds that may approve it.
    pub kinds: Vec<Kind>,
    /// Refuse when the device reports it is jailbroken or rooted.
    pub deny_jailbroken: bool,
    /// Refuse unless the device's app attestation verdict is `pass`.
    pub require_app_attestation: bool,
    /// Stronger requirements above an amount (withdrawals).
    pub thresholds: Vec<Threshold>,
    /// Staff quorums and delays.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quorum: Vec<QuorumRule>,
}

impl Default for ActionPolicy {
    fn default() -> Self {
        Self {
            kinds: ALL_KINDS.to_vec(),
            deny_jailbroken: false,
            require_app_attestation: false,
            thresholds: Vec::new(),
            quorum: Vec::new(),
        }
    }
}

/// Above `above` of `asset`, only `kinds` may approve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Asset ticker.
    pub asset: String,
    /// Canonical amount; strictly greater amounts are affected.
    pub above: String,
    /// Kinds allowed above it.
    pub kinds: Vec<Kind>,
}

/// What a velocity rule does when exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// Suspend the user's approvals (an admin resumes).
    Suspend,
    /// Only hardware factors may approve.
    RequireHardware,
}

/// Per-user limits on withdrawals of one asset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VelocityRule {
    /// Asset ticker.
    pub asset: String,
    /// Most that may be withdrawn in a rolling 24 h (canonical amount).
    pub max_amount_24h: Option<String>,
    /// Most withdrawals in a rolling hour.
    pub max_count_1h: Option<u32>,
    /// What happens when exceeded.
    pub on_exceed: OnExceed,
}

/// The outcome of the policy for one intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Kinds that may answer.
    pub kinds: Vec<Kind>,
    /// A velocity rule that the intent exceeds and that suspends the user.
    pub suspend: Option<String>,
    /// Staff quorums the intent needs before an approval is issued.
    pub quorum: Vec<QuorumNeed>,
    /// Seconds the approval waits (its `nbf`) once approved.
    pub delay_seconds: i64,
}

impl Decision {
    /// True when the approval cannot be issued at once, valid now.
    pub fn is_held(&self) -> bool {
        !self.quorum.is_empty() || self.delay_seconds > 0
    }
}

impl Policy {
    /// Parses a policy file.
    pub fn from_toml(text: &str) -> Result<Policy, Error> {
        let p: Policy = toml::from_str(text).map_err(|e| Error::invalid("policy", e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Checks names and amounts.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, a) in &self.actions {
            if Action::parse(name).is_none() {
                return Err(Error::invalid("policy.actions", format!("unknown action '{name}'")));
            }
            if a.kinds.is_empty() {
                return Err(Error::invalid(
                    format!("policy.actions.{name}.kinds"),
                    "may not be empty: every action needs an approval, so some factor must be able to give it",
                ));
            }
            for t in &a.thresholds {
                if !sigil_verify::is_canonical_amount(&t.above) {
                    return Err(Error::invalid(
                        format!("policy.actions.{name}.thresholds"),
                        "above must be a canonical amount",
                    ));
                }
            }
            let mut names = std::collections::BTreeSet::new();
            for q in &a.quorum {
                q.validate(name)?;
                if !names.insert(q.name.as_str()) {
                    return Err(Error::invalid(
                        format!("policy.actions.{name}.quorum"),
                        format!("two rules are named '{}'; names must be unique", q.name),
                    ));
                }
            }
        }
        let g = &self.governance;
        check_pool("policy.governance.staff", &g.staff)?;
        if g.required < 2 {
            return Err(Error::invalid(
                "policy.governance.required",
                "must be at least 2: no single insider may change the policy",
            ));
        }
        if !g.staff.is_empty() && g.required as usize > g.staff.len() {
            return Err(Error::invalid(
                "policy.governance.required",
                format!(
                    "a quorum of {} is larger than the staff pool of {} named in policy.governance.staff",
                    g.required,
                    g.staff.len()
                ),
            ));
        }
        if g.delay_seconds < 0 {
            return Err(Error::invalid("policy.governance.delay_seconds", "may not be negative"));
        }
        for v in &self.velocity {
            if let Some(m) = &v.max_amount_24h {
                if !sigil_verify::is_canonical_amount(m) {
                    return Err(Error::invalid(
                        "policy.velocity",
                        "max_amount_24h must be a canonical amount",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks the delays against the `[quorum]` configuration's bounds:
    /// every delay at most `max_delay_seconds`, the governance's at least
    /// `min_policy_delay_seconds`.
    pub fn check_delays(&self, min_policy_delay_seconds: i64, max_delay_seconds: i64) -> Result<(), Error> {
        if self.governance.delay_seconds < min_policy_delay_seconds {
            return Err(Error::invalid(
                "policy.governance.delay_seconds",
                format!(
                    "a delay of {} s is below the configured minimum of {} s (quorum.min_policy_delay_seconds): policy changes must leave time to notice them",
                    self.governance.delay_seconds, min_policy_delay_seconds
                ),
            ));
        }
        for (name, a) in &self.actions {
            for q in &a.quorum {
                if q.delay_seconds > max_delay_seconds {
                    return Err(Error::invalid(
                        format!("policy.actions.{name}.quorum"),
                        format!(
                            "rule '{}': a delay of {} s is beyond the configured maximum of {} s (quorum.max_delay_seconds)",
                            q.name, q.delay_seconds, max_delay_seconds
                        ),
                    ));
                }
            }
        }
        if self.governance.delay_seconds > max_delay_seconds {
            return Err(Error::invalid(
                "policy.governance.delay_seconds",
                format!(
                    "a delay of {} s is beyond the configured maximum of {} s (quorum.max_delay_seconds)",
                    self.governance.delay_seconds, max_delay_seconds
                ),
            ));
        }
        Ok(())
    }

    /// Every staff id the policy names, with where.
    pub fn named_staff(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, a) in &self.actions {
            for q in &a.quorum {
                for s in &q.staff {
                    out.push((format!("policy.actions.{name}.quorum ('{}')", q.name), s.clone()));
                }
            }
        }
        for s in &self.governance.staff {
            out.push(("policy.governance.staff".to_string(), s.clone()));
        }
        out
    }

    /// The rules for an action.
    pub fn action(&self, a: Action) -> ActionPolicy {
        self.actions.get(a.name()).cloned().unwrap_or_else(|| ActionPolicy {
            deny_jailbroken: a == Action::Withdrawal,
            thresholds: if a == Action::Withdrawal {
                default_thresholds()
            } else {
                Vec::new()
            },
            ..ActionPolicy::default()
        })
    }

    /// Decides which kinds may approve `intent` (refusing on device signals),
    /// given the user's recent withdrawals at `now`.
    pub fn decide(
        &self,
        action: Action,
        intent: &Intent,
        device: &DeviceSignals,
        user: &UserRecord,
        now: i64,
    ) -> Result<Decision, Error> {
        let rules = self.action(action);
        if rules.deny_jailbroken && device.jailbroken {
            return Err(Error::refused(
                Reason::PolicyRefused,
                format!(
                    "the device reports it is jailbroken or rooted; policy refuses '{}' from it",
                    action.name()
                ),
            ));
        }
        if rules.require_app_attestation && device.app_attestation != "pass" {
            return Err(Error::refused(
                Reason::PolicyRefused,
                format!(
                    "policy requires a passing app attestation for '{}' (got '{}')",
                    action.name(),
                    device.app_attestation
                ),
            ));
        }
        let mut kinds = rules.kinds.clone();
        let mut suspend = None;
        let mut quorum = Vec::new();
        let mut delay_seconds = 0;
        for q in rules.quorum.iter().filter(|q| q.applies(intent, &user.recent, now)) {
            if q.required > 0 {
                quorum.push(QuorumNeed {
                    rule: q.name.clone(),
                    m: q.required,
                    of: q.staff.clone(),
                });
            }
            delay_seconds = delay_seconds.max(q.delay_seconds);
        }
        if action == Action::Withdrawal {
            for t in rules.thresholds.iter().filter(|t| t.asset == intent.asset) {
                if amount::compare(&intent.amount, &t.above) == std::cmp::Ordering::Greater {
                    kinds.retain(|k| t.kinds.contains(k));
                }
            }
            for rule in self.velocity.iter().filter(|r| r.asset == intent.asset) {
                if let Some(why) = exceeds(rule, intent, &user.recent, now) {
                    match rule.on_exceed {
                        OnExceed::RequireHardware => kinds.retain(|k| HARDWARE_KINDS.contains(k)),
                        OnExceed::Suspend => suspend = Some(why),
                    }
                }
            }
        }
        Ok(Decision {
            kinds,
            suspend,
            quorum,
            delay_seconds,
        })
    }
}

/// Refuses a staff pool with an empty, malformed or repeated id.
fn check_pool(field: &str, staff: &[String]) -> Result<(), Error> {
    let mut seen = std::collections::BTreeSet::new();
    for s in staff {
        crate::model::check_id(field, s)?;
        if !seen.insert(s.as_str()) {
            return Err(Error::invalid(field, format!("names staff member '{s}' twice")));
        }
    }
    Ok(())
}

impl QuorumRule {
    /// The static checks: a name, canonical amounts, a pool that can meet
    /// the quorum, a rule that does something.
    fn validate(&self, action: &str) -> Result<(), Error> {
        let field = format!("policy.actions.{action}.quorum");
        crate::model::check_id(&field, &self.name)
            .map_err(|_| Error::invalid(&field, "every rule needs a name (no control characters)"))?;
        for (what, v) in [("above", &self.above), ("velocity_24h_above", &self.velocity_24h_above)] {
            if v.as_deref().is_some_and(|a| !sigil_verify::is_canonical_amount(a)) {
                return Err(Error::invalid(
                    &field,
                    format!("rule '{}': {what} must be a canonical amount", self.name),
                ));
            }
        }
        if self.asset.is_none() && (self.above.is_some() || self.velocity_24h_above.is_some()) {
            return Err(Error::invalid(
                &field,
                format!(
                    "rule '{}': an amount (above, velocity_24h_above) needs the asset it is counted in",
                    self.name
                ),
            ));
        }
        check_pool(&field, &self.staff)?;
        if self.required as usize > self.staff.len() {
            return Err(Error::invalid(
                &field,
                format!(
                    "rule '{}': a quorum of {} is larger than the staff pool of {} it names",
                    self.name,
                    self.required,
                    self.staff.len()
                ),
            ));
        }
        if self.delay_seconds < 0 {
            return Err(Error::invalid(
                &field,
                format!("rule '{}': delay_seconds may not be negative", self.name),
            ));
        }
        if self.required == 0 && self.delay_seconds == 0 {
            return Err(Error::invalid(
                &field,
                format!(
                    "rule '{}' asks for neither staff approvals (required) nor a delay (delay_seconds)",
                    self.name
                ),
            ));
        }
        Ok(())
    }

    /// Whether the rule applies to `intent` given the user's recent
    /// withdrawals at `now`.
    fn applies(&self, intent: &Intent, recent: &[RecentWithdrawal], now: i64) -> bool {
        if self.asset.as_deref().is_some_and(|a| a != intent.asset) {
            return false;
        }
        if let Some(above) = &self.above {
            if amount::compare(&intent.amount, above) != std::cmp::Ordering::Greater {
                return false;
            }
        }
        // Case-insensitively: an address written in another case (EIP-55,
        // bech32) must not escape the rule; matching more is the safe side.
        if !self.destinations.is_empty()
            && !self
                .destinations
                .iter()
                .any(|d| d.eq_ignore_ascii_case(&intent.destination))
        {
            return false;
        }
        if let Some(max) = &self.velocity_24h_above {
            let total = total_24h(recent, &intent.asset, &intent.amount, now);
            let over = match (total, amount::parse(max)) {
                (Some(t), Some(m)) => t > m,
                _ => true, // does not fit: the rule applies (fail closed)
            };
            if !over {
                return false;
            }
        }
        true
    }
}

/// `asset`'s withdrawals of the last 24 h at `now`, plus `amount`: None when
/// an amount does not parse or the sum does not fit (the callers fail
/// closed).
fn total_24h(recent: &[RecentWithdrawal], asset: &str, amount: &str, now: i64) -> Option<u128> {
    recent
        .iter()
        .filter(|r| r.asset == asset && r.at > now - VELOCITY_WINDOW)
        .map(|r| amount::parse(&r.amount))
        .chain(std::iter::once(amount::parse(amount)))
        .try_fold(0u128, |acc, a| acc.checked_add(a?))
}

/// Why `intent` would exceed `rule`, if it does.
fn exceeds(rule: &VelocityRule, intent: &Intent, recent: &[RecentWithdrawal], now: i64) -> Option<String> {
    if let Some(max) = rule.max_count_1h {
        let count = recent
            .iter()
            .filter(|r| r.asset == rule.asset && r.at > now - COUNT_WINDOW)
            .map(|r| r.count as usize)
            .sum::<usize>()
            + 1;
        if count > max as usize {
            return Some(format!(
                "velocity: {count} {} withdrawals in an hour exceed {max}",
                rule.asset
            ));
        }
    }
    if let Some(max) = &rule.max_amount_24h {
        let total = total_24h(recent, &rule.asset, &intent.amount, now);
        let over = match (total, amount::parse(max)) {
            (Some(t), Some(m)) => t > m,
            _ => true, // does not fit: fail closed
        };
        if over {
            return Some(format!(
                "velocity: {} {} in 24 h would exceed {max}",
                total
                    .map(amount::format)
                    .unwrap_or_else(|| "more than can be counted".into()),
                rule.asset
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wd(amount: &str) -> Intent {
        Intent {
            action: "withdrawal".into(),
            user_id: "u".into(),
            asset: "BTC".into(),
            amount: amount.into(),
            ..Default::default()
        }
    }

    /// The built-in policy matches the README: above 1 BTC (and the
    /// like for every built-in asset) TOTP alone is not enough.
    #[test]
    fn the_default_policy_needs_hardware_above_a_threshold_for_every_built_in_asset() {
        let p = Policy::default();
        let dev = DeviceSignals::default();
        let u = UserRecord::default();
        assert!(p
            .decide(Action::Withdrawal, &wd("1"), &dev, &u, 0)
            .unwrap()
            .kinds
            .contains(&Kind::Totp));
        let big = p.decide(Action::Withdrawal, &wd("12"), &dev, &u, 0).unwrap().kinds;
        assert!(!big.contains(&Kind::Totp), "TOTP approves 12 BTC by default: {big:?}");
        assert_eq!(big, HARDWARE_KINDS.to_vec());
        let assets = crate::config::AssetsConfig::default();
        for asset in assets.decimals.keys() {
            let t = p.action(Action::Withdrawal).thresholds;
            let mine: Vec<_> = t.iter().filter(|t| &t.asset == asset).collect();
            assert_eq!(mine.len(), 1, "built-in asset {asset} has no default threshold");
            assert!(crate::protect::amount::parse(&mine[0].above).is_some(), "{asset}");
        }
        // An asset added to [assets] has no built-in threshold: refused at
        // start unless a policy names withdrawals (and so its thresholds).
        let mut cfg = crate::config::Config::default();
        cfg.assets.decimals.insert("PEPE".into(), 18);
        cfg.assets.networks.insert("PEPE".into(), vec!["ethereum".into()]);
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("'PEPE' has no built-in hardware-factor threshold"), "{e}");
        cfg.policy = Policy::from_toml(
            "[actions.withdrawal]\nkinds = [\"totp\", \"webauthn\"]\n[[actions.withdrawal.thresholds]]\nasset = \"PEPE\"\nabove = \"1000000\"\nkinds = [\"webauthn\"]\n",
        )
        .unwrap();
        assert!(cfg.validate().is_ok());
        // A policy that names withdrawals takes over entirely.
        let own = Policy::from_toml("[actions.withdrawal]\nkinds = [\"totp\"]\n").unwrap();
        assert_eq!(
            own.decide(Action::Withdrawal, &wd("12"), &dev, &u, 0).unwrap().kinds,
            vec![Kind::Totp]
        );
    }

    #[test]
    fn thresholds_narrow_kinds_and_velocity_acts() {
        let p = Policy::from_toml(
            r#"
            [actions.withdrawal]
            kinds = ["totp", "webauthn"]
            [[actions.withdrawal.thresholds]]
            asset = "BTC"
            above = "1"
            kinds = ["webauthn"]
            [[velocity]]
            asset = "BTC"
            max_amount_24h = "2"
            on_exceed = "suspend"
            "#,
        )
        .unwrap();
        let dev = DeviceSignals::default();
        let u = UserRecord::default();
        assert_eq!(
            p.decide(Action::Withdrawal, &wd("1"), &dev, &u, 0).unwrap().kinds,
            vec![Kind::Totp, Kind::Webauthn]
        );
        assert_eq!(
            p.decide(Action::Withdrawal, &wd("1.00001"), &dev, &u, 0).unwrap().kinds,
            vec![Kind::Webauthn]
        );
        let mut u = UserRecord::default();
        u.recent.push(RecentWithdrawal {
            at: 100,
            asset: "BTC".into(),
            amount: "1.5".into(),
            count: 1,
        });
        let d = p.decide(Action::Withdrawal, &wd("0.5"), &dev, &u, 200).unwrap();
        assert!(d.suspend.is_none(), "exactly at the limit is allowed");
        let d = p.decide(Action::Withdrawal, &wd("0.6"), &dev, &u, 200).unwrap();
        assert!(d.suspend.unwrap().contains("2.1 BTC"));
        // A day later the old withdrawal no longer counts.
        assert!(p
            .decide(Action::Withdrawal, &wd("0.6"), &dev, &u, 100 + 86_400)
            .unwrap()
            .suspend
            .is_none());
        // Jailbroken devices are refused for withdrawals by default.
        let jb = DeviceSignals {
            jailbroken: true,
            ..Default::default()
        };
        assert!(Policy::default()
            .decide(Action::Withdrawal, &wd("1"), &jb, &u, 0)
            .is_err());
        assert!(Policy::default()
            .decide(Action::EnrollFactor, &Intent::default(), &jb, &u, 0)
            .is_ok());
    }

    #[test]
    fn quorum_rules_match_destinations_in_any_case_and_need_their_asset() {
        let p = Policy::from_toml(
            r#"
            [[actions.withdrawal.quorum]]
            name = "watched"
            destinations = ["0x52908400098527886E0F7030069857D2E4169EE7"]
            staff = ["a", "b"]
            required = 1
            "#,
        )
        .unwrap();
        let dev = DeviceSignals::default();
        let u = UserRecord::default();
        let mut i = wd("1");
        for (dest, held) in [
            ("0x52908400098527886e0f7030069857d2e4169ee7", true),
            ("0x52908400098527886E0F7030069857D2E4169EE7", true),
            ("0x8617E340B3D01FA5F11F306F4090FD50E238070D", false),
        ] {
            i.destination = dest.into();
            let d = p.decide(Action::Withdrawal, &i, &dev, &u, 0).unwrap();
            assert_eq!(d.is_held(), held, "{dest}");
        }
        let e = Policy::from_toml(
            "[[actions.withdrawal.quorum]]\nname = \"x\"\nabove = \"5\"\nstaff = [\"a\"]\nrequired = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs the asset"), "{e}");
        // The governance's delay has a floor and every delay a ceiling.
        let mut g = Policy::default();
        g.governance.delay_seconds = 60;
        assert!(g
            .check_delays(3600, 86_400)
            .unwrap_err()
            .to_string()
            .contains("below the configured minimum"));
        g.governance.delay_seconds = 90_000;
        assert!(g
            .check_delays(3600, 86_400)
            .unwrap_err()
            .to_string()
            .contains("beyond the configured maximum"));
        g.governance.delay_seconds = 7200;
        assert!(g.check_delays(3600, 86_400).is_ok());
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(Policy::from_toml("[actions.withdraw]\nkinds = [\"totp\"]\n").is_err());
        assert!(Policy::from_toml("[actions.withdrawal]\nkinds = []\n").is_err());
        assert!(Policy::from_toml("[actions.withdrawal]\nkinds = [\"sms\"]\n").is_err());
    }
}
