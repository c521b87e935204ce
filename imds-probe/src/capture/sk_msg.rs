//! The cgroup backend: a `sock_ops` program on the cgroup v2 root enrols every outgoing
//! connection to the IMDS into a sockhash, and an `sk_msg` program attached to that sockhash
//! sees each send on those sockets, in the sender's context. Other TCP sockets never run the
//! `sk_msg` program, so their sends pay nothing; `sock_ops` runs only at connection set-up.
//! Connections opened before it attached are enrolled from user space (`enrol_open`).

use std::{
    collections::HashSet,
    fs::File,
    io,
    os::fd::{AsRawFd, OwnedFd},
};

use aya::{
    Ebpf,
    maps::{MapData, MapError, SkStorage, SockHash},
    programs::{CgroupAttachMode, SkMsg, SockOps},
    sys::SyscallError,
};
use imds_probe_common::socket_state::{ConnState, IMDS_SOCKETS_MAP, SOCKET_STATE_MAP};

use super::{LoadError, OpenWatch, program, program_error};
use crate::{
    capture::{open_connections::OpenConnection, process_fd},
    causes::Causes,
    host::system,
};

const SOCK_OPS: &str = "imds_sock_ops";
const SK_MSG: &str = "imds_sk_msg";
/// Fail rather than replace: a socket already enrolled keeps its state and offset.
const BPF_NOEXIST: u64 = 1;

/// Why a connection open at start could not be enrolled. Causes are in `source()`, not in the
/// message: aya's map errors keep the errno there.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error("taking a duplicate of the socket from its process")]
    Duplicate(#[source] io::Error),
    #[error("the descriptor no longer holds the socket found by the scan")]
    Replaced,
    #[error("reading the socket cookie (SO_COOKIE)")]
    Cookie(#[source] io::Error),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

pub fn attach(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let sockhash_fd = {
        let map = ebpf
            .map(IMDS_SOCKETS_MAP)
            .ok_or(LoadError::MissingMap(IMDS_SOCKETS_MAP))?;
        let sockhash: SockHash<_, u64> =
            SockHash::try_from(map).map_err(|source| LoadError::Map {
                name: IMDS_SOCKETS_MAP,
                source,
            })?;
        sockhash.fd().try_clone().map_err(|e| LoadError::Map {
            name: IMDS_SOCKETS_MAP,
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

/// Enrols the connections a start-up scan found, as sock_ops enrols new ones. Each failure is
/// logged with its reason: a socket in CLOSE_WAIT, for one, cannot join a socket hash.
pub fn enrol_open(ebpf: &mut Ebpf, connections: &[OpenConnection]) -> OpenWatch {
    let mut watched = OpenWatch::default();
    for open in connections {
        // Several processes may hold one socket: it is enrolled once.
        if watched.inodes.contains(&open.socket.inode) {
            continue;
        }
        match enrol_held(ebpf, open) {
            Ok(Enrolment::ByDaemon(cookie)) => {
                watched.inodes.insert(open.socket.inode);
                watched.enrolled.push(cookie);
            }
            Ok(Enrolment::BySockOps) => {
                watched.inodes.insert(open.socket.inode);
            }
            Err(error) => tracing::warn!(
                pid = open.pid,
                fd = open.fd,
                error = %Causes(&error),
                "cannot watch a connection to the IMDS that was open before start"
            ),
        }
    }
    watched
}

/// Of the daemon-enrolled sockets in `enrolled`, removes and returns those that closed. sock_ops
/// never saw them connect, so it could not ask for their close callback; but the kernel takes a
/// socket out of the socket hash when it closes.
pub fn closed(ebpf: &Ebpf, enrolled: &mut Vec<u64>) -> Vec<u64> {
    let Some(Ok(sockets)) = ebpf
        .map(IMDS_SOCKETS_MAP)
        .map(SockHash::<&MapData, u64>::try_from)
    else {
        return Vec::new();
    };
    let present: HashSet<u64> = sockets.keys().filter_map(Result::ok).collect();
    let (open, closed) = enrolled.iter().partition(|cookie| present.contains(cookie));
    *enrolled = open;
    closed
}

/// Takes `cookies` out of the socket hash (see `socket_budget`): sk_msg no longer runs on their
/// sends. Their socket storage stays, so sock_ops still reports their close. Returns how many
/// were still there (the others closed meanwhile).
pub fn evict(ebpf: &mut Ebpf, cookies: &[u64]) -> usize {
    let sockets: Result<SockHash<&mut MapData, u64>, _> = map(ebpf, IMDS_SOCKETS_MAP);
    match sockets {
        Ok(mut sockets) => cookies
            .iter()
            .filter(|cookie| sockets.remove(cookie).is_ok())
            .count(),
        Err(error) => {
            tracing::error!(error = %Causes(&error), "cannot evict idle sockets");
            0
        }
    }
}

/// Who enrolled a socket the scan found.
enum Enrolment {
    /// The daemon, just now: no program will report its close. Its cookie.
    ByDaemon(u64),
    /// sock_ops: it connected after the programs attached but before the scan read the TCP
    /// tables, and already has its state.
    BySockOps,
}

/// Enrols the socket `open` names.
fn enrol_held(ebpf: &mut Ebpf, open: &OpenConnection) -> Result<Enrolment, EnrolError> {
    let socket = process_fd::duplicate(open.pid, open.fd).map_err(EnrolError::Duplicate)?;
    // The owner may have closed the descriptor and reused its number since the scan.
    let inode = nix::sys::stat::fstat(socket.as_raw_fd())
        .map_err(|e| EnrolError::Duplicate(e.into()))?
        .st_ino;
    if inode != open.socket.inode {
        return Err(EnrolError::Replaced);
    }
    enrol(ebpf, &socket)
}

/// Gives `socket` its state, then adds it to the socket hash, the order sock_ops follows.
fn enrol(ebpf: &mut Ebpf, socket: &OwnedFd) -> Result<Enrolment, EnrolError> {
    let cookie =
        rustix::net::sockopt::socket_cookie(socket).map_err(|e| EnrolError::Cookie(e.into()))?;
    let map_error = |name| move |source| EnrolError::Map { name, source };
    let mut states: SkStorage<&mut MapData, ConnState> = map(ebpf, SOCKET_STATE_MAP)?;
    match states.insert(socket, ConnState::new(cookie), BPF_NOEXIST) {
        Ok(()) => {}
        Err(MapError::SyscallError(SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::EEXIST) =>
        {
            return Ok(Enrolment::BySockOps);
        }
        Err(source) => return Err(map_error(SOCKET_STATE_MAP)(source)),
    }
    let mut sockets: SockHash<&mut MapData, u64> = map(ebpf, IMDS_SOCKETS_MAP)?;
    if let Err(source) = sockets.insert(cookie, socket.as_raw_fd(), BPF_NOEXIST) {
        let mut states: SkStorage<&mut MapData, ConnState> = map(ebpf, SOCKET_STATE_MAP)?;
        let _ = states.remove(socket);
        return Err(map_error(IMDS_SOCKETS_MAP)(source));
    }
    Ok(Enrolment::ByDaemon(cookie))
}

fn map<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, EnrolError>
where
    M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
{
    let map = ebpf.map_mut(name).ok_or(EnrolError::MissingMap(name))?;
    M::try_from(map).map_err(|source| EnrolError::Map { name, source })
}
