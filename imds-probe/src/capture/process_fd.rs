//! Duplicates of other processes' descriptors (pidfd_open + pidfd_getfd, 5.6+; they need the
//! ptrace right over the process, which root has). The daemon takes one to enrol a socket that
//! was open before it started, and closes it right after: a descriptor kept would keep the
//! connection open after its owner closed it.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// A duplicate of descriptor `fd` of process `pid`.
pub fn duplicate(pid: u32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    let pidfd = owned(pidfd)?;
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and flags (none
    // are defined); it returns a new descriptor or -1.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    owned(copy)
}

fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(ret).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a non-negative return of pidfd_open/pidfd_getfd is a new descriptor that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
