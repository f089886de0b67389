//! How the embedded store keeps values in sled: compressed with a fixed
//! zstd dictionary when that makes them smaller.
//!
//! Sigil's records are small JSON documents (an audit entry is ~300 bytes)
//! that repeat the same field names and values, so compressing each one
//! on its own gains little, but compressing it against a dictionary of
//! typical records makes it two to four times smaller. The dictionary is
//! part of the store's format: a value written with dictionary *N* is read
//! with dictionary *N* forever, so a dictionary is never changed, only a
//! new one added under a new number.
//!
//! Only what sled holds is packed. The write-ahead log, the memtables, the
//! records' versions and everything above the store see the plain stored
//! bytes (an 8-byte big-endian version, then the record), as do backups
//! and the PostgreSQL backend.
//!
//! Layout in sled: the version's top byte says how the value is kept.
//! `0`: as is (`version || record`; every value written before packing
//! existed). `1`: `version || u32 BE length of the record || zstd frame of
//! the record made with dictionary 1`. Versions count one key's writes
//! and never reach 2^56. Any other top byte is a newer format and is
//! refused. Stores holding packed values are marked format 2 or later (see
//! `sled_store`), so an older build refuses them instead of misreading.
use std::cell::RefCell;
use std::sync::LazyLock;

use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};
use zstd::zstd_safe::CParameter;

use super::StoreError;

/// Dictionary 1, trained on the records of a populated store (see
/// `examples/store_dict.rs`). Never change it: stores depend on it.
pub const DICTIONARY_1: &[u8] = include_bytes!("dict/records-1.zdict");

/// The zstd level values are packed at (fast; the dictionary does the work).
const LEVEL: i32 = 3;
/// Values shorter than this are kept as is: too short to gain.
const MIN_PACK: usize = 40;
/// The largest record that is packed, and so the most a packed value may
/// claim to hold: a damaged length must not make a read allocate much.
/// (Records and log blocks are far smaller; a larger one is kept as is.)
const MAX_RECORD: usize = 16 << 20;
/// Top byte of the version header: kept as is.
const TAG_PLAIN: u8 = 0;
/// Top byte of the version header: zstd with [`DICTIONARY_1`].
const TAG_DICT_1: u8 = 1;

static ENCODER_1: LazyLock<EncoderDictionary<'static>> = LazyLock::new(|| EncoderDictionary::copy(DICTIONARY_1, LEVEL));
static DECODER_1: LazyLock<DecoderDictionary<'static>> = LazyLock::new(|| DecoderDictionary::copy(DICTIONARY_1));

thread_local! {
    static COMPRESSOR: RefCell<Option<Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compressor() -> std::io::Result<Compressor<'static>> {
    let mut c = Compressor::with_prepared_dictionary(&ENCODER_1)?;
    // The length is in our own header and the dictionary in the tag: the
    // frame need not repeat them.
    c.set_parameter(CParameter::ContentSizeFlag(false))?;
    c.set_parameter(CParameter::DictIdFlag(false))?;
    c.set_parameter(CParameter::ChecksumFlag(false))?;
    Ok(c)
}

/// The form of a stored value (`version || record`) that goes into sled:
/// packed when that is smaller, else the same bytes.
pub fn pack(stored: &[u8]) -> Result<Vec<u8>, StoreError> {
    if stored.len() < 8 {
        return Err(StoreError::Corrupt("value shorter than its version header".into()));
    }
    if stored[0] != TAG_PLAIN {
        return Err(StoreError::Corrupt(
            "a record version reached 2^56, which the store cannot keep".into(),
        ));
    }
    let record = &stored[8..];
    if record.len() < MIN_PACK || record.len() > MAX_RECORD {
        return Ok(stored.to_vec());
    }
    let frame = COMPRESSOR.with(|cell| -> Result<Vec<u8>, StoreError> {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(compressor().map_err(|e| StoreError::Unavailable(format!("cannot start zstd: {e}")))?);
        }
        let Some(c) = slot.as_mut() else {
            return Err(StoreError::Unavailable("zstd compressor missing".into()));
        };
        c.compress(record)
            .map_err(|e| StoreError::Unavailable(format!("cannot compress a record: {e}")))
    })?;
    if frame.len() + 4 >= record.len() {
        return Ok(stored.to_vec());
    }
    let mut out = Vec::with_capacity(12 + frame.len());
    out.push(TAG_DICT_1);
    out.extend_from_slice(&stored[1..8]);
    out.extend_from_slice(&(record.len() as u32).to_be_bytes());
    out.extend_from_slice(&frame);
    Ok(out)
}

