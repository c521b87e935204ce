//! Building send records in the ring buffer. Shared by every backend: a backend only decides
//! where the bytes come from.

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_ns,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user},
    },
};
use imds_probe_common::{
    close::Close,
    loss::{LOSS_READ_FAILED, LOSS_RING_BUFFER_CLOSE, LOSS_RING_BUFFER_SEND},
    record::{KIND_CLOSE, KIND_OPEN, KIND_SEND, RecordHeader},
    send::{CHUNK_BYTES, SendChunk, SendRecord},
};

use crate::{
    diagnostics,
    maps::{EVENTS, count_loss},
};

/// Most requests to the IMDS are a few hundred bytes: a small record keeps the ring buffer
/// dense, a large one carries header blocks and bodies. The ring buffer needs a constant size
/// per reservation, hence two fixed sizes rather than one variable one.
pub const SMALL_CHUNK: usize = 512;

/// Sends and closes always wake the reader. Process records mostly do not (only once unread
/// data piles up, see `process.rs`), and with the default policy a record behind an unread one
/// wakes nobody: a send would then wait for the reader's once-a-second drain.
const WAKE_READER: u64 = BPF_RB_FORCE_WAKEUP as u64;

/// What identifies the connection and the sender, filled once per send.
pub struct SendMeta {
    pub backend: u32,
    pub cookie: u64,
    pub remote_addr: [u8; 16],
    pub remote_port: u16,
    pub family: u16,
    pub send_size: u32,
    /// The sending thread's name, where the program type may ask for it: sk_msg programs
    /// may not call bpf_get_current_comm on many kernels, and leave it zero for user space
    /// to fill from its process table.
    pub comm: [u8; 16],
}

/// Where a send's bytes live when a program reads them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// A socket message's kernel pages (sk_msg).
    Kernel,
    /// The sender's buffers, at a send hook's entry.
    User,
}

/// Copies `len` bytes at kernel address `src` into one record, choosing the record size.
/// `len` must be at most `CHUNK_BYTES`.
#[inline(always)]
pub fn emit_chunk(meta: &SendMeta, stream_offset: u64, src: *const u8, len: u32) {
    let stored = if (len as usize) <= SMALL_CHUNK {
        emit_sized::<SMALL_CHUNK>(meta, stream_offset, src, len, 0, Memory::Kernel)
    } else {
        emit_sized::<{ CHUNK_BYTES }>(meta, stream_offset, src, len, 0, Memory::Kernel)
    };
    if !stored {
        diagnostics::ring_buffer_full("send", len);
    }
}

/// Copies up to `N` bytes at `src` into one record of payload capacity `N`, followed by
/// `lost` bytes of the connection that were not captured. Returns false when the ring buffer
/// had no room (already counted), so that a caller may log it: this function must call no
/// other BPF function, because the send hooks inline it into unrolled loops, and the verifiers
/// of 5.10 and 6.1 (not 6.12) then lose their state pruning. With one such call in their
/// loops, fentry took over 400 s to verify on 5.10 under emulation.
#[inline(always)]
pub fn emit_sized<const N: usize>(
    meta: &SendMeta,
    stream_offset: u64,
    src: *const u8,
    len: u32,
    lost: u32,
    memory: Memory,
) -> bool {
    let Some(mut entry) = EVENTS.reserve::<SendRecord<N>>(0) else {
        count_loss(LOSS_RING_BUFFER_SEND);
        return false;
    };
    let record = entry.as_mut_ptr();
    let len = if (len as usize) > N { N as u32 } else { len };
    // SAFETY: `record` points at a live reservation of `SendRecord<N>`; `len <= N` bounds the
    // copy into its `data`; `src` is a kernel address the backend has bounds-checked for `len`.
    let copied = unsafe {
        (*record).chunk = SendChunk {
            header: header(KIND_SEND, meta.backend),
            cookie: meta.cookie,
            pid_tgid: bpf_get_current_pid_tgid(),
            uid_gid: bpf_get_current_uid_gid(),
            cgroup_id: bpf_get_current_cgroup_id(),
            stream_offset,
            comm: meta.comm,
            remote_addr: meta.remote_addr,
            remote_port: meta.remote_port,
            family: meta.family,
            send_size: meta.send_size,
            len,
            lost,
        };
        let dst = (*record).data.as_mut_ptr().cast();
        match memory {
            // A gap marker carries no bytes; a zero-length read of a kernel address through
            // the user-memory helper fails, so none is made.
            _ if len == 0 => 0,
            Memory::Kernel => bpf_probe_read_kernel(dst, len, src.cast()),
            // Older verifiers (6.1) lose the bound above on the way to this call; the mask
            // restates it. Send hooks cut chunks of `HOOK_CHUNK_BYTES` (< N), so it cuts nothing.
            Memory::User => bpf_probe_read_user(
                dst,
                // black_box: LLVM otherwise drops the mask as redundant, and the old
                // verifier is left with the bound it lost.
                core::hint::black_box(len) & (N as u32 - 1),
                src.cast(),
            ),
        }
    };
    if copied == 0 {
        entry.submit(WAKE_READER);
    } else {
        entry.discard(0);
        count_loss(LOSS_READ_FAILED);
    }
    true
}

/// A record with no bytes that says `lost` bytes from `stream_offset` on were sent and not
/// captured: user space reports the request they held now, attributed to this sender, even
/// when they are the first bytes of the connection or its last (a lost tail would otherwise
/// hide its requests). The full-size record, as the send hooks already reserve it: a second
/// size there costs verifier work.
#[inline(always)]
pub fn emit_lost(meta: &SendMeta, stream_offset: u64, lost: u32) {
    // A refused marker is counted; the send it ends is logged, if at all, by its caller.
    emit_sized::<{ CHUNK_BYTES }>(
        meta,
        stream_offset,
        core::ptr::null(),
        0,
        lost,
        Memory::Kernel,
    );
}

/// A record header stamped now.
#[inline(always)]
pub fn header(kind: u32, backend: u32) -> RecordHeader {
    RecordHeader {
        kind,
        backend,
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}

/// A connection's close; false when the ring buffer had no room (counted). Calls no BPF
/// function, as the send hooks use it too (see `emit_sized`).
#[inline(always)]
pub fn emit_close(backend: u32, cookie: u64) -> bool {
    emit_connection(KIND_CLOSE, backend, cookie)
}

/// `emit_close` with a refusal logged, for the programs that close connections (not the
/// send hooks).
#[inline(always)]
pub fn emit_close_logged(backend: u32, cookie: u64) {
    if !emit_close(backend, cookie) {
        diagnostics::ring_buffer_full("close", size_of::<Close>() as u32);
    }
}

/// sock_ops enrolled `cookie`. It wakes the reader like a close: user space must hear of a
/// flood of new connections in time to make room in the socket hash.
#[inline(always)]
pub fn emit_open(backend: u32, cookie: u64) {
    if !emit_connection(KIND_OPEN, backend, cookie) {
        diagnostics::ring_buffer_full("open", size_of::<Close>() as u32);
    }
}

#[inline(always)]
fn emit_connection(kind: u32, backend: u32, cookie: u64) -> bool {
    let Some(mut entry) = EVENTS.reserve::<Close>(0) else {
        count_loss(LOSS_RING_BUFFER_CLOSE);
        return false;
    };
    entry.write(Close {
        header: header(kind, backend),
        cookie,
    });
    entry.submit(WAKE_READER);
    true
}
