//! What the sk_msg backend keeps per enrolled socket, in socket-local storage: written when a
//! connection is enrolled (by sock_ops as it connects, or by the daemon for one that was open
//! before it started), read and advanced by sk_msg on every send.

/// The socket-local storage map.
pub const SOCKET_STATE_MAP: &str = "CONN_STATE";
/// The socket hash sk_msg is attached to, keyed by socket cookie.
pub const IMDS_SOCKETS_MAP: &str = "IMDS_SOCKETS";

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    /// The kernel's socket cookie; sk_msg cannot ask for it itself.
    pub cookie: u64,
    /// Bytes sent on the connection since it was enrolled.
    pub offset: u64,
    /// Index of the next chunk of the message being walked: non-zero only while the kernel
    /// re-runs sk_msg on the rest of a message it was asked to split.
    pub next_chunk: u32,
    pub _pad: u32,
}

impl ConnState {
    pub const fn new(cookie: u64) -> Self {
        Self {
            cookie,
            offset: 0,
            next_chunk: 0,
            _pad: 0,
        }
    }
}

const _: () = assert!(core::mem::size_of::<ConnState>() == 24);

// SAFETY: #[repr(C)], integers only, no padding (the size assertion above pins the layout).
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConnState {}
