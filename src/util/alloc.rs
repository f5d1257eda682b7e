//! glibc's allocator kept from returning freed blocks to the kernel while an extraction runs.
//!
//! glibc's malloc hands blocks above its mmap threshold (dynamic, from 128 KiB) straight back
//! to the kernel and trims freed heap tops, so the extraction's many short-lived matrices of a
//! few MiB were faulted in and zeroed again each time: about a fifth of the CPU of a
//! 50-adapter extraction went to page faults (`perf`, BENCHMARKS.md). Keeping blocks up to
//! 32 MiB (glibc's largest threshold) on the heap and not trimming makes them reusable, at the
//! price of holding freed memory while the setting lasts.
//!
//! `elx extract` keeps the setting for the whole process; the Python module keeps it for one
//! call ([`KeepFreedMemory`] is dropped at its end), then gives the freed memory back.

/// Keeps freed blocks up to 32 MiB on the heap until dropped; then restores glibc's default
/// thresholds (128 KiB; glibc's own adjustment of the mmap threshold stays off afterwards,
/// as with `MALLOC_MMAP_THRESHOLD_=131072`) and returns the freed memory to the kernel
/// (`malloc_trim`). A no-op off glibc.
#[must_use = "the setting lasts while the guard lives"]
pub struct KeepFreedMemory(());

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    unsafe extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
        fn malloc_trim(pad: usize) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    /// glibc's initial thresholds.
    const DEFAULT: i32 = 128 << 10;

    pub fn keep() {
        // SAFETY: mallopt only changes allocator parameters (under glibc's own lock); a
        // refused value (return 0) leaves the previous one in place.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
        }
    }

    pub fn restore() {
        // SAFETY: as above; malloc_trim only releases free memory.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, DEFAULT);
            mallopt(M_TRIM_THRESHOLD, DEFAULT);
            malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub fn keep() {}
    pub fn restore() {}
}

impl KeepFreedMemory {
    /// Starts keeping freed blocks, for the whole process, until the guard is dropped.
    pub fn start() -> KeepFreedMemory {
        glibc::keep();
        KeepFreedMemory(())
    }

    /// Keeps freed blocks until the process ends (a command-line process that extracts).
    pub fn for_the_process(self) {
        std::mem::forget(self);
    }
}

impl Drop for KeepFreedMemory {
    fn drop(&mut self) {
        glibc::restore();
    }
}
