//! The amount rule and the intent digest: `is_canonical_amount`,
//! `protect::amount` (parse/format/compare: the canonical form), the
//! intent preimage and digest, and `approval::intent::validate`.
//!
//! Input: the eight intent fields in digest order, then a second amount,
//! one per line.
#![no_main]

use std::cmp::Ordering;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sigil::protect::amount;
use sigil::protect::assets::Assets;
use sigil_verify::{amount_decimals, is_canonical_amount, Intent, INTENT_TAG};

/// `^(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$` and greater than zero, spelled out
/// independently of the implementation under test.
fn reference(s: &str) -> bool {
    let b = s.as_bytes();
    let int_end = match b.first() {
        Some(b'0') => 1,
        Some(b'1'..=b'9') => 1 + b[1..].iter().take_while(|c| c.is_ascii_digit()).count(),
        _ => return false,
    };
    if int_end == b.len() {
        return &s[..int_end] != "0";
    }
    if b[int_end] != b'.' {
        return false;
    }
    let frac = &b[int_end + 1..];
    !frac.is_empty() && frac.iter().all(u8::is_ascii_digit) && frac.last() != Some(&b'0')
}

/// The canonical form of an amount, if it has one Sigil can compute: an
/// amount that is not canonical has none (it is refused, never rewritten).
fn canonicalise(s: &str) -> Option<String> {
    amount::parse(s).map(amount::format)
}

fn assets() -> &'static Assets {
    static A: OnceLock<Assets> = OnceLock::new();
    A.get_or_init(|| sigil::Config::default().asset_rules())
}

fn check_amount(a: &str) {
    let canonical = is_canonical_amount(a);
    assert_eq!(canonical, reference(a), "{a:?}");
    if !canonical {
        if a != "0" {
            assert_eq!(amount::parse(a), None, "{a:?}");
        }
        return;
    }
    let decimals = amount_decimals(a);
    assert_eq!(decimals, a.split_once('.').map_or(0, |(_, f)| f.len()));
    // Canonical amounts are their own canonical form, and that is a fixed point.
    match canonicalise(a) {
        Some(c) => {
            assert_eq!(c, a);
            assert_eq!(canonicalise(&c).as_deref(), Some(a));
        }
        None => {
            // Only too many decimals or too large for 18-decimal fixed point.
            let int = a.split_once('.').map_or(a, |(i, _)| i);
            assert!(decimals > amount::SCALE || int.len() >= 21, "{a:?}");
        }
    }
    assert_eq!(amount::compare(a, a), Ordering::Equal);
    // Other spellings of the same amount are refused, not rewritten.
    let mut others = vec![
        format!("0{a}"),
        format!("+{a}"),
        format!("{a}."),
        format!(" {a}"),
        format!("{a}e0"),
        format!("-{a}"),
    ];
    if a.contains('.') {
        others.push(format!("{a}0"));
        others.push(a.replacen('.', ",", 1));
    } else {
        others.push(format!("{a}.0"));
    }
    if let Some(frac) = a.strip_prefix("0.") {
        others.push(format!(".{frac}"));
    }
    for o in others {
        assert!(!is_canonical_amount(&o), "{o:?}");
        assert_eq!(amount::parse(&o), None, "{o:?}");
    }
}

fn preimage_fields(p: &[u8]) -> Vec<&[u8]> {
    assert_eq!(&p[..INTENT_TAG.len()], INTENT_TAG);
    let mut rest = &p[INTENT_TAG.len()..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(&rest[4..4 + n]);
        rest = &rest[4 + n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [action, user_id, withdrawal_id, asset, network, amt, destination, memo, other] = sigil_fuzz::fields::<9>(data);
    check_amount(&amt);
    check_amount(&other);
    if is_canonical_amount(&amt) && is_canonical_amount(&other) {
        let ord = amount::compare(&amt, &other);
        assert_eq!(ord == Ordering::Equal, amt == other, "{amt:?} {other:?}");
        assert_eq!(amount::compare(&other, &amt), ord.reverse());
        if let (Some(x), Some(y)) = (amount::parse(&amt), amount::parse(&other)) {
            assert_eq!(x.cmp(&y), ord);
        }
    }

    let intent = Intent {
        action,
        user_id,
        withdrawal_id,
        asset,
        network,
        amount: amt,
        destination,
        memo,
    };
    // The preimage is the tag and the eight length-prefixed fields, nothing else.
    let pre = intent.preimage();
    let read = preimage_fields(&pre);
    let values: Vec<&[u8]> = intent.fields().iter().map(|(_, v)| v.as_bytes()).collect();
    assert_eq!(read, values);
    // Any change of a field changes the preimage (and so the digest), and so
    // does moving a byte across a field boundary.
    let digest = intent.digest();
    for i in 0..8 {
        let mut changed = intent.clone();
        let f = field_mut(&mut changed, i);
        f.push('x');
        assert_ne!(changed.preimage(), pre);
        assert_ne!(changed.digest(), digest);
        if i < 7 {
            let mut moved = intent.clone();
            if let Some(c) = field_mut(&mut moved, i).pop() {
                field_mut(&mut moved, i + 1).insert(0, c);
                assert_ne!(moved.preimage(), pre);
            }
        }
    }

    if let Ok(action) = sigil::approval::intent::validate(assets(), &intent) {
        assert_eq!(action.name(), intent.action);
        if action == sigil::Action::Withdrawal {
            assert!(is_canonical_amount(&intent.amount));
            let max = assets().max_decimals(&intent.asset).unwrap();
            assert!(amount_decimals(&intent.amount) <= max);
        }
    }
});

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
