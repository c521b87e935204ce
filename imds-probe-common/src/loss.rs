//! Counters of what the kernel side could not deliver, in a per-CPU array that user space
//! sums and reports.

pub const LOSS_MAP: &str = "LOSS";

/// A send record did not fit in the ring buffer.
pub const LOSS_RING_BUFFER_SEND: u32 = 0;
/// A close or open record did not fit in the ring buffer.
pub const LOSS_RING_BUFFER_CLOSE: u32 = 1;
/// A send was larger than `MAX_CHUNKS_PER_SEND` chunks; the tail was not captured.
pub const LOSS_SEND_TRUNCATED: u32 = 2;
/// A new IMDS connection could not be tracked (socket hash or hooked-socket table full, or
/// its socket storage could not be allocated).
pub const LOSS_CONNECTION_UNTRACKED: u32 = 3;

/// Reading a send's bytes failed; the chunk was dropped.
pub const LOSS_READ_FAILED: u32 = 4;

/// A process lifecycle record did not fit in the ring buffer.
pub const LOSS_RING_BUFFER_PROCESS: u32 = 5;

/// A send-hook backend met a send whose bytes it cannot read (kernel pages, as sendfile
/// passes on 6.5+); user space sees the gap.
pub const LOSS_SEND_UNREADABLE: u32 = 6;

pub const LOSS_COUNTERS: u32 = 7;
