//! Configuration: a versioned TOML file, then environment variables, then
//! command-line flags (applied by the binaries).
//!
//! Every section has defaults suited to local development, so an empty file
//! (or none) gives a working service with `make run`. Unknown keys are an
//! error: a typo must not silently fall back to a default.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Error;

pub use crate::approval::ApprovalConfig;
pub use crate::factor::lockout::LockoutConfig;
pub use crate::factor::totp::TotpConfig;
pub use crate::metrics::MetricsConfig;
pub use crate::ops::RetentionConfig;
pub use crate::protect::assets::{default_networks, Assets, AssetsConfig};
pub use crate::protect::ProtectionConfig;
pub use crate::signer::HsmSection;
pub use crate::store::StoreConfig;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Format version of this file; must be 1.
    pub version: u32,
    /// Network and TLS.
    pub server: ServerConfig,
    /// The HSM (PKCS#11).
    pub hsm: HsmSection,
    /// State storage.
    pub store: StoreConfig,
    /// Approval tokens and challenges.
    pub approval: ApprovalConfig,
    /// TOTP factors.
    pub totp: TotpConfig,
    /// Lockout after failed attempts.
    pub lockout: LockoutConfig,
    /// Asset precision rules.
    pub assets: AssetsConfig,
    /// The incident's protections (holds, locks, audit checkpoints).
    pub protection: ProtectionConfig,
    /// How long the event stream keeps events.
    pub retention: RetentionConfig,
    /// Action policy (inline; `protection.policy_file` replaces it). Only
    /// the first version: the policy lives in the store from the first
    /// start, and changes go through a staff quorum and a delay.
    pub policy: crate::protect::policy::Policy,
    /// Staff quorums, delays and policy changes.
    pub quorum: QuorumConfig,
    /// WebAuthn relying party and policy.
    pub webauthn: crate::factor::webauthn::WebauthnPolicy,
    /// How the operator CLI reaches this deployment (sigild ignores it).
    pub client: ClientConfig,
    /// The Prometheus endpoint (off unless `listen` is set).
    pub metrics: MetricsConfig,
    /// `[networks]`: network name → address format (`bitcoin`, `evm`,
    /// `xrpl_classic`, `tron`, `solana`). A network not listed is refused.
    pub networks: BTreeMap<String, crate::protect::address_format::AddressFormat>,
}

impl From<&Config> for crate::signer::SignerSettings {
    fn from(cfg: &Config) -> Self {
        crate::signer::SignerSettings {
            hsm: cfg.hsm.clone(),
            issuer: cfg.approval.issuer.clone(),
            audience: cfg.approval.audience.clone(),
            leeway_seconds: cfg.approval.leeway_seconds,
        }
    }
}

impl crate::denylist::DenyListHandle {
    /// Loads the list `[server] deny_list` names.
    pub fn from_config(cfg: &ServerConfig) -> Result<crate::denylist::DenyListHandle, Error> {
        crate::denylist::DenyListHandle::open(cfg.deny_list.as_deref())
    }
}

impl From<&mut Config> for crate::signer::SignerSettings {
    fn from(cfg: &mut Config) -> Self {
        crate::signer::SignerSettings::from(&*cfg)
    }
}

/// `[client]`: how the operator CLI (`sigil … --config FILE`) reaches the
/// server this file configures. sigild itself ignores the section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Server URL (`https://host:port`). Empty: `https://` and
    /// `server.listen` (an unspecified listen address such as `0.0.0.0`
    /// becomes the loopback address).
    pub server: String,
    /// CA that issued the server's certificate (PEM).
    pub ca: PathBuf,
    /// The operator's client certificate (PEM; its URI SAN carries the role).
    pub cert: PathBuf,
    /// The operator's private key (PEM).
    pub key: PathBuf,
}

