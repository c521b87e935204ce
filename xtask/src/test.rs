//! `cargo xtask test`: the one command CI and people run. Stages are a table so that more
//! (a VM test, benches) can be appended without touching the driver.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::{cmd, fuzz, package, setup, vm, workspace::Workspace};

/// What a stage's failure means for the stages after it.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Later stages cannot do anything useful without it (nothing set up, nothing built).
    Prerequisite,
    /// Skipped by `--skip-lint`. Later stages still run after it fails, so one CI round
    /// shows every problem.
    Lint,
    /// Later stages still run after it fails.
    Check,
    /// A Check that `--skip-vm` skips.
    Vm,
}

struct Stage(&'static str, Kind, fn(&Workspace) -> Result<()>);

const STAGES: &[Stage] = &[
    Stage("setup", Kind::Prerequisite, |_| setup::run()),
    Stage("fmt", Kind::Lint, fmt),
    Stage("clippy", Kind::Lint, clippy),
    Stage("clippy-ebpf", Kind::Lint, clippy_ebpf),
    Stage("build", Kind::Prerequisite, build),
    Stage("test", Kind::Check, test),
    Stage("package", Kind::Check, |ws| package::run(ws).map(drop)),
    // Every fuzz target for a few seconds: the long runs are `cargo xtask fuzz --runs N`.
    Stage("fuzz-smoke", Kind::Check, fuzz::smoke),
    // Every kernel with every backend.
    Stage("vm-test", Kind::Vm, |ws| {
        vm::test(ws, &vm::Options::default())
    }),
];

/// The kernel crate is no_std/no_main and only compiles for the BPF target, so a host
/// clippy of it fails whatever its code says; clippy-ebpf lints it on its own target.
const EBPF_PACKAGE: &str = "imds-probe-ebpf";

fn fmt(ws: &Workspace) -> Result<()> {
    // Nightly rustfmt: rustfmt.toml groups and merges imports, which stable ignores.
    cmd::run(ws.nightly_cargo().args(["fmt", "--all", "--", "--check"]))
}

fn clippy(ws: &Workspace) -> Result<()> {
    cmd::run(
        ws.cargo()
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                EBPF_PACKAGE,
                "--all-targets",
            ])
            .args(["--", "-D", "warnings"]),
    )
}

fn clippy_ebpf(ws: &Workspace) -> Result<()> {
    cmd::run(
        ws.nightly_cargo()
            .args([
                "clippy",
                "-p",
                EBPF_PACKAGE,
                "--release",
                "--target",
                "bpfel-unknown-none",
            ])
            .args(["-Z", "build-std=core", "--", "-D", "warnings"]),
    )
}

fn build(ws: &Workspace) -> Result<()> {
    ws.build_binaries().map(drop)
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

pub fn run(skip_lint: bool, skip_vm: bool) -> Result<()> {
    let ws = Workspace::new()?;
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut stopped = false;
    for &Stage(name, kind, stage) in STAGES {
        if stopped || (skip_lint && kind == Kind::Lint) || (skip_vm && kind == Kind::Vm) {
            outcomes.push((name, Outcome::Skipped));
            continue;
        }
        eprintln!("== {name}");
        let stage_started = Instant::now();
        let result = stage(&ws);
        let elapsed = stage_started.elapsed();
        match result {
            Ok(()) => outcomes.push((name, Outcome::Passed(elapsed))),
            Err(err) => {
                eprintln!("error: stage {name} failed: {err:#}");
                outcomes.push((name, Outcome::Failed(elapsed)));
                stopped = kind == Kind::Prerequisite;
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
