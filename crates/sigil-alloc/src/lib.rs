//! sigild's global allocator: [mimalloc](mimalloc::MiMalloc), with two of
//! its options set before its first allocation.
//!
//! mimalloc is cheaper than the system allocator for sigild's many small,
//! short-lived allocations on several threads at once (gRPC, records,
//! PKCS#11 buffers). Left at its defaults (mimalloc 3), it keeps freed
//! memory for a second, and its arenas ten times longer, before giving it
//! back, and commits whole arena chunks eagerly: under a steady load of
//! approvals sigild's resident set stayed ~70–140 MiB above what it used
//! (measured with `examples/loadgen.rs`, 40,000 users and 120,000
//! approvals: 247 MiB resident against 167 MiB with the options below, and
//! 117 against 70 MiB idle after a restart on the same store). So:
//! - `purge_delay = 0`: freed OS pages are given back at once;
//! - `arena_eager_commit = 0`: arena memory is committed as it is used.
//!
//! The CPU cost was within the run-to-run noise of the same benchmark.
#![cfg_attr(not(test), no_std)]

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicBool, Ordering};

use libmimalloc_sys as ffi;
use mimalloc::MiMalloc;

/// mimalloc with the options in the crate docs; use as
/// `#[global_allocator] static A: sigil_alloc::Allocator = sigil_alloc::Allocator;`.
pub struct Allocator;

static CONFIGURED: AtomicBool = AtomicBool::new(false);

/// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_e` (the
/// bindings name only the options whose numbers mimalloc 2 and 3 share).
const ARENA_EAGER_COMMIT: ffi::mi_option_t = 4;
/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e`.
const PURGE_DELAY: ffi::mi_option_t = 15;

/// Sets the options once, before the first allocation goes to mimalloc.
/// A race between threads sets them twice, which is harmless.
#[inline]
fn configure() {
    if !CONFIGURED.load(Ordering::Relaxed) {
        set_options();
        CONFIGURED.store(true, Ordering::Relaxed);
    }
}

#[cold]
#[allow(unsafe_code)]
fn set_options() {
    // SAFETY: `mi_option_set` takes an option number and a value and has no
    // other preconditions; it allocates nothing through this allocator.
    unsafe {
        ffi::mi_option_set(PURGE_DELAY, 0);
        ffi::mi_option_set(ARENA_EAGER_COMMIT, 0);
    }
}

// SAFETY: every method forwards to `MiMalloc`, a correct `GlobalAlloc`, with
// the caller's arguments unchanged; `configure` only sets options.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        configure();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { MiMalloc.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        configure();
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn options_are_set_and_memory_round_trips() {
        let a = Allocator;
        let layout = Layout::from_size_align(4096, 64).unwrap();
        // SAFETY (test): a valid layout; the block is freed with the same one.
        #[allow(unsafe_code)]
        unsafe {
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % 64, 0);
            assert!(core::slice::from_raw_parts(p, 4096).iter().all(|b| *b == 0));
            let q = a.realloc(p, layout, 8192);
            assert!(!q.is_null());
            a.dealloc(q, Layout::from_size_align(8192, 64).unwrap());
            assert_eq!(ffi::mi_option_get(PURGE_DELAY), 0);
            assert_eq!(ffi::mi_option_get(ARENA_EAGER_COMMIT), 0);
            // The numbers are mimalloc 3's: its neighbours keep their defaults.
            assert_eq!(ffi::mi_option_get(ffi::mi_option_use_numa_nodes), 0);
            assert_eq!(ffi::mi_option_get(ffi::mi_option_show_errors), 0);
        }
    }
}
