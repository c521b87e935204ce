//! `sk_msg` verdict program on `IMDS_SOCKETS`: runs in the sender's context for every
//! sendmsg-family call (send, write, writev, sendfile/splice, io_uring all end in the
//! socket's sendmsg) on an enrolled socket, and only on those. It always lets the message pass.
//!
//! Each run copies one chunk. For a longer message it asks the kernel, with
//! `bpf_msg_apply_bytes`, to pass that chunk alone and run the program again on the rest: the
//! same walk a loop would make, without one. Kernels before 5.17 have no `bpf_loop`, and a
//! bounded loop of this size exceeds the verifier's state budget.

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    helpers::{bpf_msg_apply_bytes, bpf_msg_pull_data},
    macros::sk_msg,
    programs::SkMsgContext,
};
use imds_probe_common::{
    backend::BACKEND_SK_MSG,
    loss::{LOSS_CONNECTION_UNTRACKED, LOSS_READ_FAILED, LOSS_SEND_TRUNCATED},
    send::{CHUNK_BYTES, MAX_CHUNKS_PER_SEND},
};

use crate::{
    conn::{self, Peer, RawPeer},
    emit::{SendMeta, emit_chunk, emit_lost},
    maps::count_loss,
};

const CHUNK: u32 = CHUNK_BYTES as u32;

#[sk_msg]
// Inlined into the macro's entry point: an outlined body would be a global BPF
// function, whose BTF-typed arguments kernels before 6.6 refuse.
#[inline(always)]
pub fn imds_sk_msg(ctx: SkMsgContext) -> u32 {
    capture(&ctx);
    SK_PASS
}

fn capture(ctx: &SkMsgContext) {
    let md = ctx.msg;
    // SAFETY: `md` is the program's own context; `sk` is never null for sk_msg.
    let (raw, sk) = unsafe {
        let raw = RawPeer::read(
            &raw const (*md).family,
            &raw const (*md).remote_ip4,
            &raw const (*md).remote_ip6,
            &raw const (*md).remote_port,
        );
        (raw, (*md).__bindgen_anon_3.sk)
    };
    let Some(state) = conn::state(sk) else {
        count_loss(LOSS_CONNECTION_UNTRACKED);
        return;
    };
    // What is left of the message: all of it on a first run, the rest on a re-run.
    let size = ctx.size();
    let rest = size > CHUNK;
    // SAFETY: the socket lock serialises sends on one socket, so no other program run
    // updates this connection's state concurrently.
    let (cookie, base, index) = unsafe { ((*state).cookie, (*state).offset, (*state).next_chunk) };
    let split = rest && index + 1 < MAX_CHUNKS_PER_SEND;
    let (covered, next_chunk) = if split { (CHUNK, index + 1) } else { (size, 0) };
    // SAFETY: as above.
    unsafe {
        (*state).offset = base + u64::from(covered);
        (*state).next_chunk = next_chunk;
    }
    // On every run, not only when splitting: a re-run sees the same message, whose apply_bytes
    // an earlier run set to CHUNK. A last chunk shorter than that would leave the difference
    // applied to the start of the next send, which the kernel then passes without running
    // the program (tcp_bpf_send_verdict): bytes unseen, and offsets that do not show it.
    // SAFETY: `ctx.msg` is the program's context.
    unsafe { bpf_msg_apply_bytes(ctx.msg, covered) };
    let peer = Peer::new(&raw);
    let meta = SendMeta {
        backend: BACKEND_SK_MSG,
        cookie,
        remote_addr: peer.addr,
        remote_port: peer.port,
        family: peer.family,
        send_size: size,
        comm: [0; 16],
    };
    let len = if rest { CHUNK } else { size };
    // Makes [0, len) one linear run even when it spans scatterlist pages.
    // SAFETY: `ctx.msg` is the program's context.
    if unsafe { bpf_msg_pull_data(ctx.msg, 0, len, 0) } != 0 {
        count_loss(LOSS_READ_FAILED);
        emit_lost(&meta, base, covered);
        return;
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    emit_chunk(
        &meta,
        base,
        data as *const u8,
        data_end.saturating_sub(data) as u32,
    );
    if rest && !split {
        count_loss(LOSS_SEND_TRUNCATED);
        emit_lost(&meta, base + u64::from(len), size - len);
    }
}
