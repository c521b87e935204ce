//! File-system steps with the paths in their errors, shared by the tasks that stage files
//! (kernels and QEMU for the VMs, packages, the boot test's root).

use std::{fs, io, path::Path};

use anyhow::{Context as _, Result};

pub fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

pub fn remove_dir_if_present(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}
