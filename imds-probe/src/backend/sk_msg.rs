//! The cgroup backend: a `sock_ops` program on the cgroup v2 root enrols every outgoing
//! connection to the IMDS into a sockhash, and an `sk_msg` program attached to that sockhash
//! sees each send on those sockets, in the sender's context. Other TCP sockets never run the
//! `sk_msg` program, so their sends pay nothing; `sock_ops` runs only at connection set-up.
//! It misses connections opened before it attached.

use std::fs::File;

use aya::{
    Ebpf,
    maps::SockHash,
    programs::{CgroupAttachMode, SkMsg, SockOps},
};

use super::{LoadError, program, program_error};
use crate::system;

const SOCK_OPS: &str = "imds_sock_ops";
const SK_MSG: &str = "imds_sk_msg";
const SOCKHASH: &str = "IMDS_SOCKETS";

pub fn attach(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let sockhash_fd = {
        let map = ebpf.map(SOCKHASH).ok_or(LoadError::MissingMap(SOCKHASH))?;
        let sockhash: SockHash<_, u64> =
            SockHash::try_from(map).map_err(|source| LoadError::Map {
                name: SOCKHASH,
                source,
            })?;
        sockhash.fd().try_clone().map_err(|e| LoadError::Map {
            name: SOCKHASH,
            source: e.into(),
        })?
    };
    // sk_msg first: a socket enrolled by sock_ops must already have its verdict program.
    let sk_msg: &mut SkMsg = program(ebpf, SK_MSG)?;
    sk_msg.load().map_err(program_error(SK_MSG, "load"))?;
    sk_msg
        .attach(&sockhash_fd)
        .map_err(program_error(SK_MSG, "attach"))?;

    let cgroup = File::open(system::cgroup2_root()?)
        .map_err(system::SystemError::from_io("open cgroup2 root"))?;
    let sock_ops: &mut SockOps = program(ebpf, SOCK_OPS)?;
    sock_ops.load().map_err(program_error(SOCK_OPS, "load"))?;
    // On 5.7+ aya attaches through a bpf_link, which always coexists with other programs on
    // the cgroup (Cilium, service meshes) and refuses attach flags: hence `Single`.
    sock_ops
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(program_error(SOCK_OPS, "attach"))?;
    Ok(())
}
