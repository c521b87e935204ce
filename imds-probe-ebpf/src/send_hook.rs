//! Send-hook backends: `fentry` (BTF trampoline) and `kprobe` on tcp_sendmsg, for hosts
//! where the cgroup path is unavailable, and to see connections that were open before the
//! daemon started. Every TCP send on the host enters the hook, so the first thing it does
//! is compare the destination port and address, with two small reads, and leave: nothing is
//! copied for other traffic.
//!
//! Expected prototype (net/ipv4/tcp.c, unchanged since 4.1):
//!   int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size);
//!
//! The bytes are read from the sender's iov_iter at entry: `ITER_UBUF` (one buffer; 6.0+
//! uses it for single-buffer sends) or `ITER_IOVEC` (every segment, bounded). Anything else
//! (kernel pages from sendfile/splice) is counted as unreadable, and its bytes show up in user
//! space as a gap in the stream, so the request becomes `unknown`, never a guess. Stream
//! offsets are TCP's write sequence, which also counts bytes that reached the socket some
//! other way (tcp_sendpage on older kernels).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_get_current_comm,
    macros::{fentry, kprobe, tracepoint},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use imds_probe_common::{
    backend::{BACKEND_FENTRY, BACKEND_KPROBE},
    imds::{AF_INET, AF_INET6, IMDS_IPV4, IMDS_PORT, ipv4_mapped, is_imds_addr},
    loss::{LOSS_CONNECTION_UNTRACKED, LOSS_SEND_TRUNCATED, LOSS_SEND_UNREADABLE},
    send::{CHUNK_BYTES, MAX_HOOK_CHUNKS, MAX_HOOK_SEGMENTS},
};

use crate::{
    emit::{Memory, SendMeta, emit_close, emit_gap_end, emit_sized},
    kernel::{global, read, read_ptr},
    maps::{HOOKED_SOCKETS, count_loss},
};

crate::offset_globals!(
    SEND_HOOK_READY,
    OFF_SKC_FAMILY,
    OFF_SKC_DPORT,
    OFF_SKC_DADDR,
    OFF_SKC_V6_DADDR,
    OFF_TCP_WRITE_SEQ,
    OFF_MSGHDR_ITER,
    OFF_ITER_COUNT,
    OFF_ITER_NR_SEGS,
    OFF_ITER_TYPE,
    ITER_TYPE_BYTES,
    ITER_TYPE_MASK,
    OFF_ITER_IOV,
    OFF_ITER_UBUF,
    ITER_IOVEC_VALUE,
    ITER_UBUF_VALUE,
);

/// One byte short of the record's capacity, a power of two, so the copy's length can be
/// masked into bounds for the verifier without cutting anything (see `emit_sized`).
const HOOK_CHUNK_BYTES: u64 = CHUNK_BYTES as u64 - 1;
const _: () = assert!(CHUNK_BYTES.is_power_of_two());

/// Chunks read from each iovec segment (16 KiB).
const CHUNKS_PER_SEGMENT: u32 = 4;

/// inet_sock_set_state's record (include/trace/events/sock.h): skaddr at 8, newstate at 20.
const STATE_SKADDR: usize = 8;
const STATE_NEWSTATE: usize = 20;
const TCP_CLOSE: i32 = 7;

#[fentry(function = "tcp_sendmsg")]
// Inlined into the macro's entry point: an outlined body would be a global BPF
// function, whose BTF-typed arguments kernels before 6.6 refuse.
#[inline(always)]
pub fn imds_fentry_tcp_sendmsg(ctx: FEntryContext) -> i32 {
    on_send(
        ctx.arg::<u64>(0) as *const u8,
        ctx.arg::<u64>(1) as *const u8,
        BACKEND_FENTRY,
    );
    0
}

#[kprobe]
// Inlined into the macro's entry point: an outlined body would be a global BPF
// function, whose BTF-typed arguments kernels before 6.6 refuse.
#[inline(always)]
pub fn imds_kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(msg)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
        on_send(sk as *const u8, msg as *const u8, BACKEND_KPROBE);
    }
    0
}

