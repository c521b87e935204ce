//! Duplicates of other processes' descriptors (pidfd_open + pidfd_getfd, 5.6+; they need the
//! ptrace right over the process, which root has). The daemon takes one to enrol a socket that
//! was open before it started, and closes it right after: a descriptor kept would keep the
//! connection open after its owner closed it.

use std::{io, os::fd::OwnedFd};

use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};

/// A duplicate of descriptor `fd` of process `pid`.
pub fn duplicate(pid: u32, fd: i32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty())?;
    Ok(pidfd_getfd(&pidfd, fd, PidfdGetfdFlags::empty())?)
}
