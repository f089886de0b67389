//! The one record codec: every record Sigil stores is JSON, written and
//! read through [`encode`] and [`decode`].
//!
//! A record type says its name and the newest format version this build
//! understands ([`Record`]). Decoding refuses a record written by a newer
//! format (a downgrade must not misread data) and names the record in its
//! message; it never echoes the stored bytes.
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;

/// A stored record type.
pub trait Record: Serialize + DeserializeOwned {
    /// The record's name, for messages (`factor`, `challenge`, ...).
    const NAME: &'static str;
    /// The newest format version this build writes and reads.
    const VERSION: u32 = 1;

    /// The format version the record was written in (records without a
    /// version field are version 1).
    fn format_version(&self) -> u32 {
        1
    }
}

/// Encodes a record for storage.
pub fn encode<R: Record>(rec: &R) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(rec).map_err(|e| Error::Internal(format!("cannot encode {} record: {e}", R::NAME)))
}

/// Decodes a stored record, refusing one written by a newer format.
pub fn decode<R: Record>(bytes: &[u8]) -> Result<R, Error> {
    let rec: R =
        serde_json::from_slice(bytes).map_err(|e| Error::Internal(format!("{} record unreadable: {e}", R::NAME)))?;
    let v = rec.format_version();
    if v > R::VERSION {
        return Err(Error::Internal(format!(
            "{} record has format version {v}; this build reads up to {} (was the store written by a newer Sigil?)",
            R::NAME,
            R::VERSION
        )));
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Thing {
        v: u32,
        name: String,
    }

    impl Record for Thing {
        const NAME: &'static str = "thing";
        const VERSION: u32 = 2;
        fn format_version(&self) -> u32 {
            self.v
        }
    }

    #[test]
    fn round_trips_and_refuses_newer_formats_and_garbage() {
        let t = Thing { v: 2, name: "a".into() };
        assert_eq!(decode::<Thing>(&encode(&t).unwrap()).unwrap(), t);
        let newer = encode(&Thing { v: 3, name: "a".into() }).unwrap();
        let e = decode::<Thing>(&newer).unwrap_err().to_string();
        assert!(e.contains("thing record has format version 3"), "{e}");
        let e = decode::<Thing>(b"{\"v\":1,\"secret\":").unwrap_err().to_string();
        assert!(e.starts_with("thing record unreadable"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    /// Round trip of the record codec over arbitrary records (`proptest`).
    mod props {
        use proptest::prelude::*;
        use serde::{Deserialize, Serialize};

        use super::super::*;

        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        struct Rec {
            v: u32,
            name: String,
            bytes: Vec<u8>,
            count: Option<i64>,
            items: Vec<(String, bool)>,
        }

        impl Record for Rec {
            const NAME: &'static str = "rec";
            const VERSION: u32 = 3;
            fn format_version(&self) -> u32 {
                self.v
            }
        }

        fn rec() -> impl Strategy<Value = Rec> {
            (
                0u32..6,
                ".{0,24}",
                proptest::collection::vec(any::<u8>(), 0..32),
                any::<Option<i64>>(),
                proptest::collection::vec((".{0,8}", any::<bool>()), 0..4),
            )
                .prop_map(|(v, name, bytes, count, items)| Rec {
                    v,
                    name,
                    bytes,
                    count,
                    items,
                })
        }

        proptest! {
            /// A record decodes to itself when its version is readable, and
            /// is refused (never misread) when it is newer.
            #[test]
            fn records_round_trip(r in rec()) {
                let bytes = encode(&r).unwrap();
                match decode::<Rec>(&bytes) {
                    Ok(back) => {
                        prop_assert!(r.v <= Rec::VERSION);
                        prop_assert_eq!(back, r);
                    }
                    Err(e) => {
                        prop_assert!(r.v > Rec::VERSION);
                        prop_assert!(e.to_string().contains("format version"), "{}", e);
                    }
                }
            }

            /// A truncated record is refused.
            #[test]
            fn truncated_records_are_refused(r in rec(), cut in any::<prop::sample::Index>()) {
                let bytes = encode(&r).unwrap();
                let n = cut.index(bytes.len());
                prop_assert!(decode::<Rec>(&bytes[..n]).is_err());
            }
        }
    }
}
