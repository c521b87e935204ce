//! Program runs the kernel skipped. The kernel does not run a tracing program that is already
//! running on the same CPU (and, for kprobes and classic tracepoints, any other such program):
//! a send or a close that happened then was never seen. It counts each skip in the program's
//! `recursion_misses`, which the daemon sums over its programs and reports in `loss` as
//! `program_runs_missed`. Not every kernel counts every kind of skip: 5.10 has no such
//! counter, and kprobes and classic tracepoints got theirs later than fentry (5.12).
//!
//! Read from `/proc/self/fdinfo/<program fd>`, where the kernel prints the same counter it puts
//! in `bpf_prog_info`: no unsafe syscall wrapper, and a kernel that predates the counter just
//! prints no line for it.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::Ebpf;

/// Skipped runs of every loaded program of `ebpf`, or None if a program's count could not be
/// read (the caller keeps its last value: a lower count would look like a reset).
pub fn program_runs_missed(ebpf: &Ebpf) -> Option<u64> {
    let mut total = 0;
    for (_, program) in ebpf.programs() {
        // Programs of the object that this backend never loaded have no fd and never ran.
        let Ok(fd) = program.fd() else { continue };
        let fd = fd.as_fd().as_raw_fd();
        let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .inspect_err(|error| tracing::warn!(fd, %error, "reading a program's fdinfo failed"))
            .ok()?;
        total += recursion_misses(&info);
    }
    Some(total)
}

/// The `recursion_misses` line of a BPF program's fdinfo; 0 where the kernel has none.
fn recursion_misses(fdinfo: &str) -> u64 {
    fdinfo
        .lines()
        .find_map(|line| line.strip_prefix("recursion_misses:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counter_and_takes_its_absence_as_zero() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nprog_tag:\tab\nprog_id:\t3\n\
                    run_time_ns:\t77\nrun_cnt:\t9\nrecursion_misses:\t4\nverified_insns:\t1\n";
        assert_eq!(recursion_misses(info), 4);
        // 5.10 prints no such line: nothing counted is nothing missed that we can know of.
        assert_eq!(recursion_misses("prog_type:\t5\nrun_cnt:\t9\n"), 0);
    }
}
