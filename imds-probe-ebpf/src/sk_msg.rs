//! `sk_msg` verdict program on `IMDS_SOCKETS`: runs in the sender's context for every
//! sendmsg-family call (send, write, writev, sendfile/splice, io_uring all end in the
//! socket's sendmsg) on an enrolled socket, and only on those. It copies the message out in
//! chunks and always lets it pass.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, sk_msg_md},
    helpers::{
        bpf_msg_pull_data,
        generated::{bpf_get_netns_cookie, bpf_loop},
    },
    macros::sk_msg,
    programs::SkMsgContext,
};
use imds_probe_common::{
    loss::{LOSS_CONNECTION_UNTRACKED, LOSS_SEND_TRUNCATED},
    send::{BACKEND_SK_MSG, CHUNK_BYTES, MAX_CHUNKS_PER_SEND},
};

use crate::{
    conn::{ConnKey, RawEndpoints},
    emit::{SendMeta, emit_chunk},
    maps::{CONNECTIONS, count_loss},
};

#[sk_msg]
// Inlined into the macro's entry point: an outlined body would be a global BPF
// function, whose BTF-typed arguments kernels before 6.6 refuse.
#[inline(always)]
pub fn imds_sk_msg(ctx: SkMsgContext) -> u32 {
    capture(&ctx);
    SK_PASS
}

#[inline(always)]
fn key(ctx: &SkMsgContext) -> ConnKey {
    // SAFETY: `ctx.msg` is the program's own context; these fields are plain reads.
    let raw = unsafe {
        let md = &*ctx.msg;
        RawEndpoints {
            family: md.family,
            remote_ip4: md.remote_ip4,
            local_ip4: md.local_ip4,
            remote_ip6: md.remote_ip6,
            local_ip6: md.local_ip6,
            remote_port: md.remote_port,
            local_port: md.local_port,
        }
    };
    // SAFETY: `ctx.msg` is the program's own context pointer.
    ConnKey::new(unsafe { bpf_get_netns_cookie(ctx.msg.cast()) }, &raw)
}

fn capture(ctx: &SkMsgContext) {
    let key = key(ctx);
    let Some(state) = CONNECTIONS.get_ptr_mut(key) else {
        count_loss(LOSS_CONNECTION_UNTRACKED);
        return;
    };
    let size = ctx.size();
    // SAFETY: the socket lock serialises sends on one socket, so no other program run
    // updates this connection's state concurrently.
    let (cookie, base) = unsafe {
        let base = (*state).offset;
        (*state).offset = base + u64::from(size);
        ((*state).cookie, base)
    };
    let meta = SendMeta {
        backend: BACKEND_SK_MSG,
        cookie,
        remote_addr: key.remote,
        remote_port: key.remote_port,
        family: key.family,
        send_size: size,
        comm: [0; 16],
    };
    let mut walk = ChunkWalk {
        ctx: ctx.msg,
        meta,
        base,
        size,
    };
    // bpf_loop keeps the verifier's work to one pass over the body, where an unrolled or
    // bounded loop of this size explodes its state count.
    // SAFETY: the callback has the signature bpf_loop expects and only touches `walk`.
    unsafe {
        bpf_loop(
            MAX_CHUNKS_PER_SEND,
            emit_one_chunk as *mut c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    if u64::from(size) > u64::from(MAX_CHUNKS_PER_SEND) * CHUNK_BYTES as u64 {
        count_loss(LOSS_SEND_TRUNCATED);
    }
}

struct ChunkWalk {
    ctx: *mut sk_msg_md,
    meta: SendMeta,
    base: u64,
    size: u32,
}

/// One iteration: pull chunk `index` into a linear run and emit it. 0 continues, 1 stops.
#[inline(never)]
extern "C" fn emit_one_chunk(index: u64, walk: *mut ChunkWalk) -> i64 {
    // SAFETY: bpf_loop hands back the pointer passed in `capture`, alive for the loop.
    let walk = unsafe { &*walk };
    let chunk = CHUNK_BYTES as u32;
    let start = (index as u32) * chunk;
    if start >= walk.size {
        return 1;
    }
    let end = if walk.size - start > chunk {
        start + chunk
    } else {
        walk.size
    };
    // Makes [start, end) one linear run even when it spans scatterlist pages.
    // SAFETY: `walk.ctx` is the program's context, live for the whole run.
    if unsafe { bpf_msg_pull_data(walk.ctx, start, end, 0) } != 0 {
        count_loss(LOSS_SEND_TRUNCATED);
        return 1;
    }
    let ctx = SkMsgContext::new(walk.ctx);
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let len = data_end.saturating_sub(data) as u32;
    emit_chunk(
        &walk.meta,
        walk.base + u64::from(start),
        data as *const u8,
        len,
    );
    0
}
