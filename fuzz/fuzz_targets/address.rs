//! Address validation (`protect::address_format`, through
//! `protect::address` with the built-in networks) and XRPL destination
//! tags.
//!
//! Input: a format digit (0 bitcoin, 1 evm, 2 xrpl, 3 tron, 4 solana;
//! other bytes wrap around), then the address.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sigil::protect::address_format::{AddressFormat, MAX_LEN, SHOWN_MAX};
use sigil::protect::assets::Assets;

const FORMATS: [(AddressFormat, &str); 5] = [
    (AddressFormat::Bitcoin, "bitcoin"),
    (AddressFormat::Evm, "ethereum"),
    (AddressFormat::XrplClassic, "xrpl"),
    (AddressFormat::Tron, "tron"),
    (AddressFormat::Solana, "solana"),
];

fn assets() -> &'static Assets {
    static A: OnceLock<Assets> = OnceLock::new();
    A.get_or_init(|| sigil::Config::default().asset_rules())
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = data.split_first() else {
        return;
    };
    let (format, network) = FORMATS[usize::from(sel.wrapping_sub(b'0')) % FORMATS.len()];
    let s = String::from_utf8_lossy(rest);
    let s = s.as_ref();

    let result = format.validate(s);
    // The network's check is the format's.
    let via = sigil::protect::address::validate(assets(), "destination", network, s);
    assert_eq!(via.is_ok(), result.is_ok());
    match &result {
        Ok(()) => {
            assert!(!s.is_empty() && s.len() <= MAX_LEN);
            assert!(s.bytes().all(|b| b.is_ascii_graphic()), "{s:?}");
            match format {
                // Hex case is free when it is all one case.
                AddressFormat::Evm => {
                    let hex = &s[2..];
                    assert!(AddressFormat::Evm
                        .validate(&format!("0x{}", hex.to_ascii_lowercase()))
                        .is_ok());
                    assert!(AddressFormat::Evm
                        .validate(&format!("0x{}", hex.to_ascii_uppercase()))
                        .is_ok());
                }
                // Bech32 is all lower or all upper case, either way.
                AddressFormat::Bitcoin if s.to_ascii_lowercase().starts_with("bc1") => {
                    assert!(format.validate(&s.to_ascii_lowercase()).is_ok());
                    assert!(format.validate(&s.to_ascii_uppercase()).is_ok());
                }
                _ => {}
            }
        }
        Err(why) => {
            // A refusal never quotes more than SHOWN_MAX characters of the input.
            if s.is_ascii() && s.len() > SHOWN_MAX {
                assert!(!why.contains(&s[..SHOWN_MAX + 1]), "{why}");
            }
        }
    }

    // Destination tags: a decimal u32 in its one spelling, or empty.
    let memo = format.validate_memo(s);
    if format == AddressFormat::XrplClassic {
        let expected = s.is_empty() || s.parse::<u32>().is_ok_and(|v| v.to_string() == s);
        assert_eq!(memo.is_ok(), expected, "{s:?}");
        let via = sigil::protect::address::validate_memo(assets(), "memo", network, s);
        assert_eq!(via.is_ok(), expected);
    } else {
        assert!(memo.is_ok());
    }
});