/// The stored value (`version || record`) a value read from sled holds.
pub fn unpack(raw: &[u8]) -> Result<Vec<u8>, StoreError> {
    let Some(&tag) = raw.first() else {
        return Err(StoreError::Corrupt("value shorter than its version header".into()));
    };
    match tag {
        TAG_PLAIN => Ok(raw.to_vec()),
        TAG_DICT_1 => {
            if raw.len() < 12 {
                return Err(StoreError::Corrupt("packed value shorter than its header".into()));
            }
            let len = u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]) as usize;
            if len > MAX_RECORD {
                return Err(StoreError::Corrupt(format!(
                    "packed value claims a {len}-byte record, more than a record can be"
                )));
            }
            let record = DECOMPRESSOR.with(|cell| -> Result<Vec<u8>, StoreError> {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = Some(
                        Decompressor::with_prepared_dictionary(&DECODER_1)
                            .map_err(|e| StoreError::Unavailable(format!("cannot start zstd: {e}")))?,
                    );
                }
                let Some(d) = slot.as_mut() else {
                    return Err(StoreError::Unavailable("zstd decompressor missing".into()));
                };
                d.decompress(&raw[12..], len)
                    .map_err(|e| StoreError::Corrupt(format!("packed value does not decompress: {e}")))
            })?;
            if record.len() != len {
                return Err(StoreError::Corrupt(format!(
                    "packed value holds {} bytes, its header says {len}",
                    record.len()
                )));
            }
            let mut out = Vec::with_capacity(8 + len);
            out.push(TAG_PLAIN);
            out.extend_from_slice(&raw[1..8]);
            out.extend_from_slice(&record);
            Ok(out)
        }
        other => Err(StoreError::Corrupt(format!(
            "value stored in encoding {other}, which this Sigil does not know (written by a newer Sigil?)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(version: u64, record: &[u8]) -> Vec<u8> {
        let mut v = version.to_be_bytes().to_vec();
        v.extend_from_slice(record);
        v
    }

    const AUDIT: &[u8] = br#"{"v":1,"at":1796640000,"actor":"withdrawal-engine","user_id":"user-1842","action":"approval.issue","outcome":"ok","reason":"","details":{"act":"withdrawal","amr":"otp","challenge_id":"ch_4f1c2d9e8a7b6c5d","factor_id":"f_2b3c4d5e6f7a8b9c","intent_sha256":"3q2-7wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","jti":"ap_9d8c7b6a5f4e3d2c","kid":"approval-1"}}"#;

    #[test]
    fn records_round_trip_smaller_and_short_values_stay_as_they_are() {
        let s = stored(7, AUDIT);
        let p = pack(&s).unwrap();
        assert_eq!(p[0], TAG_DICT_1);
        assert!(p.len() * 2 < s.len(), "{} packed from {}", p.len(), s.len());
        assert_eq!(unpack(&p).unwrap(), s);
        let short = stored(3, b"{\"v\":1}");
        assert_eq!(pack(&short).unwrap(), short);
        assert_eq!(unpack(&short).unwrap(), short);
        // Incompressible bytes are kept as they are.
        let noise: Vec<u8> = (0..200u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let n = stored(1, &noise);
        assert_eq!(unpack(&pack(&n).unwrap()).unwrap(), n);
    }

    #[test]
    fn damaged_or_unknown_values_are_refused_not_misread() {
        let p = pack(&stored(7, AUDIT)).unwrap();
        let mut unknown = p.clone();
        unknown[0] = 2;
        let e = unpack(&unknown).unwrap_err().to_string();
        assert!(e.contains("encoding 2"), "{e}");
        let mut long = p.clone();
        long[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(unpack(&long).unwrap_err().to_string().contains("more than a record"));
        let mut wrong_len = p.clone();
        wrong_len[11] ^= 1;
        assert!(matches!(unpack(&wrong_len), Err(StoreError::Corrupt(_))));
        let mut flipped = p.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        // A flipped byte either fails to decode or changes the record; it
        // never panics. (Records carry their own checks above the store.)
        let _ = unpack(&flipped);
        assert!(matches!(unpack(&p[..10]), Err(StoreError::Corrupt(_))));
        assert!(matches!(unpack(&[]), Err(StoreError::Corrupt(_))));
        assert!(matches!(pack(&[0, 1]), Err(StoreError::Corrupt(_))));
        assert!(matches!(pack(&stored(1 << 56, AUDIT)), Err(StoreError::Corrupt(_))));
    }

    /// Any stored value comes back exactly (`proptest`).
    mod props {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn any_value_round_trips(version in 0u64..(1 << 56), record in proptest::collection::vec(any::<u8>(), 0..600),
                                     json in "[a-z_\":,{} 0-9]{0,400}") {
                for r in [record.as_slice(), json.as_bytes()] {
                    let s = stored(version, r);
                    prop_assert_eq!(unpack(&pack(&s).unwrap()).unwrap(), s);
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
                let _ = unpack(&raw);
            }
        }
    }
}
