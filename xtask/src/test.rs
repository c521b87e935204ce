//! `cargo xtask test`: the one command CI and people run. Stages are a table so that more
//! (a VM test, benches) can be appended without touching the driver.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{cmd, setup, workspace::Workspace};

struct Stage {
    name: &'static str,
    /// Skipped by `--skip-lint`.
    lint: bool,
    /// Later stages are pointless after this one fails (nothing built, nothing to test);
    /// after a lint failure they still run, so one CI round shows every problem.
    stop_on_failure: bool,
    run: fn(&Workspace) -> Result<()>,
}

const STAGES: &[Stage] = &[
    Stage {
        name: "setup",
        lint: false,
        stop_on_failure: true,
        run: |_| setup::run(),
    },
    Stage {
        name: "fmt",
        lint: true,
        stop_on_failure: false,
        run: fmt,
    },
    Stage {
        name: "clippy",
        lint: true,
        stop_on_failure: false,
        run: clippy,
    },
    Stage {
        name: "build",
        lint: false,
        stop_on_failure: true,
        run: build,
    },
    Stage {
        name: "test",
        lint: false,
        stop_on_failure: false,
        run: test,
    },
];

fn fmt(ws: &Workspace) -> Result<()> {
    cmd::run(ws.cargo().args(["fmt", "--all", "--", "--check"]))
}

fn clippy(ws: &Workspace) -> Result<()> {
    cmd::run(ws.cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

fn build(ws: &Workspace) -> Result<()> {
    ws.build_daemon().map(drop)
}

fn test(ws: &Workspace) -> Result<()> {
    // The integration tests (imds-probe-tests) start the daemon binaries built above.
    let bin_dir = ws.release_dir()?;
    cmd::run(
        ws.cargo()
            .args(["test", "--workspace", "--release"])
            .env("IMDS_PROBE_BIN_DIR", bin_dir),
    )
}

enum Outcome {
    Passed(Duration),
    Failed(Duration),
    Skipped,
}

pub fn run(skip_lint: bool) -> Result<()> {
    let ws = Workspace::new()?;
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut stopped = false;
    for stage in STAGES {
        if stopped || (skip_lint && stage.lint) {
            outcomes.push((stage.name, Outcome::Skipped));
            continue;
        }
        eprintln!("== {}", stage.name);
        let stage_started = Instant::now();
        let result = (stage.run)(&ws);
        let elapsed = stage_started.elapsed();
        match result {
            Ok(()) => outcomes.push((stage.name, Outcome::Passed(elapsed))),
            Err(err) => {
                eprintln!("error: stage {} failed: {err:#}", stage.name);
                outcomes.push((stage.name, Outcome::Failed(elapsed)));
                stopped = stage.stop_on_failure;
            }
        }
    }
    let summary: Vec<String> = outcomes
        .iter()
        .map(|(name, outcome)| match outcome {
            Outcome::Passed(time) => format!("{name} ok {:.1}s", time.as_secs_f64()),
            Outcome::Failed(time) => format!("{name} FAILED {:.1}s", time.as_secs_f64()),
            Outcome::Skipped => format!("{name} skipped"),
        })
        .collect();
    println!(
        "summary: {} | total {:.1}s",
        summary.join(" | "),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|(_, outcome)| matches!(outcome, Outcome::Failed(_)))
        .map(|(name, _)| *name)
        .collect();
    if !failed.is_empty() {
        bail!("failed stage(s): {}", failed.join(", "));
    }
    Ok(())
}
