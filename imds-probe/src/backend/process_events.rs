//! Process exec/fork/exit tracking, shared by every backend: raw tracepoints on the sched
//! events, with the task_struct field offsets they need found in the kernel's BTF. Without
//! BTF the daemon still runs and names callers from /proc, which misses processes that exit
//! before they are looked up; it says so in its log.

use aya::{Ebpf, programs::RawTracePoint};
use imds_probe_common::process::OFFSET_GLOBALS;

use super::LoadError;
use crate::btf_offsets::Btf;

const PROGRAMS: [(&str, &str); 3] = [
    ("imds_process_exec", "sched_process_exec"),
    ("imds_process_fork", "sched_process_fork"),
    ("imds_process_exit", "sched_process_exit"),
];

/// The offsets for `OFFSET_GLOBALS`, or None (logged) when BTF lacks any of them.
pub fn kernel_offsets() -> Option<Vec<(&'static str, u32)>> {
    let btf = match Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(e) => {
            tracing::warn!("no kernel BTF ({e}): callers are named from /proc only");
            return None;
        }
    };
    let offsets: Result<Vec<_>, _> = OFFSET_GLOBALS
        .iter()
        .map(|&(global, strukt, member)| {
            btf.member_offset(strukt, member)
                .map(|offset| (global, offset))
        })
        .collect();
    offsets
        .inspect_err(|e| tracing::warn!("kernel BTF lacks a field process tracking needs ({e}): callers are named from /proc only"))
        .ok()
}

pub fn attach(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    for (name, tracepoint) in PROGRAMS {
        let program: &mut RawTracePoint = ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram(name))?
            .try_into()
            .map_err(super::program_error(name, "find"))?;
        program.load().map_err(super::program_error(name, "load"))?;
        program
            .attach(tracepoint)
            .map_err(super::program_error(name, "attach"))?;
    }
    Ok(())
}
