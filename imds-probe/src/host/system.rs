//! What the host must provide before programs can load: privileges, bpffs, a cgroup v2
//! hierarchy, and no memlock limit on old kernels. The daemon mounts what is missing rather
//! than failing, because early in boot nothing may have mounted them yet.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use nix::{mount::MsFlags, sys::resource};
use procfs::process::MountInfo;

const BPFFS: &str = "/sys/fs/bpf";
const LOCK_FILE: &str = "/run/imds-probe.lock";
/// Where we mount cgroup2 ourselves when no cgroup2 hierarchy is mounted anywhere.
const CGROUP2_FALLBACKS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "another imds-probe is running (it holds {LOCK_FILE}{}); one per host: a socket joins \
         only one daemon's socket hash",
        .0.map(|pid| format!(", pid {pid}")).unwrap_or_default()
    )]
    AlreadyRunning(Option<u32>),
    #[error(
        "no cgroup v2 hierarchy is mounted and mounting one failed ({0}); the sk_msg backend \
         needs cgroup2 (kernel 4.5+ with CONFIG_CGROUP_BPF)"
    )]
    NoCgroup2(String),
}

impl SystemError {
    pub fn from_io(what: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { what, source }
    }
}

pub fn prepare() -> Result<(), SystemError> {
    // Kernels before 5.11 charge BPF maps against RLIMIT_MEMLOCK.
    let _ = resource::setrlimit(
        resource::Resource::RLIMIT_MEMLOCK,
        resource::RLIM_INFINITY,
        resource::RLIM_INFINITY,
    );
    ensure_bpffs()?;
    ensure_tracefs();
    Ok(())
}

/// Tracepoint programs are attached by id, which the kernel publishes in tracefs. Best
/// effort: only the send hooks' close tracepoint needs it, and its absence is reported there.
fn ensure_tracefs() {
    const TRACEFS: &str = "/sys/kernel/tracing";
    let mounted = mounts_of("tracefs").map(|m| !m.is_empty()).unwrap_or(false);
    if mounted || !Path::new(TRACEFS).is_dir() {
        return;
    }
    match nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => tracing::info!("mounted tracefs on {TRACEFS}"),
        Err(e) => tracing::warn!("mounting tracefs on {TRACEFS} failed: {e}"),
    }
}

/// Holds the host-wide instance lock for as long as it lives.
pub struct InstanceLock(
    #[expect(dead_code, reason = "held for its Drop: closing releases the lock")] fs::File,
);

/// Takes the host-wide lock that keeps a second daemon from starting (and silently losing
/// connections to the first). The lock file records the holder's pid for the error message.
pub fn single_instance() -> Result<InstanceLock, SystemError> {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(LOCK_FILE)
        .map_err(SystemError::from_io("open /run/imds-probe.lock"))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(LOCK_FILE)
                .ok()
                .and_then(|pid| pid.trim().parse().ok());
            return Err(SystemError::AlreadyRunning(holder));
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(SystemError::from_io("lock /run/imds-probe.lock")(e));
        }
    }
    file.set_len(0)
        .and_then(|()| write!(file, "{}", std::process::id()))
        .map_err(SystemError::from_io("write /run/imds-probe.lock"))?;
    Ok(InstanceLock(file))
}

/// Mount points of a filesystem type, from /proc/self/mountinfo.
pub(crate) fn mounts_of(fstype: &str) -> Result<Vec<PathBuf>, SystemError> {
    let info = fs::read("/proc/self/mountinfo")
        .map_err(SystemError::from_io("read /proc/self/mountinfo"))?;
    Ok(parse_mounts(&String::from_utf8_lossy(&info), fstype))
}

/// Lines parsed by procfs, one at a time: its `mountinfo()` fails the whole table on a line
/// that is not UTF-8 (any mount point on the host may be), and leaves the escapes in paths.
fn parse_mounts(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| MountInfo::from_line(line).ok())
        .filter(|mount| mount.fs_type == fstype)
        .map(|mount| PathBuf::from(unescape_octal(&mount.mount_point.to_string_lossy())))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn ensure_bpffs() -> Result<(), SystemError> {
    if mounts_of("bpf")?.iter().any(|p| p == Path::new(BPFFS)) {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).map_err(SystemError::from_io("create /sys/fs/bpf"))?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| SystemError::Io {
        what: "mount bpffs on /sys/fs/bpf",
        source: e.into(),
    })?;
    tracing::info!("mounted bpffs on {BPFFS}");
    Ok(())
}

/// The root of the cgroup v2 hierarchy, mounted by us if nothing has mounted it yet.
pub fn cgroup2_root() -> Result<PathBuf, SystemError> {
    if let Some(root) = mounts_of("cgroup2")?.into_iter().next() {
        return Ok(root);
    }
    let mut errors = Vec::new();
    for candidate in CGROUP2_FALLBACKS {
        let occupied = fs::read_dir(candidate)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if occupied || fs::create_dir_all(candidate).is_err() {
            continue;
        }
        match nix::mount::mount(
            Some("cgroup2"),
            candidate,
            Some("cgroup2"),
            MsFlags::empty(),
            None::<&str>,
        ) {
            Ok(()) => {
                tracing::info!("mounted cgroup2 on {candidate}");
                return Ok(PathBuf::from(candidate));
            }
            Err(e) => errors.push(format!("{candidate}: {e}")),
        }
    }
    Err(SystemError::NoCgroup2(if errors.is_empty() {
        "no free mount point".into()
    } else {
        errors.join("; ")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_by_type_and_unescapes_paths() {
        let info = "\
25 30 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
26 30 0:24 / /sys/fs/bpf rw - bpf bpf rw,mode=700
27 30 0:25 / /mnt/with\\040space rw shared:1 - cgroup2 none rw
not a mount line
28 30 0:26 / /mnt/\u{fffd} rw - cgroup2 none rw
";
        assert_eq!(
            parse_mounts(info, "cgroup2"),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/mnt/with space"),
                PathBuf::from("/mnt/\u{fffd}")
            ]
        );
        assert_eq!(
            parse_mounts(info, "bpf"),
            vec![PathBuf::from("/sys/fs/bpf")]
        );
        assert!(parse_mounts(info, "tracefs").is_empty());
    }
}
