//! Diagnostics for someone debugging a host, through aya-log: a connection that got no state,
//! a send whose iov_iter kind the hooks cannot read, a record the full ring buffer refused.
//! Each is counted under `loss` as well; the log line says which socket, process and size.
//!
//! Off unless user space raises aya-log's `AYA_LOG_LEVEL` at load (`--kernel-log`). The level
//! is a read-only global, frozen before the programs load, so the verifier knows its value:
//! with logging off it finds the log code dead and skips it. Each diagnostic is an outlined
//! function called only where something was already lost, so the log code is neither copied
//! into the send hooks' unrolled loops nor run on any send that went well.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use aya_log_ebpf::{debug, warn};

/// An IMDS connection that `sock_ops` could not enrol: its requests will not be seen.
#[inline(never)]
pub fn connection_untracked(cookie: u64, why: &'static str) {
    warn!(
        &(),
        "IMDS connection (socket cookie {}) not tracked: {}", cookie, why
    );
}

/// A send to the IMDS whose bytes sit in an iov_iter of a kind the send hooks do not read.
#[inline(never)]
pub fn send_unreadable(iter_type: u32, bytes: u64) {
    warn!(
        &(),
        "send of {} bytes by pid {} unreadable: iov_iter type {}",
        bytes,
        bpf_get_current_pid_tgid() >> 32,
        iter_type
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
