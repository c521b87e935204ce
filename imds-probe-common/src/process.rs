//! Process lifecycle records (exec, fork, exit) that keep user space's process table
//! current. They travel through the same ring buffer as the traffic, so user space applies
//! them in the order they happened relative to the sends.

use crate::record::RecordHeader;

/// Bytes of the exec'd file name kept (as passed to execve, e.g. /usr/bin/curl).
pub const EXEC_FILENAME_BYTES: usize = 256;
/// Bytes of the NUL-separated argument list kept; longer ones are marked truncated.
pub const EXEC_ARGS_BYTES: usize = 1024;

/// The programs have no CO-RE relocations, so user space finds these struct field offsets
/// in the running kernel's BTF and sets them as globals before loading. Each name is the
/// global's symbol; `struct.field` is what it holds the byte offset of.
pub const OFFSET_GLOBALS: [(&str, &str, &str); 11] = [
    ("OFF_TASK_PID", "task_struct", "pid"),
    ("OFF_TASK_TGID", "task_struct", "tgid"),
    ("OFF_TASK_REAL_PARENT", "task_struct", "real_parent"),
    ("OFF_TASK_MM", "task_struct", "mm"),
    ("OFF_TASK_START_BOOTTIME", "task_struct", "start_boottime"),
    ("OFF_TASK_THREAD_PID", "task_struct", "thread_pid"),
    ("OFF_PID_LEVEL", "pid", "level"),
    ("OFF_PID_NUMBERS", "pid", "numbers"),
    ("OFF_MM_ARG_START", "mm_struct", "arg_start"),
    ("OFF_MM_ARG_END", "mm_struct", "arg_end"),
    ("OFF_BPRM_FILENAME", "linux_binprm", "filename"),
];
/// Offsets the tcp_sendmsg hooks need, found the same way. iov_iter's type field, its iovec
/// pointer and the iter_type values changed across kernels; user space resolves those into
/// `OFF_ITER_TYPE`, `ITER_TYPE_BYTES`, `ITER_TYPE_MASK`, `OFF_ITER_IOV`, `OFF_ITER_UBUF`,
/// `ITER_IOVEC_VALUE` and `ITER_UBUF_VALUE`, and `OFF_SOCKET_INODE` (from a `struct socket`
/// to the inode allocated with it) (see the daemon's `capture::send_hook`).
pub const SEND_HOOK_GLOBALS: [(&str, &str, &str); 11] = [
    ("OFF_SKC_FAMILY", "sock_common", "skc_family"),
    ("OFF_SKC_DPORT", "sock_common", "skc_dport"),
    ("OFF_SKC_DADDR", "sock_common", "skc_daddr"),
    ("OFF_SKC_V6_DADDR", "sock_common", "skc_v6_daddr"),
    ("OFF_TCP_WRITE_SEQ", "tcp_sock", "write_seq"),
    ("OFF_MSGHDR_ITER", "msghdr", "msg_iter"),
    ("OFF_ITER_COUNT", "iov_iter", "count"),
    ("OFF_ITER_NR_SEGS", "iov_iter", "nr_segs"),
    // A connection's identity (see the kernel side's `send_hook::identity`).
    ("OFF_SK_SOCKET", "sock", "sk_socket"),
    ("OFF_SKC_NUM", "sock_common", "skc_num"),
    ("OFF_INODE_INO", "inode", "i_ino"),
];
/// Set to 1 once the send hooks' offsets are filled in.
pub const SEND_HOOK_READY_GLOBAL: &str = "SEND_HOOK_READY";

/// Set to 1 once the offsets are filled in; the programs do nothing before that.
pub const OFFSETS_READY_GLOBAL: &str = "OFFSETS_READY";

/// `struct upid { int nr; struct pid_namespace *ns; }`: unchanged since 2.6.
pub const UPID_BYTES: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecRecord {
    pub header: RecordHeader,
    pub start_boottime_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The pid inside the process's own pid namespace (equal to `pid` in the host's).
    pub ns_pid: u32,
    pub filename_len: u32,
    pub args_len: u32,
    /// Non-zero when the arguments were longer than `EXEC_ARGS_BYTES`.
    pub args_truncated: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
    pub filename: [u8; EXEC_FILENAME_BYTES],
    pub args: [u8; EXEC_ARGS_BYTES],
}

const _: () =
    assert!(core::mem::size_of::<ExecRecord>() == 80 + EXEC_FILENAME_BYTES + EXEC_ARGS_BYTES);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ForkRecord {
    pub header: RecordHeader,
    pub start_boottime_ns: u64,
    pub parent_pid: u32,
    pub child_pid: u32,
    pub child_ns_pid: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ForkRecord>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitRecord {
    pub header: RecordHeader,
    pub pid: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<ExitRecord>() == 24);

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, integers and byte arrays only, no padding the compiler may leave
// uninitialised (explicit `_pad` fields): every bit pattern is a valid value.
unsafe impl aya::Pod for ExecRecord {}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, integers and byte arrays only, no padding the compiler may leave
// uninitialised (explicit `_pad` fields): every bit pattern is a valid value.
unsafe impl aya::Pod for ForkRecord {}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, integers and byte arrays only, no padding the compiler may leave
// uninitialised (explicit `_pad` fields): every bit pattern is a valid value.
unsafe impl aya::Pod for ExitRecord {}
