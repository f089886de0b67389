//! Micro-benchmark of a TOTP check (RFC 6238, ±1 step, HMAC-SHA1) as
//! CompleteApproval runs it, once the seed is decrypted (`cargo bench
//! --bench totp`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use sigil::factor::totp;
use std::hint::black_box;

fn verify(c: &mut Criterion) {
    let seed = [7u8; 20];
    let now = 1_790_000_000;
    // The worst case of the window: the code of the last step it looks at.
    let code = totp::code_at_step(&seed, totp::step_at(now) + 1);
    assert!(totp::verify(&seed, &code, now, None).is_some());
    c.bench_function("TOTP verify (window of 3 steps)", |b| {
        b.iter(|| totp::verify(black_box(&seed), black_box(&code), now, None))
    });
}

criterion_group!(benches, verify);
criterion_main!(benches);
