// The crate root's lints (src/lib.rs) hold for the binary too.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

/// glibc malloc's arena locks showed up as the top user-space cost of the
/// proxy path under load (`perf`: `__lll_lock_wait_private`); mimalloc's
/// per-thread heaps avoid them.
///
/// Asked as the system allocator is asked (`allocator::MiMalloc` says why).
///
/// `--features system-allocator` builds with the system allocator instead,
/// for heap profilers that only see malloc (docs/memory.md).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: ezthrottle::allocator::MiMalloc = ezthrottle::allocator::MiMalloc;

fn main() {
    let code = ezthrottle::cli::main();
    ezthrottle::logging::access::flush();
    std::process::exit(code);
}
