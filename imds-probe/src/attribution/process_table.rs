//! A process table kept in user space from the kernel's exec, fork and exit events.
//!
//! It exists for the short-lived caller: `curl` in a cron job or an `aws` one-liner can send its
//! request and exit before the daemon reads the record, and by then /proc has nothing for it, or,
//! once the pid is reused, has somebody else. The kernel writes exec/fork/exit events into the
//! same ring buffer as the traffic, in send order, so when the daemon handles a send record it
//! has applied exactly the events that came before that send. A lookup made then gives the image
//! that made the send, even when the process exec'd or exited right after: those events sit
//! later in the buffer and have not been applied yet.
//!
//! An exited process stays for a grace period, because a request can be attributed a little
//! after its send (reassembly may wait for the rest of it) and because its children still name
//! it as their parent. The table is bounded; see [`ProcessTable::evicted`] for what goes first.
//!
//! The host (/proc, through a [`ProcessSource`]) fills in what the events cannot tell: the
//! processes already running when the daemon starts ([`ProcessTable::seed`]) and any that
//! slipped past ([`ProcessTable::get_or_load`]).

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

use super::{
    proc_fs::{self, LossyStatus, RawCmdline, parse_cmdline},
    redact::Redactor,
    source::ProcessSource,
};

/// How far `parents` climbs; real trees are far shallower, so this only stops runaways.
const MAX_PARENT_HOPS: usize = 32;
/// Appended to a command line that was cut, so that a reader does not take it as complete.
const TRUNCATED: &str = "\u{2026}";
/// uid and gid of a process whose image is unknown: the kernel's own "no id" value
/// (`(uid_t)-1`), which no real user has, where 0 would claim root.
pub const UNKNOWN_ID: u32 = u32::MAX;

/// What the kernel reports at exec (the process's new image). Already decoded; strings
/// lossy-UTF-8.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecInfo {
    pub pid: u32,
    pub ppid: u32,
    /// The pid inside the process's own pid namespace (equal to `pid` in the host's).
    pub ns_pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: String,
    /// NUL-separated, maybe truncated by the kernel.
    pub argv_raw: Vec<u8>,
    pub argv_truncated: bool,
    /// Task start, boot-time ns.
    pub start_time_ns: u64,
    pub ts_ns: u64,
}

/// A new process (not a thread). The child inherits the parent's image (exe, cmdline, comm,
/// uid, gid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkInfo {
    pub parent_pid: u32,
    pub child_pid: u32,
    /// The child's pid inside its own pid namespace.
    pub child_ns_pid: u32,
    pub start_time_ns: u64,
    pub ts_ns: u64,
}

/// The whole process (thread group) is gone; a thread's exit must not be sent as one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    pub pid: u32,
    pub ts_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessRecord {
    pub pid: u32,
    pub ppid: u32,
    /// The pid inside the process's own pid namespace; None where nobody said (a kernel
    /// without `NSpid:` in /proc/<pid>/status).
    pub ns_pid: Option<u32>,
    /// Empty when the image is unknown (forked from a parent nobody knows).
    pub comm: String,
    pub exe: Option<String>,
    /// Bounded by `parse_cmdline`, scrubbed by the table's `Redactor`; ends in "…" when the kernel or the read cut it.
    pub cmdline: Option<Vec<String>>,
    /// [`UNKNOWN_ID`] when the image is unknown.
    pub uid: u32,
    pub gid: u32,
    /// Boot-time ns: exact from the kernel, to clock-tick precision from /proc.
    pub start_time_ns: Option<u64>,
}

/// The order entries are given up in when the table is full. Exited entries sort first (the
/// variant order is the derived order), by exit time; live ones after, by last update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Exited { at_ns: u64 },
    Live { updated: u64 },
}

struct Slotted {
    record: ProcessRecord,
    /// Stamp of the exec, fork or /proc load that wrote the record.
    updated: u64,
    /// The exit event's `ts_ns`. Kept out of the record: it is bookkeeping, not a report.
    exited_ns: Option<u64>,
}

impl Slotted {
    fn rank(&self) -> Rank {
        match self.exited_ns {
            Some(at_ns) => Rank::Exited { at_ns },
            None => Rank::Live {
                updated: self.updated,
            },
        }
    }
}

