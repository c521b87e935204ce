//! Files and directories the daemon writes, readable by root and one group at most. Events
//! name every caller on the host, their command lines and users: that is for the security
//! team, not for any local user. The group (`--output-group`) is for a reader that does not
//! run as root, such as the CloudWatch agent's user.

use std::{
    fs::{self, DirBuilder, File, OpenOptions, Permissions},
    io,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _, fchown},
    path::{Path, PathBuf},
};

use nix::{
    sys::stat::{Mode, umask},
    unistd::Group,
};

/// Files: owner read-write, group read.
pub const FILE_MODE: u32 = 0o640;
/// Directories the daemon creates: owner all, group list and enter.
pub const DIR_MODE: u32 = 0o750;

#[derive(Debug, thiserror::Error)]
pub enum PrivateFilesError {
    #[error("no group named {0}")]
    NoSuchGroup(String),
    #[error("looking up group {name}")]
    GroupLookup {
        name: String,
        #[source]
        source: nix::Error,
    },
}

/// Where the daemon's files go and who may read them.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrivateFiles {
    /// The group given read access; None leaves files to root (the owner's group, unread).
    group: Option<u32>,
}

impl PrivateFiles {
    /// `group` is a group name or a numeric gid.
    pub fn new(group: Option<&str>) -> Result<Self, PrivateFilesError> {
        let group = group.map(resolve_group).transpose()?;
        Ok(Self { group })
    }

    /// From now on nothing this process creates is readable by others, whoever creates it
    /// (the lock file, a crate's temporary file): the modes below only narrow further.
    pub fn restrict_process_umask() {
        umask(Mode::from_bits_truncate(0o027));
    }

    /// Opens `path` for appending, creating it and its missing parents. An existing file is
    /// brought to the mode and group too: an older run or an operator may have made it wider.
    pub fn open_append(&self, path: &Path) -> io::Result<File> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.create_dir_all(parent)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(path)?;
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
        fchown(&file, None, self.group)?;
        Ok(file)
    }

    /// Creates `dir` and its missing parents with `DIR_MODE` and the group. Directories that
    /// exist already (`/var/log`) are left as they are: they are not ours.
    pub fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut missing: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|ancestor| !ancestor.as_os_str().is_empty() && !ancestor.exists())
            .map(Path::to_owned)
            .collect();
        missing.reverse();
        let mut builder = DirBuilder::new();
        builder.mode(DIR_MODE);
        for dir in missing {
            match builder.create(&dir) {
                // Another process made it first: then it is not ours to change.
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                result => result?,
            }
            // The umask may have taken group bits away; the mode is what we say it is.
            fs::set_permissions(&dir, Permissions::from_mode(DIR_MODE))?;
            std::os::unix::fs::chown(&dir, None, self.group)?;
        }
        Ok(())
    }
}

fn resolve_group(name: &str) -> Result<u32, PrivateFilesError> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(PrivateFilesError::NoSuchGroup(name.to_owned())),
        Err(source) => Err(PrivateFilesError::GroupLookup {
            name: name.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn files_and_new_directories_are_closed_to_others() {
        let root = std::env::temp_dir().join(format!("imds-probe-private-{}", std::process::id()));
        let path = root.join("a/b/events.jsonl");
        // Our own group: any process may give its files to it.
        let gid = nix::unistd::getegid().as_raw();
        let files = PrivateFiles::new(Some(&gid.to_string())).unwrap();
        files.open_append(&path).unwrap();
        assert_eq!(mode(&path), FILE_MODE);
        assert_eq!(mode(&root.join("a")), DIR_MODE);
        assert_eq!(mode(&root.join("a/b")), DIR_MODE);
        assert_eq!(fs::metadata(&path).unwrap().gid(), gid);
        // A file made wider by someone else is narrowed again.
        fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        files.open_append(&path).unwrap();
        assert_eq!(mode(&path), FILE_MODE);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn groups_are_named_or_numbered() {
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(matches!(
            resolve_group("no-such-group-imds"),
            Err(PrivateFilesError::NoSuchGroup(_))
        ));
    }
}
