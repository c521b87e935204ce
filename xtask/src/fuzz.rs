//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (libFuzzer with AddressSanitizer,
//! nightly), one after the other, each for a number of executions or seconds, with a line per
//! target saying what it did: executions, coverage, time. `cargo xtask test` runs every target
//! for a few seconds.
//!
//! Each run starts from fuzz/seeds/TARGET (real requests, user agents, the example config, a
//! ledger the daemon wrote) and keeps what it finds in target/fuzz-corpus/TARGET, outside the
//! tree; a crash leaves its input in fuzz/artifacts/TARGET, to become a regression test.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, workspace::Workspace};

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "records",
    "http_stream",
    "redact",
    "cgroup_path",
    "btf",
    "config",
    "user_agent",
    "ledger",
];

/// Seconds per target in `cargo xtask test`.
pub const SMOKE_SECONDS: u64 = 5;

/// cargo-fuzz's build directory for the host (fuzz/ is a workspace of its own, so the
/// sanitizer flags never reach the main build).
const BUILD_DIR: &str = "fuzz/target/x86_64-unknown-linux-gnu/release";

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
    features: String,
    seconds: f64,
}

pub fn run(ws: &Workspace, options: &Options) -> Result<()> {
    let targets: Vec<&str> = if options.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        options.targets.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!(
            "no fuzz target {unknown}; there are: {}",
            TARGETS.join(", ")
        );
    }
    let started = Instant::now();
    build(ws)?;
    println!(
        "fuzz targets built in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Every target runs even after one fails, so one round shows every finding.
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for target in targets {
        match run_target(ws, target, options) {
            Ok(outcome) => outcomes.push(outcome),
            Err(err) => {
                eprintln!("error: {err:#}");
                failed.push(target);
            }
        }
    }
    for o in &outcomes {
        println!(
            "fuzz {:<12} {:>12} executions  cov {:>6}  ft {:>6}  {:>8.1} s  {:>9.0} exec/s  no crash, leak or timeout",
            o.target,
            o.executions,
            o.coverage,
            o.features,
            o.seconds,
            o.executions.parse::<f64>().unwrap_or(0.0) / o.seconds,
        );
    }
    if !failed.is_empty() {
        bail!("fuzz target(s) failed: {}", failed.join(", "));
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

/// Every target at once: one cargo run instead of one per target.
fn build(ws: &Workspace) -> Result<()> {
    cmd::run(
        ws.nightly_cargo()
            // The fuzzed code is the daemon's parsing; its eBPF object is not needed.
            .env("AYA_BUILD_SKIP", "1")
            // Release with debug assertions: an overflow in a parser is a finding too.
            .args(["fuzz", "build", "--release", "--debug-assertions"]),
    )
}

fn run_target(ws: &Workspace, target: &str, options: &Options) -> Result<Outcome> {
    let corpus = ws.root().join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let artifacts: PathBuf = ws.root().join("fuzz/artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let mut fuzz = Command::new(ws.root().join(BUILD_DIR).join(target));
    // New inputs go to the first directory only: the seeds in the tree stay as they are.
    fuzz.arg(&corpus)
        .arg(ws.root().join("fuzz/seeds").join(target));
    fuzz.args([
        // A leak (LeakSanitizer is on), an input over ten seconds, or over 2 GiB is a finding.
        "-timeout=10".to_owned(),
        "-rss_limit_mb=2048".to_owned(),
        "-print_final_stats=1".to_owned(),
        format!("-artifact_prefix={}/", artifacts.display()),
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
    let mut child = fuzz.spawn().with_context(|| {
        format!("could not start fuzz target {target} (built by `cargo fuzz build`?)")
    })?;
    let stderr = child
        .stderr
        .take()
        .context("the fuzz target has no stderr")?;
    let mut stats = Stats::default();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading the fuzz target's output")?;
        let progress = stats.read(&line);
        // Crash reports above all go to the terminal as they come; of the progress lines only
        // libFuzzer's pulses (at powers of two) and the last one, so a long run shows it lives.
        if !progress || line.contains("pulse") || line.contains("DONE") {
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("waiting for the fuzz target")?;
    if !status.success() {
        bail!(
            "fuzz target {target} failed ({status}): its input is in {}",
            Path::new("fuzz/artifacts").join(target).display()
        );
    }
    Ok(Outcome {
        target: target.to_owned(),
        executions: stats.executions,
        coverage: stats.coverage,
        features: stats.features,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The last figures libFuzzer printed.
struct Stats {
    executions: String,
    coverage: String,
    features: String,
}

impl Default for Stats {
    fn default() -> Self {
        let unknown = || "?".to_owned();
        Self {
            executions: unknown(),
            coverage: unknown(),
            features: unknown(),
        }
    }
}

impl Stats {
    /// Takes the figures from one line of libFuzzer's output; true for a progress line.
    fn read(&mut self, line: &str) -> bool {
        if let Some(count) = line.strip_prefix("stat::number_of_executed_units: ") {
            count.trim().clone_into(&mut self.executions);
            return false;
        }
        // `#1048576	pulse  cov: 812 ft: 2301 corp: 95/3Kb exec/s: 349525 rss: 60Mb`
        let Some((count, rest)) = line
            .strip_prefix('#')
            .and_then(|stats| stats.split_once(char::is_whitespace))
        else {
            return false;
        };
        if !count.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        count.clone_into(&mut self.executions);
        let field = |name: &str| {
            rest.split_once(name)
                .and_then(|(_, value)| value.split_whitespace().next())
                .map(str::to_owned)
        };
        if let Some(cov) = field("cov: ") {
            self.coverage = cov;
        }
        if let Some(ft) = field("ft: ") {
            self.features = ft;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_progress_and_final_stats() {
        let mut stats = Stats::default();
        assert!(!stats.read("INFO: Seed: 1234"));
        assert!(stats.read("#2\tINITED cov: 40 ft: 41 corp: 1/1b exec/s: 0 rss: 30Mb"));
        assert!(stats.read(
            "#1048576\tpulse  cov: 812 ft: 2301 corp: 95/3Kb lim: 4096 exec/s: 349525 rss: 60Mb"
        ));
        assert!(!stats.read("#### a line of the target's own"));
        assert_eq!(
            (stats.executions.as_str(), stats.coverage.as_str()),
            ("1048576", "812")
        );
        assert!(!stats.read("stat::number_of_executed_units: 1100000"));
        assert_eq!(
            (stats.executions.as_str(), stats.features.as_str()),
            ("1100000", "2301")
        );
    }
}
