//! The AWS SDKs the integration tests drive as real IMDS clients: botocore from PyPI (a current
//! one, and 1.12.253, the last before IMDSv2 support, for the `report` tests) and the
//! JavaScript SDK v3's IMDS credential provider from npm, pinned, installed into the lasting
//! prefix (not the system's site-packages or a global node_modules).

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{cmd, setup::PREFIX};

const BOTOCORE: &str = "botocore==1.44.8";
/// Fetches credentials without a token: what `report` must call not_safe.
const BOTOCORE_PRE_IMDSV2: &str = "botocore==1.12.253";
const JS_IMDS_PROVIDER: &str = "@aws-sdk/credential-provider-imds@3.374.0";

/// `PYTHONPATH` for botocore; tests/tests/sdks.rs reads the same path.
fn python_dir() -> String {
    format!("{PREFIX}/sdk/python")
}

/// `--prefix` of the npm install; tests/tests/sdks.rs reads the same path.
fn node_dir() -> String {
    format!("{PREFIX}/sdk/node")
}

/// `PYTHONPATH` for botocore 1.12.253; tests/tests/report.rs reads the same path.
fn old_python_dir() -> String {
    format!("{PREFIX}/sdk/python-botocore-1.12")
}

fn pip_install(spec: &str, target: &str) -> Result<()> {
    if Path::new(target).join("botocore").is_dir() {
        println!("ok: {spec} (PyPI) in {target}");
        return Ok(());
    }
    println!("installing: {spec} (PyPI) into {target}");
    cmd::run(
        Command::new("python3").args(["-m", "pip", "install", "--quiet", "--target", target, spec]),
    )
}

pub fn install() -> Result<()> {
    pip_install(BOTOCORE, &python_dir())?;
    pip_install(BOTOCORE_PRE_IMDSV2, &old_python_dir())?;
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
