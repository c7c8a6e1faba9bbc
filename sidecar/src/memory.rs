//! How the process gives memory back: one inference allocates hundreds of megabytes of
//! tensors and frees them when it ends, and the allocator must hand that memory back to the
//! system instead of keeping the peak of the worst text for the life of the process.

/// Two malloc arenas instead of eight per core: every thread that ever ran an inference
/// otherwise keeps an arena of its own holding the free pages of its last run. A fixed mmap
/// threshold would return even more, but faulting fresh pages in on every run cost 60% more
/// CPU per audio second (measured with the Joe voice), so freed pages go back through
/// [`trim`] instead.
pub fn return_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the free pages of every arena to the kernel; called when a synthesis ends, which
/// is when large amounts have just been freed.
pub fn trim() {
    // SAFETY: malloc_trim is thread-safe and only releases memory that is free.
    unsafe {
        libc::malloc_trim(0);
    }
}
