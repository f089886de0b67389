//! Withdrawal address whitelist: syntax checks per network and the stored
//! records with their hold.
//!
//! Addresses are checked by the format of their configured network
//! (`[networks]` in the configuration; see
//! [`address_format`](crate::protect::address_format)); a network that is
//! not configured is refused.
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A whitelisted address (table `addresses`, key `user 0x00 network 0x00 address`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    /// Record version.
    pub v: u32,
    /// Owner.
    pub user_id: String,
    /// Asset it was added for.
    pub asset: String,
    /// Network.
    pub network: String,
    /// The address, exactly as given.
    pub address: String,
    /// The user's label.
    pub label: String,
    /// When it was added.
    pub added_at: i64,
    /// Withdrawals to it are refused before this time.
    pub usable_at: i64,
    /// The "address usable" event was emitted.
    pub usable_announced: bool,
}

impl crate::store::codec::Record for AddressRecord {
    const NAME: &'static str = "address";
}

/// Store key of an address.
pub fn key(user_id: &str, network: &str, address: &str) -> Vec<u8> {
    let mut k = user_prefix(user_id);
    k.extend_from_slice(network.as_bytes());
    k.push(0);
    k.extend_from_slice(address.as_bytes());
    k
}

/// Key prefix of a user's addresses.
pub fn user_prefix(user_id: &str) -> Vec<u8> {
    let mut k = user_id.as_bytes().to_vec();
    k.push(0);
    k
}

/// Checks `address` for a configured `network` by its address format
/// (see [`crate::protect::address_format`]). `field` names the request
/// field; a network that is not configured is refused.
pub fn validate(cfg: &super::assets::Assets, field: &str, network: &str, address: &str) -> Result<(), Error> {
    let format = cfg.network_format(network).ok_or_else(|| {
        Error::invalid(
            field,
            format!("network '{}' is not configured", crate::error::excerpt(network)),
        )
    })?;
    format.validate(address).map_err(|why| Error::invalid(field, why))
}

/// Checks a withdrawal's memo for `network` (an XRP Ledger destination tag
/// is a decimal u32). `field` names the request field.
pub fn validate_memo(cfg: &super::assets::Assets, field: &str, network: &str, memo: &str) -> Result<(), Error> {
    match cfg.network_format(network) {
        Some(f) => f.validate_memo(memo).map_err(|why| Error::invalid(field, why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;

    #[test]
    fn addresses_are_checked_by_the_format_of_their_configured_network() {
        let cfg = Config::default().asset_rules();
        assert!(validate(&cfg, "a", "bitcoin", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq").is_ok());
        assert!(validate(&cfg, "a", "ethereum", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_ok());
        assert!(validate(&cfg, "a", "ethereum", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD").is_err());
        assert!(validate(&cfg, "a", "xrpl", "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh").is_ok());
        assert!(validate(&cfg, "a", "xrpl", "anything-at-all").is_err());
        assert!(validate(&cfg, "a", "tron", "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL").is_ok());
        assert!(validate(&cfg, "a", "tron", "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeM").is_err());
        assert!(validate(&cfg, "a", "solana", "4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4T").is_ok());
        // Networks that are not configured are refused, not waved through.
        for n in ["monero", "eos", "Bitcoin", "bitcoin-testnet"] {
            let e = validate(&cfg, "a", n, "whatever").unwrap_err().to_string();
            assert!(e.contains("is not configured"), "{n}: {e}");
        }
        assert!(validate_memo(&cfg, "m", "xrpl", "4294967296").is_err());
        assert!(validate_memo(&cfg, "m", "xrpl", "12345").is_ok());
    }
}
