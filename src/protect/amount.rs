//! Arithmetic on canonical decimal amounts, for thresholds and velocity.
//!
//! Amounts are fixed point with 18 decimals in a `u128` (up to about
//! 3.4 × 10^20 whole units). An amount that does not fit is reported as
//! such, and callers treat it as exceeding any limit (fail closed).
use std::cmp::Ordering;

/// Decimals of the fixed-point representation.
pub const SCALE: usize = 18;

/// Parses a canonical decimal into units of 10^-18. None when it is not
/// canonical, has more than 18 decimals, or does not fit.
pub fn parse(s: &str) -> Option<u128> {
    if !sigil_verify::is_canonical_amount(s) && s != "0" {
        return None;
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > SCALE {
        return None;
    }
    let mut v: u128 = 0;
    for b in int
        .bytes()
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', SCALE - frac.len()))
    {
        v = v.checked_mul(10)?.checked_add(u128::from(b - b'0'))?;
    }
    Some(v)
}

/// Compares two canonical amounts exactly (any size).
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ai, af) = a.split_once('.').unwrap_or((a, ""));
    let (bi, bf) = b.split_once('.').unwrap_or((b, ""));
    ai.len().cmp(&bi.len()).then_with(|| ai.cmp(bi)).then_with(|| {
        let n = af.len().max(bf.len());
        let pad = |f: &str| format!("{f:0<n$}");
        pad(af).cmp(&pad(bf))
    })
}

/// Formats units of 10^-18 as a canonical decimal.
pub fn format(v: u128) -> String {
    let int = v / 10u128.pow(SCALE as u32);
    let frac = v % 10u128.pow(SCALE as u32);
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:018}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_compare_format() {
        assert_eq!(parse("1"), Some(10u128.pow(18)));
        assert_eq!(parse("0.5"), Some(5 * 10u128.pow(17)));
        assert_eq!(parse("1.000000000000000001"), Some(10u128.pow(18) + 1));
        assert_eq!(parse("1.50"), None);
        assert_eq!(
            parse("123456789012345678901234567890"),
            None,
            "does not fit: callers fail closed"
        );
        assert_eq!(compare("10", "9.99"), Ordering::Greater);
        assert_eq!(compare("1.05", "1.5"), Ordering::Less);
        assert_eq!(compare("123456789012345678901234567890", "2"), Ordering::Greater);
        assert_eq!(compare("2", "2"), Ordering::Equal);
        assert_eq!(format(parse("1234.5678").unwrap_or(0)), "1234.5678");
        assert_eq!(format(parse("7").unwrap_or(0)), "7");
    }

    /// Property tests of the canonical form (`proptest`).
    mod props {
        use proptest::prelude::*;

        use super::*;

        /// The canonical form of an amount: Some only for an amount that is
        /// already canonical (Sigil refuses others, never rewrites them).
        fn canonicalise(s: &str) -> Option<String> {
            parse(s).map(format)
        }

        proptest! {
            /// Formatting gives a canonical amount that parses back, and the
            /// canonical form is a fixed point.
            #[test]
            fn canonicalise_is_idempotent(v in 1u128..=u128::MAX / 4) {
                let c = format(v);
                prop_assert!(sigil_verify::is_canonical_amount(&c), "{}", c);
                prop_assert_eq!(parse(&c), Some(v));
                prop_assert_eq!(canonicalise(&c), Some(c.clone()));
                let again = canonicalise(&c).unwrap_or_default();
                prop_assert_eq!(canonicalise(&again), Some(again.clone()));
            }

            /// Equal values written differently: only the canonical spelling
            /// parses; the padded ones are refused, not rewritten.
            #[test]
            fn other_spellings_do_not_parse(v in 1u128..=u128::MAX / 4, zeros in 1usize..4) {
                let c = format(v);
                let z = "0".repeat(zeros);
                let padded = if c.contains('.') { format!("{c}{z}") } else { format!("{c}.{z}") };
                prop_assert_eq!(parse(&padded), None);
                prop_assert_eq!(parse(&format!("{z}{c}")), None);
            }

            /// Comparing strings agrees with comparing values.
            #[test]
            fn compare_agrees_with_values(a in 1u128..=u128::MAX / 4, b in 1u128..=u128::MAX / 4) {
                prop_assert_eq!(compare(&format(a), &format(b)), a.cmp(&b));
            }
        }
    }
}
