//! Maps shared by the programs. Names are the ones in `imds_probe_common`, which user space
//! opens them by.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf, SockHash},
};
use imds_probe_common::{loss::LOSS_COUNTERS, record::RING_BUFFER_BYTES, send::MAX_CONNECTIONS};

use crate::conn::{ConnKey, ConnState};

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUFFER_BYTES, 0);

#[map(name = "LOSS")]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

/// Tracked IMDS connections. A plain hash, not an LRU: when it is full a new connection is
/// refused and counted, rather than an old one silently losing its offset.
#[map(name = "CONNECTIONS")]
pub static CONNECTIONS: HashMap<ConnKey, ConnState> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// IMDS connections, keyed by socket cookie; the sk_msg program is attached to it, so only
/// these sockets pay for a program run on send.
#[map(name = "IMDS_SOCKETS")]
pub static IMDS_SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_CONNECTIONS, 0);

/// Sockets a send hook has seen sending to the IMDS, keyed by socket address, with the
/// backend that saw them, so their close is reported and no other socket's is.
#[map(name = "HOOKED_SOCKETS")]
pub static HOOKED_SOCKETS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);

pub fn count_loss(index: u32) {
    if let Some(counter) = LOSS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, and programs on one CPU do not run at once on it for longer
        // than this increment; a rare lost increment under preemption is acceptable for a
        // counter that only has to be non-zero when anything was lost.
        unsafe { *counter += 1 };
    }
}