pub struct ProcessTable {
    entries: HashMap<u32, Slotted>,
    /// Every entry exactly once, in eviction order, so that the victim and the expired entries
    /// are at the front: O(log n) to find, never a scan.
    by_rank: BTreeSet<(Rank, u32)>,
    capacity: usize,
    grace_ns: u64,
    /// The latest event time seen, so that a full table can reap without being told the time.
    now_ns: u64,
    next_stamp: u64,
    evicted: u64,
    redactor: Redactor,
}

impl ProcessTable {
    /// `grace_ns` and the `now_ns` given to [`reap`](Self::reap) are on the clock of the events'
    /// `ts_ns`. A capacity of 0 is taken as 1, so that a just-loaded process can be returned.
    pub fn new(capacity: usize, grace_ns: u64) -> Self {
        Self {
            entries: HashMap::new(),
            by_rank: BTreeSet::new(),
            capacity: capacity.max(1),
            grace_ns,
            now_ns: 0,
            next_stamp: 0,
            evicted: 0,
            redactor: Redactor::default(),
        }
    }

    /// Scrubs every command line the table stores, the kernel's and the host's, with
    /// `redactor` rather than the default words.
    pub fn redacting(self, redactor: Redactor) -> Self {
        Self { redactor, ..self }
    }

    /// Seeds from the host (all processes present now). Skips what vanished, and pids the
    /// table already has: those came from events, which are exact where /proc is a later,
    /// bounded read.
    pub fn seed(&mut self, source: &mut dyn ProcessSource) {
        let pids = match source.pids() {
            Ok(pids) => pids,
            Err(error) => {
                tracing::warn!(%error, "cannot list /proc; processes started before now are unknown");
                return;
            }
        };
        for pid in pids {
            if !self.entries.contains_key(&pid)
                && let Some(record) = source.process(pid, &self.redactor)
            {
                self.insert(record);
            }
        }
    }

    pub fn exec(&mut self, e: ExecInfo) {
        self.advance(e.ts_ns);
        self.insert(ProcessRecord {
            pid: e.pid,
            ppid: e.ppid,
            ns_pid: known_pid(e.ns_pid),
            comm: e.comm,
            exe: (!e.exe.is_empty()).then_some(e.exe),
            cmdline: cmdline_from(&e.argv_raw, e.argv_truncated, &self.redactor),
            uid: e.uid,
            gid: e.gid,
            start_time_ns: Some(e.start_time_ns),
        });
    }

    /// A parent the table does not know is looked up in `source`.
    pub fn fork(&mut self, f: ForkInfo, source: &mut dyn ProcessSource) {
        self.advance(f.ts_ns);
        let child = match self.get_or_load(f.parent_pid, source) {
            Some(parent) => ProcessRecord {
                pid: f.child_pid,
                ppid: f.parent_pid,
                ns_pid: known_pid(f.child_ns_pid),
                start_time_ns: Some(f.start_time_ns),
                ..parent.clone()
            },
            None => ProcessRecord {
                pid: f.child_pid,
                ppid: f.parent_pid,
                ns_pid: known_pid(f.child_ns_pid),
                comm: String::new(),
                exe: None,
                cmdline: None,
                uid: UNKNOWN_ID,
                gid: UNKNOWN_ID,
                start_time_ns: Some(f.start_time_ns),
            },
        };
        self.insert(child);
    }

    /// Marks exited; the entry stays until the grace period ends. A repeated exit keeps the
    /// first time.
    pub fn exit(&mut self, x: ExitInfo) {
        self.advance(x.ts_ns);
        let Some(slotted) = self.entries.get_mut(&x.pid) else {
            return;
        };
        if slotted.exited_ns.is_some() {
            return;
        }
        self.by_rank.remove(&(slotted.rank(), x.pid));
        slotted.exited_ns = Some(x.ts_ns);
        self.by_rank.insert((slotted.rank(), x.pid));
    }

