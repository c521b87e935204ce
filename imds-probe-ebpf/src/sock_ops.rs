//! Cgroup `sock_ops`: the kernel calls it at a handful of points in every TCP connection's
//! life (connect, establish, state changes we opt into), never per send. On an outgoing
//! connection to the IMDS it enrols the socket in `IMDS_SOCKETS`, which makes the `sk_msg`
//! program run on that socket's sends, and asks for state callbacks so the close is seen.
//! Passive (accepted) sockets are never enrolled: a server on the IMDS address, like the fake
//! one in our tests, is not a caller.

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_socket_cookie, generated::bpf_get_netns_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use imds_probe_common::{loss::LOSS_CONNECTION_UNTRACKED, send::BACKEND_SK_MSG};

use crate::{
    conn::{ConnKey, ConnState, RawEndpoints},
    emit::emit_close,
    maps::{CONNECTIONS, IMDS_SOCKETS, count_loss},
};

#[sock_ops]
// Inlined into the macro's entry point: an outlined body would be a global BPF
// function, whose BTF-typed arguments kernels before 6.6 refuse.
#[inline(always)]
pub fn imds_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_close(&ctx),
        _ => {}
    }
    1
}

#[inline(always)]
fn key(ctx: &SockOpsContext) -> ConnKey {
    let raw = RawEndpoints {
        family: ctx.family(),
        remote_ip4: ctx.remote_ip4(),
        local_ip4: ctx.local_ip4(),
        remote_ip6: ctx.remote_ip6(),
        local_ip6: ctx.local_ip6(),
        remote_port: ctx.remote_port(),
        local_port: ctx.local_port(),
    };
    // SAFETY: `ctx.ops` is the program's own context pointer.
    ConnKey::new(unsafe { bpf_get_netns_cookie(ctx.ops.cast()) }, &raw)
}

fn on_established(ctx: &SockOpsContext) {
    let key = key(ctx);
    if !key.is_imds() {
        return;
    }
    // SAFETY: `ctx.ops` is the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let state = ConnState { cookie, offset: 0 };
    if CONNECTIONS
        .insert(key, state, u64::from(BPF_NOEXIST))
        .is_err()
    {
        count_loss(LOSS_CONNECTION_UNTRACKED);
        return;
    }
    // SAFETY: `ctx.ops` is the live bpf_sock_ops of this callback.
    let enrolled = IMDS_SOCKETS.update(cookie, unsafe { &mut *ctx.ops }, u64::from(BPF_NOEXIST));
    if enrolled.is_err() || ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32).is_err() {
        let _ = CONNECTIONS.remove(key);
        count_loss(LOSS_CONNECTION_UNTRACKED);
    }
}

fn on_close(ctx: &SockOpsContext) {
    let key = key(ctx);
    // Another sock_ops program on the cgroup may have asked for state callbacks on any
    // socket; only ours are in the table.
    // SAFETY: the value is copied out before the entry is removed.
    let Some(cookie) = (unsafe { CONNECTIONS.get(key) }).map(|state| state.cookie) else {
        return;
    };
    let _ = CONNECTIONS.remove(key);
    emit_close(BACKEND_SK_MSG, cookie);
}
