//! `cargo xtask vm-test`: the integration tests on the kernels EC2 hosts really run (Debian's
//! cloud kernels, which have kprobes, fentry and BTF that the development kernel lacks), once
//! per backend, each kernel booted under qemu with an initramfs made here. Every kernel's
//! results are gathered before the report, so one bad kernel never hides another's.
//!
//! Modelled on aya's `xtask/src/run.rs` and `test-distro`: one result line per backend on the
//! serial console, and panic and hang detection on the host side.

mod initramfs;
pub mod kernels;
pub mod qemu;

use std::{
    fmt::Write as _,
    fs,
    io::{self, BufRead as _, BufReader},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, workspace::Workspace};

/// Backends each kernel runs, in order. The values are what the daemon's `--backend` and the
/// tests' IMDS_PROBE_TEST_BACKEND take.
const BACKENDS: &[&str] = &["sk-msg", "fentry", "kprobe"];

/// The package whose tests/ targets run in the VM.
const TESTS_PACKAGE: &str = "imds-probe-tests";

/// Binaries the tests and benchmarks start: the daemon and the test kit's servers and clients
/// (`Workspace::build_binaries`).
const BINS: &[&str] = &[
    "imds-probe",
    "fake-imds",
    "imds-load",
    "uring-client",
    "burst-client",
];

/// Debian's bpftool, if the host has it.
const BPFTOOL: &str = "/usr/sbin/bpftool";

/// Long enough for three backends' tests under emulation; short enough that a hung kernel
/// leaves CI time for the others.
const DEFAULT_TIMEOUT_SECS: u64 = 900;

#[derive(clap::Args)]
pub struct Options {
    /// Kernel to boot (repeatable): 5.10, 6.1, 6.12. Default: all.
    #[arg(long = "kernel", value_name = "NAME")]
    kernels: Vec<String>,
    /// Backend to test (repeatable): sk-msg, fentry, kprobe. Default: all.
    #[arg(long = "backend", value_name = "NAME")]
    backends: Vec<String>,
    /// Integration test file to run (repeatable), by its name in tests/tests/ without `.rs`
    /// (e.g. `send_hooks`). Default: all.
    #[arg(long = "test", value_name = "NAME")]
    tests: Vec<String>,
    /// Keep target/vm/initrd.gz after the run and print the qemu command lines, to boot a
    /// kernel again by hand.
    #[arg(long)]
    keep: bool,
    /// Give up on a kernel (and kill its VM) after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_SECS)]
    timeout: u64,
    /// Boot with the machine's own qemu-system-x86_64 instead of the cached one from
    /// bookworm-backports (bookworm's QEMU 7.2 crashes 6.12 under emulation).
    #[arg(long)]
    system_qemu: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kernels: Vec::new(),
            backends: Vec::new(),
            tests: Vec::new(),
            keep: false,
            timeout: DEFAULT_TIMEOUT_SECS,
            system_qemu: false,
        }
    }
}

/// `cargo xtask vm-bench`: the overhead benchmark inside the VMs, for the backends that only
/// load there; emulation makes absolute numbers meaningless, so only ratios are printed.
#[derive(clap::Args)]
pub struct BenchOptions {
    #[command(flatten)]
    vm: Options,
    /// Rounds per backend.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per timed load.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// MiB per bulk send (loopback under emulation moves a few hundred MiB/s).
    #[arg(long, default_value_t = 64)]
    bulk_mib: u64,
}

/// What each VM runs.
enum Job {
    /// The integration tests, once per backend.
    Tests,
    /// `xtask bench` with these arguments (joined by ':'), once, as the one "backend" `bench`.
    Bench(String),
}

/// (name inside the VM, host path).
type Executables = Vec<(String, PathBuf)>;

/// One cell of the report.
enum Cell {
    Ran(qemu::Outcome),
    Skipped(String),
}

/// One row of the report.
struct Row {
    kernel: &'static kernels::KernelSpec,
    /// `package version`, or why there is no kernel.
    image: Result<String, String>,
    cells: Vec<Cell>,
    boot: Option<Duration>,
    total: Option<Duration>,
    notes: Vec<String>,
    /// A kernel that was required but could not be had.
    failed_to_fetch: bool,
    bench_output: Vec<String>,
}

pub fn test(ws: &Workspace, opts: &Options) -> Result<()> {
    run(ws, opts, &Job::Tests)
}