impl ClientConfig {
    /// Checks the section: a server URL, if given, is https.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.server.is_empty() && !self.server.starts_with("https://") {
            return Err(Error::invalid(
                "client.server",
                "must be an https:// URL such as https://sigil.internal:50051 (there is no plaintext port)",
            ));
        }
        Ok(())
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            server: String::new(),
            ca: "certs/out/ca.pem".into(),
            cert: "certs/out/admin.pem".into(),
            key: "certs/out/admin.key".into(),
        }
    }
}

pub use crate::approval::quorum::QuorumConfig;

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (TLS only; there is no plaintext port).
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA that issues client certificates (PEM). Clients without a
    /// certificate from it cannot connect.
    pub client_ca: PathBuf,
    /// Client certificate deny-list (`serial:<hex>` / `spki-sha256:<digest>`
    /// lines; see `crate::denylist`). None or empty: no deny-list. Re-read
    /// on SIGHUP. `SIGIL_DENY_LIST`.
    pub deny_list: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: 1,
            server: ServerConfig::default(),
            hsm: HsmSection::default(),
            store: StoreConfig::default(),
            approval: ApprovalConfig::default(),
            totp: TotpConfig::default(),
            lockout: LockoutConfig::default(),
            assets: AssetsConfig::default(),
            protection: ProtectionConfig::default(),
            retention: RetentionConfig::default(),
            policy: crate::protect::policy::Policy::default(),
            quorum: QuorumConfig::default(),
            webauthn: crate::factor::webauthn::WebauthnPolicy::default(),
            client: ClientConfig::default(),
            metrics: MetricsConfig::default(),
            networks: default_networks(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            cert: "certs/out/server.pem".into(),
            key: "certs/out/server.key".into(),
            client_ca: "certs/out/ca.pem".into(),
            deny_list: None,
        }
    }
}

impl Config {
    /// The URL the operator CLI connects to: `[client] server`, or else
    /// `https://` and `[server] listen` (an unspecified listen address
    /// becomes the loopback address of its family).
    pub fn client_url(&self) -> String {
        if !self.client.server.is_empty() {
            return self.client.server.clone();
        }
        let mut addr = self.server.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("https://{addr}")
    }

