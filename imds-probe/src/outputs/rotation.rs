//! The event log file, bounded: before a line would take it past `max_bytes` it is rotated
//! by rename (`events.jsonl` -> `events.jsonl.1` -> `.2` ..., the oldest beyond `keep`
//! overwritten), which the CloudWatch agent follows. `reopen` (SIGHUP) serves logrotate
//! users who rotate it themselves. Every file it opens is a private one (see
//! `host::private_files`): command lines can hold secrets.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
};

use crate::host::private_files::PrivateFiles;

/// Output buffer: events are one to a few KiB, so the default 8 KiB would mean a write(2)
/// every few events.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

pub struct RotatingFile {
    files: PrivateFiles,
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    pub fn open(files: PrivateFiles, path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let (file, size) = open_append(&files, path)?;
        Ok(Self {
            files,
            path: path.to_owned(),
            max_bytes,
            keep: keep.max(1),
            file,
            size,
        })
    }

    /// Writes one line (with its newline), rotating first if it would not fit.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Opens the path again: after logrotate moved the file away, the next lines go to a new
    /// one.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file.flush()?;
        (self.file, self.size) = open_append(&self.files, &self.path)?;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..self.keep).rev() {
            match fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.path, numbered(1))?;
        self.reopen()
    }
}

fn open_append(files: &PrivateFiles, path: &Path) -> io::Result<(BufWriter<File>, u64)> {
    let file = files.open_append(path)?;
    let size = file.metadata()?.len();
    Ok((BufWriter::with_capacity(WRITE_BUFFER_BYTES, file), size))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn rotates_by_rename_and_keeps_so_many() {
        let dir = std::env::temp_dir().join(format!("imds-probe-rotation-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("events.jsonl");
        let mut file = RotatingFile::open(PrivateFiles::default(), &path, 10, 2).unwrap();
        for line in [
            "aaaa\n", "bbbb\n", "cccc\n", "dddd\n", "eeee\n", "ffff\n", "gggg\n",
        ] {
            file.write_line(line.as_bytes()).unwrap();
        }
        file.flush().unwrap();
        let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("events.jsonl"), "gggg\n");
        assert_eq!(read("events.jsonl.1"), "eeee\nffff\n");
        assert_eq!(read("events.jsonl.2"), "cccc\ndddd\n");
        assert!(!dir.join("events.jsonl.3").exists());
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o007, 0, "not world-readable: {mode:o}");

        // logrotate moved it away: a reopen starts a new file.
        fs::rename(&path, dir.join("moved")).unwrap();
        file.reopen().unwrap();
        file.write_line(b"hhhh\n").unwrap();
        file.flush().unwrap();
        assert_eq!(read("events.jsonl"), "hhhh\n");
        fs::remove_dir_all(dir).unwrap();
    }
}
