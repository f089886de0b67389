//! Withdrawal destination addresses checked by format, per network family.
//!
//! Each [`AddressFormat`] knows how its network writes an address and
//! refuses anything else with a short reason a person can act on. The
//! decoding is done by maintained crates: `bs58` (Base58 and Base58Check,
//! Bitcoin and Ripple alphabets), `bech32` (BIP-173 / BIP-350 segwit
//! addresses, including the bech32-vs-bech32m rule per witness version and
//! the program lengths) and `sha3` (Keccak-256 for EIP-55).
//!
//! A format check says an address is well formed for its network; it does
//! not say the address is a safe destination (a program, a burn address or
//! an address on another network can still be well formed).
//!
//! Refusal messages quote at most [`SHOWN_MAX`] characters of the input, and
//! never quote an input that looks like a secret key (a private key, seed,
//! extended key or keypair pasted by mistake): those are refused without
//! being repeated, so they do not end up in logs.
use std::error::Error as StdError;

use sha3::{Digest, Keccak256};

/// The longest input considered at all, in bytes.
pub const MAX_LEN: usize = 128;

/// The most characters of an input quoted back in a refusal.
pub const SHOWN_MAX: usize = 64;

/// How a network's addresses are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressFormat {
    /// Bitcoin mainnet: Base58Check P2PKH (version 0x00, starts with 1) and
    /// P2SH (0x05, starts with 3), and segwit bech32 (v0, BIP-173) / bech32m
    /// (v1+, BIP-350) with HRP "bc". Lowercase-only or uppercase-only bech32;
    /// mixed case refused.
    Bitcoin,
    /// EVM chains (Ethereum, BNB Smart Chain, Polygon, ...): "0x" + 40 hex
    /// digits; all-lowercase or all-uppercase hex accepted, mixed case must
    /// match the EIP-55 checksum.
    Evm,
    /// XRP Ledger classic address: base58 with the Ripple alphabet, version
    /// byte 0x00, 4-byte double-SHA-256 checksum, starts with 'r', 25 bytes
    /// decoded. (X-addresses are refused with a message saying to send the
    /// classic address and the destination tag separately.)
    XrplClassic,
    /// Tron: Base58Check (Bitcoin alphabet), 21 bytes with first byte 0x41,
    /// starts with 'T'.
    Tron,
    /// Solana: base58 (Bitcoin alphabet) of exactly 32 bytes.
    Solana,
}

impl AddressFormat {
    /// Checks `address`; Err with a short reason a person can act on (never
    /// echoing more than ~64 chars of the input).
    ///
    /// Refused for every format: the empty string, leading or trailing
    /// whitespace, more than [`MAX_LEN`] bytes, non-ASCII characters, spaces
    /// or control characters inside, and anything shaped like a secret key.
    pub fn validate(self, address: &str) -> Result<(), String> {
        common(address)?;
        let checked = match self {
            AddressFormat::Bitcoin => bitcoin(address),
            AddressFormat::Evm => evm(address),
            AddressFormat::XrplClassic => xrpl_classic(address),
            AddressFormat::Tron => tron(address),
            AddressFormat::Solana => solana(address),
        };
        checked.map_err(|why| format!("{} address {why}", self.display()))
    }

    /// For formats with a destination tag / memo rule: XRPL destination tags
    /// are a decimal u32 (no sign, no leading zeros except "0", at most 10
    /// digits, value <= 4294967295); an empty memo is allowed (no tag).
    /// Other formats accept any memo (Ok). Returns Err with a reason for a
    /// malformed XRPL tag.
    pub fn validate_memo(self, memo: &str) -> Result<(), String> {
        match self {
            AddressFormat::XrplClassic => xrpl_destination_tag(memo),
            AddressFormat::Bitcoin | AddressFormat::Evm | AddressFormat::Tron | AddressFormat::Solana => Ok(()),
        }
    }

    /// The snake_case name ("bitcoin", "evm", "xrpl_classic", "tron",
    /// "solana").
    pub fn name(self) -> &'static str {
        match self {
            AddressFormat::Bitcoin => "bitcoin",
            AddressFormat::Evm => "evm",
            AddressFormat::XrplClassic => "xrpl_classic",
            AddressFormat::Tron => "tron",
            AddressFormat::Solana => "solana",
        }
    }

    /// How refusals name the format.
    fn display(self) -> &'static str {
        match self {
            AddressFormat::Bitcoin => "Bitcoin",
            AddressFormat::Evm => "EVM",
            AddressFormat::XrplClassic => "XRP Ledger",
            AddressFormat::Tron => "Tron",
            AddressFormat::Solana => "Solana",
        }
    }
}

