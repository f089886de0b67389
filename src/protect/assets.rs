//! The assets Sigil approves: their decimals (the amount rule) and the
//! networks each may move on, with each network's address format.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::address_format::AddressFormat;
use crate::error::Error;

/// `[assets]`: the assets Sigil approves, exactly as written (tickers are
/// case-sensitive; nothing is case-folded or defaulted: an asset or network
/// not listed here is `INVALID_ARGUMENT`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssetsConfig {
    /// Maximum decimals per asset ticker (the amount rule).
    pub decimals: BTreeMap<String, usize>,
    /// The networks each asset may be withdrawn on (names of `[networks]`).
    pub networks: BTreeMap<String, Vec<String>>,
    /// No longer supported (unlisted assets were given these decimals);
    /// refused at start with a message saying so.
    pub default_decimals: Option<usize>,
}

/// The built-in networks and their address formats (`[networks]`).
pub fn default_networks() -> BTreeMap<String, AddressFormat> {
    use AddressFormat as F;
    [
        ("bitcoin", F::Bitcoin),
        ("ethereum", F::Evm),
        ("arbitrum", F::Evm),
        ("optimism", F::Evm),
        ("base", F::Evm),
        ("polygon", F::Evm),
        ("bsc", F::Evm),
        ("xrpl", F::XrplClassic),
        ("tron", F::Tron),
        ("solana", F::Solana),
    ]
    .into_iter()
    .map(|(n, f)| (n.to_string(), f))
    .collect()
}

impl Default for AssetsConfig {
    fn default() -> Self {
        let assets: [(&str, usize, &[&str]); 8] = [
            ("BTC", 8, &["bitcoin"]),
            ("ETH", 18, &["ethereum", "arbitrum", "optimism", "base"]),
            ("BNB", 18, &["bsc"]),
            ("USDT", 6, &["ethereum", "tron", "solana", "bsc", "polygon", "arbitrum"]),
            (
                "USDC",
                6,
                &["ethereum", "solana", "base", "arbitrum", "polygon", "optimism"],
            ),
            ("XRP", 6, &["xrpl"]),
            ("TRX", 6, &["tron"]),
            ("SOL", 9, &["solana"]),
        ];
        Self {
            decimals: assets.iter().map(|(a, d, _)| (a.to_string(), *d)).collect(),
            networks: assets
                .iter()
                .map(|(a, _, n)| (a.to_string(), n.iter().map(|x| x.to_string()).collect()))
                .collect(),
            default_decimals: None,
        }
    }
}

/// The asset rules in force: `[assets]` and `[networks]` together.
#[derive(Debug, Clone)]
pub struct Assets {
    /// `[assets]`.
    pub config: AssetsConfig,
    /// `[networks]`: network name → address format.
    pub networks: BTreeMap<String, AddressFormat>,
}

impl Default for Assets {
    fn default() -> Self {
        Assets {
            config: AssetsConfig::default(),
            networks: default_networks(),
        }
    }
}

impl Assets {
    /// Maximum decimals allowed for `asset`, or None when the asset is not
    /// accepted.
    pub fn max_decimals(&self, asset: &str) -> Option<usize> {
        self.config.decimals.get(asset).copied()
    }

    /// Checks that `asset` is configured and may move on `network`, both
    /// exactly as written. Errors name `<prefix>asset` or `<prefix>network`.
    pub fn check_asset_network(&self, prefix: &str, asset: &str, network: &str) -> Result<(), Error> {
        let list = |names: Vec<&String>| names.into_iter().map(String::as_str).collect::<Vec<_>>().join(", ");
        let Some(nets) = self
            .config
            .networks
            .get(asset)
            .filter(|_| self.config.decimals.contains_key(asset))
        else {
            return Err(Error::invalid(
                format!("{prefix}asset"),
                format!(
                    "asset '{}' is not configured (tickers are exact, case-sensitive); configured: {}",
                    crate::error::excerpt(asset),
                    list(self.config.decimals.keys().collect())
                ),
            ));
        };
        if !self.networks.contains_key(network) {
            return Err(Error::invalid(
                format!("{prefix}network"),
                format!(
                    "network '{}' is not configured; configured: {}",
                    crate::error::excerpt(network),
                    list(self.networks.keys().collect())
                ),
            ));
        }
        if !nets.iter().any(|n| n == network) {
            return Err(Error::invalid(
                format!("{prefix}network"),
                format!(
                    "{asset} is not withdrawn on '{network}'; it is configured on: {}",
                    list(nets.iter().collect())
                ),
            ));
        }
        Ok(())
    }

    /// The address format of a configured network.
    pub fn network_format(&self, network: &str) -> Option<AddressFormat> {
        self.networks.get(network).copied()
    }
}
