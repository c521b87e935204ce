//! Cgroup `sock_ops`: the kernel calls it at a handful of points in every TCP connection's
//! life (connect, establish, state changes we opt into), never per send. On an outgoing
//! connection to the IMDS it gives the socket its state and enrols it in `IMDS_SOCKETS`, which
//! makes the `sk_msg` program run on that socket's sends, and asks for state callbacks so the
//! close is seen. Passive (accepted) sockets are never enrolled: a server on the IMDS address,
//! like the fake one in our tests, is not a caller.

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE, bpf_sock,
    },
    helpers::bpf_get_socket_cookie,
    macros::sock_ops,
    programs::SockOpsContext,
};
use imds_probe_common::{
    backend::BACKEND_SK_MSG, loss::LOSS_CONNECTION_UNTRACKED, socket_state::ConnState,
};

use crate::{
    conn::{self, Peer, RawPeer},
    diagnostics,
    emit::{emit_close_logged, emit_open},
    maps::{IMDS_SOCKETS, count_loss},
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

/// The full socket behind this callback; the kernel gives none for request and time-wait
/// sockets.
#[inline(always)]
fn socket(ctx: &SockOpsContext) -> Option<*mut bpf_sock> {
    // SAFETY: `ctx.ops` is the program's own context pointer; `sk` is a plain read.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    (!sk.is_null()).then_some(sk)
}

fn on_established(ctx: &SockOpsContext) {
    let ops = ctx.ops;
    // SAFETY: `ops` is the program's own context.
    let peer = Peer::new(&unsafe {
        RawPeer::read(
            &raw const (*ops).family,
            &raw const (*ops).remote_ip4,
            &raw const (*ops).remote_ip6,
            &raw const (*ops).remote_port,
        )
    });
    if !peer.is_imds() {
        return;
    }
    // SAFETY: `ctx.ops` is the program's own context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(sk) = socket(ctx) else {
        count_loss(LOSS_CONNECTION_UNTRACKED);
        diagnostics::connection_untracked(cookie, "no full socket");
        return;
    };
    let mut initial = ConnState::new(cookie);
    if conn::enrol(sk, &mut initial).is_none() {
        count_loss(LOSS_CONNECTION_UNTRACKED);
        diagnostics::connection_untracked(cookie, "no socket storage");
        return;
    }
    // SAFETY: `ctx.ops` is the live bpf_sock_ops of this callback.
    let enrolled = IMDS_SOCKETS.update(
        initial.cookie,
        unsafe { &mut *ctx.ops },
        u64::from(BPF_NOEXIST),
    );
    if enrolled.is_err() || ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32).is_err() {
        conn::forget(sk);
        count_loss(LOSS_CONNECTION_UNTRACKED);
        diagnostics::connection_untracked(cookie, "socket hash or callbacks refused it");
        return;
    }
    emit_open(BACKEND_SK_MSG, initial.cookie);
}

fn on_close(ctx: &SockOpsContext) {
    // Another sock_ops program on the cgroup may have asked for state callbacks on any
    // socket; only ours have state.
    let Some(sk) = socket(ctx) else { return };
    let Some(state) = conn::state(sk) else { return };
    // SAFETY: the value is copied out before the storage is deleted.
    let cookie = unsafe { (*state).cookie };
    conn::forget(sk);
    emit_close_logged(BACKEND_SK_MSG, cookie);
}
