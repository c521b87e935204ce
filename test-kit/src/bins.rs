//! Where the binaries under test are: the daemon (`imds-probe`) and this kit's servers and
//! clients, all built into one directory.

use std::path::{Path, PathBuf};

use crate::Error;

/// `name` in `dir`, if it is there.
pub fn bin_in(dir: &Path, name: &str) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary { path })
    }
}

/// `name` in $IMDS_PROBE_BIN_DIR (set by `cargo xtask test` and inside the VMs), else in the
/// workspace's release, then debug, directory.
pub fn bin(name: &str) -> Result<PathBuf, Error> {
    let dirs: Vec<PathBuf> = match std::env::var_os("IMDS_PROBE_BIN_DIR") {
        Some(dir) => vec![dir.into()],
        None => ["release", "debug"]
            .map(|profile| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../target")
                    .join(profile)
            })
            .into(),
    };
    dirs.iter()
        .find_map(|dir| bin_in(dir, name).ok())
        .map_or_else(|| bin_in(&dirs[0], name), Ok)
}
