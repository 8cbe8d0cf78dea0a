//! Allocator and process memory settings, applied first thing at start
//! (`cli::main`). Decided by measurement (`benches/memory.py`, figures in
//! docs/memory.md):
//!
//! - **No transparent huge pages.** mimalloc v3 `madvise(MADV_HUGEPAGE)`s
//!   its arenas, so even with the system setting at `madvise` the heap was
//!   backed by 2 MiB pages: RSS moved in 2 MiB steps, a huge page was kept
//!   while any 4 KiB of it was live, and after a burst `khugepaged` kept
//!   collapsing the freed, sparse ranges back into huge pages — RSS *grew*
//!   while idle (171 → 316 MiB in five idle minutes after 10,000 waiting
//!   requests). `PR_SET_THP_DISABLE` turns THP off for this process whatever
//!   the system setting; mimalloc's own option is set to match.
//! - **Purge freed memory promptly** (`purge_delay`, see [`PURGE_DELAY_MS`]):
//!   mimalloc gives freed pages back to the OS only after this delay, and
//!   only when it runs again — after a burst the process may not allocate
//!   for a long time, so [`spawn_collector`] runs a purge every second.
//!
//! A `MIMALLOC_*` environment variable for the same option wins (mimalloc
//! reads them at load), so an operator can still tune or undo either.

// FFI into libc (prctl) and mimalloc's option and collect calls: the
// one module besides `pipeline/admit.rs` that may use `unsafe`, each
// block with its SAFETY reason.
#![allow(unsafe_code)]

#[cfg(not(feature = "system-allocator"))]
extern crate mimalloc;

use std::time::Duration;

/// mimalloc's `purge_delay` in ms (its default is 1,000 with v3's
/// `arena_purge_mult` of 1).
pub const PURGE_DELAY_MS: i64 = 100;

/// How often [`spawn_collector`] lets mimalloc purge what is due.
pub const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// The global allocator: mimalloc, asked the way the standard library asks
/// the system allocator.
///
/// The `mimalloc` crate's own `MiMalloc` hands every allocation to
/// `mi_malloc_aligned(size, align)`. That call's fast path only serves sizes
/// up to 1 KiB from a free block that happens to be aligned; every other
/// request (a medium size, or a page with no free block at hand) takes its
/// generic aligned path: a `mi_good_size`, then, for a size whose block is
/// not a power of two, an over-allocation of `size + align - 1` through the
/// generic allocator. The proxy's per-request boxes are mostly 1–9 KiB
/// futures, so 17 of its 58 allocations a request went that way (callgrind,
/// 3.4k instructions a request; docs/performance.md, "The fourteenth pass").
///
/// mimalloc guarantees what glibc's malloc does: every block is at least
/// 16-byte aligned once it is 16 bytes or larger (`MI_MAX_ALIGN_SIZE`,
/// asserted for every block in v3's `alloc.c`), and word-aligned below.
/// So, like `std::alloc::System`, an alignment of at most 16 that is no
/// larger than the size goes to plain `mi_malloc` / `mi_zalloc` /
/// `mi_realloc`, and only larger alignments to the `_aligned` calls.
#[cfg(not(feature = "system-allocator"))]
pub struct MiMalloc;

/// The alignment plain `mi_malloc` guarantees for sizes at least this large.
#[cfg(not(feature = "system-allocator"))]
const MIN_ALIGN: usize = 16;

#[cfg(not(feature = "system-allocator"))]
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

#[cfg(not(feature = "system-allocator"))]
// SAFETY: every pointer comes from mimalloc, aligned as the layout asks
// (see the type's comment), and every block goes back through `mi_free`,
// which takes blocks from any of these calls.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        mi::mi_free(ptr.cast())
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(not(feature = "system-allocator"))]
mod mi {
    use std::os::raw::{c_int, c_long, c_void};

    // Option numbers of mimalloc v3 (`mi_option_e` in libmimalloc-sys
    // 0.1.49's c_src/mimalloc/v3/include/mimalloc.h); checked by the test
    // below against their documented defaults.
    pub const PURGE_DELAY: c_int = 15;
    #[cfg(test)]
    pub const ARENA_PURGE_MULT: c_int = 24;
    pub const ALLOW_THP: c_int = 43;

