//! Raw tracepoints on process exec, fork and exit feed user space's process table, so a
//! caller is named from what it was at the time of its send, even if it is gone by the time
//! user space looks. Raw tracepoints, not kprobes: they exist on every kernel we target,
//! load on kernels without kprobes, and pass the task pointers directly.
//!
//! Struct field offsets come from user space (found in the running kernel's BTF), set as
//! globals before load; `OFFSETS_READY` stays 0 if they could not be found, and then these
//! programs emit nothing and user space falls back to /proc.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use imds_probe_common::{
    loss::LOSS_RING_BUFFER_PROCESS,
    process::{EXEC_ARGS_BYTES, ExecRecord, ExitRecord, ForkRecord, UPID_BYTES},
    record::{KIND_EXEC, KIND_EXIT, KIND_FORK},
};

/// Unread bytes past which a process record wakes the reader. Below it, process records do
/// not wake it: sends do (the reader takes every record before a send), and the reader also
/// drains once a second, so an idle host and a fork-heavy one do not pay a wake-up per
/// process for a reader that only needs the records when a send arrives. 256 KiB is 1/16 of
/// the ring buffer (about 180 exec records, 5,000 forks or exits): a storm wakes the reader
/// long before the buffer fills.
const WAKE_ABOVE_BYTES: u64 = 256 * 1024;

use crate::{
    diagnostics,
    emit::header,
    kernel::{global, read, read_ptr},
    maps::{EVENTS, count_loss},
};

// Prototypes (include/trace/events/sched.h), which fix the raw arguments' order:
//   sched_process_fork(struct task_struct *parent, struct task_struct *child)
//   sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
//   sched_process_exit(struct task_struct *p [, bool group_dead on 6.16+])

crate::offset_globals!(
    OFFSETS_READY,
    OFF_TASK_PID,
    OFF_TASK_TGID,
    OFF_TASK_REAL_PARENT,
    OFF_TASK_MM,
    OFF_TASK_START_BOOTTIME,
    OFF_TASK_THREAD_PID,
    OFF_PID_LEVEL,
    OFF_PID_NUMBERS,
    OFF_MM_ARG_START,
    OFF_MM_ARG_END,
    OFF_BPRM_FILENAME,
);

/// The task's pid as its own pid namespace numbers it: `thread_pid->numbers[level].nr`.
#[inline(always)]
fn ns_pid(task: *const u8) -> u32 {
    let pid = read_ptr(task, global(&OFF_TASK_THREAD_PID));
    let level: u32 = read(pid, global(&OFF_PID_LEVEL));
    // Pid namespaces nest at most 32 deep; the mask keeps the verifier's bound obvious.
    read(pid, global(&OFF_PID_NUMBERS) + (level & 31) * UPID_BYTES)
}

#[inline(always)]
fn parent_tgid(task: *const u8) -> u32 {
    read(
        read_ptr(task, global(&OFF_TASK_REAL_PARENT)),
        global(&OFF_TASK_TGID),
    )
}

