//! What the attributor learns from the host rather than from the kernel's records: processes
//! that predate the daemon or slipped past its records, cgroup paths, user names. Behind a
//! trait so the pipeline can be driven in a unit test with no host at all; [`ProcReader`] is
//! the host's answer (/proc, cgroupfs, the user database).

use std::{io, path::PathBuf};

use super::{
    cgroups::CgroupResolver,
    proc_fs,
    process_table::{self, ProcessRecord},
    redact::Redactor,
    users::UserNames,
};

pub trait ProcessSource {
    /// The pids of the processes present now.
    fn pids(&mut self) -> io::Result<Vec<u32>>;
    /// What the host says about a process now, its command line scrubbed by `redactor`, or
    /// None if it is gone (or hidden from us).
    fn process(&mut self, pid: u32, redactor: &Redactor) -> Option<ProcessRecord>;
    /// A cgroup v2 id's path below the hierarchy's root ("/system.slice/x.service").
    fn cgroup_path(&mut self, id: u64) -> Option<String>;
    /// A process's cgroup v2 id.
    fn cgroup_id(&mut self, pid: u32) -> Option<u64>;
    fn user_name(&mut self, uid: u32) -> Option<String>;
}

/// The host's view: /proc, the cgroup2 mount at `cgroup_root`, the user database. Caches
/// what is asked per id (cgroup paths, user names); processes are read each time asked,
/// since the process table keeps what it needs.
pub struct ProcReader {
    clk_tck: u64,
    cgroups: CgroupResolver,
    users: UserNames,
}

impl ProcReader {
    /// Opens the cgroup2 root, if there is one.
    pub fn new(cgroup_root: Option<PathBuf>) -> Self {
        Self {
            clk_tck: procfs::ticks_per_second(),
            cgroups: CgroupResolver::new(cgroup_root),
            users: UserNames::default(),
        }
    }
}

impl ProcessSource for ProcReader {
    fn pids(&mut self) -> io::Result<Vec<u32>> {
        proc_fs::pids()
    }

    fn process(&mut self, pid: u32, redactor: &Redactor) -> Option<ProcessRecord> {
        process_table::load(pid, self.clk_tck, redactor)
    }

    fn cgroup_path(&mut self, id: u64) -> Option<String> {
        self.cgroups.path(id)
    }

    fn cgroup_id(&mut self, pid: u32) -> Option<u64> {
        self.cgroups.id_of_process(pid)
    }

    fn user_name(&mut self, uid: u32) -> Option<String> {
        self.users.name(uid)
    }
}