    extern "C" {
        #[cfg(test)]
        pub fn mi_option_get(option: c_int) -> c_long;
        pub fn mi_option_set(option: c_int, value: c_long);
        pub fn mi_collect(force: bool);
        pub fn mi_malloc(size: usize) -> *mut c_void;
        pub fn mi_zalloc(size: usize) -> *mut c_void;
        pub fn mi_realloc(p: *mut c_void, newsize: usize) -> *mut c_void;
        pub fn mi_malloc_aligned(size: usize, alignment: usize) -> *mut c_void;
        pub fn mi_zalloc_aligned(size: usize, alignment: usize) -> *mut c_void;
        pub fn mi_realloc_aligned(p: *mut c_void, newsize: usize, alignment: usize) -> *mut c_void;
        pub fn mi_free(p: *mut c_void);
    }
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// Apply the settings above. Call once, before the runtime starts.
pub fn configure() {
    if !env_set("MIMALLOC_ALLOW_THP") {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments
            // only and changes a flag of this process.
            let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
            if rc != 0 {
                tracing::debug!(
                    error = %std::io::Error::last_os_error(),
                    "cannot disable transparent huge pages"
                );
            }
        }
        #[cfg(not(feature = "system-allocator"))]
        // SAFETY: setting a mimalloc option is thread-safe and has no
        // memory-safety preconditions.
        unsafe {
            mi::mi_option_set(mi::ALLOW_THP, 0)
        };
    }
    #[cfg(not(feature = "system-allocator"))]
    if !env_set("MIMALLOC_PURGE_DELAY") {
        // SAFETY: as above.
        unsafe { mi::mi_option_set(mi::PURGE_DELAY, PURGE_DELAY_MS as _) };
    }
}

/// A thread that lets mimalloc purge freed memory whose delay has passed,
/// also while the proxy is idle (mimalloc otherwise purges only when it
/// allocates or frees).
pub fn spawn_collector() {
    #[cfg(not(feature = "system-allocator"))]
    {
        let spawned = std::thread::Builder::new()
            .name("ezthrottle-mem".into())
            .spawn(|| loop {
                std::thread::sleep(COLLECT_EVERY);
                // SAFETY: mi_collect has no preconditions; not forced, it
                // only frees what is due.
                unsafe { mi::mi_collect(false) };
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the memory collector thread");
        }
    }
}

/// Let mimalloc collect on the worker threads of the current tokio runtime
/// (the proxy's) too, once a second, from the first call on (once per
/// process). A thread's freed pages — most of them freed by *another*
/// thread, as tasks move between workers — go back to mimalloc's arenas only
/// when their owning thread collects, which an idle worker otherwise never
/// does: after a burst the memory stayed with the workers (measured, 1,000
/// waiting requests: 24 of 29 MiB still held a minute later). tokio offers
/// no per-worker hook, so a few tasks per worker tick and collect on
/// whichever worker runs them; over a few ticks every worker does.
pub fn collect_on_workers() {
    #[cfg(not(feature = "system-allocator"))]
    {
        static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if STARTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tasks = handle.metrics().num_workers().max(1) * 2;
        for i in 0..tasks {
            handle.spawn(async move {
                // Spread over the second so they do not all wake together.
                tokio::time::sleep(COLLECT_EVERY * i as u32 / tasks as u32).await;
                let mut tick = tokio::time::interval(COLLECT_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    // SAFETY: as in `spawn_collector`.
                    unsafe { mi::mi_collect(false) };
                }
            });
        }
    }
}

#[cfg(all(test, not(feature = "system-allocator")))]
mod tests {
    use super::mi;
    use super::MiMalloc;
    use std::alloc::{GlobalAlloc, Layout};

    /// Every block is aligned as its layout asks, on both sides of the
    /// plain/aligned split (alignments up to 16 within the size go to plain
    /// `mi_malloc`) and across mimalloc's small, medium and large sizes;
    /// zeroed blocks are zero; a reallocation keeps the bytes and the
    /// alignment.
    #[test]
    fn blocks_are_aligned_as_asked() {
        let sizes = (1..=64)
            .chain((65..=2048).step_by(7))
            .chain([4096, 9256, 65_536, 1 << 20]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed with its
                // layout, reallocated once with the same alignment.
                unsafe {
                    let p = MiMalloc.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let grown = size * 2 + 3;
                    let q = MiMalloc.realloc(p, layout, grown);
                    assert!(!q.is_null());
                    assert_eq!(
                        q as usize % align,
                        0,
                        "realloc {size}->{grown} align {align}"
                    );
                    assert!(std::slice::from_raw_parts(q, size)
                        .iter()
                        .all(|&b| b == 0xa5));
                    MiMalloc.dealloc(q, Layout::from_size_align(grown, align).unwrap());
                    let z = MiMalloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zalloc size {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    MiMalloc.dealloc(z, layout);
                }
            }
        }
    }

    /// The option numbers name the options we mean: their defaults are as
    /// documented (a renumbering in a mimalloc update fails here).
    #[test]
    fn option_numbers_match_mimalloc_v3() {
        // SAFETY: reading options has no preconditions.
        unsafe {
            assert_eq!(mi::mi_option_get(mi::ARENA_PURGE_MULT), 1);
            let thp = mi::mi_option_get(mi::ALLOW_THP);
            assert!(thp == 0 || thp == 1, "allow_thp is a flag, got {thp}");
            let delay = mi::mi_option_get(mi::PURGE_DELAY);
            assert!(
                delay == 1000 || delay == super::PURGE_DELAY_MS as std::os::raw::c_long,
                "purge_delay {delay}"
            );
        }
    }
}