pub fn bench(ws: &Workspace, opts: &BenchOptions) -> Result<()> {
    let backends = selected_backends(&opts.vm.backends)?;
    let args = [
        "overhead".to_owned(),
        "--ratios-only".to_owned(),
        format!("--bin-dir=/{}", initramfs::BIN_DIR),
        format!("--backends={}", backends.join(",")),
        format!("--rounds={}", opts.rounds),
        format!("--seconds={}", opts.seconds),
        format!("--bulk-mib={}", opts.bulk_mib),
    ];
    run(ws, &opts.vm, &Job::Bench(args.join(":")))
}

fn run(ws: &Workspace, opts: &Options, job: &Job) -> Result<()> {
    let started = Instant::now();
    let _lock = lock()?;
    let specs = selected_kernels(&opts.kernels)?;
    let (backends, bench) = match job {
        Job::Tests => (selected_backends(&opts.backends)?, None),
        Job::Bench(args) => (vec!["bench"], Some(args.as_str())),
    };

    let mut bins = build_binaries(ws)?;
    let mut tests = selected_tests(build_tests(ws)?, &opts.tests)?;
    let mut once_tests: Executables;
    (once_tests, tests) = tests
        .into_iter()
        .partition(|(name, _)| ONCE_PER_KERNEL_TESTS.contains(&name.as_str()));
    if bench.is_some() {
        // The benchmark is this very program, run inside the VM with the clients it starts.
        tests.clear();
        once_tests.clear();
        let xtask = std::env::current_exe().context("finding the xtask executable")?;
        bins.push(("xtask".to_owned(), xtask));
        // Optional: it names the programs in the kernel-cost table, where fdinfo has only tags.
        if Path::new(BPFTOOL).is_file() {
            bins.push(("bpftool".to_owned(), PathBuf::from(BPFTOOL)));
        }
    }
    let vm_dir = ws
        .release_dir()?
        .parent()
        .context("target/release has no parent")?
        .join("vm");
    fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;
    let initrd = vm_dir.join("initrd.gz");
    let initrd_started = Instant::now();
    let size = initramfs::build(
        &initramfs::Contents {
            bins: &bins,
            tests: &tests,
            once_tests: &once_tests,
        },
        &initrd,
    )?;
    let names = |tests: &Executables| {
        tests
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "vm-test: {} ({:.1} MiB; per backend: {}; once per kernel: {}) in {:.1}s",
        initrd.display(),
        size as f64 / f64::from(1 << 20),
        names(&tests),
        names(&once_tests),
        initrd_started.elapsed().as_secs_f64()
    );

    let emulator = if opts.system_qemu {
        kernels::Emulator::system(None)
    } else {
        kernels::fetch_qemu().unwrap_or_else(|err| {
            kernels::Emulator::system(Some(format!(
                "no QEMU from bookworm-backports ({}): the system's QEMU may crash 6.12",
                first_line(&format!("{err:#}"))
            )))
        })
    };
    let emulator_line = format!(
        "{} ({}){}",
        emulator.version,
        emulator.program.display(),
        emulator
            .note
            .as_ref()
            .map_or_else(String::new, |note| format!("; {note}"))
    );
    println!("vm-test: emulator {emulator_line}");

    let mut rows = Vec::new();
    let mut reruns = Vec::new();
    // One kernel at a time: each VM already keeps both cores busy (two emulated vCPUs), so
    // running two at once makes each slower and puts the tests' 20 s deadlines at risk.
    for spec in specs {
        eprintln!("== vm-test: kernel {} ({})", spec.name, spec.why);
        let fetch_started = Instant::now();
        let kernel = match kernels::fetch(spec) {
            Ok(kernel) => kernel,
            Err(err) => {
                let reason = format!("{err:#}");
                eprintln!("vm-test: no {} kernel: {reason}", spec.name);
                rows.push(Row {
                    kernel: spec,
                    image: Err(first_line(&reason).to_owned()),
                    cells: backends
                        .iter()
                        .map(|_| Cell::Skipped(format!("no kernel: {}", first_line(&reason))))
                        .collect(),
                    boot: None,
                    total: None,
                    notes: vec![format!("skipped: {}", first_line(&reason))],
                    failed_to_fetch: spec.required,
                    bench_output: Vec::new(),
                });
                continue;
            }
        };
        eprintln!(
            "vm-test: {} {} ready in {:.1}s: {}",
            kernel.package,
            kernel.version,
            fetch_started.elapsed().as_secs_f64(),
            kernel.vmlinuz.display()
        );
        let boot = qemu::Boot {
            emulator: &emulator,
            kernel: spec.name,
            vmlinuz: &kernel.vmlinuz,
            initrd: &initrd,
            backends: &backends,
            bench,
            log: &vm_dir.join(format!("{}.log", spec.name)),
            timeout: Duration::from_secs(opts.timeout),
        };
        reruns.push(cmd::display(&boot.command()));
        let run = boot.run()?;
        let mut notes: Vec<String> = kernel.note.into_iter().collect();
        if let Some(release) = &run.release {
            notes.push(format!("uname -r: {release}"));
        }
        notes.extend(run.problems);
        notes.push(format!("console: {}", boot.log.display()));
        rows.push(Row {
            kernel: spec,
            image: Ok(format!("{} {}", kernel.package, kernel.version)),
            cells: run
                .outcomes
                .into_iter()
                .map(|(_, outcome)| Cell::Ran(outcome))
                .collect(),
            boot: run.boot,
            total: Some(run.total),
            notes,
            failed_to_fetch: false,
            bench_output: run.bench_output,
        });
    }

    if opts.keep {
        println!("vm-test: kept {}; boot again with:", initrd.display());
        for rerun in &reruns {
            println!("  {rerun}");
        }
    } else {
        fs::remove_file(&initrd).with_context(|| format!("removing {}", initrd.display()))?;
    }

    print!(
        "{}",
        report(&rows, &backends, &emulator_line, started.elapsed())
    );
    let failures: Vec<String> = rows
        .iter()
        .flat_map(|row| {
            let fetch = row
                .failed_to_fetch
                .then(|| format!("{} (kernel unavailable)", row.kernel.name));
            let cells = row
                .cells
                .iter()
                .zip(&backends)
                .filter(|(cell, _)| matches!(cell, Cell::Ran(qemu::Outcome::Failure { .. })))
                .map(|(_, backend)| format!("{}/{backend}", row.kernel.name));
            fetch.into_iter().chain(cells)
        })
        .collect();
    if !failures.is_empty() {
        bail!("vm-test failed: {}", failures.join(", "));
    }
    Ok(())
}

