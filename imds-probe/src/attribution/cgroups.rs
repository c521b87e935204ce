//! cgroup v2 ids (what the kernel reports at send time) to paths. A cgroup v2 id is also
//! the kernfs file handle of its directory, so `open_by_handle_at` on the hierarchy's root
//! opens it directly and /proc/self/fd names it: one lookup per new cgroup, no tree walks.
//! Answers are cached; the cache is bounded and cleared when full.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use super::proc_fs;

const CACHE_CAPACITY: usize = 16_384;
/// FILEID_KERNFS: the handle type of kernfs (and so cgroupfs) files.
const FILEID_KERNFS: i32 = 0xfe;

pub struct CgroupResolver {
    root: Option<(PathBuf, File)>,
    paths: HashMap<u64, Option<String>>,
    /// Whether a failed open was logged: once per run is enough to explain every null.
    open_failure_logged: bool,
}

impl CgroupResolver {
    pub fn new(root: Option<PathBuf>) -> Self {
        let root = root.and_then(|path| File::open(&path).ok().map(|dir| (path, dir)));
        Self {
            root,
            paths: HashMap::new(),
            open_failure_logged: false,
        }
    }

    /// The cgroup's path relative to the hierarchy's root ("/system.slice/x.service").
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return path.clone();
        }
        let (root_path, root) = self.root.as_ref()?;
        let path = match open_by_id(root, id) {
            Ok(dir) => std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
                .ok()
                .and_then(|target| relative(root_path, &target)),
            // A cgroup removed since the send: nothing to say about it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                if !std::mem::replace(&mut self.open_failure_logged, true) {
                    tracing::warn!(
                        "cannot open cgroups by id ({e}; needs CAP_DAC_READ_SEARCH): events' cgroup, systemd_unit and container will be null"
                    );
                }
                None
            }
        };
        if self.paths.len() >= CACHE_CAPACITY {
            self.paths.clear();
        }
        self.paths.insert(id, path.clone());
        path
    }

    /// The cgroup v2 id of a process, from /proc/<pid>/cgroup: its directory's inode number.
    pub fn id_of_process(&self, pid: u32) -> Option<u64> {
        let (root_path, _) = self.root.as_ref()?;
        let cgroups = proc_fs::process(pid)?.cgroups().ok()?;
        // The v2 line, "0::/system.slice/x.service", beside any v1 hierarchies.
        let unified = cgroups.into_iter().find(|cgroup| cgroup.hierarchy == 0)?;
        let dir = root_path.join(unified.pathname.trim_start_matches('/'));
        Some(std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(dir).ok()?,
        ))
    }
}

fn open_by_id(root: &File, id: u64) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `handle` is laid out as a `struct file_handle` with 8 bytes of f_handle, as
    // `handle_bytes` says; `root` is an open directory on the cgroup2 mount.
    let fd = unsafe {
        libc::open_by_handle_at(
            root.as_raw_fd(),
            (&raw mut handle).cast(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a non-negative return is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// "/sys/fs/cgroup/system.slice/x.service" under root "/sys/fs/cgroup" -> "/system.slice/x.service".
fn relative(root: &Path, target: &Path) -> Option<String> {
    let rest = target.strip_prefix(root).ok()?;
    Some(format!("/{}", rest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cgroup_id_is_its_directory_inode() {
        let mounts = crate::host::system::mounts_of("cgroup2").unwrap();
        let Some(root) = mounts.into_iter().next() else {
            eprintln!("skipped: no cgroup2 mount");
            return;
        };
        let me = std::process::id();
        let text = std::fs::read_to_string(format!("/proc/{me}/cgroup")).unwrap();
        let path = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(root.join(path.trim_start_matches('/'))).unwrap(),
        );
        let resolver = CgroupResolver::new(Some(root));
        assert_eq!(resolver.id_of_process(me), Some(inode));
        assert_eq!(resolver.id_of_process(u32::MAX), None);
    }

    #[test]
    fn paths_are_relative_to_the_root() {
        let root = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(
            relative(root, Path::new("/sys/fs/cgroup/unified")).as_deref(),
            Some("/")
        );
        assert_eq!(
            relative(
                root,
                Path::new("/sys/fs/cgroup/unified/system.slice/a.service")
            )
            .as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(relative(root, Path::new("/elsewhere")), None);
    }
}
