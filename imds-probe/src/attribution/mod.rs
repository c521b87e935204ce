//! Who sent a request: the kernel's view at the moment of the send (pid, tid, uid, gid,
//! comm, cgroup id), completed from /proc where the process is still there.

pub mod proc_fs;

use serde::Serialize;

/// The sender as the kernel saw it during the send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

impl Sender {
    pub fn from_kernel(pid_tgid: u64, uid_gid: u64, cgroup_id: u64, comm: &[u8; 16]) -> Self {
        let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        Self {
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            comm: String::from_utf8_lossy(&comm[..len]).into_owned(),
            cgroup_id,
        }
    }
}

/// The `process` object of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessJson {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    pub gid: u32,
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
    pub cgroup_id: u64,
}
