//! The intent, its digest, canonical amounts and the WebAuthn challenge
//! (docs/design.md "Intent digest", "WebAuthn challenge").

use ring::digest::{digest, Context, SHA256};
use serde::{Deserialize, Serialize};

/// Domain-separation tag that starts every intent preimage: the 15 ASCII
/// bytes `sigil-intent-v1`, without length prefix.
pub const INTENT_TAG: &[u8] = b"sigil-intent-v1";

/// Domain-separation tag that starts every WebAuthn challenge preimage: the
/// 17 ASCII bytes `sigil-webauthn-v1`, without length prefix.
pub const WEBAUTHN_TAG: &[u8] = b"sigil-webauthn-v1";

/// The action an approval authorises, as the eight fields covered by the
/// intent digest.
///
/// A field the action does not carry is the empty string. Values are
/// compared and hashed as their exact UTF-8 bytes: no trimming, no case
/// folding, no Unicode normalisation. `action` is the lower-case action name
/// (`withdrawal`, `add_address`, …); `amount`, where present, is a canonical
/// decimal (see [`is_canonical_amount`]).
///
/// In approval claims the intent is a JSON object with exactly these eight
/// keys; deserialisation refuses a missing or an unknown key, so a claim
/// cannot carry intent data that the digest does not cover.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// Lower-case action name, e.g. `withdrawal`.
    pub action: String,
    /// The user the action is for (also the approval's `sub`).
    pub user_id: String,
    /// The engine's withdrawal id (empty for non-withdrawal actions).
    pub withdrawal_id: String,
    /// Asset ticker, e.g. `BTC`.
    pub asset: String,
    /// Network the asset moves on, e.g. `bitcoin`.
    pub network: String,
    /// Canonical decimal amount, e.g. `0.5` (empty where no amount applies).
    pub amount: String,
    /// Destination address, byte for byte as the engine will use it.
    pub destination: String,
    /// Memo / destination tag (empty if none).
    pub memo: String,
}

