//! Withdrawal address whitelist: syntax checks per network and the stored
//! records with their hold.
//!
//! Networks checked strictly: `bitcoin` (base58check P2PKH/P2SH, bech32 /
//! bech32m segwit `bc1…`), `bitcoin-testnet` (`m…`/`n…`/`2…`, `tb1…`) and
//! the EVM networks `ethereum`, `arbitrum`, `optimism`, `base`, `polygon`,
//! `bsc` (`0x` + 40 hex; mixed case must carry a valid EIP-55 checksum).
//! Other networks get a generic check (printable ASCII, no spaces).
use serde::{Deserialize, Serialize};
use sha3::{Digest, Keccak256};

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

const EVM: [&str; 6] = ["ethereum", "arbitrum", "optimism", "base", "polygon", "bsc"];

/// Checks `address` for `network`. `field` names the request field.
pub fn validate(field: &str, network: &str, address: &str) -> Result<(), Error> {
    let bad = |why: String| Err(Error::invalid(field, why));
    match network {
        "bitcoin" => bitcoin(address, "bc", &[0x00, 0x05]).or_else(bad),
        "bitcoin-testnet" => bitcoin(address, "tb", &[0x6f, 0xc4]).or_else(bad),
        n if EVM.contains(&n) => evm(address).or_else(bad),
        _ => {
            if address.is_empty() || !address.bytes().all(|b| b.is_ascii_graphic()) {
                return bad(format!(
                    "'{}' is not a plausible {network} address",
                    address.escape_debug()
                ));
            }
            Ok(())
        }
    }
}

fn bitcoin(address: &str, hrp: &str, versions: &[u8]) -> Result<(), String> {
    if address.to_ascii_lowercase().starts_with(&format!("{hrp}1")) {
        let (h, _version, _program) =
            bech32::segwit::decode(address).map_err(|e| format!("'{address}' is not a valid segwit address: {e}"))?;
        if h.as_str() != hrp {
            return Err(format!("'{address}' is for another Bitcoin network (expected {hrp}1…)"));
        }
        return Ok(());
    }
    let raw = bs58::decode(address)
        .with_check(None)
        .into_vec()
        .map_err(|e| format!("'{address}' is not a valid base58check Bitcoin address: {e}"))?;
    if raw.len() != 21 || !versions.contains(&raw[0]) {
        return Err(format!(
            "'{address}' is not a pay-to-pubkey-hash or pay-to-script-hash address of this network"
        ));
    }
    Ok(())
}

fn evm(address: &str) -> Result<(), String> {
    let hex = address
        .strip_prefix("0x")
        .ok_or_else(|| format!("'{address}' must start with 0x"))?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("'{address}' must be 0x followed by 40 hex digits"));
    }
    let has_lower = hex.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = hex.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper && eip55(hex) != hex {
        return Err(format!(
            "'{address}' has a wrong EIP-55 checksum (mixed case must match 0x{})",
            eip55(hex)
        ));
    }
    Ok(())
}

/// EIP-55 mixed-case form of 40 hex digits.
fn eip55(hex: &str) -> String {
    let lower = hex.to_ascii_lowercase();
    let hash = Keccak256::digest(lower.as_bytes());
    lower
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitcoin_addresses() {
        for ok in [
            "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
            "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
            "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
            "bc1p5d7rjq7g6rdk2yhzks9smlaqtedr4dekq08ge8ztwac72sfr9rusxg3297",
        ] {
            assert!(validate("a", "bitcoin", ok).is_ok(), "{ok}");
        }
        for bad in [
            "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdx", // bad bech32 checksum
            "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3",         // bad base58 checksum
            "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", // testnet on mainnet
            "",
            "hello",
        ] {
            assert!(validate("a", "bitcoin", bad).is_err(), "{bad}");
        }
        assert!(validate("a", "bitcoin-testnet", "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx").is_ok());
    }

    #[test]
    fn eip55_vectors() {
        // From EIP-55.
        for ok in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
            "0x52908400098527886E0F7030069857D2E4169EE7",
            "0x52908400098527886e0f7030069857d2e4169ee7",
        ] {
            assert!(validate("a", "ethereum", ok).is_ok(), "{ok}");
        }
        for bad in [
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD",
            "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0x5aAeb6",
        ] {
            assert!(validate("a", "ethereum", bad).is_err(), "{bad}");
        }
    }
}
