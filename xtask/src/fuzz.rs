//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (libFuzzer, nightly), one after the
//! other, each for a number of executions or seconds, with a line per target saying what it
//! did: executions, coverage, time. `cargo xtask test` runs every target for a few seconds.
//!
//! Each run starts from fuzz/seeds/TARGET (real requests, records, BTF) and writes what it
//! finds to target/fuzz-corpus/TARGET, outside the tree; a crash leaves its input in
//! fuzz/artifacts/TARGET, to become a regression test.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, workspace::Workspace};

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &["records", "http_stream", "redact", "cgroup_path", "btf"];

/// Seconds per target in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 5;

#[derive(clap::Args)]
pub struct Options {
    /// Targets to run (default: all).
    pub targets: Vec<String>,
    /// Stop each target after this many executions.
    #[arg(long)]
    pub runs: Option<u64>,
    /// Stop each target after this many seconds.
    #[arg(long)]
    pub seconds: Option<u64>,
}

struct Outcome {
    target: String,
    executions: String,
    coverage: String,
    seconds: f64,
}

pub fn run(ws: &Workspace, options: &Options) -> Result<()> {
    let targets: Vec<String> = if options.targets.is_empty() {
        TARGETS.iter().map(|t| t.to_string()).collect()
    } else {
        options.targets.clone()
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        bail!(
            "no fuzz target {unknown}; there are: {}",
            TARGETS.join(", ")
        );
    }
    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(ws, target, options)?);
    }
    for o in &outcomes {
        println!(
            "fuzz {:<12} {:>12} executions  cov {:>6}  {:>8.1} s  no crash",
            o.target, o.executions, o.coverage, o.seconds
        );
    }
    Ok(())
}

/// The smoke stage of `cargo xtask test`: every target, a few seconds each.
pub fn smoke(ws: &Workspace) -> Result<()> {
    run(
        ws,
        &Options {
            targets: Vec::new(),
            runs: None,
            seconds: Some(SMOKE_SECONDS),
        },
    )
}

fn run_target(ws: &Workspace, target: &str, options: &Options) -> Result<Outcome> {
    let fuzz_dir = ws.root().join("fuzz");
    let corpus = ws.root().join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = fuzz_dir.join("seeds").join(target);
    let mut fuzz = ws.nightly_cargo();
    fuzz.current_dir(&fuzz_dir)
        // The fuzzed code is the daemon's parsing; its eBPF object is not needed.
        .env("AYA_BUILD_SKIP", "1")
        .args(["fuzz", "run", "-O", target])
        .arg(&corpus);
    if seeds.is_dir() {
        fuzz.arg(&seeds);
    }
    fuzz.arg("--").args([
        // A leak, an input over a second, or over 2 GiB is a finding, not a pass.
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-print_final_stats=1",
    ]);
    if let Some(runs) = options.runs {
        fuzz.arg(format!("-runs={runs}"));
    }
    if let Some(seconds) = options.seconds {
        fuzz.arg(format!("-max_total_time={seconds}"));
    }
    fuzz.stderr(Stdio::piped());
    eprintln!("+ {}", cmd::display(&fuzz));
    let started = Instant::now();
    let mut child = fuzz.spawn().context("could not start cargo fuzz")?;
    let stderr = child.stderr.take().context("cargo fuzz has no stderr")?;
    let (mut executions, mut coverage) = (String::from("?"), String::from("?"));
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading cargo fuzz's output")?;
        // libFuzzer's progress lines: `#1048576 pulse  cov: 812 ft: 2301 ...`.
        if let Some(stats) = line.strip_prefix('#')
            && let Some((count, rest)) = stats.split_once(char::is_whitespace)
        {
            executions = count.to_owned();
            if let Some(cov) = rest.split_once("cov: ").map(|(_, c)| c) {
                coverage = cov.split_whitespace().next().unwrap_or("?").to_owned();
            }
        }
        if let Some(count) = line.strip_prefix("stat::number_of_executed_units: ") {
            executions = count.trim().to_owned();
        }
        // Everything else (crash reports above all) goes to the terminal as it comes.
        if !line.starts_with('#') {
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    if !status.success() {
        bail!(
            "fuzz target {target} failed ({status}): its input is in {}",
            Path::new("fuzz/artifacts").join(target).display()
        );
    }
    Ok(Outcome {
        target: target.to_owned(),
        executions,
        coverage,
        seconds: started.elapsed().as_secs_f64(),
    })
}