impl Intent {
    /// The field names and values in digest order: `action`, `user_id`,
    /// `withdrawal_id`, `asset`, `network`, `amount`, `destination`, `memo`.
    /// The names are the JSON keys used in approval claims.
    pub fn fields(&self) -> [(&'static str, &str); 8] {
        [
            ("action", &self.action),
            ("user_id", &self.user_id),
            ("withdrawal_id", &self.withdrawal_id),
            ("asset", &self.asset),
            ("network", &self.network),
            ("amount", &self.amount),
            ("destination", &self.destination),
            ("memo", &self.memo),
        ]
    }

    /// The exact bytes hashed by [`Intent::digest`]: [`INTENT_TAG`], then for
    /// each field in [`Intent::fields`] order a 4-byte big-endian length and
    /// the field's UTF-8 bytes.
    ///
    /// A field cannot be longer than `u32::MAX` bytes in this encoding;
    /// approvals never get near that ([`crate::Verifier`] refuses tokens over
    /// 64 KiB), and callers that build intents from untrusted input should
    /// bound field lengths themselves. Such a field's length prefix saturates
    /// at `u32::MAX` rather than wrapping.
    pub fn preimage(&self) -> Vec<u8> {
        let fields = self.fields();
        let len = INTENT_TAG.len() + fields.iter().map(|(_, v)| 4 + v.len()).sum::<usize>();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(INTENT_TAG);
        for (_, value) in fields {
            let n = u32::try_from(value.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    /// SHA-256 of [`Intent::preimage`]. In claims it travels as unpadded
    /// base64url (`intent_sha256`); in WebAuthn challenges as raw bytes.
    pub fn digest(&self) -> [u8; 32] {
        sha256(&self.preimage())
    }
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

/// Whether `s` is a canonical decimal amount: it matches
/// `^(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$` (ASCII digits only) and is greater
/// than zero.
///
/// Canonical: `0.5`, `12`, `1.05`. Not canonical: `.5`, `012`, `1.50`,
/// `1.`, `+1`, `1e3`, `0`, `-1`, `1,5`, the empty string.
///
/// ```
/// use sigil_verify::is_canonical_amount;
/// assert!(is_canonical_amount("1.05"));
/// assert!(!is_canonical_amount("1.50"));
/// ```
pub fn is_canonical_amount(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (s, None),
    };
    let int_ok = match int.as_bytes() {
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !int_ok {
        return false;
    }
    match frac {
        // Integer only: "0" is not greater than zero; anything else with a
        // non-zero leading digit is.
        None => int != "0",
        // A fraction must be non-empty, all digits (so no second '.'), and
        // end in a non-zero digit; that also makes "0.x" greater than zero.
        Some(frac) => match frac.as_bytes() {
            [digits @ .., b'1'..=b'9'] => digits.iter().all(u8::is_ascii_digit),
            _ => false,
        },
    }
}

/// The number of digits after the decimal point of `s` (0 if it has none),
/// e.g. 2 for `1.05` and 0 for `12`.
///
/// Meant for canonical amounts, to compare with an asset's configured
/// precision. Check [`is_canonical_amount`] first: for other strings the
/// result is just the number of bytes after the first `.`.
pub fn amount_decimals(s: &str) -> usize {
    s.split_once('.').map_or(0, |(_, frac)| frac.len())
}

/// The challenge a WebAuthn authenticator signs for an approval:
/// `SHA-256(WEBAUTHN_TAG || nonce || intent_sha256)`.
///
/// `nonce` is the server-side random nonce (at least 16 bytes) carried in the
/// approval's evidence; `intent_sha256` is the raw [`Intent::digest`].
pub fn webauthn_challenge(nonce: &[u8], intent_sha256: &[u8; 32]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(WEBAUTHN_TAG);
    ctx.update(nonce);
    ctx.update(intent_sha256);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn tags_have_documented_lengths() {
        assert_eq!(INTENT_TAG.len(), 15);
        assert_eq!(WEBAUTHN_TAG.len(), 17);
    }

    #[test]
    fn preimage_layout() {
        let i = Intent {
            action: "withdrawal".into(),
            user_id: "é".into(),
            ..Intent::default()
        };
        let p = i.preimage();
        assert_eq!(&p[..15], b"sigil-intent-v1");
        assert_eq!(&p[15..19], &[0, 0, 0, 10]);
        assert_eq!(&p[19..29], b"withdrawal");
        assert_eq!(&p[29..33], &[0, 0, 0, 2]); // UTF-8 byte length, not chars
        assert_eq!(&p[33..35], "é".as_bytes());
        assert_eq!(&p[35..], &[0u8; 24][..]);
        assert_eq!(i.digest(), sha256(&p));
    }

    #[test]
    fn fields_in_digest_order() {
        let i = Intent {
            action: "a".into(),
            user_id: "b".into(),
            withdrawal_id: "c".into(),
            asset: "d".into(),
            network: "e".into(),
            amount: "f".into(),
            destination: "g".into(),
            memo: "h".into(),
        };
        let names: Vec<_> = i.fields().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "action",
                "user_id",
                "withdrawal_id",
                "asset",
                "network",
                "amount",
                "destination",
                "memo"
            ]
        );
        let values: String = i.fields().iter().map(|(_, v)| *v).collect();
        assert_eq!(values, "abcdefgh");
        // JSON keys equal the field names.
        let json = serde_json::to_value(&i).unwrap();
        for (name, value) in i.fields() {
            assert_eq!(json[name], value);
        }
    }

    #[test]
    fn intent_json_refuses_unknown_and_missing_keys() {
        let ok = r#"{"action":"withdrawal","user_id":"u","withdrawal_id":"w","asset":"BTC","network":"bitcoin","amount":"1","destination":"d","memo":""}"#;
        assert!(serde_json::from_str::<Intent>(ok).is_ok());
        let extra = ok.replace(r#""memo":"""#, r#""memo":"","chain_id":"1""#);
        assert!(serde_json::from_str::<Intent>(&extra).is_err());
        let missing = ok.replace(r#","memo":"""#, "");
        assert!(serde_json::from_str::<Intent>(&missing).is_err());
        let dup = ok.replace(r#""memo":"""#, r#""memo":"","amount":"2""#);
        assert!(serde_json::from_str::<Intent>(&dup).is_err());
    }

    #[test]
    fn amounts() {
        for s in ["0.5", "12", "1.05", "1", "10", "0.01", "9", "100", "0.1", "10.01"] {
            assert!(is_canonical_amount(s), "{s}");
        }
        for s in [
            ".5", "012", "1.50", "1.", "+1", "1e3", "0", "0.0", "00", "00.5", "-0.5", "", ".", "1,5", "0x10", "1.2.3",
            "NaN", " 1", "1 ", "١", "1.٥", "1..5", "0.", "1.0",
        ] {
            assert!(!is_canonical_amount(s), "{s:?}");
        }
    }

    #[test]
    fn decimals() {
        assert_eq!(amount_decimals("12"), 0);
        assert_eq!(amount_decimals("0.5"), 1);
        assert_eq!(amount_decimals("1.05"), 2);
        assert_eq!(amount_decimals("1234567.000000000000000001"), 18);
    }

    #[test]
    fn challenge_matches_definition() {
        let nonce = [7u8; 16];
        let d = [9u8; 32];
        let mut pre = Vec::new();
        pre.extend_from_slice(b"sigil-webauthn-v1");
        pre.extend_from_slice(&nonce);
        pre.extend_from_slice(&d);
        assert_eq!(webauthn_challenge(&nonce, &d), sha256(&pre));
        assert_ne!(webauthn_challenge(&nonce[..15], &d), sha256(&pre));
    }

    /// Property tests of the amount rule and the digest (`proptest`).
    mod props {
        use proptest::prelude::*;

        use super::*;

        /// A canonical amount: no leading zero, a fraction (if any) that
        /// ends in a non-zero digit, greater than zero.
        fn canonical() -> impl Strategy<Value = String> {
            ("(0|[1-9][0-9]{0,24})", proptest::option::of("[0-9]{0,20}[1-9]"))
                .prop_filter("greater than zero", |(int, frac)| int != "0" || frac.is_some())
                .prop_map(|(int, frac)| match frac {
                    Some(f) => format!("{int}.{f}"),
                    None => int,
                })
        }

        fn intent() -> impl Strategy<Value = Intent> {
            proptest::collection::vec(".{0,12}", 8).prop_map(|f| Intent {
                action: f[0].clone(),
                user_id: f[1].clone(),
                withdrawal_id: f[2].clone(),
                asset: f[3].clone(),
                network: f[4].clone(),
                amount: f[5].clone(),
                destination: f[6].clone(),
                memo: f[7].clone(),
            })
        }

        fn field_mut(i: &mut Intent, n: usize) -> &mut String {
            match n {
                0 => &mut i.action,
                1 => &mut i.user_id,
                2 => &mut i.withdrawal_id,
                3 => &mut i.asset,
                4 => &mut i.network,
                5 => &mut i.amount,
                6 => &mut i.destination,
                _ => &mut i.memo,
            }
        }

        proptest! {
            #[test]
            fn canonical_amounts_are_accepted(a in canonical()) {
                prop_assert!(is_canonical_amount(&a));
                prop_assert_eq!(amount_decimals(&a), a.split_once('.').map_or(0, |(_, f)| f.len()));
            }

            /// Every other spelling of a canonical amount is refused (so two
            /// accepted amounts that are equal are the same string).
            #[test]
            fn other_spellings_are_refused(a in canonical(), zeros in 1usize..4) {
                let z = "0".repeat(zeros);
                let mut others = vec![
                    format!("{z}{a}"), format!("+{a}"), format!("-{a}"), format!("{a}."),
                    format!(" {a}"), format!("{a} "), format!("{a}e0"), format!("{a}E0"),
                ];
                if a.contains('.') {
                    others.push(format!("{a}{z}"));
                    others.push(a.replacen('.', ",", 1));
                } else {
                    others.push(format!("{a}.{z}"));
                }
                if let Some(frac) = a.strip_prefix("0.") {
                    others.push(format!(".{frac}"));
                }
                for o in others {
                    prop_assert!(!is_canonical_amount(&o), "{:?} accepted", o);
                }
            }

            /// Whatever is accepted matches the documented pattern and is
            /// greater than zero.
            #[test]
            fn accepted_strings_match_the_rule(s in "[-+0-9.eE, ]{0,12}") {
                let b = s.as_bytes();
                let (int, frac) = s.split_once('.').map_or((s.as_str(), None), |(i, f)| (i, Some(f)));
                let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
                let expected = digits(int)
                    && (int == "0" || !int.starts_with('0'))
                    && match frac {
                        None => int != "0",
                        Some(f) => digits(f) && !f.ends_with('0'),
                    };
                prop_assert_eq!(is_canonical_amount(&s), expected, "{:?} {:?}", s, b);
            }

            /// Any change of any field changes the digest, and so does moving
            /// a character across a field boundary.
            #[test]
            fn any_field_change_changes_the_digest(i in intent(), n in 0usize..8, extra in ".") {
                let d = i.digest();
                let mut changed = i.clone();
                field_mut(&mut changed, n).push_str(&extra);
                prop_assert_ne!(changed.digest(), d);
                let mut replaced = i.clone();
                *field_mut(&mut replaced, n) = format!("{extra}{}", field_mut(&mut i.clone(), n));
                prop_assert_ne!(replaced.digest(), d);
                if n < 7 {
                    let mut moved = i.clone();
                    if let Some(c) = field_mut(&mut moved, n).pop() {
                        field_mut(&mut moved, n + 1).insert(0, c);
                        prop_assert_ne!(moved.digest(), d);
                    }
                }
                prop_assert_eq!(i.clone().digest(), d);
            }
        }
    }
}