    /// The process as it was at the last event (exec/fork) before now — events are applied in
    /// send order, so a lookup done when a send record is processed returns the image at the
    /// time of the send, even if the process exec'd or exited afterwards (those later events
    /// have not been applied yet).
    pub fn get(&self, pid: u32) -> Option<&ProcessRecord> {
        self.entries.get(&pid).map(|slotted| &slotted.record)
    }

    /// Parent chain from the parent up to pid 1 (nearest first), bounded (max 32 hops, stops on
    /// loops / unknown pids). Exited parents still in their grace period are included.
    pub fn parents(&self, pid: u32) -> Vec<ProcessRecord> {
        let mut chain: Vec<ProcessRecord> = Vec::new();
        let Some(mut ppid) = self.get(pid).map(|record| record.ppid) else {
            return chain;
        };
        // A loop can only come from pid reuse racing the events, but must not hang or repeat.
        let mut seen = vec![pid];
        while chain.len() < MAX_PARENT_HOPS && ppid != 0 && !seen.contains(&ppid) {
            let Some(parent) = self.get(ppid) else {
                break;
            };
            seen.push(ppid);
            chain.push(parent.clone());
            if ppid == 1 {
                break;
            }
            ppid = parent.ppid;
        }
        chain
    }

    /// Fills in a pid the table does not know from the host (e.g. started before seeding
    /// raced), inserting it. Returns None if the host has nothing.
    pub fn get_or_load(
        &mut self,
        pid: u32,
        source: &mut dyn ProcessSource,
    ) -> Option<&ProcessRecord> {
        if !self.entries.contains_key(&pid) {
            let record = source.process(pid, &self.redactor)?;
            self.insert(record);
        }
        self.get(pid)
    }