// Before 6.5, sendfile and splice reach TCP through tcp_sendpage, not tcp_sendmsg:
//   int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags);
// The bytes are in a page cache page the hook cannot read; the hooks mark them as a gap.
// Kernels from 6.5 have no tcp_sendpage; user space then skips these.

#[fentry(function = "tcp_sendpage")]
// Inlined into the macro's entry point (see above).
#[inline(always)]
pub fn imds_fentry_tcp_sendpage(ctx: FEntryContext) -> i32 {
    on_sendpage(
        ctx.arg::<u64>(0) as *const u8,
        ctx.arg::<u64>(3),
        BACKEND_FENTRY,
    );
    0
}

#[kprobe]
// Inlined into the macro's entry point (see above).
#[inline(always)]
pub fn imds_kprobe_tcp_sendpage(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(size)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(3)) {
        on_sendpage(sk as *const u8, size, BACKEND_KPROBE);
    }
    0
}

#[inline(always)]
fn on_sendpage(sk: *const u8, size: u64, backend: u32) {
    if let Some((mut meta, seq)) = imds_send(sk, backend) {
        meta.send_size = size as u32;
        mark_lost(&meta, seq, size, LOSS_SEND_UNREADABLE);
    }
}

/// Frees a hooked connection's state, and tells user space, when it closes.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
// Inlined into the macro's entry point: an outlined body would be a global BPF
// function, whose BTF-typed arguments kernels before 6.6 refuse.
#[inline(always)]
pub fn imds_sock_state(ctx: TracePointContext) -> u32 {
    // SAFETY: the offsets are the tracepoint's fixed record layout.
    let (sk, state) = unsafe {
        (
            ctx.read_at::<u64>(STATE_SKADDR),
            ctx.read_at::<i32>(STATE_NEWSTATE),
        )
    };
    if let (Ok(sk), Ok(TCP_CLOSE)) = (sk, state) {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(backend) = unsafe { HOOKED_SOCKETS.get(sk) }.copied() {
            let _ = HOOKED_SOCKETS.remove(sk);
            emit_close(backend, sk);
        }
    }
    0
}

