//! Who sent a request. The kernel's view at the moment of the send (pid, tid, uid, gid,
//! comm, cgroup id) is completed from a process table that exec/fork/exit records keep
//! current in send order, so a caller that exited, or exec'd something else, a millisecond
//! after its send is still named as it was. /proc is read only for processes that predate
//! the daemon and were missed by the seed.

pub mod cgroup_path;
pub mod cgroups;
pub mod proc_fs;
pub mod process_table;
pub mod redact;
pub mod source;
pub mod users;

use serde::Serialize;

use self::{
    cgroup_path::Container,
    process_table::{ExecInfo, ExitInfo, ForkInfo, ProcessRecord, ProcessTable, UNKNOWN_ID},
    redact::Redactor,
    source::ProcessSource,
};
use crate::outputs::event::{Clock, Timestamp};

/// Processes tracked at once.
pub const PROCESS_TABLE_CAPACITY: usize = 65_536;
/// How long an exited process stays, for requests still in the pipeline behind its exit.
const EXITED_GRACE_NS: u64 = 30_000_000_000;

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
        Self {
            pid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            comm: c_string(comm),
            cgroup_id,
        }
    }
}

pub fn c_string(bytes: &[u8]) -> String {
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}

/// The `process` object of an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessJson {
    pub pid: u32,
    /// The pid inside the process's own pid namespace, where that differs from `pid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub start_time: Option<Timestamp>,
    pub cgroup_id: u64,
}

/// One entry of an event's `parents` chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ParentJson {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
}

/// Everything an event says about its sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Attribution {
    pub process: ProcessJson,
    /// From the parent up to pid 1, nearest first.
    pub parents: Vec<ParentJson>,
    /// The sender's cgroup v2 path, e.g. "/system.slice/nginx.service".
    pub cgroup: Option<String>,
    pub systemd_unit: Option<String>,
    pub container: Option<Container>,
}

pub struct Attributor {
    table: ProcessTable,
    host: Box<dyn ProcessSource>,
}

impl Attributor {
    /// An empty process table; nothing is read until asked. Command lines, the sender's and
    /// its parents', are scrubbed by `redactor` as they enter the process table, so a secret
    /// never sits in the daemon's memory either.
    pub fn new(host: Box<dyn ProcessSource>, redactor: Redactor) -> Self {
        Self {
            table: ProcessTable::new(PROCESS_TABLE_CAPACITY, EXITED_GRACE_NS).redacting(redactor),
            host,
        }
    }

    /// Takes in every process present now, so callers older than the daemon are named.
    pub fn seed(&mut self) {
        self.table.seed(&mut *self.host);
    }

    pub fn exec(&mut self, exec: ExecInfo) {
        self.table.exec(exec);
    }

    pub fn fork(&mut self, fork: ForkInfo) {
        self.table.fork(fork, &mut *self.host);
    }

    pub fn exit(&mut self, exit: ExitInfo) {
        self.table.exit(exit);
    }

    pub fn reap(&mut self, now_ns: u64) {
        self.table.reap(now_ns);
    }

    pub fn evicted(&self) -> u64 {
        self.table.evicted()
    }

    pub fn describe(&mut self, sender: &Sender, clock: &Clock) -> Attribution {
        let record = self.table.get_or_load(sender.pid, &mut *self.host).cloned();
        let parents = self
            .table
            .parents(sender.pid)
            .into_iter()
            .map(|p| ParentJson {
                pid: p.pid,
                comm: p.comm,
                exe: p.exe,
                cmdline: p.cmdline,
            })
            .collect();
        let cgroup = self.host.cgroup_path(sender.cgroup_id);
        let parsed = cgroup
            .as_deref()
            .map(cgroup_path::parse)
            .unwrap_or_default();
        Attribution {
            process: self.process_json(sender, record, clock),
            parents,
            cgroup,
            systemd_unit: parsed.systemd_unit,
            container: parsed.container,
        }
    }

    /// Describes a process found in /proc rather than seen sending: the kernel's view is
    /// rebuilt from what /proc says now.
    pub fn describe_pid(&mut self, pid: u32, clock: &Clock) -> Attribution {
        let (uid, gid) = self
            .table
            .get_or_load(pid, &mut *self.host)
            .map_or((UNKNOWN_ID, UNKNOWN_ID), |record| (record.uid, record.gid));
        let sender = Sender {
            pid,
            tid: pid,
            uid,
            gid,
            // Empty: `process_json` takes the table's.
            comm: String::new(),
            cgroup_id: self.host.cgroup_id(pid).unwrap_or(0),
        };
        self.describe(&sender, clock)
    }

    fn process_json(
        &mut self,
        sender: &Sender,
        record: Option<ProcessRecord>,
        clock: &Clock,
    ) -> ProcessJson {
        let record = record.unwrap_or_else(|| ProcessRecord {
            pid: sender.pid,
            ppid: 0,
            ns_pid: None,
            comm: sender.comm.clone(),
            exe: None,
            cmdline: None,
            uid: sender.uid,
            gid: sender.gid,
            start_time_ns: None,
        });
        ProcessJson {
            pid: sender.pid,
            ns_pid: record.ns_pid.filter(|&ns_pid| ns_pid != sender.pid),
            tid: sender.tid,
            ppid: (record.ppid != 0).then_some(record.ppid),
            // The kernel's comm at send time where the backend reports it (a thread may have
            // renamed itself); the process's, from the table, where it does not (sk_msg).
            comm: if sender.comm.is_empty() {
                record.comm
            } else {
                sender.comm.clone()
            },
            exe: record.exe,
            cmdline: record.cmdline,
            uid: sender.uid,
            gid: sender.gid,
            user: self.host.user_name(sender.uid),
            start_time: record.start_time_ns.map(|ns| clock.wall_from_boottime(ns)),
            cgroup_id: sender.cgroup_id,
        }
    }
}
