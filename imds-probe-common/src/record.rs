//! The header that starts every ring buffer record, and the record kinds.

/// Name of the ring buffer map that carries every record, in send order.
pub const RING_BUFFER_MAP: &str = "EVENTS";

/// Bytes reserved for the ring buffer: about 6,000 typical send records, 150 ms of a
/// 40,000 requests/s burst while user space is descheduled. Its pages count twice in the
/// daemon's RSS (the kernel maps the data area twice, so records never wrap).
pub const RING_BUFFER_BYTES: u32 = 4 * 1024 * 1024;

/// A chunk of bytes a process sent to the IMDS ([`crate::send::SendChunk`]).
pub const KIND_SEND: u32 = 1;
/// A connection to the IMDS closed ([`crate::close::Close`]).
pub const KIND_CLOSE: u32 = 2;
/// A process exec'd ([`crate::process::ExecRecord`]).
pub const KIND_EXEC: u32 = 3;
/// A process forked a new process, not a thread ([`crate::process::ForkRecord`]).
pub const KIND_FORK: u32 = 4;
/// A process's main thread exited ([`crate::process::ExitRecord`]).
pub const KIND_EXIT: u32 = 5;
/// sock_ops enrolled a new connection to the IMDS in the socket hash, laid out as
/// [`crate::close::Close`]: user space keeps room in the hash for the next one.
pub const KIND_OPEN: u32 = 6;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// One of the `KIND_*` constants.
    pub kind: u32,
    /// Which probe backend produced the record (`crate::backend::BACKEND_*`).
    pub backend: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
}

const _: () = assert!(core::mem::size_of::<RecordHeader>() == 16);

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, integers and byte arrays only, no padding the compiler may leave
// uninitialised (explicit `_pad` fields): every bit pattern is a valid value.
unsafe impl aya::Pod for RecordHeader {}
