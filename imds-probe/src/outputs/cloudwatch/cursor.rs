//! How far into a file CloudWatch has accepted: the file (by inode) and the byte offset after
//! the last accepted line. Written after every accepted batch, whole, then renamed (fsync
//! before the rename), so a restart, a crash or a reboot resumes exactly there: nothing
//! accepted is sent twice, nothing written is skipped. (A crash between CloudWatch's answer
//! and the rename sends that one batch again.)

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Bumped when the layout changes; an older daemon's cursor is still read.
const VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub version: u32,
    /// The file the offset is in: a rotated-away file keeps its inode under its new name.
    pub inode: u64,
    pub offset: u64,
}

impl Cursor {
    pub fn at(inode: u64, offset: u64) -> Self {
        Self {
            version: VERSION,
            inode,
            offset,
        }
    }
}

/// A cursor file, loaded at start and stored after each accepted batch.
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored cursor; none if there is none yet. A damaged one is set aside (renamed to
    /// `.damaged`) with a warning, never fatal: shipping starts over from the file's start.
    pub fn load(&self) -> Option<Cursor> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the CloudWatch cursor: shipping starts at the file's start");
                return None;
            }
        };
        match serde_json::from_slice::<Cursor>(&bytes) {
            Ok(cursor) => Some(cursor),
            Err(e) => {
                let aside = self.path.with_extension("damaged");
                let _ = fs::rename(&self.path, &aside);
                tracing::warn!(path = %self.path.display(), aside = %aside.display(), error = %e, "the CloudWatch cursor is damaged and was set aside: shipping starts at the file's start");
                None
            }
        }
    }

    /// Writes the cursor whole and renames it into place; readable by root only.
    pub fn store(&self, cursor: &Cursor) -> io::Result<()> {
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent)?;
        }
        let temporary = self.path.with_extension("tmp");
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&serde_json::to_vec(cursor).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&temporary, &self.path)?;
        // The rename itself is durable once the directory is.
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

/// The inode of the file at `path`.
pub fn inode(path: &Path) -> io::Result<u64> {
    fs::metadata(path).map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("imds-probe-cursor-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn stores_and_loads_privately() {
        let dir = dir("roundtrip");
        let file = CursorFile::new(dir.join("state/events.cursor"));
        assert_eq!(file.load(), None);
        file.store(&Cursor::at(42, 1234)).unwrap();
        assert_eq!(file.load(), Some(Cursor::at(42, 1234)));
        file.store(&Cursor::at(42, 5678)).unwrap();
        assert_eq!(file.load(), Some(Cursor::at(42, 5678)));
        let mode = fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_cursor_is_set_aside() {
        let dir = dir("damaged");
        fs::create_dir_all(&dir).unwrap();
        let file = CursorFile::new(dir.join("events.cursor"));
        fs::write(file.path(), b"{\"version\":1,\"ino").unwrap();
        assert_eq!(file.load(), None);
        assert!(dir.join("events.damaged").exists());
        assert!(!file.path().exists());
        fs::remove_dir_all(dir).unwrap();
    }
}
