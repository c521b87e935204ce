//! An IMDS connection as `sock_ops` and `sk_msg` share it: the peer as both read it from their
//! contexts, and per-socket state in socket-local storage. `sk_msg` cannot ask for the socket
//! cookie, so `sock_ops` stores it there; storage hangs off the socket itself, so the two
//! programs meet on exactly that socket, in any network namespace, on every kernel from 5.10.

use core::ptr;

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    helpers::generated::{bpf_sk_storage_delete, bpf_sk_storage_get},
};
use imds_probe_common::{
    imds::{AF_INET, AF_INET6, IMDS_PORT, ipv4_mapped, ipv6_from_words, is_imds_addr},
    socket_state::ConnState,
};

use crate::maps::conn_state_map;

/// The remote-end fields `bpf_sock_ops` and `sk_msg_md` share, as the kernel hands them over.
pub struct RawPeer {
    pub family: u32,
    pub ip4: u32,
    pub ip6: [u32; 4],
    /// Network order, in the high 16 bits.
    pub port: u32,
}

impl RawPeer {
    /// Reads the fields from a program context. Each is its own volatile load, so each stays
    /// a load at a fixed offset from the context pointer, the only kind the verifier allows:
    /// LLVM otherwise merges the IPv4 and IPv6 reads into one through a computed pointer
    /// ("dereference of modified ctx ptr").
    ///
    /// # Safety
    /// Every pointer must point into the running program's context.
    #[inline(always)]
    pub unsafe fn read(
        family: *const u32,
        ip4: *const u32,
        ip6: *const [u32; 4],
        port: *const u32,
    ) -> Self {
        let ip6 = ip6.cast::<u32>();
        // SAFETY: the caller's contract; the four words are inside the context's array.
        unsafe {
            Self {
                family: ptr::read_volatile(family),
                ip4: ptr::read_volatile(ip4),
                ip6: [
                    ptr::read_volatile(ip6),
                    ptr::read_volatile(ip6.add(1)),
                    ptr::read_volatile(ip6.add(2)),
                    ptr::read_volatile(ip6.add(3)),
                ],
                port: ptr::read_volatile(port),
            }
        }
    }
}

/// The remote end, normalised as records carry it.
#[derive(Clone, Copy)]
pub struct Peer {
    /// IPv6 form; IPv4 stored mapped.
    pub addr: [u8; 16],
    /// Host order.
    pub port: u16,
    pub family: u16,
}

impl Peer {
    #[inline(always)]
    pub fn new(raw: &RawPeer) -> Self {
        let family = raw.family as u16;
        let addr = if family == AF_INET {
            ipv4_mapped(raw.ip4.to_ne_bytes())
        } else {
            ipv6_from_words(raw.ip6)
        };
        Self {
            addr,
            port: u32::from_be(raw.port) as u16,
            family,
        }
    }

    #[inline(always)]
    pub fn is_imds(&self) -> bool {
        self.port == IMDS_PORT
            && (self.family == AF_INET || self.family == AF_INET6)
            && is_imds_addr(&self.addr)
    }
}

/// The state of an enrolled socket.
#[inline(always)]
pub fn state(sk: *mut bpf_sock) -> Option<*mut ConnState> {
    // SAFETY: `sk` is a socket pointer the verifier typed from the program's context; the
    // map argument is the storage map's own definition, which the loader relocates.
    let value = unsafe { bpf_sk_storage_get(conn_state_map(), sk.cast(), ptr::null_mut(), 0) };
    (!value.is_null()).then_some(value.cast())
}

/// Gives `sk` the state `initial`: None when the kernel cannot allocate it.
#[inline(always)]
pub fn enrol(sk: *mut bpf_sock, initial: &mut ConnState) -> Option<*mut ConnState> {
    // SAFETY: as in `state`; `initial` is copied by the helper before it returns.
    let value = unsafe {
        bpf_sk_storage_get(
            conn_state_map(),
            sk.cast(),
            (&raw mut *initial).cast(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    };
    (!value.is_null()).then_some(value.cast())
}

#[inline(always)]
pub fn forget(sk: *mut bpf_sock) {
    // SAFETY: as in `state`. Failure means there was nothing to delete.
    unsafe { bpf_sk_storage_delete(conn_state_map(), sk.cast()) };
}
