//! Python and JavaScript packages the integration tests drive, pinned, installed into the
//! lasting prefix (not the system's site-packages or a global node_modules): botocore (a
//! current one, and 1.12.253, the last before IMDSv2 support, for the `report` tests) and the
//! JavaScript SDK v3's IMDS credential provider as real IMDS clients; moto's server as the
//! local stand-in for CloudWatch Logs and cfn-lint for the CloudFormation template.

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::{cmd, setup::PREFIX};

/// A pip install into a directory of its own, for `PYTHONPATH`; `marker` is a directory the
/// install creates, to tell whether it is there.
struct PipTarget {
    packages: &'static [&'static str],
    /// Under PREFIX; tests/ reads the same path.
    dir: &'static str,
    marker: &'static str,
}

const PIP_TARGETS: &[PipTarget] = &[
    PipTarget {
        packages: &["botocore==1.44.8"],
        dir: "sdk/python",
        marker: "botocore",
    },
    // Fetches credentials without a token: what `report` must call not_safe
    // (tests/tests/report.rs reads the same path).
    PipTarget {
        packages: &["botocore==1.12.253"],
        dir: "sdk/python-botocore-1.12",
        marker: "botocore",
    },
    // Their own directory: moto brings a botocore of its own, which must not replace the pinned
    // one above.
    PipTarget {
        packages: &["moto[server]==5.2.1", "cfn-lint==1.51.0"],
        dir: "cloudwatch/python",
        marker: "cfnlint",
    },
];

const JS_IMDS_PROVIDER: &str = "@aws-sdk/credential-provider-imds@3.374.0";

/// `--prefix` of the npm install; tests/tests/sdks.rs reads the same path.
fn node_dir() -> String {
    format!("{PREFIX}/sdk/node")
}

pub fn install() -> Result<()> {
    for target in PIP_TARGETS {
        let dir = format!("{PREFIX}/{}", target.dir);
        let what = target.packages.join(" ");
        if Path::new(&dir).join(target.marker).is_dir() {
            println!("ok: {what} (PyPI) in {dir}");
            continue;
        }
        println!("installing: {what} (PyPI) into {dir}");
        cmd::run(
            Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--target", &dir])
                .args(target.packages),
        )?;
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