#[raw_tracepoint(tracepoint = "sched_process_fork")]
// Inlined into the macro's entry point: an outlined body would be a global BPF
// function, whose BTF-typed arguments kernels before 6.6 refuse.
#[inline(always)]
pub fn imds_process_fork(ctx: RawTracePointContext) -> i32 {
    if global(&OFFSETS_READY) == 0 {
        return 0;
    }
    let child: *const u8 = ctx.arg::<u64>(1) as *const u8;
    let (pid, tgid): (u32, u32) = (
        read(child, global(&OFF_TASK_PID)),
        read(child, global(&OFF_TASK_TGID)),
    );
    if pid != tgid {
        // A new thread, not a new process: threads resolve to their process.
        return 0;
    }
    let record = ForkRecord {
        header: header(KIND_FORK, 0),
        start_boottime_ns: read(child, global(&OFF_TASK_START_BOOTTIME)),
        parent_pid: parent_tgid(child),
        child_pid: tgid,
        child_ns_pid: ns_pid(child),
        _pad: 0,
    };
    output(record);
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
// Inlined into the macro's entry point: an outlined body would be a global BPF
// function, whose BTF-typed arguments kernels before 6.6 refuse.
#[inline(always)]
pub fn imds_process_exit(_ctx: RawTracePointContext) -> i32 {
    if global(&OFFSETS_READY) == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    if tgid != tid {
        return 0;
    }
    let record = ExitRecord {
        header: header(KIND_EXIT, 0),
        pid: tgid,
        _pad: 0,
    };
    output(record);
    0
}

/// Whether this process record wakes the reader (see WAKE_ABOVE_BYTES). bpf_ringbuf_query
/// is there since 5.8, like the ring buffer itself.
#[inline(always)]
fn wakeup() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= WAKE_ABOVE_BYTES {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// Queues a fixed-size process record.
#[inline(always)]
fn output<T>(record: T) {
    if EVENTS.output::<T>(record, wakeup()).is_err() {
        count_loss(LOSS_RING_BUFFER_PROCESS);
        diagnostics::ring_buffer_full("process", size_of::<T>() as u32);
    }
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
// Inlined into the macro's entry point: an outlined body would be a global BPF
// function, whose BTF-typed arguments kernels before 6.6 refuse.
#[inline(always)]
pub fn imds_process_exec(ctx: RawTracePointContext) -> i32 {
    if global(&OFFSETS_READY) == 0 {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<ExecRecord>(0) else {
        count_loss(LOSS_RING_BUFFER_PROCESS);
        diagnostics::ring_buffer_full("exec", size_of::<ExecRecord>() as u32);
        return 0;
    };
    let task: *const u8 = ctx.arg::<u64>(0) as *const u8;
    let bprm: *const u8 = ctx.arg::<u64>(2) as *const u8;
    let record = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let mm = read_ptr(task, global(&OFF_TASK_MM));
    let (arg_start, arg_end): (u64, u64) = (
        read(mm, global(&OFF_MM_ARG_START)),
        read(mm, global(&OFF_MM_ARG_END)),
    );
    let args_total = arg_end.saturating_sub(arg_start);
    let args_len = if args_total > EXEC_ARGS_BYTES as u64 {
        EXEC_ARGS_BYTES as u32
    } else {
        args_total as u32
    };
    // SAFETY: `record` is a live reservation of an ExecRecord; every copy is bounded by the
    // size of the field it fills, and the probe_read helpers validate their sources.
    unsafe {
        (*record).header = header(KIND_EXEC, 0);
        (*record).start_boottime_ns = read(task, global(&OFF_TASK_START_BOOTTIME));
        (*record).pid = (pid_tgid >> 32) as u32;
        (*record).tid = pid_tgid as u32;
        (*record).ppid = parent_tgid(task);
        (*record).uid = uid_gid as u32;
        (*record).gid = (uid_gid >> 32) as u32;
        (*record).ns_pid = ns_pid(task);
        (*record).comm = bpf_get_current_comm().unwrap_or_default();
        let filename = read_ptr(bprm, global(&OFF_BPRM_FILENAME));
        let copied = bpf_probe_read_kernel_str(
            (*record).filename.as_mut_ptr().cast(),
            (*record).filename.len() as u32,
            filename.cast(),
        );
        (*record).filename_len = if copied > 0 { copied as u32 - 1 } else { 0 };
        let ok = bpf_probe_read_user(
            (*record).args.as_mut_ptr().cast(),
            args_len,
            arg_start as *const _,
        ) == 0;
        (*record).args_len = if ok { args_len } else { 0 };
        (*record).args_truncated = u32::from(args_total > EXEC_ARGS_BYTES as u64);
        (*record)._pad = 0;
    }
    entry.submit(wakeup());
    0
}
