//! What the daemon needs of the machine before and while it captures: privileges, bpffs,
//! cgroup2 and tracefs mounts, the host-wide instance lock (`system`), the capabilities it runs
//! with (`privileges`), sd_notify (`notify`), the modes of the files it writes
//! (`private_files`), the allocator's tuning (`allocator`), and who this host is, from the
//! IMDS (`identity`).

pub mod allocator;
pub mod identity;
pub mod notify;
pub mod private_files;
pub mod privileges;
pub mod system;
