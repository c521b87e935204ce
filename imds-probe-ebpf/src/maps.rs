//! Maps shared by the programs. Names are the ones in `imds_probe_common`, which user space
//! opens them by.

use core::ffi::c_void;

use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{LruHashMap, PerCpuArray, RingBuf, SockHash},
};
use imds_probe_common::{
    loss::LOSS_COUNTERS, record::RING_BUFFER_BYTES, send::MAX_CONNECTIONS, socket_state::ConnState,
};

#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BUFFER_BYTES, 0);

#[map(name = "LOSS")]
pub static LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_COUNTERS, 0);

/// Per-socket state of enrolled IMDS connections. Socket-local storage has no size of its
/// own: it lives and dies with its socket, and `IMDS_SOCKETS` bounds how many are enrolled.
#[btf_map(name = "CONN_STATE")]
pub static CONN_STATE: SkStorage<ConnState> = SkStorage::new();

/// `CONN_STATE` as the storage helpers take it. `SkStorage`'s own accessors serve only
/// `sock_addr` programs; the loader relocates references to the definition's address.
#[inline(always)]
pub fn conn_state_map() -> *mut c_void {
    (&raw const CONN_STATE).cast_mut().cast()
}

/// IMDS connections, keyed by socket cookie; the sk_msg program is attached to it, so only
/// these sockets pay for a program run on send.
#[map(name = "IMDS_SOCKETS")]
pub static IMDS_SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_CONNECTIONS, 0);

/// Sockets a send hook has seen sending to the IMDS, keyed by `struct sock` address (all the
/// close tracepoint knows), so their close is reported and no other socket's is. LRU: an
/// entry whose close was never seen is pushed out by live ones, never the other way round.
#[map(name = "HOOKED_SOCKETS")]
pub static HOOKED_SOCKETS: LruHashMap<u64, HookedSocket> =
    LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// A hooked socket's connection, as its records name it, and the backend that saw it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct HookedSocket {
    pub identity: u64,
    pub backend: u32,
    pub _pad: u32,
}

pub fn count_loss(index: u32) {
    if let Some(counter) = LOSS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, and programs on one CPU do not run at once on it for longer
        // than this increment; a rare lost increment under preemption is acceptable for a
        // counter that only has to be non-zero when anything was lost.
        unsafe { *counter += 1 };
    }
}
