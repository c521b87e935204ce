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
//! (kernel pages from sendfile/splice, kernel buffers) is counted as unreadable and sent as a
//! record of `lost` bytes, so user space reports the request as `unknown` from this sender,
//! never a guess and never nothing. Stream offsets are TCP's write sequence, which also counts
//! bytes that reached the socket some other way (tcp_sendpage on older kernels).
//!
//! A connection is named by its identity (`identity`), not by its `struct sock` address: the
//! kernel reuses those addresses at once under connection churn, and a close the kernel
//! skipped (see `imds_sock_state`) would otherwise merge a new connection into an old one.

use aya_ebpf::{
    helpers::bpf_get_current_comm,
    macros::{fentry, kprobe, raw_tracepoint},
    programs::{FEntryContext, ProbeContext, RawTracePointContext},
};
use imds_probe_common::{
    backend::{BACKEND_FENTRY, BACKEND_KPROBE},
    imds::{AF_INET, AF_INET6, IMDS_IPV4, IMDS_PORT, ipv4_mapped, is_imds_addr},
    loss::{LOSS_CONNECTION_UNTRACKED, LOSS_SEND_TRUNCATED, LOSS_SEND_UNREADABLE},
    send::{CHUNK_BYTES, MAX_HOOK_CHUNKS, MAX_HOOK_SEGMENTS},
};

use crate::{
    emit::{Memory, SendMeta, emit_close, emit_close_logged, emit_lost, emit_sized},
    kernel::{global, read, read_ptr},
    maps::{HOOKED_SOCKETS, HookedSocket, count_loss},
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
    OFF_SK_SOCKET,
    OFF_SKC_NUM,
    OFF_SOCKET_INODE,
    OFF_INODE_INO,
);

/// One byte short of the record's capacity, a power of two, so the copy's length can be
/// masked into bounds for the verifier without cutting anything (see `emit_sized`).
const HOOK_CHUNK_BYTES: u64 = CHUNK_BYTES as u64 - 1;
const _: () = assert!(CHUNK_BYTES.is_power_of_two());

/// Chunks read from each iovec segment (16 KiB).
const CHUNKS_PER_SEGMENT: u32 = 4;

/// inet_sock_set_state's arguments (include/trace/events/sock.h, unchanged since 4.16):
///   TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
const STATE_SK: usize = 0;
const STATE_NEWSTATE: usize = 2;
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
        count_loss(LOSS_SEND_UNREADABLE);
        emit_lost(&meta, u64::from(seq), size as u32);
    }
}

/// Frees a hooked connection's state, and tells user space, when it closes.
///
/// A raw tracepoint, not a classic one: the kernel skips a classic tracepoint's (or a
/// kprobe's) program whenever another such program runs on the same CPU, and a client's
/// close completes in softirq when the server's FIN arrives, often on top of one. A raw
/// tracepoint's run is skipped only if this very program is already running on the CPU; a
/// skipped run is counted (`program_runs_missed`), and the next connection at the address
/// finds the stale entry and reports its close (`on_new_connection`).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
// Inlined into the macro's entry point: an outlined body would be a global BPF
// function, whose BTF-typed arguments kernels before 6.6 refuse.
#[inline(always)]
pub fn imds_sock_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(STATE_SK);
    let state: u64 = ctx.arg(STATE_NEWSTATE);
    if state as i32 == TCP_CLOSE {
        // SAFETY: the value is copied out before the entry is removed.
        if let Some(hooked) = unsafe { HOOKED_SOCKETS.get(sk) }.copied() {
            let _ = HOOKED_SOCKETS.remove(sk);
            emit_close_logged(hooked.backend, hooked.identity);
        }
    }
    0
}

/// What names a connection in records: the socket's inode number above its local port.
///
/// The inode is allocated with the `struct socket` (`struct socket_alloc`) from
/// get_next_ino(), a counter that hands out no number twice until its 32 bits wrap, so two
/// sockets that share a `struct sock` address one after the other have different inodes. The
/// local port tells apart the connections of one socket that is disconnected and connected
/// again (connect with AF_UNSPEC), which take a new ephemeral port. Every field read is in
/// `struct sock`, `struct socket_alloc` and `struct inode` from 5.10 to 6.12, found in BTF.
#[inline(always)]
fn identity(sk: *const u8) -> u64 {
    let socket = read_ptr(sk, global(&OFF_SK_SOCKET));
    let inode: u64 = read(socket, global(&OFF_SOCKET_INODE) + global(&OFF_INODE_INO));
    let port: u16 = read(sk, global(&OFF_SKC_NUM));
    (inode << 16) | u64::from(port)
}

/// Tracks the connection `identity` at `sk`. An entry for another identity there is a
/// connection that closed without its close reaching us (a skipped program run): it is
/// reported closed now, before any record of the new one, rather than merged with it. The
/// table is LRU, so such stale entries never fill it either.
#[inline(always)]
fn on_new_connection(sk: u64, identity: u64, backend: u32) {
    // SAFETY: the value is copied out before the entry is replaced.
    let known = unsafe { HOOKED_SOCKETS.get(sk) }.copied();
    if let Some(old) = known {
        if old.identity == identity {
            return;
        }
        // Not logged if refused: the send hooks call no BPF function (see `emit_sized`).
        emit_close(old.backend, old.identity);
    }
    let entry = HookedSocket {
        identity,
        backend,
        _pad: 0,
    };
    if HOOKED_SOCKETS.insert(sk, entry, 0).is_err() {
        // Captured anyway; only the close will not be reported.
        count_loss(LOSS_CONNECTION_UNTRACKED);
    }
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
    let identity = identity(sk);
    on_new_connection(sk as u64, identity, backend);
    let meta = SendMeta {
        backend,
        cookie: identity,
        remote_addr,
        remote_port: IMDS_PORT,
        family,
        send_size: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    Some((meta, read(sk, global(&OFF_TCP_WRITE_SEQ))))
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
    let (captured, end) = if iter_type == global(&ITER_UBUF_VALUE) {
        let base = read_ptr(iter, global(&OFF_ITER_UBUF));
        let captured = emit_buffer(&meta, seq, base, count, MAX_HOOK_CHUNKS);
        (captured, captured)
    } else if iter_type == global(&ITER_IOVEC_VALUE) {
        emit_iovec(
            &meta,
            seq,
            read_ptr(iter, global(&OFF_ITER_IOV)),
            read(iter, global(&OFF_ITER_NR_SEGS)),
        )
    } else {
        // Counted, not logged: see `emit_sized` on why the send hooks call no BPF function.
        count_loss(LOSS_SEND_UNREADABLE);
        emit_lost(&meta, u64::from(seq), count as u32);
        return;
    };
    if captured < count {
        // The tail from `end` is lost; a hole before it (a segment cut short) shows up in
        // user space as the distance between its records.
        count_loss(LOSS_SEND_TRUNCATED);
        emit_lost(
            &meta,
            u64::from(seq.wrapping_add(end as u32)),
            count.saturating_sub(end) as u32,
        );
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
            0,
            Memory::User,
        );
        captured = start + n;
    }
    captured
}

/// Emits an iovec array segment by segment; returns the bytes captured and the end of the
/// segments read (the bytes after it were not looked at).
#[inline(always)]
fn emit_iovec(meta: &SendMeta, seq: u32, iov: *const u8, nr_segs: u64) -> (u64, u64) {
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
    (captured, segment_start)
}
