//! How glibc's allocator should treat freed memory: a one-shot command (an answer, a benchmark,
//! an evaluation) reuses it for the next layer's activations, a long-running server hands it
//! back to the system. Either way, a glibc tunable the user sets in the environment
//! (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`) wins.

/// Keeps freed memory in the process for the next allocation. Every layer allocates and frees
/// activations of megabytes; by default glibc returns them to the kernel (each block over its
/// adaptive mmap threshold is its own mapping, and the heaps are trimmed once their free top
/// exceeds twice that), so the next layer takes page faults and the kernel zeroes every page
/// again: 10 % of the image encode's samples were `clear_page_erms` (perf, q4_k, AVX-512 VNNI
/// EPYC). With blocks up to 32 MiB (glibc's largest threshold) carved from the heaps and no
/// trim: `imp bench --synthetic imp-v1.5-3b --quant q4_k --threads 2 --repeat 2`, builds
/// alternating, image encode 2.35-2.39 -> 2.03-2.06 s, time to first token 12.5-13.3 -> 11.4 s,
/// system time of the whole run 5.2-8.9 -> 3.7-4.2 s (page faults 1.21 -> 0.86 million), peak
/// memory the same 2.23 GB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    const LARGEST_HEAP_BLOCK: libc::c_int = 32 << 20;
    set_unless_in_environment(
        "MALLOC_MMAP_THRESHOLD_",
        libc::M_MMAP_THRESHOLD,
        LARGEST_HEAP_BLOCK,
    );
    set_unless_in_environment(
        "MALLOC_TRIM_THRESHOLD_",
        libc::M_TRIM_THRESHOLD,
        libc::c_int::MAX,
    );
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}

/// glibc keeps what a long-running server frees: it raises its mmap threshold to the size of
/// every large block freed (up to 32 MiB), after which request bodies and decoded images of
/// every size are carved from the heaps, and it returns free pages inside a heap only when asked.
/// Under `scripts/soak.py` the server's RSS grew 28 % in ten minutes while heaptrack showed no
/// live data growing. A fixed threshold keeps large blocks in their own mappings, and a trim
/// every few seconds hands back the free pages.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn return_freed_memory() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
    set_unless_in_environment("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, THRESHOLD);
    // Without the thread the server still runs, only with more memory.
    let _ = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            std::thread::sleep(TRIM_EVERY);
            // SAFETY: malloc_trim is thread-safe and only releases free memory.
            unsafe { libc::malloc_trim(0) };
        });
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn return_freed_memory() {}

/// `mallopt(parameter, value)`, unless the user set the parameter through glibc's environment
/// variable `variable`, which then wins. Called before any other thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_unless_in_environment(variable: &str, parameter: libc::c_int, value: libc::c_int) {
    if std::env::var_os(variable).is_none() {
        // SAFETY: mallopt only sets allocator parameters, and no other thread allocates yet.
        unsafe { libc::mallopt(parameter, value) };
    }
}