/// The send's metadata (`send_size` left for the caller) and TCP write sequence if `sk` is
/// connected to the IMDS; None for all other traffic, decided with as few reads as possible.
#[inline(always)]
fn imds_send(sk: *const u8, backend: u32) -> Option<(SendMeta, u32)> {
    if global(&SEND_HOOK_READY) == 0 {
        return None;
    }
    // The cheap filter first: one two-byte read rejects almost all traffic.
    let dport: u16 = read(sk, global(&OFF_SKC_DPORT));
    if u16::from_be(dport) != IMDS_PORT {
        return None;
    }
    let family: u16 = read(sk, global(&OFF_SKC_FAMILY));
    let remote_addr = match family {
        AF_INET => {
            let addr: [u8; 4] = read(sk, global(&OFF_SKC_DADDR));
            if addr != IMDS_IPV4 {
                return None;
            }
            ipv4_mapped(addr)
        }
        AF_INET6 => {
            let addr: [u8; 16] = read(sk, global(&OFF_SKC_V6_DADDR));
            if !is_imds_addr(&addr) {
                return None;
            }
            addr
        }
        _ => return None,
    };
    let id = sk as u64;
    // SAFETY: a plain map lookup.
    if unsafe { HOOKED_SOCKETS.get(id) }.is_none()
        && HOOKED_SOCKETS
            .insert(id, backend, u64::from(BPF_NOEXIST))
            .is_err()
    {
        // Captured anyway; only the close will not be reported.
        count_loss(LOSS_CONNECTION_UNTRACKED);
    }
    let meta = SendMeta {
        backend,
        cookie: id,
        remote_addr,
        remote_port: IMDS_PORT,
        family,
        send_size: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    Some((meta, read(sk, global(&OFF_TCP_WRITE_SEQ))))
}

/// Bytes of the send the hook did not capture: counted under `loss`, and marked as a gap up
/// to the send's end.
#[inline(always)]
fn mark_lost(meta: &SendMeta, seq: u32, size: u64, loss: u32) {
    count_loss(loss);
    emit_gap_end(meta, u64::from(seq.wrapping_add(size as u32)));
}

#[inline(always)]
fn on_send(sk: *const u8, msg: *const u8, backend: u32) {
    // Nothing of the message is read before the filter has passed: other sends pay only it.
    let Some((mut meta, seq)) = imds_send(sk, backend) else {
        return;
    };
    let iter = msg.wrapping_add(global(&OFF_MSGHDR_ITER) as usize);
    let count: u64 = read(iter, global(&OFF_ITER_COUNT));
    meta.send_size = count as u32;
    let iter_type = if global(&ITER_TYPE_BYTES) == 1 {
        u32::from(read::<u8>(iter, global(&OFF_ITER_TYPE)))
    } else {
        read::<u32>(iter, global(&OFF_ITER_TYPE))
    } & global(&ITER_TYPE_MASK);
    let captured = if iter_type == global(&ITER_UBUF_VALUE) {
        let base = read_ptr(iter, global(&OFF_ITER_UBUF));
        emit_buffer(&meta, seq, base, count, MAX_HOOK_CHUNKS)
    } else if iter_type == global(&ITER_IOVEC_VALUE) {
        emit_iovec(
            &meta,
            seq,
            read_ptr(iter, global(&OFF_ITER_IOV)),
            read(iter, global(&OFF_ITER_NR_SEGS)),
        )
    } else {
        // Counted, not logged: see `emit_sized` on why the send hooks call no BPF function.
        mark_lost(&meta, seq, count, LOSS_SEND_UNREADABLE);
        return;
    };
    if captured < count {
        mark_lost(&meta, seq, count, LOSS_SEND_TRUNCATED);
    }
}

/// Emits the chunks of one user buffer; returns the bytes captured. Every bound is derived
/// from the loop index, not from a running total, so the verifier's states at each iteration
/// stay few and comparable: a running total makes their number explode.
#[inline(always)]
fn emit_buffer(meta: &SendMeta, stream_offset: u32, base: *const u8, len: u64, chunks: u32) -> u64 {
    let mut captured = 0;
    for i in 0..chunks {
        let start = u64::from(i) * HOOK_CHUNK_BYTES;
        if start >= len {
            break;
        }
        let left = len - start;
        let n = if left > HOOK_CHUNK_BYTES {
            HOOK_CHUNK_BYTES
        } else {
            left
        };
        emit_sized::<{ CHUNK_BYTES }>(
            meta,
            u64::from(stream_offset.wrapping_add(start as u32)),
            base.wrapping_add(start as usize),
            n as u32,
            Memory::User,
        );
        captured = start + n;
    }
    captured
}

/// Emits an iovec array segment by segment; returns the bytes captured.
#[inline(always)]
fn emit_iovec(meta: &SendMeta, seq: u32, iov: *const u8, nr_segs: u64) -> u64 {
    let mut captured = 0;
    let mut segment_start = 0u64;
    for segment in 0..MAX_HOOK_SEGMENTS {
        if segment >= nr_segs {
            break;
        }
        // struct iovec { void __user *iov_base; size_t iov_len; }
        let entry = iov.wrapping_add((segment * 16) as usize);
        let (base, len): (u64, u64) = (read(entry, 0), read(entry, 8));
        let got = emit_buffer(
            meta,
            seq.wrapping_add(segment_start as u32),
            base as *const u8,
            len,
            // The first segment is usually the whole request (single-buffer sends are
            // one-segment iovecs before 6.4): it gets the full budget.
            if segment == 0 {
                MAX_HOOK_CHUNKS
            } else {
                CHUNKS_PER_SEGMENT
            },
        );
        captured += got;
        segment_start += len;
    }
    captured
}
