//! Keeping start-up's memory peak from staying resident. Start-up reads and parses the
//! kernel's BTF twice (our offset reader, then aya's loader, which parses it even though
//! nothing uses it): megabytes, freed right away.
//!
//! glibc (the development build): its sliding mmap threshold rises at the first big free, so
//! the second parse lands on the heap, which never shrinks back; a fixed threshold gives each
//! big buffer its own mapping that goes back to the kernel when freed (VmHWM 28.7 -> 23.2 MiB
//! on 6.18; see README), and a trim afterwards returns what start-up freed below it.
//!
//! musl (the packages' static build): its allocator already maps every allocation above
//! 128 KiB on its own and unmaps it when freed, and has neither call, so both are no-ops.

/// Before start-up allocates anything large.
pub fn before_start_up() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes glibc's allocator; it is called before start-up allocates.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Once the programs are loaded: hand back what start-up freed below the mmap threshold (the
/// object, small BTF parts) rather than carry it for the daemon's life.
pub fn after_start_up() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of glibc's allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}