/// Two vm-tests at once would share the cache's apt state and target/vm, and each would get
/// half the CPU under the tests' 20 s deadlines: a second one waits for the first. The boot
/// test takes it too, for the same cache and the same CPU.
pub fn lock() -> Result<fs::File> {
    let path = Path::new(kernels::CACHE_DIR).join(".lock");
    fs::create_dir_all(kernels::CACHE_DIR)
        .with_context(|| format!("creating {} (run vm-test as root)", kernels::CACHE_DIR))?;
    let file = fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let fd = file.as_raw_fd();
    // SAFETY: flock on a descriptor this function owns; the lock goes with the file.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Err(err).with_context(|| format!("locking {}", path.display()));
        }
        eprintln!(
            "vm-test: another vm-test holds {}; waiting for it",
            path.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
    }
    Ok(file)
}

fn selected_kernels(names: &[String]) -> Result<Vec<&'static kernels::KernelSpec>> {
    if names.is_empty() {
        return Ok(kernels::KERNELS.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            kernels::spec(name).with_context(|| {
                let known: Vec<_> = kernels::KERNELS.iter().map(|spec| spec.name).collect();
                format!("unknown kernel {name:?}: known are {}", known.join(", "))
            })
        })
        .collect()
}

/// The test executables named in `names` (all when none is), in cargo's order.
fn selected_tests(tests: Executables, names: &[String]) -> Result<Executables> {
    if let Some(unknown) = names
        .iter()
        .find(|name| !tests.iter().any(|(test, _)| test == *name))
    {
        bail!(
            "no integration test {unknown:?}; there are: {}",
            tests
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(tests
        .into_iter()
        .filter(|(name, _)| names.is_empty() || names.contains(name))
        .collect())
}

fn selected_backends(names: &[String]) -> Result<Vec<&'static str>> {
    if names.is_empty() {
        return Ok(BACKENDS.to_vec());
    }
    names
        .iter()
        .map(|name| {
            BACKENDS
                .iter()
                .copied()
                .find(|backend| backend == name)
                .with_context(|| {
                    format!(
                        "unknown backend {name:?}: known are {}",
                        BACKENDS.join(", ")
                    )
                })
        })
        .collect()
}

fn build_binaries(ws: &Workspace) -> Result<Executables> {
    let release = ws.build_binaries()?;
    Ok(BINS
        .iter()
        .map(|name| ((*name).to_owned(), release.join(name)))
        .collect())
}

/// Test targets that run on the host only. CloudWatch's are about user space (the agent's
/// fragment, the template, shipping to moto), and need moto, cfn-lint and the repository's
/// files, none of which the VM has. Adversarial load (tens of thousands of connections) takes
/// minutes per cell under emulation and tests nothing kernel-specific that the other targets
/// miss.
const HOST_ONLY_TESTS: &[&str] = &["cloudwatch", "hostile_load"];

/// Test targets whose daemon runs take any backend's events alike (the ledger and report,
/// privilege dropping, file modes and scrubbing): the VM runs them once per kernel, with the
/// first backend, which keeps a kernel's three backends inside its timeout under emulation.
/// What differs between backends (capture, attribution, SDK clients, send hooks) runs with each.
const ONCE_PER_KERNEL_TESTS: &[&str] = &["report", "privileges", "hostile"];

/// Builds the integration tests. Returns every executable of a tests/*.rs target (so a new
/// test file is picked up without touching this).
fn build_tests(ws: &Workspace) -> Result<Executables> {
    let mut cargo = ws.cargo();
    cargo
        .args(["test", "--release", "-p", TESTS_PACKAGE, "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    eprintln!("+ {}", cmd::display(&cargo));
    let mut child = cargo.spawn().context("could not start cargo")?;
    let stdout = child.stdout.take().context("cargo has no stdout")?;
    let mut executables = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(executable), Some(name)) = (
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
        ) else {
            continue;
        };
        let kinds = &message["target"]["kind"];
        let is = |kind: &str| {
            kinds
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == kind))
        };
        if is("test") && !HOST_ONLY_TESTS.contains(&name) {
            executables.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("building {TESTS_PACKAGE}'s tests failed ({status})");
    }
    if executables.is_empty() {
        bail!("cargo built no test executable for {TESTS_PACKAGE}");
    }
    Ok(executables)
}