    /// Reads a TOML file, then applies `SIGIL_*` environment variables.
    pub fn load(path: Option<&Path>) -> Result<Config, Error> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::invalid("config", format!("cannot read {}: {e}", p.display())))?;
                Config::from_toml(&text)?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        if let Some(p) = cfg.protection.policy_file.clone() {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| Error::invalid("protection.policy_file", format!("cannot read {}: {e}", p.display())))?;
            cfg.policy = crate::protect::policy::Policy::from_toml(&text)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// What a client (the operator CLI) needs of a configuration file:
    /// the file and the environment, without the server's own checks or
    /// its policy file, which an operator's workstation may not have.
    pub fn load_client(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid("config", format!("cannot read {}: {e}", path.display())))?;
        let mut cfg = Config::from_toml(&text)?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.client.validate()?;
        Ok(cfg)
    }

    /// Parses TOML text (no environment applied).
    pub fn from_toml(text: &str) -> Result<Config, Error> {
        let cfg: Config = toml::from_str(text).map_err(|e| Error::invalid("config", e.to_string()))?;
        if cfg.version != 1 {
            return Err(Error::invalid(
                "config.version",
                format!("version {} is not supported; expected 1", cfg.version),
            ));
        }
        Ok(cfg)
    }

    /// Applies environment overrides: `SIGIL_LISTEN`, `SIGIL_STORE_PATH`,
    /// `SIGIL_HSM_MODULE`, `SIGIL_HSM_TOKEN`, `SIGIL_TLS_CERT`,
    /// `SIGIL_TLS_KEY`, `SIGIL_CLIENT_CA`, `SIGIL_DENY_LIST` (empty: none),
    /// `SIGIL_METRICS_LISTEN` (empty: no metrics endpoint).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), Error> {
        if let Some(v) = get("SIGIL_LISTEN") {
            self.server.listen = v
                .parse()
                .map_err(|_| Error::invalid("SIGIL_LISTEN", format!("'{v}' is not an address like 127.0.0.1:50051")))?;
        }
        if let Some(v) = get("SIGIL_STORE_PATH") {
            self.store.path = v.into();
        }
        if let Some(v) = get("SIGIL_HSM_MODULE") {
            self.hsm.module = v.into();
        }
        if let Some(v) = get("SIGIL_HSM_TOKEN") {
            self.hsm.token_label = v;
        }
        if let Some(v) = get("SIGIL_TLS_CERT") {
            self.server.cert = v.into();
        }
        if let Some(v) = get("SIGIL_TLS_KEY") {
            self.server.key = v.into();
        }
        if let Some(v) = get("SIGIL_CLIENT_CA") {
            self.server.client_ca = v.into();
        }
        if let Some(v) = get("SIGIL_DENY_LIST") {
            self.server.deny_list = (!v.trim().is_empty()).then(|| v.into());
        }
        if let Some(v) = get("SIGIL_METRICS_LISTEN") {
            self.metrics.listen = match v.trim() {
                "" => None,
                addr => Some(addr.parse().map_err(|_| {
                    Error::invalid(
                        "SIGIL_METRICS_LISTEN",
                        format!("'{v}' is not an address like 127.0.0.1:9464 (empty: no metrics endpoint)"),
                    )
                })?),
            };
        }
        Ok(())
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), Error> {
        self.quorum.validate()?;
        self.policy
            .check_delays(self.quorum.min_policy_delay_seconds, self.quorum.max_delay_seconds)?;
        if self.approval.ttl_seconds <= 0 || self.approval.ttl_seconds > 3600 {
            return Err(Error::invalid("approval.ttl_seconds", "must be between 1 and 3600"));
        }
        if self.approval.challenge_ttl_seconds <= 0 || self.approval.challenge_ttl_seconds > 3600 {
            return Err(Error::invalid(
                "approval.challenge_ttl_seconds",
                "must be between 1 and 3600",
            ));
        }
        if !(0..=300).contains(&self.approval.leeway_seconds) {
            return Err(Error::invalid("approval.leeway_seconds", "must be between 0 and 300"));
        }
        if self.assets.default_decimals.is_some() {
            return Err(Error::invalid(
                "assets.default_decimals",
                "is no longer supported: list every asset in [assets] decimals and its networks in [assets] networks; \
                 anything not listed is refused",
            ));
        }
        for (asset, d) in &self.assets.decimals {
            if *d > 30 {
                return Err(Error::invalid(format!("assets.decimals.{asset}"), "at most 30"));
            }
            let nets = self
                .assets
                .networks
                .get(asset)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    Error::invalid(
                        format!("assets.networks.{asset}"),
                        "every asset needs the networks it may be withdrawn on",
                    )
                })?;
            for n in nets {
                if !self.networks.contains_key(n) {
                    return Err(Error::invalid(
                        format!("assets.networks.{asset}"),
                        format!("network '{n}' is not in [networks] (name → address format)"),
                    ));
                }
            }
        }
        // A policy rule for an asset that is not configured (or spelled
        // otherwise) would silently never apply.
        let mut rule_assets: Vec<(String, &str)> = self
            .policy
            .velocity
            .iter()
            .map(|v| ("policy.velocity".to_string(), v.asset.as_str()))
            .collect();
        for (name, a) in &self.policy.actions {
            for t in &a.thresholds {
                rule_assets.push((format!("policy.actions.{name}.thresholds"), t.asset.as_str()));
            }
            for q in &a.quorum {
                if let Some(asset) = &q.asset {
                    rule_assets.push((format!("policy.actions.{name}.quorum"), asset.as_str()));
                }
            }
        }
        for (field, asset) in rule_assets {
            if !self.assets.decimals.contains_key(asset) {
                return Err(Error::invalid(
                    field,
                    format!("asset '{asset}' is not in [assets] (tickers are exact); the rule would never apply"),
                ));
            }
        }
        // The built-in policy gives every built-in asset a hardware-factor
        // threshold; an asset added to [assets] needs a policy that gives
        // it one, or TOTP alone would approve any amount of it.
        if !self.policy.actions.contains_key("withdrawal") {
            for asset in self.assets.decimals.keys() {
                if !crate::protect::policy::DEFAULT_THRESHOLDS
                    .iter()
                    .any(|(a, _)| a == asset)
                {
                    return Err(Error::invalid(
                        "policy.actions.withdrawal",
                        format!(
                            "asset '{asset}' has no built-in hardware-factor threshold: add a \
                             [policy.actions.withdrawal] section with a threshold for it"
                        ),
                    ));
                }
            }
        }
        for asset in self.assets.networks.keys() {
            if !self.assets.decimals.contains_key(asset) {
                return Err(Error::invalid(
                    format!("assets.networks.{asset}"),
                    "the asset has no [assets] decimals entry",
                ));
            }
        }
        self.client.validate()?;
        if self.lockout.max_failures == 0 {
            return Err(Error::invalid("lockout.max_failures", "must be at least 1"));
        }
        self.policy.validate()?;
        for a in &self.webauthn.require_uv_for {
            if crate::approval::Action::parse(a).is_none() {
                return Err(Error::invalid(
                    "webauthn.require_uv_for",
                    format!("unknown action '{a}'"),
                ));
            }
        }
        if self.protection.address_hold_seconds < 0 || self.protection.security_change_lock_seconds < 0 {
            return Err(Error::invalid("protection", "holds and locks cannot be negative"));
        }
        if !(1..=256).contains(&self.protection.max_factors_per_user) {
            return Err(Error::invalid(
                "protection.max_factors_per_user",
                "must be between 1 and 256",
            ));
        }
        self.retention.validate()?;
        if self.hsm.pool_size == 0 || self.hsm.pool_size > 256 {
            return Err(Error::invalid("hsm.pool_size", "must be between 1 and 256"));
        }
        let st = &self.store;
        if !(10..=600_000).contains(&st.checkpoint_interval_ms) {
            return Err(Error::invalid(
                "store.checkpoint_interval_ms",
                "must be between 10 and 600000 (10 minutes)",
            ));
        }
        if !(1_000..=10_000_000).contains(&st.checkpoint_keys) {
            return Err(Error::invalid(
                "store.checkpoint_keys",
                "must be between 1000 and 10000000",
            ));
        }
        if !(1..=4096).contains(&st.checkpoint_mib) {
            return Err(Error::invalid("store.checkpoint_mib", "must be between 1 and 4096"));
        }
        if !(8..=1 << 20).contains(&st.cache_mib) {
            return Err(Error::invalid(
                "store.cache_mib",
                "must be between 8 and 1048576 (1 TiB)",
            ));
        }
        if st.backpressure_wait_ms > 60_000 {
            return Err(Error::invalid(
                "store.backpressure_wait_ms",
                "must be at most 60000 (a minute)",
            ));
        }
        Ok(())
    }

    /// The asset rules: `[assets]` with `[networks]`.
    pub fn asset_rules(&self) -> Assets {
        Assets {
            config: self.assets.clone(),
            networks: self.networks.clone(),
        }
    }

    /// A configuration for tests: store and TLS paths under `dir`.
    pub fn for_test(dir: &Path) -> Config {
        let mut c = Config::default();
        c.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c.server.cert = dir.join("certs/server.pem");
        c.server.key = dir.join("certs/server.key");
        c.server.client_ca = dir.join("certs/ca.pem");
        c.store.path = dir.join("sled");
        c.hsm.pin_file = dir.join("pin");
        c
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unknown_keys_are_refused() {
        let e = Config::from_toml("version = 1\n[server]\nlisten_addr = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let mut c = Config::from_toml("version = 1\n[store]\npath = \"/a\"\n").unwrap();
        c.apply_env(|k| (k == "SIGIL_STORE_PATH").then(|| "/b".to_string()))
            .unwrap();
        assert_eq!(c.store.path, PathBuf::from("/b"));
    }

    #[test]
    fn store_tuning_is_read_and_checked() {
        let c = Config::from_toml(
            "version = 1\n[store]\ncheckpoint_interval_ms = 250\ncheckpoint_keys = 5000\n\
             checkpoint_mib = 8\nbackpressure_wait_ms = 100\ncache_mib = 48\n",
        )
        .unwrap();
        c.validate().unwrap();
        let t = c.store.tuning();
        assert_eq!(t.cache_bytes, 48 << 20);
        assert_eq!(Config::default().store.tuning().cache_bytes, 24 << 20);
        assert_eq!(t.checkpoint_interval, std::time::Duration::from_millis(250));
        assert_eq!(t.checkpoint_keys, 5000);
        assert_eq!(t.checkpoint_bytes, 8 << 20);
        assert_eq!(t.backpressure_wait, std::time::Duration::from_millis(100));
        let d = Config::default().store.tuning();
        let want = crate::store::sled_store::Tuning::default();
        assert_eq!(
            (
                d.checkpoint_interval,
                d.checkpoint_keys,
                d.checkpoint_bytes,
                d.backpressure_wait
            ),
            (
                want.checkpoint_interval,
                want.checkpoint_keys,
                want.checkpoint_bytes,
                want.backpressure_wait
            )
        );
        for bad in [
            "checkpoint_interval_ms = 0",
            "checkpoint_keys = 10",
            "checkpoint_mib = 0",
            "backpressure_wait_ms = 3600000",
            "cache_mib = 0",
        ] {
            let c = Config::from_toml(&format!("version = 1\n[store]\n{bad}\n")).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn retention_is_read_and_checked() {
        let c = Config::from_toml(
            "version = 1\n[retention]\nevents_min_age = \"2h\"\nevents_max_age = \"7d\"\nprune_batch = 500\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.retention.events_min_age, 7_200);
        assert_eq!(c.retention.events_max_age, Some(7 * 86_400));
        assert_eq!(c.retention.prune_batch, 500);
        let c = Config::from_toml("version = 1\n[retention]\nevents_max_age = \"off\"\nevents_min_age = 0\n").unwrap();
        c.validate().unwrap();
        assert_eq!((c.retention.events_max_age, c.retention.events_min_age), (None, 0));
        assert_eq!(Config::default().retention.events_max_age, Some(30 * 86_400));
        for bad in [
            "events_max_age = \"1h\"\nevents_min_age = \"2h\"",
            "prune_batch = 1",
            "events_min_age = -5",
        ] {
            let c = Config::from_toml(&format!("version = 1\n[retention]\n{bad}\n")).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        let e = Config::from_toml("version = 1\n[retention]\nevents_max_age = \"30 days\"\n").unwrap_err();
        assert!(e.to_string().contains("unit"), "{e}");
    }

    #[test]
    fn the_metrics_endpoint_is_off_unless_configured() {
        assert_eq!(Config::default().metrics.listen, None);
        let mut c = Config::from_toml("version = 1\n[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        assert_eq!(c.metrics.listen, Some(SocketAddr::from(([127, 0, 0, 1], 9464))));
        c.apply_env(|k| (k == "SIGIL_METRICS_LISTEN").then(String::new))
            .unwrap();
        assert_eq!(c.metrics.listen, None);
        c.apply_env(|k| (k == "SIGIL_METRICS_LISTEN").then(|| "127.0.0.1:9".to_string()))
            .unwrap();
        assert_eq!(c.metrics.listen, Some(SocketAddr::from(([127, 0, 0, 1], 9))));
        assert!(c
            .apply_env(|k| (k == "SIGIL_METRICS_LISTEN").then(|| "nine".to_string()))
            .is_err());
        assert!(Config::from_toml("version = 1\n[metrics]\nport = 9\n").is_err());
    }

    #[test]
    fn newer_version_refused() {
        assert!(Config::from_toml("version = 2\n").is_err());
    }
}
