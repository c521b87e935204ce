//! Diagnostics for someone debugging a host, through aya-log: a connection that got no state,
//! a record the full ring buffer refused. Each is counted under `loss` as well; the log line
//! says which socket and size. The send hooks (fentry, kprobe) log nothing: any call to a BPF
//! function in their unrolled copy loops makes the verifiers of 5.10 and 6.1 take minutes (see
//! `emit_sized`); their losses are counted only.
//!
//! Off unless user space raises aya-log's `AYA_LOG_LEVEL` at load (`--kernel-log`). The level
//! is a read-only global, frozen before the programs load, so the verifier knows its value:
//! with logging off it finds the log code dead and skips it. Each diagnostic is an outlined
//! function called only where something was already lost, so the log code runs on no send
//! that went well.

use aya_log_ebpf::{debug, warn};

/// An IMDS connection that `sock_ops` could not enrol: its requests will not be seen.
#[inline(never)]
pub fn connection_untracked(cookie: u64, why: &'static str) {
    warn!(
        &(),
        "IMDS connection (socket cookie {}) not tracked: {}", cookie, why
    );
}

/// A record the ring buffer had no room for (the reader is behind).
#[inline(never)]
pub fn ring_buffer_full(record: &'static str, bytes: u32) {
    debug!(
        &(),
        "ring buffer full: {} record of {} bytes dropped", record, bytes
    );
}