/// The input quoted for a refusal: at most [`SHOWN_MAX`] characters.
///
/// Only called once [`common`] has passed, so the input is printable ASCII.
fn shown(s: &str) -> String {
    if s.len() <= SHOWN_MAX {
        format!("'{s}'")
    } else {
        let head = s.get(..SHOWN_MAX - 3).unwrap_or_default();
        format!("'{head}...'")
    }
}

/// Checks shared by every format; none of them quotes the input.
fn common(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("address is empty".into());
    }
    if address.len() > MAX_LEN {
        return Err(format!(
            "address is {} bytes long; no supported address is longer than {MAX_LEN}",
            address.len()
        ));
    }
    if address.trim() != address {
        return Err("address has leading or trailing whitespace; remove it".into());
    }
    if let Some(pos) = address.chars().position(|c| !c.is_ascii()) {
        return Err(format!(
            "address has a non-ASCII character at position {}: addresses use plain ASCII \
             letters and digits only (a look-alike letter or an invisible character?)",
            pos + 1
        ));
    }
    if let Some(pos) = address.bytes().position(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "address has a space or control character at position {}; an address is one word",
            pos + 1
        ));
    }
    if let Some(kind) = secret_shape(address) {
        return Err(format!(
            "this looks like {kind}, not an address, so it is not repeated here; \
             if it is a secret key, treat it as exposed"
        ));
    }
    Ok(())
}

/// Recognises inputs shaped like secret material pasted by mistake.
fn secret_shape(s: &str) -> Option<&'static str> {
    let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some("64 hex digits (a private key or a transaction hash)");
    }
    if let Ok(raw) = bs58::decode(s).with_check(None).into_vec() {
        match (raw.first(), raw.len()) {
            (Some(0x80 | 0xef), 33 | 34) => return Some("a Bitcoin private key (WIF)"),
            (_, 78) => return Some("a BIP-32 extended key (xprv/xpub)"),
            _ => {}
        }
    }
    if let Ok(raw) = bs58::decode(s)
        .with_alphabet(bs58::Alphabet::RIPPLE)
        .with_check(None)
        .into_vec()
    {
        let secp_seed = raw.len() == 17 && raw.first() == Some(&0x21);
        let ed_seed = raw.len() == 19 && raw.starts_with(&[0x01, 0xe1, 0x4b]);
        if secp_seed || ed_seed {
            return Some("an XRP Ledger secret key (seed)");
        }
    }
    if bs58::decode(s).into_vec().is_ok_and(|raw| raw.len() == 64) {
        return Some("a Solana keypair (64 bytes: secret and public key)");
    }
    None
}

/// Why base58 decoding failed, in words.
fn base58_reason(e: bs58::decode::Error) -> String {
    match e {
        bs58::decode::Error::InvalidCharacter { character, index } => format!(
            "has '{character}' at position {}, which base58 never uses (no 0, O, I or l)",
            index + 1
        ),
        bs58::decode::Error::InvalidChecksum { .. } => {
            "fails its checksum: a character is wrong, missing or swapped; copy it again from its \
             source"
                .into()
        }
        bs58::decode::Error::NoChecksum => "is too short to carry a checksum".into(),
        other => format!("is not valid base58: {other}"),
    }
}

/// Base58Check decoding with `alphabet`: version byte and payload, checksum
/// removed.
fn base58check(s: &str, alphabet: &bs58::Alphabet) -> Result<Vec<u8>, String> {
    bs58::decode(s)
        .with_alphabet(alphabet)
        .with_check(None)
        .into_vec()
        .map_err(|e| format!("{} {}", shown(s), base58_reason(e)))
}

/// An error with its sources, innermost last.
fn error_chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

