//! The allocator: mimalloc, for every binary that links this crate (the daemon, and the tests
//! and benchmarks that run its stream in-process). The stream allocates and frees a
//! short-lived JSON tree per frame, where glibc's malloc spent ~1/5 of the CPU and fragmented
//! across connections.
//!
//! Tuned for a long-running daemon's resident memory (`BENCHMARKS.md`, 40,000 assets: ~185 MB
//! by default, ~148 MB so): no transparent huge pages (the `no_thp` build feature: a 2 MiB page
//! stays resident for one live object), and freed memory returned to the OS at once
//! ([`tune`]) instead of after mimalloc's default 1 s, which the benchmark showed never came for
//! much of it. Neither cost measurable throughput on the real mix.
//!
//! The `system-allocator` feature leaves the system's malloc in place, for heap profilers
//! (`heaptrack` sees malloc, not mimalloc): BENCHMARKS.md, "Universe".

#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the bundled mimalloc (v3's `mi_option_e`; the Rust bindings do
/// not name it). A test checks the number against the option's documented default.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Returns freed memory to the OS without delay. Called first thing by `main`.
pub fn tune() {
    // SAFETY: setting a mimalloc option is thread-safe and takes effect for later purges.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_we_set() {
        // mimalloc v3's default purge delay is 1000 ms (unless MIMALLOC_PURGE_DELAY says otherwise).
        let env = std::env::var("MIMALLOC_PURGE_DELAY").ok().and_then(|v| v.parse::<i64>().ok());
        let before = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) } as i64;
        assert_eq!(before, env.unwrap_or(1000), "option {PURGE_DELAY} is not purge_delay in this mimalloc");
    }
}
