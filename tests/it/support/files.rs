//! Files and bytes: what is on disk, in which encodings a secret could be
//! found there.
use std::path::Path;

use sigil::store::{SledStore, Store, Table};

pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

pub fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

/// Every record of a (closed) store, as of now.
pub fn store_records(path: &Path) -> Vec<(Table, Vec<u8>, u64, Vec<u8>)> {
    let st = SledStore::open(path).unwrap();
    st.snapshot()
        .unwrap()
        .into_iter()
        .map(|(t, k, v)| (t, k, v.version, v.value))
        .collect()
}

/// The seed in the encodings a careless writer would use.
pub fn seed_needles(seed: &[u8]) -> Vec<Vec<u8>> {
    let b32 = data_encoding::BASE32_NOPAD.encode(seed);
    vec![
        seed.to_vec(),
        b32.clone().into_bytes(),
        b32.to_lowercase().into_bytes(),
        data_encoding::BASE32.encode(seed).into_bytes(),
        data_encoding::HEXLOWER.encode(seed).into_bytes(),
        data_encoding::HEXUPPER.encode(seed).into_bytes(),
        data_encoding::BASE64.encode(seed).into_bytes(),
        data_encoding::BASE64URL_NOPAD.encode(seed).into_bytes(),
    ]
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