fn bitcoin(a: &str) -> Result<(), String> {
    let lower = a.to_ascii_lowercase();
    if lower.starts_with("bc1") {
        return bitcoin_segwit(a);
    }
    if lower.starts_with("tb1") || lower.starts_with("bcrt1") {
        return Err(format!(
            "{} is for Bitcoin testnet, signet or regtest; a mainnet address starts with 1, 3 or \
             bc1",
            shown(a)
        ));
    }
    let raw = match bs58::decode(a).with_check(None).into_vec() {
        Ok(raw) => raw,
        Err(e) if a.starts_with('1') || a.starts_with('3') => {
            return Err(format!("{} {}", shown(a), base58_reason(e)));
        }
        Err(_) => {
            return Err(format!(
                "{} is not a mainnet address: those start with 1, 3 or bc1",
                shown(a)
            ));
        }
    };
    match (raw.first(), raw.len()) {
        (Some(0x00 | 0x05), 21) => Ok(()),
        (Some(0x6f | 0xc4), 21) => Err(format!(
            "{} is for Bitcoin testnet; a mainnet address starts with 1, 3 or bc1",
            shown(a)
        )),
        (version, len) => Err(format!(
            "{} decodes to {len} bytes with version byte {}; a legacy mainnet address is 21 \
             bytes with version 0x00 (starts with 1) or 0x05 (starts with 3)",
            shown(a),
            version.map_or_else(|| "none".to_string(), |v| format!("0x{v:02x}")),
        )),
    }
}

fn bitcoin_segwit(a: &str) -> Result<(), String> {
    let (hrp, _version, _program) = bech32::segwit::decode(a).map_err(|e| {
        let why = e.source().map_or_else(|| error_chain(&e), error_chain);
        format!(
            "{} is not a valid bc1 address ({why}); copy it again from its source",
            shown(a)
        )
    })?;
    if hrp != bech32::hrp::BC {
        // The separator is the last '1': "bc1..1.." has another prefix.
        return Err(format!("{} has the prefix '{}', not 'bc'", shown(a), hrp.as_str()));
    }
    Ok(())
}

fn evm(a: &str) -> Result<(), String> {
    let Some(hex) = a.strip_prefix("0x") else {
        return Err(format!("{} must start with 0x", shown(a)));
    };
    if hex.len() != 40 {
        return Err(format!(
            "{} has {} characters after 0x; an address has exactly 40 hex digits",
            shown(a),
            hex.len()
        ));
    }
    if let Some(pos) = hex.bytes().position(|b| !b.is_ascii_hexdigit()) {
        return Err(format!("{} has a non-hex character at position {}", shown(a), pos + 3));
    }
    let has_lower = hex.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = hex.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper && !eip55_matches(hex) {
        // The corrected form is deliberately not shown: a checksum failure
        // means a character is probably wrong, and re-casing would hide it.
        return Err(format!(
            "{} mixes upper and lower case that does not match its EIP-55 checksum: a character \
             is probably wrong; copy it again from its source",
            shown(a)
        ));
    }
    Ok(())
}

/// True when the case of the 40 hex digits `hex` matches EIP-55: a letter is
/// uppercase exactly when the matching nibble of keccak256(lowercase hex) is
/// 8 or more.
fn eip55_matches(hex: &str) -> bool {
    let lower = hex.to_ascii_lowercase();
    let hash = Keccak256::digest(lower.as_bytes());
    hex.bytes().enumerate().all(|(i, b)| {
        let byte = hash.get(i / 2).copied().unwrap_or_default();
        let nibble = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
        if b.is_ascii_digit() {
            true
        } else {
            b.is_ascii_uppercase() == (nibble >= 8)
        }
    })
}

/// True when `a` decodes as an XRPL X-address (mainnet or testnet).
fn xrpl_x_address(a: &str) -> Option<&'static str> {
    let raw = bs58::decode(a)
        .with_alphabet(bs58::Alphabet::RIPPLE)
        .with_check(None)
        .into_vec()
        .ok()?;
    if raw.len() != 31 {
        return None;
    }
    if raw.starts_with(&[0x05, 0x44]) {
        Some("an X-address")
    } else if raw.starts_with(&[0x04, 0x93]) {
        Some("a testnet X-address")
    } else {
        None
    }
}

fn xrpl_classic(a: &str) -> Result<(), String> {
    let x = xrpl_x_address(a).or(a.starts_with('X').then_some("an X-address"));
    if let Some(kind) = x {
        return Err(format!(
            "{} is {kind}, which packs a destination tag into the address; send the classic \
             address (starting with r) and the destination tag separately",
            shown(a)
        ));
    }
    let raw = base58check(a, bs58::Alphabet::RIPPLE)?;
    match (raw.first(), raw.len()) {
        (Some(0x00), 21) => Ok(()),
        (version, len) => Err(format!(
            "{} decodes to {len} bytes with type byte {}; a classic address is 21 bytes with \
             type 0x00 and starts with r",
            shown(a),
            version.map_or_else(|| "none".to_string(), |v| format!("0x{v:02x}")),
        )),
    }
}

