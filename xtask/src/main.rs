//! Developer tasks for imds-probe, run as `cargo xtask <task>` (an alias in .cargo/config.toml).

mod bench;
mod boot;
mod cmd;
mod files;
mod fuzz;
mod package;
mod sdk;
mod setup;
mod test;
mod vm;
mod workspace;

use std::{
    env,
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::workspace::Workspace;

const DEFAULT_LOG_FILE: &str = "/var/log/imds-probe/events.jsonl";

#[derive(Parser)]
#[command(about = "imds-probe developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need; only what is missing.
    Setup,
    /// Setup, then build the release daemon with its eBPF object.
    Build,
    /// Setup, build, then run the daemon as root:
    /// `imds-probe run --log-file /var/log/imds-probe/events.jsonl ARGS...`.
    Run {
        /// Extra arguments for `imds-probe run` (a --log-file here replaces the default).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Setup, fmt, clippy, build, then every test, with a timed summary.
    Test {
        /// Skip fmt and clippy, for quick local iterations.
        #[arg(long)]
        skip_lint: bool,
        /// Skip vm-test (booting Debian's cloud kernels under emulation takes minutes).
        #[arg(long)]
        skip_vm: bool,
    },
    /// Setup, build, then the integration tests inside qemu VMs, on a matrix of Debian cloud
    /// kernels, once per backend, with a kernel x backend report.
    VmTest(vm::Options),
    /// Setup, build, then the overhead benchmark inside the same VMs, for the backends that
    /// only load there, as ratios to no probe.
    VmBench(vm::BenchOptions),
    /// Setup, package, then the packaged daemon in real systemd boots under qemu: the earliest
    /// IMDS callers caught, restarts under load, boot time with and without it.
    BootTest(boot::Options),
    /// Setup, then static (musl) binaries, a .deb and an .rpm in target/dist, with SHA256SUMS.
    Package,
    /// Setup, build, then measure as root: overhead, capacity, latency, startup (or all).
    Bench(bench::BenchArgs),
    /// Setup, then the cargo-fuzz targets in fuzz/, one after the other, with executions,
    /// coverage and time per target.
    Fuzz(fuzz::Options),
}

fn main() -> ExitCode {
    match run(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup => {
            let started = Instant::now();
            setup::run()?;
            println!("setup done in {:.1}s", started.elapsed().as_secs_f64());
            Ok(())
        }
        Task::Build => {
            setup::run()?;
            let bin_dir = Workspace::new()?.build_binaries()?;
            println!("built: {}", bin_dir.join("imds-probe").display());
            Ok(())
        }
        Task::Run { args } => run_daemon(args),
        Task::Test { skip_lint, skip_vm } => test::run(skip_lint, skip_vm),
        Task::VmTest(opts) => {
            setup::run()?;
            vm::test(&Workspace::new()?, &opts)
        }
        Task::VmBench(opts) => {
            setup::run()?;
            vm::bench(&Workspace::new()?, &opts)
        }
        Task::Bench(args) => bench::run(args),
        Task::BootTest(opts) => {
            setup::run()?;
            boot::run(&Workspace::new()?, &opts)
        }
        Task::Package => {
            setup::run()?;
            package::run(&Workspace::new()?).map(drop)
        }
        Task::Fuzz(opts) => {
            setup::run()?;
            fuzz::run(&Workspace::new()?, &opts)
        }
    }
}

fn run_daemon(args: Vec<OsString>) -> Result<()> {
    if !cmd::is_root() {
        return reexec_as_root(&args);
    }
    setup::run()?;
    let bin_dir = Workspace::new()?.build_binaries()?;
    let mut daemon = Command::new(bin_dir.join("imds-probe"));
    daemon.arg("run");
    let has_log_file = args.iter().any(|arg| {
        let arg = arg.to_string_lossy();
        arg == "--log-file" || arg.starts_with("--log-file=")
    });
    if !has_log_file {
        daemon.args(["--log-file", DEFAULT_LOG_FILE]);
    }
    daemon.args(&args);
    eprintln!("+ {}", cmd::display(&daemon));
    // exec, so signals from the terminal or a supervisor reach the daemon itself.
    let err = daemon.exec();
    Err(err).with_context(|| format!("could not start {}", bin_dir.join("imds-probe").display()))
}

/// Loading eBPF programs needs root. sudo resets the environment, so the toolchain variables
/// are handed over explicitly; otherwise root would look for rustup in its own home.
fn reexec_as_root(args: &[OsString]) -> Result<()> {
    let sudo = cmd::which("sudo")
        .context("`cargo xtask run` needs root to load eBPF programs and sudo is not installed: run it as root")?;
    let exe = env::current_exe().context("cannot find the xtask binary to re-run it under sudo")?;
    let home = env::var_os("HOME").map(PathBuf::from);
    let mut sudo = Command::new(sudo);
    sudo.arg("env");
    for (var, default) in [
        ("PATH", None),
        (
            "RUSTUP_HOME",
            home.as_ref().map(|home| home.join(".rustup")),
        ),
        ("CARGO_HOME", home.as_ref().map(|home| home.join(".cargo"))),
        ("CARGO", None),
        ("CARGO_TARGET_DIR", None),
        ("RUSTUP_TOOLCHAIN", None),
    ] {
        if let Some(value) = env::var_os(var).or(default.map(OsString::from)) {
            let mut assignment = OsString::from(format!("{var}="));
            assignment.push(value);
            sudo.arg(assignment);
        }
    }
    sudo.arg(exe).arg("run").args(args);
    eprintln!("+ {}", cmd::display(&sudo));
    let err = sudo.exec();
    Err(err).context("could not re-run xtask under sudo")
}
