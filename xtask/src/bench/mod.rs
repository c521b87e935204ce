//! `cargo xtask bench [overhead|capacity|latency|startup|processes|clients|idle|log-volume|shipping|all]`:
//! numbers measured side by side in one run, printed as tables with medians and spreads. Nothing
//! here asserts a speed; the targets are printed next to the numbers for a reader to judge.
//!
//! Every IMDS request goes to a network namespace this run creates, with 169.254.169.254 and
//! fd00:ec2::254 on its own loopback, and deletes at the end (also on error or Ctrl-C): no
//! packet ever reaches a real instance metadata service.

mod capacity;
mod clients;
mod harness;
mod idle;
mod latency;
mod log_volume;
mod overhead;
mod processes;
mod procfs;
mod shipping;
mod startup;
mod stats;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};

use self::harness::{Bins, TempDir};
use crate::{cmd, setup, workspace::Workspace};

#[derive(Args)]
pub struct BenchArgs {
    /// Which measurement; `all` runs startup, overhead, processes, latency, then capacity
    /// (with the kernel cost per BPF program).
    #[arg(value_enum, default_value_t = Which::All)]
    which: Which,
    /// Repetitions (default: startup 10, overhead 5, latency 3, capacity 3, idle 1).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds per timed load (default: overhead 3 per workload, latency 5, capacity 5, idle
    /// 60 per window).
    #[arg(long)]
    seconds: Option<f64>,
    /// Target request rates of the capacity measurement, req/s; 0 = as fast as it goes.
    #[arg(long, value_delimiter = ',', default_values_t = [5_000, 10_000, 20_000, 40_000, 0])]
    rates: Vec<u64>,
    /// Daemon backends the overhead measurement compares with no probe (sk-msg, fentry,
    /// kprobe); the other measurements use sk-msg.
    #[arg(long, value_delimiter = ',', default_values_t = ["sk-msg".to_owned()])]
    backends: Vec<String>,
    /// Use the binaries already in target/release instead of running setup and building.
    #[arg(long)]
    no_build: bool,
    /// Use the binaries in this directory (implies --no-build); how `cargo xtask vm-bench`
    /// runs the benchmarks inside a VM, where there is no workspace.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// MiB per bulk send of the overhead measurement.
    #[arg(long, default_value_t = 1024)]
    bulk_mib: u64,
    /// `idle` only: also measure the daemon in this directory (a build of another revision,
    /// e.g. main before a change), interleaved with this one and shown beside it.
    #[arg(long, value_name = "DIR")]
    baseline_dir: Option<PathBuf>,
    /// `overhead` only: print its ratios to no probe and no absolute numbers, since under
    /// emulation only the ratios mean anything.
    #[arg(long)]
    ratios_only: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Overhead,
    Capacity,
    Latency,
    Startup,
    /// The process tracking's cost on a fork-heavy load.
    Processes,
    /// Errors watched clients get from their own socket calls, by request size.
    Clients,
    /// Wake-ups and CPU per minute with no IMDS traffic: nothing else, and a fork/exec storm.
    Idle,
    /// Bytes of events per request: one caller polling 10/s, 100 callers, --every-request.
    LogVolume,
    /// What shipping to CloudWatch Logs (moto stands in) costs the daemon; not in `all`.
    Shipping,
    All,
}

/// What every measurement gets.
pub struct Ctx {
    bins: Bins,
    tmp: TempDir,
    rounds: Option<usize>,
    seconds: Option<f64>,
    rates: Vec<u64>,
    backends: Vec<String>,
    bulk_bytes: u64,
    ratios_only: bool,
}

impl Ctx {
    fn rounds(&self, default: usize) -> usize {
        self.rounds.unwrap_or(default).max(1)
    }

