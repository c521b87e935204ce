//! The AWS SDKs the integration tests drive as real IMDS clients: botocore from PyPI and the
//! JavaScript SDK v3's IMDS credential provider from npm, pinned, installed into the lasting
//! prefix (not the system's site-packages or a global node_modules).

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{cmd, setup::PREFIX};

const BOTOCORE: &str = "botocore==1.44.8";
const JS_IMDS_PROVIDER: &str = "@aws-sdk/credential-provider-imds@3.374.0";

/// `PYTHONPATH` for botocore; tests/tests/sdks.rs reads the same path.
fn python_dir() -> String {
    format!("{PREFIX}/sdk/python")
}

/// `--prefix` of the npm install; tests/tests/sdks.rs reads the same path.
fn node_dir() -> String {
    format!("{PREFIX}/sdk/node")
}

pub fn install() -> Result<()> {
    let python = python_dir();
    if Path::new(&python).join("botocore").is_dir() {
        println!("ok: {BOTOCORE} (PyPI) in {python}");
    } else {
        println!("installing: {BOTOCORE} (PyPI) into {python}");
        cmd::run(Command::new("python3").args([
            "-m", "pip", "install", "--quiet", "--target", &python, BOTOCORE,
        ]))?;
    }
    let node = node_dir();
    if Path::new(&node)
        .join("node_modules/@aws-sdk/credential-provider-imds")
        .is_dir()
    {
        println!("ok: {JS_IMDS_PROVIDER} (npm) in {node}");
    } else {
        println!("installing: {JS_IMDS_PROVIDER} (npm) into {node}");
        cmd::run(Command::new("npm").args([
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            &node,
            JS_IMDS_PROVIDER,
        ]))?;
    }
    Ok(())
}
