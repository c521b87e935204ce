//! The ledger on disk: `<state dir>/ledger.json`, written whole to a temporary file, fsynced,
//! then renamed over the old one (and the directory fsynced), so a crash leaves the previous
//! or the new file, never half of one. Readable by root only: command lines can hold secrets.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::outputs::ledger::{LedgerData, VERSION};

pub const FILE_NAME: &str = "ledger.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating state directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading ledger {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ledger {path} is not a ledger this version reads")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("ledger {path} has version {found}; this imds-probe reads up to {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing ledger {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Reads the ledger; Ok(None) when there is none yet.
pub fn read(path: &Path) -> Result<Option<LedgerData>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    parse(path, &bytes).map(Some)
}

/// A ledger file's bytes decoded (`path` only names the file in errors). Apart from `read` so
/// the fuzz target can feed it any bytes without a file.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<LedgerData, StoreError> {
    let data: LedgerData = serde_json::from_slice(bytes).map_err(|source| StoreError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if data.version > VERSION {
        return Err(StoreError::Version {
            path: path.to_owned(),
            found: data.version,
        });
    }
    Ok(data)
}

/// The daemon's start: the ledger as it was, or a fresh one when there is none. One that
/// cannot be read is renamed aside (`ledger.json.corrupt-<unix seconds>`) with a warning and a
/// fresh one started: losing history is better than not watching.
pub fn load_or_set_aside(state_dir: &Path) -> Result<LedgerData, StoreError> {
    create_state_dir(state_dir)?;
    let path = path_in(state_dir);
    match read(&path) {
        Ok(data) => Ok(data.unwrap_or_default()),
        Err(error) => {
            let seconds = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let aside = path.with_file_name(format!("{FILE_NAME}.corrupt-{seconds}"));
            let renamed = fs::rename(&path, &aside);
            tracing::warn!(
                error = %crate::causes::Causes(&error),
                set_aside = %aside.display(),
                rename_failed = renamed.err().map(|e| e.to_string()),
                "the ledger could not be read: set aside, starting a fresh one"
            );
            Ok(LedgerData::default())
        }
    }
}

fn create_state_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

/// Writes the ledger atomically (see the module comment).
pub fn write(state_dir: &Path, data: &LedgerData) -> Result<(), StoreError> {
    let path = path_in(state_dir);
    let tmp = path.with_file_name(format!("{FILE_NAME}.tmp"));
    let fail = |source| StoreError::Write {
        path: path.clone(),
        source,
    };
    let bytes = serde_json::to_vec(data)
        .map_err(io::Error::from)
        .map_err(fail)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(&bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    drop(file);
    fs::rename(&tmp, &path).map_err(fail)?;
    // The rename itself is durable once the directory is.
    File::open(state_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::outputs::ledger::{
        Ledger,
        tests::{V1, request, who},
    };

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("imds-probe-ledger-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn written_then_read_back_private() {
        let dir = temp_dir("roundtrip");
        let mut ledger = Ledger::new(load_or_set_aside(&dir).unwrap(), 10);
        ledger.record(&request(V1, who(1, "/usr/bin/a"), 1), 1);
        write(&dir, ledger.data()).unwrap();
        let mode = fs::metadata(path_in(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        let back = load_or_set_aside(&dir).unwrap();
        assert_eq!(back.callers, ledger.data().callers);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_ledger_is_set_aside() {
        let dir = temp_dir("corrupt");
        create_state_dir(&dir).unwrap();
        fs::write(path_in(&dir), b"{\"version\":1,\"windows\":[").unwrap();
        let data = load_or_set_aside(&dir).unwrap();
        assert!(data.callers.is_empty());
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("ledger.json.corrupt-")),
            "{names:?}"
        );
        assert!(matches!(read(&path_in(&dir)), Ok(None)));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_newer_version_is_not_misread() {
        let dir = temp_dir("version");
        create_state_dir(&dir).unwrap();
        let data = LedgerData {
            version: VERSION + 1,
            ..LedgerData::default()
        };
        write(&dir, &data).unwrap();
        assert!(matches!(
            read(&path_in(&dir)),
            Err(StoreError::Version { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
