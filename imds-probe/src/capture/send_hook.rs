//! The send-hook backends (fentry, kprobe on tcp_sendmsg) and what they need: struct
//! offsets and iov_iter details of the running kernel, and the close tracepoint. See the
//! kernel side's `send_hook.rs` for why these hooks, how they read a send and how they tell
//! connections apart.

use aya::{
    Ebpf,
    programs::{FEntry, KProbe, RawTracePoint},
};
use imds_probe_common::process::SEND_HOOK_GLOBALS;

use super::{LoadError, program, program_error};
use crate::capture::btf_offsets::{Btf, BtfError};

const FENTRY: &str = "imds_fentry_tcp_sendmsg";
const KPROBE: &str = "imds_kprobe_tcp_sendmsg";
const FENTRY_SENDPAGE: &str = "imds_fentry_tcp_sendpage";
const KPROBE_SENDPAGE: &str = "imds_kprobe_tcp_sendpage";
/// Where sendfile/splice reach TCP before 6.5 (gone since): hooked only to mark its bytes as
/// unreadable, so a request sent that way is reported `unknown` rather than missed.
const SENDPAGE_FUNCTION: &str = "tcp_sendpage";
const CLOSE: &str = "imds_sock_state";
const HOOKED_FUNCTION: &str = "tcp_sendmsg";
/// No iter_type has this value: it stands for "this kernel has no ITER_UBUF".
const NO_SUCH_TYPE: u32 = u32::MAX;

/// Offsets and values for the send hooks' globals, or None (logged) when BTF lacks any.
pub fn kernel_offsets(btf: &Btf) -> Option<Vec<(&'static str, u32)>> {
    let resolve = || -> Result<Vec<(&'static str, u32)>, BtfError> {
        let mut globals = btf.member_offsets(&SEND_HOOK_GLOBALS)?;
        globals.extend(iov_iter_layout(btf)?);
        globals.push(("OFF_SOCKET_INODE", socket_inode_offset(btf)?));
        Ok(globals)
    };
    resolve()
        .inspect_err(|e| {
            tracing::warn!(
                "kernel BTF lacks what the send hooks need ({e}): fentry and kprobe unavailable"
            )
        })
        .ok()
}

/// From a `struct socket` to the inode allocated with it: both live in one `struct
/// socket_alloc` (include/net/sock.h), the socket first on every kernel we know, which is
/// looked up rather than assumed.
fn socket_inode_offset(btf: &Btf) -> Result<u32, BtfError> {
    let socket = btf.member_offset("socket_alloc", "socket")?;
    let inode = btf.member_offset("socket_alloc", "vfs_inode")?;
    inode.checked_sub(socket).ok_or(BtfError::Malformed {
        what: "socket_alloc's inode precedes its socket",
    })
}

/// iov_iter changed shape: 5.14 turned `unsigned int type` (direction in bit 0, type flags
/// above) into `u8 iter_type` with renumbered values, 6.0 added ITER_UBUF, 6.4 renamed `iov`
/// to `__iov`. Each is looked up rather than assumed from a version number.
fn iov_iter_layout(btf: &Btf) -> Result<Vec<(&'static str, u32)>, BtfError> {
    let (type_offset, type_bytes, type_mask) = match btf.member_offset("iov_iter", "iter_type") {
        Ok(offset) => (offset, 1, 0xff),
        // READ/WRITE sit in bit 0 of the old field.
        Err(_) => (btf.member_offset("iov_iter", "type")?, 4, !1u32),
    };
    let iov_offset = btf
        .member_offset("iov_iter", "__iov")
        .or_else(|_| btf.member_offset("iov_iter", "iov"))?;
    let (ubuf_offset, ubuf_value) = match (
        btf.member_offset("iov_iter", "ubuf"),
        btf.enum_value("iter_type", "ITER_UBUF"),
    ) {
        (Ok(offset), Ok(value)) => (offset, value as u32),
        _ => (0, NO_SUCH_TYPE),
    };
    Ok(vec![
        ("OFF_ITER_TYPE", type_offset),
        ("ITER_TYPE_BYTES", type_bytes),
        ("ITER_TYPE_MASK", type_mask),
        ("OFF_ITER_IOV", iov_offset),
        ("OFF_ITER_UBUF", ubuf_offset),
        (
            "ITER_IOVEC_VALUE",
            btf.enum_value("iter_type", "ITER_IOVEC")? as u32,
        ),
        ("ITER_UBUF_VALUE", ubuf_value),
    ])
}

pub fn attach_fentry(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let btf = aya::Btf::from_sys_fs().map_err(LoadError::KernelBtf)?;
    let sendmsg: &mut FEntry = program(ebpf, FENTRY)?;
    sendmsg
        .load(HOOKED_FUNCTION, &btf)
        .map_err(program_error(FENTRY, "load"))?;
    sendmsg.attach().map_err(program_error(FENTRY, "attach"))?;
    let sendpage: &mut FEntry = program(ebpf, FENTRY_SENDPAGE)?;
    let hooked = sendpage
        .load(SENDPAGE_FUNCTION, &btf)
        .and_then(|()| sendpage.attach().map(drop));
    note_sendpage(hooked);
    attach_close(ebpf)
}

pub fn attach_kprobe(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let sendmsg: &mut KProbe = program(ebpf, KPROBE)?;
    sendmsg.load().map_err(program_error(KPROBE, "load"))?;
    sendmsg
        .attach(HOOKED_FUNCTION, 0)
        .map_err(program_error(KPROBE, "attach"))?;
    let sendpage: &mut KProbe = program(ebpf, KPROBE_SENDPAGE)?;
    let hooked = sendpage
        .load()
        .and_then(|()| sendpage.attach(SENDPAGE_FUNCTION, 0).map(drop));
    note_sendpage(hooked);
    attach_close(ebpf)
}

fn note_sendpage(hooked: Result<(), aya::programs::ProgramError>) {
    match hooked {
        Ok(()) => tracing::debug!("{SENDPAGE_FUNCTION} hooked"),
        // Expected from 6.5, where sendfile/splice go through tcp_sendmsg instead.
        Err(e) => tracing::info!(
            "{SENDPAGE_FUNCTION} not hooked ({e}); this kernel sends pages through tcp_sendmsg"
        ),
    }
}

/// Without the close, hooked connections would only leave the tables by eviction, so a
/// backend whose close tracepoint does not attach is refused as a whole.
fn attach_close(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let program: &mut RawTracePoint = program(ebpf, CLOSE)?;
    if program.fd().is_err() {
        program.load().map_err(program_error(CLOSE, "load"))?;
    }
    program
        .attach("inet_sock_set_state")
        .map_err(program_error(CLOSE, "attach"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_the_running_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        let globals = kernel_offsets(&btf).expect("every send-hook offset resolves");
        let get = |name: &str| {
            globals
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .unwrap()
        };
        eprintln!("{globals:?}");
        assert_eq!(
            get("OFF_ITER_IOV"),
            get("OFF_ITER_UBUF"),
            "one union holds both"
        );
        assert_ne!(get("ITER_IOVEC_VALUE"), get("ITER_UBUF_VALUE"));
        assert!(get("OFF_ITER_COUNT") > get("OFF_ITER_IOV"));
        assert!(get("OFF_SOCKET_INODE") > 0, "the inode follows the socket");
        assert_ne!(get("OFF_SKC_NUM"), get("OFF_SKC_DPORT"));
    }
}