fn report(rows: &[Row], backends: &[&str], emulator: &str, elapsed: Duration) -> String {
    let mut header = vec!["kernel".to_owned(), "boot".to_owned(), "total".to_owned()];
    header.extend(backends.iter().map(|backend| (*backend).to_owned()));
    let mut table = vec![header];
    for row in rows {
        let mut line = vec![
            row.kernel.name.to_owned(),
            row.boot.map_or_else(|| "-".to_owned(), secs),
            row.total.map_or_else(|| "-".to_owned(), secs),
        ];
        line.extend(row.cells.iter().map(|cell| match cell {
            Cell::Skipped(_) => "skipped".to_owned(),
            Cell::Ran(qemu::Outcome::Success { took, tests }) if tests.passed == 0 => {
                format!("success {}", secs(*took))
            }
            Cell::Ran(qemu::Outcome::Success { took, tests }) => {
                format!("success {}/{} {}", tests.passed, tests.passed, secs(*took))
            }
            Cell::Ran(qemu::Outcome::Failure { took, tests, .. }) => format!(
                "FAILURE {}/{} {}",
                tests.failed,
                tests.passed + tests.failed,
                took.map_or_else(|| "-".to_owned(), secs)
            ),
        }));
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|col| table.iter().map(|line| line[col].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nvm-test report ({} in all; cells: result, failed-or-passed/tests, time)",
        secs(elapsed)
    );
    let _ = writeln!(out, "emulator: {emulator}");
    for line in &table {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "  {}", cells.join("  ").trim_end());
    }
    for row in rows {
        let _ = writeln!(
            out,
            "{}: {}",
            row.kernel.name,
            row.image.as_ref().unwrap_or_else(|reason| reason)
        );
        for note in &row.notes {
            let _ = writeln!(out, "  {note}");
        }
        for (cell, backend) in row.cells.iter().zip(backends) {
            match cell {
                Cell::Ran(qemu::Outcome::Failure { reason, .. }) => {
                    let _ = writeln!(out, "  {backend}: failure: {}", shorten(reason));
                }
                Cell::Skipped(reason) if row.image.is_ok() => {
                    let _ = writeln!(out, "  {backend}: skipped: {reason}");
                }
                _ => {}
            }
        }
    }
    for row in rows.iter().filter(|row| !row.bench_output.is_empty()) {
        let _ = writeln!(
            out,
            "\n== {} {}",
            row.kernel.name,
            row.image.as_deref().unwrap_or("-")
        );
        for line in &row.bench_output {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

fn secs(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

fn shorten(text: &str) -> String {
    const MAX: usize = 400;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
