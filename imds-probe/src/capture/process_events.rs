//! Process exec/fork/exit tracking, shared by every backend: raw tracepoints on the sched
//! events, with the task_struct field offsets they need found in the kernel's BTF. Without
//! BTF the daemon still runs and names callers from /proc, which misses processes that exit
//! before they are looked up; it says so in its log.

use aya::{Ebpf, programs::RawTracePoint};
use imds_probe_common::process::OFFSET_GLOBALS;

use super::LoadError;
use crate::capture::btf_offsets::Btf;

const PROGRAMS: [(&str, &str); 3] = [
    ("imds_process_exec", "sched_process_exec"),
    ("imds_process_fork", "sched_process_fork"),
    ("imds_process_exit", "sched_process_exit"),
];

/// The offsets for `OFFSET_GLOBALS`, or None (logged) when BTF lacks any of them.
pub fn kernel_offsets(btf: &Btf) -> Option<Vec<(&'static str, u32)>> {
    btf.member_offsets(&OFFSET_GLOBALS)
        .inspect_err(|e| {
            tracing::warn!("kernel BTF lacks a field process tracking needs ({e}): callers are named from /proc only")
        })
        .ok()
}

pub fn attach(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    for (name, tracepoint) in PROGRAMS {
        let program: &mut RawTracePoint = super::program(ebpf, name)?;
        program.load().map_err(super::program_error(name, "load"))?;
        program
            .attach(tracepoint)
            .map_err(super::program_error(name, "attach"))?;
    }
    Ok(())
}
