//! The checkout xtask belongs to, and cargo invocations inside it.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::{cmd, setup};

pub struct Workspace {
    root: PathBuf,
    path: OsString,
}

impl Workspace {
    pub fn new() -> Result<Self> {
        // Fixed at compile time, so xtask works from any directory and under sudo.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        Ok(Self {
            root,
            path: setup::build_path()?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `cargo` in the workspace root, with bpf-linker on PATH.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(cmd::cargo());
        cmd.current_dir(&self.root).env("PATH", &self.path);
        cmd
    }

    /// `cargo` of the nightly toolchain (the kernel side needs `-Z build-std`), likewise.
    pub fn nightly_cargo(&self) -> Command {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", setup::NIGHTLY, "cargo"])
            .env("RUSTUP_AUTO_INSTALL", "0")
            .current_dir(&self.root)
            .env("PATH", &self.path);
        cmd
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// target/release, absolute, wherever CARGO_TARGET_DIR or a config file moved target/.
    pub fn release_dir(&self) -> Result<PathBuf> {
        Ok(self.target_dir()?.join("release"))
    }

    /// target/, absolute, wherever CARGO_TARGET_DIR or a config file moved it.
    pub fn target_dir(&self) -> Result<PathBuf> {
        let metadata =
            cmd::output(
                self.cargo()
                    .args(["metadata", "--format-version", "1", "--no-deps"]),
            )?;
        let metadata: serde_json::Value =
            serde_json::from_str(&metadata).context("cargo metadata printed invalid JSON")?;
        let target = metadata["target_directory"]
            .as_str()
            .context("cargo metadata has no target_directory")?;
        Ok(PathBuf::from(target))
    }

    /// Builds the release daemon (the eBPF object comes along through build.rs) and the test
    /// kit's servers and clients that the tests and benchmarks start, and returns the
    /// directory that holds them.
    pub fn build_binaries(&self) -> Result<PathBuf> {
        cmd::run(self.cargo().args([
            "build",
            "--release",
            "-p",
            "imds-probe",
            "-p",
            "imds-probe-test-kit",
            "--bins",
        ]))?;
        self.release_dir()
    }
}