fn xrpl_destination_tag(memo: &str) -> Result<(), String> {
    if memo.is_empty() {
        return Ok(());
    }
    let quoted = if memo.is_ascii() && memo.bytes().all(|b| b.is_ascii_graphic()) {
        shown(memo)
    } else {
        "the destination tag".to_string()
    };
    if !memo.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{quoted} is not a destination tag: a tag is a whole number of digits only (no sign, \
             point, spaces or letters)"
        ));
    }
    if memo.len() > 1 && memo.starts_with('0') {
        return Err(format!(
            "{quoted} starts with 0: a destination tag has no leading zeros; check which tag \
             the recipient gave"
        ));
    }
    if memo.len() > 10 || memo.parse::<u32>().is_err() {
        return Err(format!(
            "{quoted} is too large: a destination tag is at most {}",
            u32::MAX
        ));
    }
    Ok(())
}

fn tron(a: &str) -> Result<(), String> {
    if a.len() == 42 && a.starts_with("41") && a.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{} is the hex form of a Tron address; give the base58 form, which starts with T",
            shown(a)
        ));
    }
    if a.starts_with("0x") {
        return Err(format!(
            "{} is an EVM (0x...) address, not a Tron address (which starts with T)",
            shown(a)
        ));
    }
    let raw = base58check(a, bs58::Alphabet::BITCOIN)?;
    match (raw.first(), raw.len()) {
        (Some(0x41), 21) => Ok(()),
        (version, len) => Err(format!(
            "{} decodes to {len} bytes with version byte {}; a Tron address is 21 bytes with \
             version 0x41 and starts with T",
            shown(a),
            version.map_or_else(|| "none".to_string(), |v| format!("0x{v:02x}")),
        )),
    }
}