    /// Drops entries that exited more than grace_ns before now_ns. Call periodically.
    pub fn reap(&mut self, now_ns: u64) {
        self.advance(now_ns);
        // Exited entries sort first, oldest exit first, so the expired ones are a prefix.
        while let Some(&(Rank::Exited { at_ns }, pid)) = self.by_rank.first()
            && now_ns.saturating_sub(at_ns) > self.grace_ns
        {
            self.by_rank.pop_first();
            self.entries.remove(&pid);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries evicted because the table was full — a loss counter. The longest-exited go
    /// first (their grace period is cut short), else the least recently exec'd, forked or
    /// loaded: a live process that is evicted is read back from /proc by `get_or_load` while it
    /// lives, and the newest entries are the likeliest short-lived callers that /proc will miss.
    /// Entries whose grace period had already ended are reaped, not counted.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    fn advance(&mut self, ts_ns: u64) {
        self.now_ns = self.now_ns.max(ts_ns);
    }

    /// Puts the record in, replacing any entry for its pid: an exec or fork means the kernel
    /// has a new image or a new process under that pid, whatever the table held.
    fn insert(&mut self, record: ProcessRecord) {
        let pid = record.pid;
        if let Some(old) = self.entries.get(&pid) {
            self.by_rank.remove(&(old.rank(), pid));
        } else {
            self.make_room();
        }
        let slotted = Slotted {
            record,
            updated: self.stamp(),
            exited_ns: None,
        };
        self.by_rank.insert((slotted.rank(), pid));
        self.entries.insert(pid, slotted);
    }

    /// O(log n): the reap and the victim both come off the front of `by_rank`.
    fn make_room(&mut self) {
        if self.entries.len() < self.capacity {
            return;
        }
        self.reap(self.now_ns);
        while self.entries.len() >= self.capacity {
            let Some((_, pid)) = self.by_rank.pop_first() else {
                return;
            };
            self.entries.remove(&pid);
            self.evicted += 1;
        }
    }

    fn stamp(&mut self) -> u64 {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        stamp
    }
}

/// The args, or None when there are none to show (a kernel thread, a zombie, an empty read).
fn cmdline_from(raw: &[u8], truncated: bool, redactor: &Redactor) -> Option<Vec<String>> {
    let mut args = if raw.is_empty() {
        Vec::new()
    } else {
        redactor.redact(parse_cmdline(raw))
    };
    if truncated {
        args.push(TRUNCATED.to_owned());
    }
    (!args.is_empty()).then_some(args)
}

/// One process from /proc, or None if it is gone (or hidden from us). Reads
/// /proc/<pid>/{stat,status,exe,cmdline}; the comm is taken from stat, which holds the same
/// text as /proc/<pid>/comm, read in the same snapshot as the ppid.
pub(crate) fn load(pid: u32, clk_tck: u64, redactor: &Redactor) -> Option<ProcessRecord> {
    let process = proc_fs::process(pid)?;
    // procfs reads stat lossily: a comm is any bytes the process chose. `starttime` is taken
    // raw in ticks, as the kernel's records are in boot-time ns: procfs's `starttime()` would
    // read the boot time from /proc/stat.
    let stat = process.stat().ok()?;
    let LossyStatus(status) = process.read("status").ok()?;
    // exe is unreadable for kernel threads, zombies and, without privilege, other users.
    let exe = process
        .exe()
        .ok()
        .map(|path| path.to_string_lossy().into_owned());
    let cmdline = process
        .read::<_, RawCmdline>("cmdline")
        .ok()
        .and_then(|cmdline| cmdline_from(&cmdline.raw, cmdline.truncated, redactor));
    Some(ProcessRecord {
        pid,
        ppid: u32::try_from(stat.ppid).unwrap_or(0),
        // The last of `NSpid:` is the pid in the process's own namespace (Linux 4.1+).
        ns_pid: status
            .nspid
            .and_then(|pids| u32::try_from(*pids.last()?).ok())
            .and_then(known_pid),
        comm: stat.comm,
        exe,
        cmdline,
        uid: status.ruid,
        gid: status.rgid,
        start_time_ns: Some(ticks_to_ns(stat.starttime, clk_tck)),
    })
}

/// 0 is what the kernel side gives when it could not read the pid, never a process's pid.
fn known_pid(pid: u32) -> Option<u32> {
    (pid != 0).then_some(pid)
}

/// Saturates rather than wraps: u64 ticks times 10^9 overflow u64 after some years of uptime.
fn ticks_to_ns(ticks: u64, clk_tck: u64) -> u64 {
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(clk_tck.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use proptest::prelude::*;

    use super::*;
    use crate::attribution::source::ProcReader;

    /// The host's processes, without cgroups.
    fn host() -> ProcReader {
        ProcReader::new(None)
    }

    /// Above the kernel's PID_MAX_LIMIT (2^22), so no test pid is ever found in /proc.
    const P: u32 = 5_000_000;

    fn exec(pid: u32, ppid: u32, comm: &str, ts_ns: u64) -> ExecInfo {
        ExecInfo {
            pid,
            ppid,
            ns_pid: pid,
            uid: 1000,
            gid: 1001,
            comm: comm.to_owned(),
            exe: format!("/usr/bin/{comm}"),
            argv_raw: format!("{comm}\0--flag\0").into_bytes(),
            argv_truncated: false,
            start_time_ns: ts_ns,
            ts_ns,
        }
    }

    fn fork(parent_pid: u32, child_pid: u32, ts_ns: u64) -> ForkInfo {
        ForkInfo {
            parent_pid,
            child_pid,
            // As if the child were pid 1 of a new pid namespace.
            child_ns_pid: 1,
            start_time_ns: ts_ns,
            ts_ns,
        }
    }

    fn exit(pid: u32, ts_ns: u64) -> ExitInfo {
        ExitInfo { pid, ts_ns }
    }

    fn comm(table: &ProcessTable, pid: u32) -> Option<&str> {
        table.get(pid).map(|record| record.comm.as_str())
    }

    fn exited(table: &ProcessTable, pid: u32) -> Option<u64> {
        table
            .entries
            .get(&pid)
            .and_then(|slotted| slotted.exited_ns)
    }

    fn pids(records: &[ProcessRecord]) -> Vec<u32> {
        records.iter().map(|record| record.pid).collect()
    }

    /// The index holds every entry exactly once, under its current rank.
    fn consistent(table: &ProcessTable) -> bool {
        table.by_rank.len() == table.entries.len()
            && table
                .entries
                .iter()
                .all(|(&pid, slotted)| table.by_rank.contains(&(slotted.rank(), pid)))
    }

    #[test]
    fn fork_exec_exit_then_reap_after_grace() {
        let mut table = ProcessTable::new(16, 100);
        table.exec(exec(P, 1, "bash", 10));
        table.fork(fork(P, P + 1, 20), &mut host());
        let child = table.get(P + 1).cloned();
        assert_eq!(
            child,
            Some(ProcessRecord {
                pid: P + 1,
                ppid: P,
                ns_pid: Some(1),
                comm: "bash".into(),
                exe: Some("/usr/bin/bash".into()),
                cmdline: Some(vec!["bash".into(), "--flag".into()]),
                uid: 1000,
                gid: 1001,
                start_time_ns: Some(20),
            })
        );

        let mut curl = exec(P + 1, P, "curl", 30);
        curl.start_time_ns = 20;
        table.exec(curl);
        let child = table.get(P + 1).cloned();
        assert_eq!(child.as_ref().map(|c| c.comm.as_str()), Some("curl"));
        assert_eq!(child.and_then(|c| c.start_time_ns), Some(20));

        table.exit(exit(P + 1, 40));
        assert_eq!(exited(&table, P + 1), Some(40));
        table.exit(exit(P + 1, 45));
        assert_eq!(exited(&table, P + 1), Some(40));

        table.reap(140);
        assert_eq!(
            comm(&table, P + 1),
            Some("curl"),
            "still within the grace period"
        );
        table.reap(141);
        assert_eq!(table.get(P + 1), None);
        assert_eq!(table.len(), 1);
        assert_eq!(table.evicted(), 0);
        assert!(consistent(&table));
    }

    enum Record {
        Exec(ExecInfo),
        Fork(ForkInfo),
        Exit(ExitInfo),
        Send(u32),
    }

    /// What the pipeline does with the ring buffer: apply each record in order and attribute a
    /// send by looking its pid up right then.
    fn attribute(table: &mut ProcessTable, buffer: Vec<Record>) -> Vec<Option<String>> {
        let mut senders = Vec::new();
        for record in buffer {
            match record {
                Record::Exec(e) => table.exec(e),
                Record::Fork(f) => table.fork(f, &mut host()),
                Record::Exit(x) => table.exit(x),
                Record::Send(pid) => senders.push(table.get(pid).map(|r| r.comm.clone())),
            }
        }
        senders
    }

    #[test]
    fn a_send_is_attributed_to_the_image_of_its_time() {
        let mut table = ProcessTable::new(16, 1_000);
        // The child sends twice, once before its exec and once after, and then exits; the whole
        // buffer is drained only after all of that has happened.
        let senders = attribute(
            &mut table,
            vec![
                Record::Exec(exec(P, 1, "bash", 1)),
                Record::Fork(fork(P, P + 1, 2)),
                Record::Send(P + 1),
                Record::Exec(exec(P + 1, P, "curl", 3)),
                Record::Send(P + 1),
                Record::Exit(exit(P + 1, 4)),
            ],
        );
        assert_eq!(senders, [Some("bash".to_owned()), Some("curl".to_owned())]);
        // Gone from the system, still in the table.
        assert_eq!(comm(&table, P + 1), Some("curl"));
    }

    #[test]
    fn full_table_evicts_longest_exited_then_least_recently_updated() {
        let mut table = ProcessTable::new(3, 1_000);
        table.exec(exec(P, 1, "a", 1));
        table.exec(exec(P + 1, 1, "b", 2));
        table.exec(exec(P + 2, 1, "c", 3));
        table.exit(exit(P + 1, 10));
        table.exit(exit(P, 11));

        table.exec(exec(P + 3, 1, "d", 12));
        assert_eq!(table.get(P + 1), None, "exited first");
        assert_eq!(comm(&table, P), Some("a"));
        assert_eq!(table.evicted(), 1);

        table.exec(exec(P + 4, 1, "e", 13));
        assert_eq!(table.get(P), None);
        assert_eq!(table.evicted(), 2);

        // All live now: the least recently updated goes, and an exec counts as an update.
        table.exec(exec(P + 3, 1, "d2", 14));
        table.exec(exec(P + 5, 1, "f", 15));
        assert_eq!(table.get(P + 2), None);
        table.exec(exec(P + 6, 1, "g", 16));
        assert_eq!(table.get(P + 4), None);
        assert_eq!(comm(&table, P + 3), Some("d2"));
        assert_eq!(table.evicted(), 4);
        assert_eq!(table.len(), 3);
        assert!(consistent(&table));
    }

    #[test]
    fn full_table_reaps_expired_entries_without_counting_them() {
        let mut table = ProcessTable::new(2, 10);
        table.exec(exec(P, 1, "a", 1));
        table.exec(exec(P + 1, 1, "b", 2));
        table.exit(exit(P, 3));
        table.exec(exec(P + 2, 1, "c", 20));
        assert_eq!(table.get(P), None);
        assert_eq!(table.len(), 2);
        assert_eq!(table.evicted(), 0);
    }

    #[test]
    fn capacity_zero_still_holds_one() {
        let mut table = ProcessTable::new(0, 10);
        table.exec(exec(P, 1, "a", 1));
        table.exec(exec(P + 1, 1, "b", 2));
        assert_eq!(table.len(), 1);
        assert_eq!(comm(&table, P + 1), Some("b"));
        assert_eq!(table.evicted(), 1);
    }

    #[test]
    fn reused_pid_replaces_the_old_entry() {
        let mut table = ProcessTable::new(16, 10);
        table.exec(exec(P, 1, "old", 1));
        table.exit(exit(P, 2));
        table.exec(exec(P, 1, "new", 3));
        assert_eq!(exited(&table, P), None);
        table.reap(1_000);
        assert_eq!(comm(&table, P), Some("new"), "no longer marked exited");

        // A fork onto a live pid: the kernel says the pid is a new process.
        table.exec(exec(P + 1, 7, "stale", 4));
        table.fork(fork(P, P + 1, 5), &mut host());
        let child = table.get(P + 1).cloned();
        assert_eq!(
            child.as_ref().map(|c| (c.comm.as_str(), c.ppid)),
            Some(("new", P))
        );
        assert_eq!(child.and_then(|c| c.start_time_ns), Some(5));

        // And onto an exited one.
        table.exit(exit(P + 1, 6));
        table.fork(fork(P, P + 1, 7), &mut host());
        assert_eq!(exited(&table, P + 1), None);
        assert_eq!(table.len(), 2);
        assert!(consistent(&table));
    }

    #[test]
    fn parents_are_nearest_first_up_to_pid_1() {
        let mut table = ProcessTable::new(64, 1_000);
        table.exec(exec(1, 0, "init", 1));
        table.exec(exec(P, 1, "sshd", 2));
        table.exec(exec(P + 1, P, "bash", 3));
        table.exec(exec(P + 2, P + 1, "curl", 4));
        assert_eq!(pids(&table.parents(P + 2)), [P + 1, P, 1]);
        // An exited parent within its grace period is still named.
        table.exit(exit(P + 1, 5));
        assert_eq!(pids(&table.parents(P + 2)), [P + 1, P, 1]);
        assert!(table.parents(1).is_empty());
        assert!(table.parents(P + 50).is_empty());
    }

    #[test]
    fn parents_stop_at_unknown_pids_loops_and_32_hops() {
        let mut table = ProcessTable::new(64, 1_000);
        table.exec(exec(P, P + 1, "orphan", 1));
        assert!(table.parents(P).is_empty());

        table.exec(exec(P + 10, P + 11, "a", 1));
        table.exec(exec(P + 11, P + 12, "b", 1));
        table.exec(exec(P + 12, P + 10, "c", 1));
        assert_eq!(pids(&table.parents(P + 10)), [P + 11, P + 12]);
        table.exec(exec(P + 13, P + 13, "self", 1));
        assert!(table.parents(P + 13).is_empty());

        for n in 0..40 {
            table.exec(exec(P + 100 + n, P + 101 + n, "deep", 1));
        }
        let chain = table.parents(P + 100);
        assert_eq!(chain.len(), MAX_PARENT_HOPS);
        assert_eq!(chain.first().map(|r| r.pid), Some(P + 101));
    }

    #[test]
    fn fork_loads_an_unknown_parent_from_proc_or_leaves_the_image_unknown() {
        let me = std::process::id();
        let mut table = ProcessTable::new(16, 1_000);
        table.fork(fork(me, P, 1), &mut host());
        let child = table.get(P).cloned();
        let exe = std::env::current_exe()
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        assert!(exe.is_some());
        assert_eq!(child.as_ref().and_then(|c| c.exe.clone()), exe);
        assert_eq!(child.map(|c| c.ppid), Some(me));
        assert!(table.get(me).is_some(), "the parent was loaded too");

        table.fork(fork(P + 1, P + 2, 2), &mut host());
        assert_eq!(
            table.get(P + 2).cloned(),
            Some(ProcessRecord {
                pid: P + 2,
                ppid: P + 1,
                ns_pid: Some(1),
                comm: String::new(),
                exe: None,
                cmdline: None,
                uid: UNKNOWN_ID,
                gid: UNKNOWN_ID,
                start_time_ns: Some(2),
            })
        );
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn exec_marks_cut_command_lines_and_redacts_them() {
        let mut table = ProcessTable::new(16, 1_000);
        let mut e = exec(P, 1, "curl", 1);
        e.argv_raw = b"curl\0-H\0X-aws-ec2-metadata-token: s3cret\0http://169.2".to_vec();
        e.argv_truncated = true;
        e.exe = String::new();
        table.exec(e);
        let record = table.get(P).cloned();
        assert_eq!(
            record.as_ref().and_then(|r| r.cmdline.clone()),
            Some(
                [
                    "curl",
                    "-H",
                    "X-aws-ec2-metadata-token: [redacted]",
                    "http://169.2",
                    "\u{2026}"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        assert_eq!(record.and_then(|r| r.exe), None);
    }

    #[test]
    fn cmdline_from_says_none_only_when_there_is_nothing() {
        let redactor = Redactor::default();
        assert_eq!(cmdline_from(b"", false, &redactor), None);
        assert_eq!(
            cmdline_from(b"", true, &redactor),
            Some(vec![TRUNCATED.to_owned()])
        );
        assert_eq!(
            cmdline_from(b"sleep\x001\0", false, &redactor),
            Some(vec!["sleep".into(), "1".into()])
        );
    }

    #[test]
    fn exit_time_stays_out_of_the_record() {
        let mut table = ProcessTable::new(4, 100);
        table.exec(exec(P, 1, "c", 5));
        table.exit(exit(P, 9));
        let record = table.get(P).map(|r| serde_json::to_value(r).unwrap());
        assert_eq!(
            record,
            Some(serde_json::json!({
                "pid": P, "ppid": 1, "ns_pid": P, "comm": "c", "exe": "/usr/bin/c",
                "cmdline": ["c", "--flag"], "uid": 1000, "gid": 1001, "start_time_ns": 5,
            }))
        );
    }

    #[test]
    fn an_unread_ns_pid_is_unknown() {
        let mut table = ProcessTable::new(4, 100);
        table.exec(ExecInfo {
            ns_pid: 0,
            ..exec(P, 1, "c", 5)
        });
        assert_eq!(table.get(P).and_then(|r| r.ns_pid), None);
    }

    #[test]
    fn ticks_become_nanoseconds() {
        assert_eq!(ticks_to_ns(150, 100), 1_500_000_000);
        assert_eq!(ticks_to_ns(3, 250), 12_000_000);
        assert_eq!(ticks_to_ns(u64::MAX, 100), u64::MAX);
        assert_eq!(ticks_to_ns(1, 0), 1_000_000_000);
    }

    #[test]
    fn seed_finds_this_process_and_init() {
        let mut table = ProcessTable::new(1 << 16, 0);
        table.seed(&mut host());
        assert!(table.len() >= 2);

        let me = table.get(std::process::id()).cloned().unwrap();
        assert_eq!(me.ppid, std::os::unix::process::parent_id());
        assert_eq!(me.ns_pid, Some(std::process::id()));
        let own_comm = fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(me.comm, own_comm.trim_end_matches('\n'));
        let exe = std::env::current_exe().unwrap();
        assert_eq!(me.exe, Some(exe.to_string_lossy().into_owned()));
        let argv0 = std::env::args().next();
        assert_eq!(
            me.cmdline.as_ref().and_then(|args| args.first().cloned()),
            argv0
        );
        let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
        assert_eq!((me.uid, me.gid), (uid.as_raw(), gid.as_raw()));

        let init = table.get(1).cloned().unwrap();
        assert_eq!(init.ppid, 0);
        assert!(!init.comm.is_empty());
        let (init_start, my_start) = (init.start_time_ns.unwrap(), me.start_time_ns.unwrap());
        assert!(my_start >= init_start && my_start > 0);

        assert_eq!(
            table.parents(std::process::id()).last().map(|r| r.pid),
            Some(1)
        );
        assert!(consistent(&table));
        assert_eq!(table.evicted(), 0);
    }

    #[test]
    fn a_process_named_in_bytes_that_are_not_utf8_is_loaded_with_its_ids() {
        use std::os::unix::ffi::OsStrExt;

        let dir = std::env::temp_dir().join(format!("imds-probe-comm-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // The kernel names a process after the file it exec'd: here, a link to sleep.
        let link = dir.join(std::ffi::OsStr::from_bytes(b"\xffprobe"));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        // `spawn` returns once the exec has happened.
        let mut child = std::process::Command::new(&link).arg("30").spawn().unwrap();
        let mut table = ProcessTable::new(4, 0);
        let record = table.get_or_load(child.id(), &mut host()).cloned();
        child.kill().unwrap();
        child.wait().unwrap();
        fs::remove_dir_all(&dir).unwrap();

        let record = record.expect("loaded");
        assert_eq!(record.comm, "\u{fffd}probe");
        assert_eq!(record.uid, nix::unistd::getuid().as_raw());
        assert_eq!(record.ppid, std::process::id());
    }

    #[test]
    fn get_or_load_reads_proc_once_and_only_what_exists() {
        let me = std::process::id();
        let mut table = ProcessTable::new(16, 0);
        assert!(
            table
                .get_or_load(me, &mut host())
                .is_some_and(|r| r.pid == me && !r.comm.is_empty())
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.get_or_load(P, &mut host()), None);
        assert_eq!(table.len(), 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Exec(u32, u32, Vec<u8>, bool, u64),
        Fork(u32, u32, u64),
        Exit(u32, u64),
        Reap(u64),
        Lookup(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        let pid = || (0u32..24).prop_map(|n| P + n);
        let ts = || 0u64..2_000;
        prop_oneof![
            (
                pid(),
                pid(),
                prop::collection::vec(any::<u8>(), 0..32),
                any::<bool>(),
                ts()
            )
                .prop_map(|(p, pp, argv, cut, t)| Op::Exec(p, pp, argv, cut, t)),
            (pid(), pid(), ts()).prop_map(|(parent, child, t)| Op::Fork(parent, child, t)),
            (pid(), ts()).prop_map(|(p, t)| Op::Exit(p, t)),
            ts().prop_map(Op::Reap),
            pid().prop_map(Op::Lookup),
        ]
    }

    fn apply(table: &mut ProcessTable, op: Op) {
        match op {
            Op::Exec(pid, ppid, argv_raw, argv_truncated, ts_ns) => table.exec(ExecInfo {
                argv_raw,
                argv_truncated,
                ..exec(pid, ppid, "x", ts_ns)
            }),
            Op::Fork(parent, child, ts_ns) => table.fork(fork(parent, child, ts_ns), &mut host()),
            Op::Exit(pid, ts_ns) => table.exit(exit(pid, ts_ns)),
            Op::Reap(now_ns) => table.reap(now_ns),
            Op::Lookup(pid) => {
                let chain = table.parents(pid);
                assert!(chain.len() <= MAX_PARENT_HOPS);
                let _ = table.get(pid);
            }
        }
    }

    proptest! {
        #[test]
        fn any_event_sequence_stays_bounded_and_indexed(
            capacity in 1usize..10,
            grace_ns in 0u64..500,
            ops in prop::collection::vec(op(), 0..200),
        ) {
            let mut table = ProcessTable::new(capacity, grace_ns);
            for op in ops {
                apply(&mut table, op);
                prop_assert!(table.len() <= capacity);
                prop_assert!(consistent(&table));
            }
        }
    }
}
