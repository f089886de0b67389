//! What a stopped embedded store holds, table by table, and how small its
//! records pack; also trains a candidate zstd dictionary from them.
//!
//! ```text
//! cargo run --release --example store_dict -- <store dir> [--dict FILE] [--train OUT]
//! ```
//!
//! For each sled tree: keys, key bytes, the bytes sled holds for the
//! values now, the plain records, and the records packed with the store's
//! dictionary 1 (`sigil::store::packed`). The logs' trees (`*.blocks`)
//! hold a key per block of 64 entries, `meta.expiry` a key per second of
//! the expiry index, `challenges.groups` and `approvals.groups` a key per
//! second and first random character of the records with timed ids, and
//! `accounts` a key per user with the user's record and factors.
//! `--dict FILE` adds a column for a candidate dictionary, `--level N` for
//! packing at zstd level N (with the candidate dictionary, or else
//! dictionary 1; the store packs at 3); `--train OUT` writes a 32 KiB
//! dictionary trained on up to 4,000 records of each table (not the blocks
//! and buckets: their entries are the records, and stores of format 1 held
//! them one by one). The store must not be open (sled locks it): stop
//! sigild first.
use std::collections::BTreeMap;

use sigil::store::packed;

fn main() {
    if let Err(e) = run() {
        eprintln!("store_dict: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: store_dict <store dir> [--dict FILE] [--level N] [--train OUT]")?;
    let mut dict_file = None;
    let mut level = None;
    let mut train = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dict" => dict_file = Some(args.next().ok_or("--dict needs a file")?),
            "--train" => train = Some(args.next().ok_or("--train needs a file")?),
            "--level" => {
                let n = args.next().ok_or("--level needs a number")?;
                level = Some(n.parse::<i32>().map_err(|_| format!("--level {n} is not a number"))?);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let candidate = match &dict_file {
        Some(f) => Some(std::fs::read(f).map_err(|e| format!("cannot read {f}: {e}"))?),
        None => level.map(|_| packed::DICTIONARY_1.to_vec()),
    };
    let mut cand = match &candidate {
        Some(d) => {
            let mut c = zstd::bulk::Compressor::with_dictionary(level.unwrap_or(3), d).map_err(|e| e.to_string())?;
            c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(false))
                .map_err(|e| e.to_string())?;
            c.set_parameter(zstd::zstd_safe::CParameter::DictIdFlag(false))
                .map_err(|e| e.to_string())?;
            Some(c)
        }
        None => None,
    };
    // sled would create a database wherever it is pointed: only a store.
    if !std::path::Path::new(&dir).join("sigil-store.json").is_file() {
        return Err(format!("{dir} is not a Sigil store (no sigil-store.json)"));
    }
    let db = sled::Config::new()
        .path(&dir)
        .open()
        .map_err(|e| format!("cannot open sled at {dir}: {e}"))?;
    let mut samples: Vec<Vec<u8>> = Vec::new();
    let mut totals = [0u64; 6];
    println!(
        "{:<16} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "tree", "keys", "keys B", "in sled B", "plain B", "packed B", "candidate B"
    );
    let names: BTreeMap<String, sled::IVec> = db
        .tree_names()
        .into_iter()
        .map(|n| (String::from_utf8_lossy(&n).into_owned(), n))
        .collect();
    for (name, raw_name) in names {
        if name.starts_with("__") {
            continue;
        }
        let tree = db.open_tree(raw_name).map_err(|e| e.to_string())?;
        let n = tree.len().max(1);
        let stride = n.div_ceil(4000);
        let mut row = [0u64; 6];
        for (i, item) in tree.iter().enumerate() {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let plain = packed::unpack(&v).map_err(|e| format!("{name}: {e}"))?;
            row[0] += 1;
            row[1] += k.len() as u64;
            row[2] += v.len() as u64;
            row[3] += plain.len() as u64;
            row[4] += packed::pack(&plain).map_err(|e| e.to_string())?.len() as u64;
            if let Some(c) = cand.as_mut() {
                let record = &plain[8..];
                let z = c.compress(record).map_err(|e| e.to_string())?;
                row[5] += 8 + if z.len() + 4 < record.len() {
                    4 + z.len()
                } else {
                    record.len()
                } as u64;
            }
            let blocks =
                name.ends_with(".blocks") || name.ends_with(".groups") || name == "meta.expiry" || name == "accounts";
            if train.is_some() && !blocks && i % stride == 0 && plain.len() > 8 {
                samples.push(plain[8..].to_vec());
            }
        }
        for (t, r) in totals.iter_mut().zip(row) {
            *t += r;
        }
        println!(
            "{:<16} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12}",
            name, row[0], row[1], row[2], row[3], row[4], row[5]
        );
    }
    println!(
        "{:<16} {:>10} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "total", totals[0], totals[1], totals[2], totals[3], totals[4], totals[5]
    );
    if let Some(out) = train {
        let dict = zstd::dict::from_samples(&samples, 32 * 1024).map_err(|e| format!("training failed: {e}"))?;
        std::fs::write(&out, &dict).map_err(|e| format!("cannot write {out}: {e}"))?;
        println!(
            "trained a {}-byte dictionary on {} records into {out}",
            dict.len(),
            samples.len()
        );
    }
    Ok(())
}
