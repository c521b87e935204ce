//! Bytes sent on a connection to the IMDS, one record per chunk of one send.

use crate::record::RecordHeader;

/// Payload bytes carried by one record. A send larger than this becomes several records with
/// consecutive `stream_offset`s.
pub const CHUNK_BYTES: usize = 4096;

/// Chunks captured from one send at most (sk_msg: from one message the kernel hands over);
/// the rest of a larger send is counted as truncated and shows up in user space as a gap in
/// `stream_offset`.
pub const MAX_CHUNKS_PER_SEND: u32 = 32;

/// Chunks the send hooks capture from a single-buffer send at most (64 KiB: their loops are
/// unrolled, as kernels before 5.17 have no bpf_loop).
pub const MAX_HOOK_CHUNKS: u32 = 16;
/// iovec segments of one send the send hooks read at most.
pub const MAX_HOOK_SEGMENTS: u64 = 8;

/// IMDS connections tracked at once by the kernel side.
pub const MAX_CONNECTIONS: u32 = 16384;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SendChunk {
    pub header: RecordHeader,
    /// The kernel's socket cookie: unique per socket for the boot.
    pub cookie: u64,
    /// `bpf_get_current_pid_tgid()`: thread group (process) id high, thread id low.
    pub pid_tgid: u64,
    /// `bpf_get_current_uid_gid()`: gid high, uid low.
    pub uid_gid: u64,
    pub cgroup_id: u64,
    /// Bytes of this connection that came before this chunk, captured or not.
    pub stream_offset: u64,
    pub comm: [u8; 16],
    /// Remote address in IPv6 form; IPv4 peers are stored IPv4-mapped (::ffff:a.b.c.d).
    pub remote_addr: [u8; 16],
    /// Host byte order.
    pub remote_port: u16,
    /// `AF_INET` or `AF_INET6`: tells an IPv4 socket from a dual-stack one to a mapped address.
    pub family: u16,
    /// Size of the send this chunk belongs to; for sk_msg, what was left of it when this
    /// chunk was cut. For debugging only.
    pub send_size: u32,
    /// Payload bytes that follow this header in the record.
    pub len: u32,
    /// Bytes of the connection right after this chunk's payload that were sent but not
    /// captured (a send hook cannot read them, the send was larger than the capture limit,
    /// or reading it failed). A record with `len` 0 and `lost` > 0 only says that: user space
    /// reports the request those bytes held as `unknown`, attributed to this record's sender,
    /// even when nothing came before it on the connection.
    pub lost: u32,
}

pub const SEND_CHUNK_HEADER_BYTES: usize = core::mem::size_of::<SendChunk>();
const _: () = assert!(SEND_CHUNK_HEADER_BYTES == 104);

/// One record as reserved in the ring buffer: a header and up to `N` payload bytes (`len` of
/// them meaningful). User space reads only the header and the first `len` bytes.
#[repr(C)]
pub struct SendRecord<const N: usize> {
    pub chunk: SendChunk,
    pub data: [u8; N],
}

const _: () = assert!(
    core::mem::size_of::<SendRecord<CHUNK_BYTES>>() == SEND_CHUNK_HEADER_BYTES + CHUNK_BYTES
);

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, integers and byte arrays only, no padding the compiler may leave
// uninitialised (explicit `_pad` fields): every bit pattern is a valid value.
unsafe impl aya::Pod for SendChunk {}
