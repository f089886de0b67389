//! Micro-benchmarks of what a withdrawal engine runs per approval: the
//! intent digest and the offline verification of an approval (`cargo bench
//! -p sigil-verify`; `make bench` records the figures in BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn digest(c: &mut Criterion) {
    let intent = common::intent();
    c.bench_function("intent digest (canonical form + SHA-256)", |b| {
        b.iter(|| black_box(&intent).digest())
    });
}

fn verify(c: &mut Criterion) {
    let signer = common::Signer::new();
    let intent = common::intent();
    let token = signer.sign(&common::claims_for(&intent));
    let v = common::verifier(&signer);
    // A check of the bench itself: the token verifies.
    v.verify_for(&token, &intent, common::NOW).unwrap();
    c.bench_function("approval verify_for (ES256 + claims + intent)", |b| {
        b.iter(|| v.verify_for(black_box(&token), &intent, common::NOW).unwrap())
    });
}

criterion_group!(benches, digest, verify);
criterion_main!(benches);