fn solana(a: &str) -> Result<(), String> {
    let raw = bs58::decode(a)
        .into_vec()
        .map_err(|e| format!("{} {}", shown(a), base58_reason(e)))?;
    if raw.len() != 32 {
        return Err(format!(
            "{} decodes to {} bytes; a Solana address is exactly 32 bytes (32 to 44 base58 \
             characters)",
            shown(a),
            raw.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::AddressFormat::{Bitcoin, Evm, Solana, Tron, XrplClassic};
    use super::*;

    /// Asserts `address` is accepted by `format`.
    #[track_caller]
    fn ok(format: AddressFormat, address: &str) {
        if let Err(e) = format.validate(address) {
            panic!("{} refused {address}: {e}", format.name());
        }
    }

    /// Asserts `address` is refused by `format` with a reason containing
    /// `needle`; returns the reason.
    #[track_caller]
    fn refused(format: AddressFormat, address: &str, needle: &str) -> String {
        match format.validate(address) {
            Ok(()) => panic!("{} accepted {address}", format.name()),
            Err(e) => {
                assert!(
                    e.contains(needle),
                    "{} refused {address} with {e:?}, expected it to mention {needle:?}",
                    format.name()
                );
                e
            }
        }
    }

    /// Changes the character at `i` to another one of the same alphabet.
    fn corrupt(s: &str, i: usize, to: char) -> String {
        let mut chars: Vec<char> = s.chars().collect();
        assert_ne!(chars[i], to, "corruption must change the character");
        chars[i] = to;
        chars.into_iter().collect()
    }

    // ---- Bitcoin -----------------------------------------------------------

    #[test]
    fn bitcoin_base58_valid() {
        // Genesis block coinbase P2PKH; also the P2PKH example in BIP-360's
        // table of output types (bitcoin/bips, bip-0360.mediawiki).
        ok(Bitcoin, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa");
        // The P2SH example of the Bitcoin Wiki's "Address" article.
        ok(Bitcoin, "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy");
        // P2SH example in BIP-360's table of output types.
        ok(Bitcoin, "3FkhZo7sGNue153xhgqPBcUaBsYvJW6tTx");
        // Bitcoin Wiki "Pay to script hash": 3P14159f73E4gFr7JterCCQh9QjiTjiZrG.
        ok(Bitcoin, "3P14159f73E4gFr7JterCCQh9QjiTjiZrG");
    }

    #[test]
    fn bitcoin_base58_checksum_and_version() {
        // The genesis address with its last character changed (a -> b).
        refused(Bitcoin, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNb", "checksum");
        // The Bitcoin Wiki P2SH example with one character changed (7 -> z).
        let bad = corrupt("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", 10, 'z');
        refused(Bitcoin, &bad, "checksum");
        // Characters base58 never uses.
        refused(Bitcoin, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfN0", "position 34");
        refused(Bitcoin, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNl", "no 0, O, I or l");
        // A Tron address is valid Base58Check but has version 0x41.
        refused(Bitcoin, "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL", "version byte 0x41");
        // Testnet P2PKH (version 0x6f), built here from the genesis
        // address's hash160 so that its checksum is right.
        let mut payload = bs58::decode("1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")
            .with_check(None)
            .into_vec()
            .unwrap();
        payload[0] = 0x6f;
        let testnet = bs58::encode(&payload).with_check().into_string();
        assert!(testnet.starts_with('m') || testnet.starts_with('n'));
        refused(Bitcoin, &testnet, "testnet");
        // Right version byte and checksum, wrong length (20 and 22 bytes).
        for len in [20, 22] {
            let mut raw = vec![0x11; len];
            raw[0] = 0x00;
            let a = bs58::encode(&raw).with_check().into_string();
            refused(Bitcoin, &a, &format!("decodes to {len} bytes"));
        }
    }

    #[test]
    fn bitcoin_segwit_valid() {
        // BIP-173 "Examples": mainnet P2WPKH and P2WSH.
        ok(Bitcoin, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4");
        ok(
            Bitcoin,
            "bc1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qccfmv3",
        );
        // BIP-173 / BIP-350 "Test vectors", valid segwit addresses (mainnet
        // ones; the tb1 ones are checked below as refused for mainnet).
        ok(Bitcoin, "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4");
        // BIP-350 valid: v1 (taproot), and v1/v16/v2 with bech32m.
        ok(
            Bitcoin,
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        );
        ok(
            Bitcoin,
            "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        );
        ok(Bitcoin, "BC1SW50QGDZ25J");
        ok(Bitcoin, "bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs");
        // BIP-360's table: P2WPKH, P2WSH and P2TR examples.
        ok(Bitcoin, "bc1qsnh5ktku9ztqeqfr89yrqjd05eh58nah884mku");
        ok(
            Bitcoin,
            "bc1qvhu3557twysq2ldn6dut6rmaj3qk04p60h9l79wk4lzgy0ca8mfsnffz65",
        );
        ok(
            Bitcoin,
            "bc1p92aslsnseq786wxfk3ekra90ds9ku47qttupfjsqmmj4z82xdq4q3rr58u",
        );
    }

    #[test]
    fn bitcoin_segwit_invalid_bip350() {
        // BIP-350 "Test vectors", invalid segwit addresses, each with the
        // reason the BIP gives.
        let cases = [
            // Invalid human-readable part.
            "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",
            // Invalid checksum (Bech32 instead of Bech32m).
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",
            "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",
            "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",
            // Invalid checksum (Bech32m instead of Bech32).
            "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh",
            "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47",
            // Invalid character in checksum.
            "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",
            // Invalid witness version.
            "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",
            // Invalid program length (1 byte).
            "bc1pw5dgrnzv",
            // Invalid program length (41 bytes).
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",
            // Invalid program length for witness version 0 (per BIP141).
            "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",
            // Mixed case.
            "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq",
            // Zero padding of more than 4 bits.
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",
            // Non-zero padding in 8-to-5 conversion.
            "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j",
            // Empty data section.
            "bc1gmk9yu",
        ];
        for a in cases {
            assert!(Bitcoin.validate(a).is_err(), "accepted {a}");
        }
        // The reasons for the mainnet ones come from the segwit decoder.
        refused(
            Bitcoin,
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",
            "checksum",
        );
        refused(Bitcoin, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "checksum");
        refused(Bitcoin, "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "length");
        refused(Bitcoin, "bc1pw5dgrnzv", "length");
        refused(
            Bitcoin,
            "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",
            "witness version",
        );
        refused(
            Bitcoin,
            "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",
            "start with 1, 3 or bc1",
        );
    }

    #[test]
    fn bitcoin_segwit_invalid_bip173() {
        // BIP-173 "Test vectors", invalid segwit addresses still invalid
        // under BIP-350.
        refused(Bitcoin, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "checksum");
        // BIP-173: invalid program length (41 bytes). Its version is 15 and
        // its checksum bech32, so under BIP-350 the checksum fails first.
        refused(
            Bitcoin,
            "bc10w508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kw5rljs90",
            "checksum",
        );
        // BIP-173: invalid program length (v3, 1 byte); bech32 checksum on
        // v3 fails BIP-350 first, as above.
        refused(Bitcoin, "bc1rw5uspcuh", "checksum");
        // BIP-173 listed this v1 bech32 address as valid; BIP-350 replaced it
        // with the bech32m one above, so it must now be refused.
        refused(
            Bitcoin,
            "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx",
            "checksum",
        );
    }

    #[test]
    fn bitcoin_testnet_and_case() {
        // BIP-173 "Examples": testnet P2WPKH and P2WSH are not mainnet.
        refused(Bitcoin, "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "testnet");
        refused(
            Bitcoin,
            "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
            "testnet",
        );
        // BIP-350 valid testnet v1 address: valid, but not for mainnet.
        refused(
            Bitcoin,
            "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
            "testnet",
        );
        // The BIP-173 P2WPKH example with one letter upper-cased.
        refused(Bitcoin, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3T4", "mixed-case");
        refused(Bitcoin, "Bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", "mix");
        // A well-formed segwit string whose prefix merely starts with "bc1"
        // (the separator is the last '1'), built with the bech32 crate.
        let other = bech32::segwit::encode(
            bech32::Hrp::parse("bc1x").unwrap(),
            bech32::segwit::VERSION_0,
            &[0x75; 20],
        )
        .unwrap();
        assert!(bech32::segwit::decode(&other).is_ok());
        refused(Bitcoin, &other, "prefix 'bc1x'");
    }

    // ---- EVM ---------------------------------------------------------------

    #[test]
    fn evm_eip55_vectors() {
        // EIP-55 "Test Cases": all caps, all lower, normal.
        for a in [
            "0x52908400098527886E0F7030069857D2E4169EE7",
            "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
            "0xde709f2102306220921060314715629080e2fb77",
            "0x27b1fdb04752bbc536007a920d24acb045561c26",
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
            "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
            "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
            "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        ] {
            ok(Evm, a);
            // Single-case forms of every vector are accepted too.
            ok(Evm, &format!("0x{}", a[2..].to_ascii_lowercase()));
            ok(Evm, &format!("0x{}", a[2..].to_ascii_uppercase()));
        }
    }

    #[test]
    fn evm_refusals() {
        // One letter's case flipped in each mixed-case EIP-55 vector.
        for (a, i) in [
            ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", 3),  // a -> A
            ("0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359", 3),  // B -> b
            ("0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB", 41), // B -> b
            ("0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb", 2),  // D -> d
        ] {
            let mut bytes = a.as_bytes().to_vec();
            bytes[i] ^= 0x20;
            let flipped = String::from_utf8(bytes).unwrap();
            refused(Evm, &flipped, "EIP-55");
        }
        // Wrong length, missing or wrong prefix, non-hex.
        refused(Evm, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe", "39 characters");
        refused(Evm, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed0", "41 characters");
        refused(Evm, "5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "start with 0x");
        refused(Evm, "0X5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "start with 0x");
        refused(Evm, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg", "non-hex");
        // A Tron address is not an EVM address.
        refused(Evm, "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL", "start with 0x");
    }

    // ---- XRP Ledger --------------------------------------------------------

    #[test]
    fn xrpl_classic_valid() {
        // xrpl.org "Start a New Genesis Ledger in Stand-Alone Mode": the
        // genesis address.
        ok(XrplClassic, "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh");
        // xrpl.org "Accounts": example address.
        ok(XrplClassic, "rf1BiGeXwwQoi8Z2ueFYTEXSwuJYfV2Jpn");
        // xrpl.js ripple-address-codec test cases: classic form of the
        // X-address vectors below.
        ok(XrplClassic, "r9cZA1mLK5R5Am25ArfXFmqgNwjZgnfk59");
        // xrpl.org "Addresses", special addresses: ACCOUNT_ZERO is well
        // formed (whether to pay a black hole is not a format question).
        ok(XrplClassic, "rrrrrrrrrrrrrrrrrrrrrhoLvTp");
    }

    #[test]
    fn xrpl_classic_refusals() {
        // The genesis address with one character changed.
        let bad = corrupt("rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh", 5, 'X');
        refused(XrplClassic, &bad, "checksum");
        refused(XrplClassic, "rf1BiGeXwwQoi8Z2ueFYTEXSwuJYfV2Jpm", "checksum");
        // Bitcoin-alphabet strings do not pass the Ripple-alphabet checksum.
        refused(XrplClassic, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "checksum");
        // Right type byte and checksum, wrong length (20 and 22 bytes).
        for len in [20, 22] {
            let mut raw = vec![0x11; len];
            raw[0] = 0x00;
            let a = bs58::encode(&raw)
                .with_alphabet(bs58::Alphabet::RIPPLE)
                .with_check()
                .into_string();
            assert!(a.starts_with('r'));
            refused(XrplClassic, &a, &format!("decodes to {len} bytes"));
        }
        // 0 is not in the Ripple alphabet either.
        refused(XrplClassic, "rHb9CJAWyB4rj91VRWn96DkukG4bwdty0h", "position 33");
    }

    #[test]
    fn xrpl_x_addresses_refused_with_hint() {
        // xrpl.js ripple-address-codec test cases: r9cZA1mLK5R5Am25ArfXFmqgNwjZgnfk59
        // with no tag (mainnet, testnet) and with tag 1 (mainnet).
        for x in [
            "X7AcgcsBL6XDcUb289X4mJ8djcdyKaB5hJDWMArnXr61cqZ",
            "X7AcgcsBL6XDcUb289X4mJ8djcdyKaGZMhc9YTE92ehJ2Fu",
            "T719a5UwUCnEs54UsxG9CJYYDhwmFCqkr7wxCcNcfZ6p5GZ",
        ] {
            let e = refused(XrplClassic, x, "X-address");
            assert!(e.contains("destination tag separately"), "{e}");
        }
        let e = refused(
            XrplClassic,
            "T719a5UwUCnEs54UsxG9CJYYDhwmFCqkr7wxCcNcfZ6p5GZ",
            "testnet",
        );
        assert!(e.contains("classic address"), "{e}");
    }

    #[test]
    fn xrpl_destination_tags() {
        for tag in ["", "0", "1", "12345", "4294967295"] {
            assert_eq!(XrplClassic.validate_memo(tag), Ok(()), "{tag:?}");
        }
        for (tag, why) in [
            ("4294967296", "too large"),
            ("99999999999", "too large"),
            ("-1", "digits only"),
            ("+1", "digits only"),
            ("01", "leading zeros"),
            ("00", "leading zeros"),
            ("1.5", "digits only"),
            (" 1", "digits only"),
            ("1 ", "digits only"),
            ("abc", "digits only"),
            ("١٢", "digits only"),
        ] {
            let e = XrplClassic.validate_memo(tag).unwrap_err();
            assert!(e.contains(why), "{tag:?}: {e}");
        }
        // Other formats take any memo.
        for f in [Bitcoin, Evm, Tron, Solana] {
            assert_eq!(f.validate_memo("-01 anything"), Ok(()));
        }
    }

    // ---- Tron --------------------------------------------------------------

    #[test]
    fn tron_valid() {
        // developers.tron.network "Accounts and keys" (Address format):
        // TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL <-> 418840E6C55B9ADA326D211D818C34A994AECED808.
        let a = "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL";
        ok(Tron, a);
        let raw = bs58::decode(a).with_check(None).into_vec().unwrap();
        let hex: String = raw.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(hex, "418840E6C55B9ADA326D211D818C34A994AECED808");
        // The USDT TRC-20 token contract (a widely published address).
        ok(Tron, "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t");
    }

    #[test]
    fn tron_refusals() {
        refused(Tron, "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeM", "checksum");
        let bad = corrupt("TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL", 8, 'C');
        refused(Tron, &bad, "checksum");
        // A Bitcoin address is Base58Check too, but version 0x00.
        refused(Tron, "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "version byte 0x00");
        refused(Tron, "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "version byte 0x05");
        // The hex form of the docs' address.
        refused(Tron, "418840E6C55B9ADA326D211D818C34A994AECED808", "hex form");
        refused(Tron, "0x8840E6C55B9ADA326D211D818C34A994AECED808", "EVM");
        // Right version byte and checksum, wrong length (20 and 22 bytes).
        for len in [20, 22] {
            let mut raw = vec![0x11; len];
            raw[0] = 0x41;
            let a = bs58::encode(&raw).with_check().into_string();
            refused(Tron, &a, &format!("decodes to {len} bytes"));
        }
        // An XRPL address fails the Bitcoin-alphabet checksum.
        refused(Tron, "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh", "checksum");
    }

    // ---- Solana ------------------------------------------------------------

    #[test]
    fn solana_valid() {
        // Solana docs: the System Program's address.
        let system = "11111111111111111111111111111111";
        ok(Solana, system);
        assert_eq!(bs58::decode(system).into_vec().unwrap(), [0u8; 32]);
        // Solana JSON-RPC docs (getProgramAccounts example): a program id.
        let a = "4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4T";
        ok(Solana, a);
        assert_eq!(bs58::decode(a).into_vec().unwrap().len(), 32);
        // The SPL Token program id.
        ok(Solana, "TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA");
    }

    #[test]
    fn solana_refusals() {
        // 31 and 33 bytes: one '1' (a zero byte) fewer or more.
        refused(Solana, "1111111111111111111111111111111", "31 bytes");
        refused(Solana, "111111111111111111111111111111111", "33 bytes");
        let long = format!("1{}", "4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4T");
        refused(Solana, &long, "33 bytes");
        // Characters base58 never uses.
        for c in ['0', 'O', 'I', 'l'] {
            let bad = corrupt("4Nd1mBQtrMJVYVfKf2PJy9NZUZdTAsp7D4xWLs4gDB4T", 5, c);
            refused(Solana, &bad, "no 0, O, I or l");
        }
        // An EVM address is not base58.
        refused(Solana, "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "position 1");
    }

    // ---- Shared rules ------------------------------------------------------

    #[test]
    fn shared_refusals() {
        for f in [Bitcoin, Evm, XrplClassic, Tron, Solana] {
            refused(f, "", "empty");
            refused(f, " 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa", "whitespace");
            refused(f, "rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh\n", "whitespace");
            refused(f, "\u{a0}rHb9CJAWyB4rj91VRWn96DkukG4bwdtyTh", "whitespace");
            refused(f, &"1".repeat(129), "129 bytes");
            refused(f, "rHb9CJAWyB4rj91VRWn96Dkuk\u{0435}G4bwdtyTh", "non-ASCII");
            refused(f, "rHb9CJAWyB4rj91VRWn96Dkuk\u{200b}G4bwdtyTh", "non-ASCII");
            refused(f, "rHb9CJAWyB4rj91 VRWn96DkukG4bwdtyTh", "position 16");
            refused(f, "rHb9CJAWyB4rj91\tVRWn96DkukG4bwdtyTh", "control");
        }
    }

    #[test]
    fn secrets_are_refused_without_echo() {
        // xrpl.org genesis secret "masterpassphrase" seed.
        let seed = "snoPBrXtMeMyMHUVTgbuqAfg1SUTb";
        // Bitcoin Wiki "Wallet import format" example private key.
        let wif = "5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTJ";
        // BIP-32 test vector 1, chain m, extended private key.
        let xprv = "xprv9s21ZrQH143K3QTDL4LXw2F7HEK3wJUD2nW2nRk4stbPy6cq3jPPqjiChkVvvNKmPGJxWUtg6LnF5kejMRNNU3TGtRBeJgk33yuGBxrMPHi";
        // 64 hex digits (private-key shaped), with and without 0x.
        let hex = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
        let hex0x = format!("0x{hex}");
        // 64 bytes of base58 (a Solana keypair's shape).
        let keypair = bs58::encode([7u8; 64]).into_string();
        for (secret, kind) in [
            (seed, "XRP Ledger secret key"),
            (wif, "WIF"),
            (xprv, "extended key"),
            (hex, "64 hex digits"),
            (hex0x.as_str(), "64 hex digits"),
            (keypair.as_str(), "Solana keypair"),
        ] {
            for f in [Bitcoin, Evm, XrplClassic, Tron, Solana] {
                let e = refused(f, secret, kind);
                assert!(!e.contains(&secret[..12]), "{f:?} echoed a secret: {e}");
            }
        }
        // A mnemonic phrase is refused at its first space, unquoted.
        let words = "abandon abandon abandon abandon abandon about";
        let e = refused(Bitcoin, words, "position 8");
        assert!(!e.contains("abandon"), "{e}");
    }

    #[test]
    fn echo_is_bounded() {
        // 120 base58 characters: refused, and quoted only in part.
        let long = "2".repeat(120);
        for f in [Bitcoin, XrplClassic, Tron, Solana] {
            let e = f.validate(&long).unwrap_err();
            assert!(!e.contains(&"2".repeat(SHOWN_MAX)), "{f:?}: {e}");
            assert!(e.contains(&"2".repeat(SHOWN_MAX - 3)), "{f:?}: {e}");
        }
    }

    #[test]
    fn names_and_serde() {
        for (f, name) in [
            (Bitcoin, "bitcoin"),
            (Evm, "evm"),
            (XrplClassic, "xrpl_classic"),
            (Tron, "tron"),
            (Solana, "solana"),
        ] {
            assert_eq!(f.name(), name);
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            let back: AddressFormat = serde_json::from_str(&json).unwrap();
            assert_eq!(back, f);
        }
        assert!(serde_json::from_str::<AddressFormat>("\"XrplClassic\"").is_err());
    }
}