    fn seconds(&self, default: f64) -> f64 {
        self.seconds.filter(|s| *s > 0.0).unwrap_or(default)
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the benchmarks load eBPF programs and create network namespaces: run `cargo xtask bench` as root"
        );
    }
    if args.seconds.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
        bail!("--seconds must be a positive number");
    }
    if args.ratios_only && args.which != Which::Overhead {
        bail!("--ratios-only is for `overhead`, the one measurement reported as ratios");
    }
    if args.baseline_dir.is_some() && args.which != Which::Idle {
        bail!("--baseline-dir is for `idle`");
    }
    harness::install_interrupt_handler();
    let no_build = args.no_build || args.bin_dir.is_some();
    let bin_dir = if let Some(dir) = args.bin_dir {
        dir
    } else if no_build {
        Workspace::new()?.release_dir()?
    } else {
        setup::run()?;
        Workspace::new()?.build_binaries()?
    };
    let ctx = Ctx {
        bins: Bins::in_dir(&bin_dir)?,
        tmp: TempDir::new("bench")?,
        rounds: args.rounds,
        seconds: args.seconds,
        rates: args.rates,
        backends: args.backends,
        bulk_bytes: args.bulk_mib.max(1) << 20,
        ratios_only: args.ratios_only,
    };
    print_header(&ctx, no_build);
    let which: &[Which] = match args.which {
        Which::All => &[
            Which::Startup,
            Which::Overhead,
            Which::Processes,
            Which::Latency,
            Which::Capacity,
            Which::Clients,
            Which::Idle,
        ],
        ref one => std::slice::from_ref(one),
    };
    for &one in which {
        harness::check_interrupted()?;
        match one {
            Which::Startup => startup::run(&ctx)?,
            Which::Overhead => overhead::run(&ctx)?,
            Which::Latency => latency::run(&ctx)?,
            Which::Capacity => capacity::run(&ctx)?,
            Which::Processes => processes::run(&ctx)?,
            Which::Clients => clients::run(&ctx)?,
            Which::Idle => idle::run(&ctx, args.baseline_dir.as_deref())?,
            Which::LogVolume => log_volume::run(&ctx)?,
            Which::Shipping => shipping::run(&ctx)?,
            Which::All => unreachable!("expanded above"),
        }
    }
    Ok(())
}

/// Where and on what the numbers were taken, so two outputs can be compared fairly.
fn print_header(ctx: &Ctx, no_build: bool) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("== imds-probe benchmarks");
    println!("command: cargo xtask {}", args.join(" "));
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "host: kernel {} | {cpus} CPUs ({cpu_model}) | load average {}",
        read("/proc/sys/kernel/osrelease").trim(),
        read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    if let Ok(date) = cmd::output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])) {
        println!("date: {}", date.trim());
    }
    let git = |args: &[&str]| {
        cmd::output(
            Command::new("git")
                .arg("-C")
                .arg(env!("CARGO_MANIFEST_DIR"))
                .args(args),
        )
        .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = git(&["status", "--porcelain"]).lines().count();
    if head.trim().is_empty() {
        // Inside a vm-bench VM: no git, no checkout; the host's report names the source.
        println!("source: unknown here (no git checkout)");
    } else {
        println!(
            "source: git {} ({})",
            head.trim(),
            if dirty == 0 {
                "clean".to_owned()
            } else {
                format!("{dirty} files changed or new")
            }
        );
    }
    for path in [&ctx.bins.daemon, &ctx.bins.fake_imds, &ctx.bins.load] {
        println!("binary: {} ({})", path.display(), modified(path));
    }
    if no_build {
        println!("(--no-build: binaries as found, not rebuilt)");
    }
    let others = harness::other_daemons(&[]);
    if !others.is_empty() {
        println!(
            "WARNING: other imds-probe processes are running (pids {others:?}): they compete for CPU and may own the benchmark's IMDS sockets"
        );
    }
    println!();
}

fn modified(path: &Path) -> String {
    let Ok(modified) = fs::metadata(path).and_then(|m| m.modified()) else {
        return "?".into();
    };
    let age = modified.elapsed().map_or(0, |d| d.as_secs());
    format!("built {age} s ago")
}

/// Before a timed run: other imds-probe daemons (integration tests, someone's experiment)
/// would own the benchmark's IMDS sockets and share the CPUs. Waits up to 30 s for them to
/// exit (once per set of pids, so a lingering one costs the wait only once), then warns.
fn quiet_host(ours: &[u32]) -> Result<()> {
    static WAITED_FOR: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
    let mut others = harness::other_daemons(ours);
    if others.is_empty() {
        return Ok(());
    }
    let mut waited = WAITED_FOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if others.iter().any(|pid| !waited.contains(pid)) {
        println!(
            "  other imds-probe processes are running (pids {others:?}): waiting up to 30 s for them to exit"
        );
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !others.is_empty() && std::time::Instant::now() < until {
            harness::sleep(std::time::Duration::from_millis(100))?;
            others = harness::other_daemons(ours);
        }
        waited.extend(&others);
    }
    if !others.is_empty() {
        println!(
            "  WARNING: other imds-probe processes still running (pids {others:?}): they share the CPUs, and IMDS sockets enrolled by them are invisible to ours; this round's numbers are suspect"
        );
    }
    Ok(())
}
