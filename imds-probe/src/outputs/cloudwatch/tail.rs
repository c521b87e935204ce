//! Reading a file the daemon appends to, from a cursor, across rotation: the file is the
//! shipping buffer. A file rotated by rename keeps its inode under `PATH.1`, so what was not
//! yet shipped from it is read from there before the new file's start.

use std::{
    fs::File,
    io::{self, Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::cursor::Cursor;

/// Bytes read at once: a full batch (1 MiB) and then some, so a batch is rarely cut short by
/// the read rather than by its limits.
pub const READ_BYTES: usize = 2 * 1024 * 1024;

pub struct Tail {
    path: PathBuf,
    cursor: Cursor,
    /// The previous read ended inside a line longer than a read: the rest of it is skipped.
    in_oversized_line: bool,
}

/// What a read found after the cursor.
#[derive(Debug, Default)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    /// Lines skipped on the way (an oversized line's start): counted as lost.
    pub skipped: u64,
}

impl Tail {
    pub fn new(path: PathBuf, cursor: Option<Cursor>) -> Self {
        Self {
            path,
            cursor: cursor.unwrap_or_default(),
            in_oversized_line: false,
        }
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// The bytes after the cursor, at most `READ_BYTES`; empty when there is nothing new.
    pub fn read(&mut self) -> io::Result<Chunk> {
        let Some(mut file) = self.open_at_cursor()? else {
            return Ok(Chunk::default());
        };
        file.seek(SeekFrom::Start(self.cursor.offset))?;
        let mut bytes = Vec::new();
        file.take(READ_BYTES as u64).read_to_end(&mut bytes)?;
        let mut skipped = 0;
        if self.in_oversized_line {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.in_oversized_line = false;
                    self.cursor.offset += end as u64 + 1;
                    bytes.drain(..=end);
                }
                None => {
                    self.cursor.offset += bytes.len() as u64;
                    bytes.clear();
                }
            }
        } else if bytes.len() == READ_BYTES && !bytes.contains(&b'\n') {
            // A line longer than any event can be: skip it, whatever its length.
            self.in_oversized_line = true;
            self.cursor.offset += bytes.len() as u64;
            bytes.clear();
            skipped = 1;
        }
        Ok(Chunk { bytes, skipped })
    }

    /// The cursor moves past `consumed` bytes of the last chunk, once CloudWatch has them.
    pub fn advance(&mut self, consumed: usize) {
        self.cursor.offset += consumed as u64;
    }

    /// Opens the file the cursor is in, moving the cursor on when that file is done with.
    fn open_at_cursor(&mut self) -> io::Result<Option<File>> {
        let current = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = current.metadata()?;
        if self.cursor.inode == 0 {
            // Never shipped before: everything the file holds goes.
            self.cursor = Cursor::at(meta.ino(), 0);
        }
        if self.cursor.inode == meta.ino() {
            if meta.len() < self.cursor.offset {
                tracing::warn!(path = %self.path.display(), "the file shrank under the CloudWatch cursor (truncated?): shipping from its start");
                self.cursor = Cursor::at(meta.ino(), 0);
            }
            return Ok(Some(current));
        }
        // The cursor's file was rotated away: finish it first.
        let rotated = rotated_path(&self.path);
        if let Ok(old) = File::open(&rotated) {
            let old_meta = old.metadata()?;
            if old_meta.ino() == self.cursor.inode && old_meta.len() > self.cursor.offset {
                return Ok(Some(old));
            }
            if old_meta.ino() != self.cursor.inode {
                tracing::warn!(path = %self.path.display(), "the file CloudWatch was reading is gone (rotated more than once, or removed): what it held after the cursor was not shipped");
            }
        } else {
            tracing::warn!(path = %self.path.display(), "the file CloudWatch was reading is gone: what it held after the cursor was not shipped");
        }
        self.cursor = Cursor::at(meta.ino(), 0);
        self.in_oversized_line = false;
        Ok(Some(current))
    }
}

/// Where a file rotated by rename is: `events.jsonl` -> `events.jsonl.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use std::{fs, io::Write as _};

    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("imds-probe-tail-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn append(path: &Path, text: &str) {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn reads_what_is_new_and_resumes_from_a_stored_cursor() {
        let dir = dir("resume");
        let path = dir.join("events.jsonl");
        let mut tail = Tail::new(path.clone(), None);
        assert!(tail.read().unwrap().bytes.is_empty(), "no file yet");
        append(&path, "a\nb\n");
        assert_eq!(tail.read().unwrap().bytes, b"a\nb\n");
        tail.advance(2);
        append(&path, "c\n");
        assert_eq!(tail.read().unwrap().bytes, b"b\nc\n");
        // A restart with the stored cursor reads the same.
        let mut again = Tail::new(path, Some(tail.cursor()));
        assert_eq!(again.read().unwrap().bytes, b"b\nc\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn finishes_a_rotated_file_before_the_new_one() {
        let dir = dir("rotate");
        let path = dir.join("events.jsonl");
        append(&path, "old1\nold2\n");
        let mut tail = Tail::new(path.clone(), None);
        assert_eq!(tail.read().unwrap().bytes, b"old1\nold2\n");
        tail.advance(5);
        fs::rename(&path, rotated_path(&path)).unwrap();
        append(&path, "new1\n");
        assert_eq!(tail.read().unwrap().bytes, b"old2\n");
        tail.advance(5);
        assert_eq!(tail.read().unwrap().bytes, b"new1\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn skips_a_line_longer_than_a_read() {
        let dir = dir("oversized");
        let path = dir.join("events.jsonl");
        append(&path, &"x".repeat(READ_BYTES + 10));
        append(&path, "\nnext\n");
        let mut tail = Tail::new(path, None);
        let first = tail.read().unwrap();
        assert_eq!((first.bytes.len(), first.skipped), (0, 1));
        assert_eq!(tail.read().unwrap().bytes, b"next\n");
        fs::remove_dir_all(dir).unwrap();
    }
}
