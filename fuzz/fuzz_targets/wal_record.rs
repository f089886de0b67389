//! The write-ahead log's parser (`store::wal_format`): records, groups and
//! whole files, as replay reads them.
//!
//! The first byte picks what the rest is:
//! - `R`: a framed record; `G`: a group; `F`: a log file (raw bytes, so
//!   checksums must match for anything to be readable);
//! - `P`: a record payload, which the target frames with a correct
//!   checksum, so the payload decoder sees every input;
//! - `Q`: payloads, each after a one-byte length, framed and sealed into
//!   one group with correct checksums.
//!
//! Whatever is readable re-encodes to the very bytes it was read from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigil::store::wal_format::{decode_group, decode_record, encode_group, encode_record, scan_file};

/// `len | crc32c(payload) | payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&crc::Crc::<u32>::new(&crc::CRC_32_ISCSI).checksum(payload).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn check_record(bytes: &[u8]) {
    if let Some((lsn, ops, n)) = decode_record(bytes) {
        assert!(n <= bytes.len());
        assert_eq!(encode_record(lsn, &ops), &bytes[..n]);
        // A bit flipped in its checksum or payload makes it unreadable
        // (CRC-32C catches every single-bit error).
        let mut flipped = bytes[..n].to_vec();
        let at = 4 + (lsn as usize) % (n - 4);
        flipped[at] ^= 1 << (lsn % 8);
        assert!(decode_record(&flipped).is_none());
        // So does cutting it short.
        assert!(decode_record(&bytes[..n - 1]).is_none());
    }
}

fn check_group(bytes: &[u8]) {
    if let Some((records, n)) = decode_group(bytes) {
        assert!(!records.is_empty() && n <= bytes.len());
        for w in records.windows(2) {
            assert_eq!(w[1].0, w[0].0.wrapping_add(1));
        }
        let body: Vec<u8> = records.iter().flat_map(|(lsn, ops)| encode_record(*lsn, ops)).collect();
        assert_eq!(encode_group(&body).unwrap(), &bytes[..n]);
        assert!(decode_group(&bytes[..n - 1]).is_none());
        // Any bit flipped anywhere in it: the header and body checksums.
        let mut flipped = bytes[..n].to_vec();
        let seed = records[0].0 as usize;
        flipped[seed % n] ^= 1 << (seed % 8);
        assert!(decode_group(&flipped).is_none());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        b'R' => check_record(rest),
        b'G' => check_group(rest),
        b'P' => check_record(&frame(rest)),
        b'Q' => {
            let mut body = Vec::new();
            let mut rest = rest;
            while let Some((n, tail)) = rest.split_first() {
                let n = usize::from(*n).min(tail.len());
                body.extend(frame(&tail[..n]));
                rest = &tail[n..];
            }
            if let Some(group) = encode_group(&body) {
                check_group(&group);
            }
        }
        _ => {
            // A file seed ('F') follows nothing; other bytes also vary the LSN before it.
            let last = if *mode == b'F' {
                0
            } else {
                rest.get(..8).map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()))
            };
            if let Ok(scan) = scan_file(rest, last) {
                for w in scan.lsns.windows(2) {
                    assert_eq!(w[1], w[0].wrapping_add(1));
                }
                if let Some(at) = scan.bad_at {
                    assert!(at < rest.len());
                } else {
                    assert!(!scan.readable_after);
                }
            }
        }
    }
});
