//! One VM per kernel: boots it under qemu's software emulator, streams the serial console to
//! a log file (and to our stdout, so a CI log shows the failing test's output), and turns the
//! console into per-backend outcomes. A kernel panic, an oops, a hang or a missing result
//! line each become a failure with a reason, never an early exit, so the report always covers
//! the whole matrix.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::kernels::Emulator;
use crate::cmd;

/// `-enable-kvm` hangs on these machines (nested virtualisation), so the CPU is emulated
/// (which QEMU matters: see `kernels::fetch_qemu`);
/// `max` offers every instruction set extension TCG can emulate. Two vCPUs exercise the
/// per-CPU paths; no network device exists, so 169.254.169.254 inside is the VM's own.
const QEMU_ARGS: &[&str] = &[
    "-accel",
    "tcg",
    "-cpu",
    "max",
    "-m",
    "2048",
    "-smp",
    "2",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-serial",
    "stdio",
    "-no-reboot",
];

/// panic=-1 reboots at once on a panic, which -no-reboot turns into qemu exiting.
/// loglevel=5 rather than `quiet`: it still hides the boot chatter, but shows KERN_WARNING,
/// the level of WARN() splats, which are often the first sign of a kernel going wrong.
pub const KERNEL_ARGS: &str = "console=ttyS0 panic=-1 loglevel=5";

/// Console lines that mean the kernel itself went wrong, whatever the tests say.
const KERNEL_FAULTS: &[&str] = &[
    "Kernel panic",
    "WARNING: CPU:",
    "BUG:",
    "Oops",
    "general protection fault",
    "Unable to handle kernel",
    "rcu_sched self-detected stall",
    "rcu: INFO: rcu_preempt detected stalls",
];

/// Console lines per backend echoed to our stdout; beyond it only markers, verdicts and
/// kernel faults are, so a verifier log per failed load cannot bury a CI log. The log file
/// always has everything.
const ECHO_LINES_PER_BACKEND: usize = 400;

/// A console log stops growing here (parsing goes on): every failed program load prints the
/// verifier's whole log, which on a kernel that rejects everything runs to gigabytes.
const LOG_LIMIT_BYTES: u64 = 128 << 20;

/// After init says it is done, or the kernel panics, qemu should be gone within this.
const EXIT_GRACE: Duration = Duration::from_secs(30);

/// `emulator` with its data and module directories and the machine every VM gets; the caller
/// adds the kernel, its command line and the root.
pub fn command(emulator: &Emulator) -> Command {
    let mut qemu = Command::new(&emulator.program);
    for dir in &emulator.data_dirs {
        qemu.arg("-L").arg(dir);
    }
    if let Some(dir) = &emulator.module_dir {
        qemu.env("QEMU_MODULE_DIR", dir);
    }
    qemu.args(QEMU_ARGS);
    qemu
}

pub struct Boot<'a> {
    pub emulator: &'a Emulator,
    pub kernel: &'a str,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub backends: &'a [&'a str],
    /// `xtask bench` arguments, joined by ':' (the kernel command line splits on spaces):
    /// init runs the benchmark instead of the tests, as one backend named `bench`.
    pub bench: Option<&'a str>,
    pub log: &'a Path,
    pub timeout: Duration,
}

#[derive(Clone)]
pub enum Outcome {
    Success {
        took: Duration,
        tests: Tests,
    },
    Failure {
        took: Option<Duration>,
        tests: Tests,
        reason: String,
    },
}

/// What the test harness printed: pass and fail counts (from libtest's `test result:` lines,
/// since a test's own output can split `test name ... ok` over lines) and the first failure.
#[derive(Clone, Default)]
pub struct Tests {
    pub passed: u32,
    pub failed: u32,
    /// The kernel oopsed or warned of a BUG while these tests ran.
    pub kernel_fault: bool,
    /// Names of the failed tests, from libtest's `---- name stdout ----` headers.
    pub failed_names: Vec<String>,
    pub first_failure: Option<String>,
    /// The verifier's own last word when a program failed to load (the line before its
    /// "verification time" summary): the one line that says which check a kernel refused.
    pub verifier: Option<String>,
}

impl Tests {
    pub fn reason(&self) -> Option<String> {
        let reason = match (&self.first_failure, &self.verifier) {
            // The verifier's line first: it is short, and the message may be cut in the report.
            (Some(message), Some(verifier)) => Some(format!("verifier: {verifier} | {message}")),
            (Some(message), None) => Some(message.clone()),
            (None, Some(verifier)) => Some(format!("verifier: {verifier}")),
            (None, None) => None,
        }?;
        Some(match self.failed_names.as_slice() {
            [] => reason,
            names if names.len() <= 3 => format!("[{}] {reason}", names.join(", ")),
            names => format!(
                "[{}, and {} more] {reason}",
                names[..2].join(", "),
                names.len() - 2
            ),
        })
    }
}

pub struct Run {
    pub outcomes: Vec<(String, Outcome)>,
    /// From starting qemu to init's first line: kernel boot plus unpacking the initramfs.
    pub boot: Option<Duration>,
    pub total: Duration,
    /// `uname -r` inside the VM.
    pub release: Option<String>,
    /// Kernel faults, timeouts, tool problems: whatever the report should say about the VM as
    /// a whole.
    pub problems: Vec<String>,
    /// A benchmark's own output (without kernel messages), for the report.
    pub bench_output: Vec<String>,
}

impl Boot<'_> {
    pub fn command(&self) -> Command {
        let mut qemu = command(self.emulator);
        qemu.arg("-kernel")
            .arg(self.vmlinuz)
            .arg("-initrd")
            .arg(self.initrd)
            .arg("-append")
            .arg(format!(
                "{KERNEL_ARGS} imds_vm.kernel={} imds_vm.backends={}{}",
                self.kernel,
                self.backends.join(","),
                self.bench
                    .map_or_else(String::new, |args| format!(" imds_vm.bench={args}"))
            ));
        qemu
    }

    pub fn run(&self) -> Result<Run> {
        let mut qemu = self.command();
        eprintln!("+ {}", cmd::display(&qemu));
        let log =
            File::create(self.log).with_context(|| format!("creating {}", self.log.display()))?;
        let mut log = BufWriter::new(log);
        let started = Instant::now();
        let mut child = qemu
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("could not start qemu-system-x86_64 (`cargo xtask setup` installs it)")?;
        let (lines, console) = mpsc::channel();
        let stdout = child.stdout.take().context("qemu has no stdout")?;
        let stderr = child.stderr.take().context("qemu has no stderr")?;
        for (stream, source) in [
            (
                Box::new(stdout) as Box<dyn std::io::Read + Send>,
                Source::Console,
            ),
            (Box::new(stderr), Source::Qemu),
        ] {
            let lines = lines.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut buf = Vec::new();
                // Bytes, not read_line: a kernel message can hold anything.
                while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                    let line =
                        strip_ansi(String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']));
                    buf.clear();
                    if lines.send((source, line, Instant::now())).is_err() {
                        break;
                    }
                }
            });
        }
        drop(lines);

        let mut parser = Parser::new(self.kernel, self.backends);
        let mut bench_output = Vec::new();
        let mut echoed = 0;
        let mut logged = 0u64;
        let mut deadline = started + self.timeout;
        let mut ended_by_us = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match console.recv_timeout(left) {
                Ok((source, line, at)) => {
                    let shown = match source {
                        Source::Console => line.clone(),
                        Source::Qemu => format!("qemu: {line}"),
                    };
                    if logged < LOG_LIMIT_BYTES {
                        logged += shown.len() as u64 + 1;
                        writeln!(log, "{shown}").context("writing the console log")?;
                        if logged >= LOG_LIMIT_BYTES {
                            writeln!(log, "... log cut at {LOG_LIMIT_BYTES} bytes")
                                .context("writing the console log")?;
                        }
                    }
                    if shown.contains("IMDS-VM-START") {
                        echoed = 0;
                    }
                    echoed += 1;
                    let is_bench_line = self.bench.is_some()
                        && parser.current.is_some()
                        && !shown.contains("IMDS-VM-")
                        && !is_kernel_message(&shown);
                    if is_bench_line && bench_output.len() < ECHO_LINES_PER_BACKEND {
                        bench_output.push(shown.clone());
                    }
                    if echoed <= ECHO_LINES_PER_BACKEND || always_echo(&shown) {
                        println!("[{}] {shown}", self.kernel);
                    } else if echoed == ECHO_LINES_PER_BACKEND + 1 {
                        println!(
                            "[{}] ... console lines left out up to the next result; all in {}",
                            self.kernel,
                            self.log.display()
                        );
                    }
                    let urgent = parser.line(&shown, at.duration_since(started));
                    if urgent {
                        deadline = deadline.min(Instant::now() + EXIT_GRACE);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    ended_by_us = Some(if parser.done || parser.fatal.is_some() {
                        format!(
                            "qemu did not exit within {}s after init finished or the kernel panicked; killed",
                            EXIT_GRACE.as_secs()
                        )
                    } else {
                        format!(
                            "timed out after {}s (hang?); qemu killed",
                            self.timeout.as_secs()
                        )
                    });
                    // Only our own child: its pid, not a name.
                    let _ = child.kill();
                    break;
                }
            }
        }
        log.flush().context("writing the console log")?;
        let status = child.wait().context("waiting for qemu")?;
        let total = started.elapsed();
        let ended_early = if let Some(problem) = ended_by_us {
            Some(problem)
        } else if !status.success() {
            Some(format!("qemu exited with {status}"))
        } else if !parser.done && parser.fatal.is_none() {
            Some("the VM stopped before init said it was done".to_owned())
        } else {
            None
        };
        if let Some(problem) = ended_early {
            parser.problems.push(problem.clone());
            parser.fatal.get_or_insert(problem);
        }
        let mut run = parser.finish(total);
        run.bench_output = bench_output;
        Ok(run)
    }
}

#[derive(Clone, Copy)]
enum Source {
    Console,
    Qemu,
}

/// Reads the console line by line. Markers are searched anywhere in a line, since a kernel
/// message can land in the middle of one of init's.
struct Parser<'a> {
    kernel: &'a str,
    backends: &'a [&'a str],
    current: Option<(String, Duration, Tests)>,
    /// A "panicked at" line was seen: the next lines are the failure's message.
    panic_lines: Option<Vec<String>>,
    previous: String,
    outcomes: Vec<(String, Outcome)>,
    boot: Option<Duration>,
    release: Option<String>,
    problems: Vec<String>,
    done: bool,
    /// What ended the VM early (a panic, a timeout): the reason of every missing result.
    fatal: Option<String>,
}

impl<'a> Parser<'a> {
    fn new(kernel: &'a str, backends: &'a [&'a str]) -> Self {
        Self {
            kernel,
            backends,
            current: None,
            panic_lines: None,
            previous: String::new(),
            outcomes: Vec::new(),
            boot: None,
            release: None,
            problems: Vec::new(),
            done: false,
            fatal: None,
        }
    }

    /// Takes one console line seen `at` after qemu started; returns true when the VM should
    /// be gone soon (init finished or the kernel panicked).
    fn line(&mut self, line: &str, at: Duration) -> bool {
        if let Some(fault) = KERNEL_FAULTS.iter().find(|fault| line.contains(*fault)) {
            let during = self
                .current
                .as_ref()
                .map_or_else(String::new, |(backend, ..)| format!(" (during {backend})"));
            let problem = format!("kernel: {}{during}", line.trim());
            if self.problems.len() < 5 {
                self.problems.push(problem.clone());
            }
            if let Some((_, _, tests)) = &mut self.current {
                tests.first_failure.get_or_insert_with(|| problem.clone());
                // An oops in the middle of a backend's tests taints its result.
                tests.kernel_fault = true;
            }
            if *fault == "Kernel panic" {
                self.fatal.get_or_insert(problem);
                return true;
            }
        }
        self.harness_line(line);
        self.previous = line.trim().to_owned();
        if let Some(rest) = marker(line, "IMDS-VM-BOOTED") {
            self.boot.get_or_insert(at);
            self.release = field(rest, "release").map(str::to_owned);
            if field(rest, "kernel") != Some(self.kernel) {
                self.problems
                    .push(format!("init reports another kernel name: {rest}"));
            }
        } else if let Some(rest) = marker(line, "IMDS-VM-WARN") {
            self.problems.push(rest.trim().to_owned());
        } else if let Some(rest) = marker(line, "IMDS-VM-START") {
            if let Some(backend) = field(rest, "backend") {
                self.current = Some((backend.to_owned(), at, Tests::default()));
            }
        } else if let Some(rest) = marker(line, "IMDS-VM-RESULT") {
            self.result(rest, at);
        } else if marker(line, "IMDS-VM-DONE").is_some() {
            self.done = true;
            return true;
        }
        false
    }

    /// libtest's own lines: per-test verdicts and the first panic message.
    fn harness_line(&mut self, line: &str) {
        let Some((_, _, tests)) = &mut self.current else {
            return;
        };
        if line.trim().starts_with("verification time") && !self.previous.is_empty() {
            // A one-line verifier log shares its line with the daemon's message.
            let verdict = self
                .previous
                .split_once("Verifier output: ")
                .map_or(self.previous.as_str(), |(_, verdict)| verdict);
            tests.verifier.get_or_insert_with(|| verdict.to_owned());
        }
        if let Some(name) = line
            .trim()
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            tests.failed_names.push(name.to_owned());
        }
        if let Some(lines) = &mut self.panic_lines {
            let text = line.trim();
            let ends = text.is_empty()
                || text.starts_with("note: run with")
                || text.starts_with("stack backtrace")
                || lines.len() >= 6;
            if ends {
                let message = lines.join(" | ");
                if !message.is_empty() {
                    tests.first_failure.get_or_insert(message);
                }
                self.panic_lines = None;
            } else {
                lines.push(text.to_owned());
            }
            return;
        }
        // "thread 'name' panicked at" or, since Rust 1.88, "thread 'name' (tid) panicked at".
        if line.starts_with("thread '")
            && line.contains(" panicked at ")
            && tests.first_failure.is_none()
        {
            self.panic_lines = Some(Vec::new());
        } else if let Some(summary) = line.trim().strip_prefix("test result: ") {
            // "ok. 6 passed; 0 failed; 0 ignored; ..."
            for part in summary.split([';', '.']) {
                let mut words = part.split_whitespace();
                let (Some(count), Some(what)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(count) = count.parse::<u32>() else {
                    continue;
                };
                match what {
                    "passed" => tests.passed += count,
                    "failed" => tests.failed += count,
                    _ => {}
                }
            }
        }
    }

    fn result(&mut self, rest: &str, at: Duration) {
        let (Some(backend), Some(result)) = (field(rest, "backend"), field(rest, "result")) else {
            self.problems
                .push(format!("unreadable result line: {}", rest.trim()));
            return;
        };
        let (took, tests) = match self.current.take() {
            Some((started, since, tests)) if started == backend => {
                (Some(at.saturating_sub(since)), tests)
            }
            _ => (None, Tests::default()),
        };
        self.panic_lines = None;
        let outcome = match (result, took) {
            ("success", Some(took)) if tests.failed == 0 && !tests.kernel_fault => {
                Outcome::Success { took, tests }
            }
            ("success", _) => Outcome::Failure {
                took,
                reason: "reported success, but a test or the kernel failed on the console".into(),
                tests,
            },
            _ => Outcome::Failure {
                took,
                reason: tests
                    .reason()
                    .unwrap_or_else(|| format!("init reported result={result}")),
                tests,
            },
        };
        if self.outcomes.iter().any(|(seen, _)| seen == backend) {
            self.problems
                .push(format!("second result line for backend {backend}"));
        } else {
            self.outcomes.push((backend.to_owned(), outcome));
        }
    }

    fn finish(mut self, total: Duration) -> Run {
        let why_missing = self
            .fatal
            .clone()
            .unwrap_or_else(|| "no result line on the console".to_owned());
        let mut outcomes = Vec::new();
        for backend in self.backends {
            let outcome = match self.outcomes.iter().position(|(seen, _)| seen == backend) {
                Some(index) => self.outcomes.swap_remove(index).1,
                None => {
                    let (took, tests) = match self.current.take() {
                        Some((running, since, tests)) if running == *backend => {
                            (Some(total.saturating_sub(since)), tests)
                        }
                        other => {
                            self.current = other;
                            (None, Tests::default())
                        }
                    };
                    Outcome::Failure {
                        took,
                        reason: format!("no result: {why_missing}"),
                        tests,
                    }
                }
            };
            outcomes.push(((*backend).to_owned(), outcome));
        }
        for (backend, _) in self.outcomes {
            self.problems.push(format!(
                "result for a backend that was not asked for: {backend}"
            ));
        }
        Run {
            outcomes,
            boot: self.boot,
            total,
            release: self.release,
            problems: self.problems,
            bench_output: Vec::new(),
        }
    }
}

/// A printk line on the console: "[   12.345678] ..." (seconds, then six digits).
fn is_kernel_message(line: &str) -> bool {
    let Some((stamp, _)) = line.strip_prefix('[').and_then(|rest| rest.split_once(']')) else {
        return false;
    };
    let Some((secs, micros)) = stamp.trim_start().split_once('.') else {
        return false;
    };
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits(secs) && micros.len() == 6 && digits(micros)
}

/// Lines that stay in the echoed console however long a backend's output gets.
fn always_echo(line: &str) -> bool {
    line.contains("IMDS-VM-")
        || line.starts_with("test ")
        || line.starts_with("qemu: ")
        || KERNEL_FAULTS.iter().any(|fault| line.contains(fault))
}

/// The daemon colours its log even into a pipe; escape codes would only garble the report.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a letter.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The text after `name ` if the line holds that marker.
fn marker<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let start = line.find(name)?;
    let rest = &line[start + name.len()..];
    (rest.is_empty() || rest.starts_with(' ')).then_some(rest)
}

/// `key=value` among space-separated fields.
fn field<'l>(fields: &'l str, key: &str) -> Option<&'l str> {
    fields
        .split_whitespace()
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Run {
        let mut parser = Parser::new("6.1", &["sk-msg", "fentry", "kprobe"]);
        for (i, line) in lines.iter().enumerate() {
            parser.line(line, Duration::from_secs(i as u64));
        }
        parser.finish(Duration::from_secs(100))
    }

    #[test]
    fn results_durations_and_the_first_failure_message() {
        let run = feed(&[
            "IMDS-VM-BOOTED kernel=6.1 release=6.1.0-56-cloud-amd64",
            "IMDS-VM-START kernel=6.1 backend=sk-msg",
            "test a ... some log line of the test's own",
            "ok",
            "test b ... ok",
            "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s",
            "IMDS-VM-RESULT kernel=6.1 backend=sk-msg result=success",
            "IMDS-VM-START kernel=6.1 backend=fentry",
            "test a ... FAILED",
            "---- a stdout ----",
            "thread 'a' (424) panicked at tests/src/lib.rs:1:2:",
            "no READY=1 from imds-probe",
            "stderr: error: fentry cannot attach",
            "",
            "375: (85) call bpf_get_current_comm#16",
            "unknown func bpf_get_current_comm#16",
            "verification time 4133 usec",
            "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.02s",
            "[   12.0] random kernel chatter IMDS-VM-RESULT kernel=6.1 backend=fentry result=failure",
        ]);
        assert_eq!(run.release.as_deref(), Some("6.1.0-56-cloud-amd64"));
        let [(_, sk), (_, fentry), (_, kprobe)] = &run.outcomes[..] else {
            panic!("three outcomes");
        };
        assert!(
            matches!(sk, Outcome::Success { took, tests } if took.as_secs() == 5 && tests.passed == 2)
        );
        let Outcome::Failure { reason, tests, .. } = fentry else {
            panic!("fentry failed");
        };
        assert_eq!(tests.failed, 1);
        assert_eq!(
            reason,
            "[a] verifier: unknown func bpf_get_current_comm#16 | no READY=1 from imds-probe | \
             stderr: error: fentry cannot attach"
        );
        assert!(
            matches!(kprobe, Outcome::Failure { reason, .. } if reason.starts_with("no result"))
        );
    }

    #[test]
    fn a_panic_fails_the_running_backend_and_every_later_one() {
        let run = feed(&[
            "IMDS-VM-BOOTED kernel=6.1 release=x",
            "IMDS-VM-START kernel=6.1 backend=sk-msg",
            "[    5.1] Kernel panic - not syncing: Fatal exception",
        ]);
        for (_, outcome) in &run.outcomes {
            let Outcome::Failure { reason, .. } = outcome else {
                panic!("failure expected");
            };
            assert!(reason.contains("Kernel panic"), "{reason}");
        }
        let Outcome::Failure { took, .. } = &run.outcomes[0].1 else {
            unreachable!()
        };
        assert_eq!(*took, Some(Duration::from_secs(99)));
    }

    #[test]
    fn an_oops_taints_a_backend_that_reported_success() {
        let run = feed(&[
            "IMDS-VM-START kernel=6.1 backend=sk-msg",
            "[    5.1] BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "IMDS-VM-RESULT kernel=6.1 backend=sk-msg result=success",
        ]);
        assert!(matches!(&run.outcomes[0].1, Outcome::Failure { .. }));
        assert!(run.problems[0].contains("BUG: kernel NULL pointer"));
    }

    #[test]
    fn a_one_line_verifier_log_is_taken_from_the_daemon_message() {
        let run = feed(&[
            "IMDS-VM-START kernel=6.1 backend=sk-msg",
            "WARN backend unavailable: load failed. Verifier output: number of funcs in func_info \
             doesn't match number of subprogs",
            "verification time 89 usec",
            "IMDS-VM-RESULT kernel=6.1 backend=sk-msg result=failure",
        ]);
        let Outcome::Failure { reason, .. } = &run.outcomes[0].1 else {
            panic!("failure expected");
        };
        assert_eq!(
            reason,
            "verifier: number of funcs in func_info doesn't match number of subprogs"
        );
    }

    #[test]
    fn kernel_messages_are_told_from_benchmark_output() {
        assert!(is_kernel_message("[   12.345678] random: crng init done"));
        assert!(!is_kernel_message("[6.1] == overhead"));
        assert!(!is_kernel_message("[1.5 s] startup"));
        assert!(!is_kernel_message("[] x"));
        assert!(!is_kernel_message("  round 1/3 no probe: done"));
    }

    #[test]
    fn colour_codes_are_dropped() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
    }

    #[test]
    fn markers_need_a_word_boundary() {
        assert_eq!(marker("IMDS-VM-DONEX", "IMDS-VM-DONE"), None);
        assert_eq!(marker("x IMDS-VM-DONE", "IMDS-VM-DONE"), Some(""));
        assert_eq!(
            field(" kernel=6.1 backend=sk-msg", "backend"),
            Some("sk-msg")
        );
    }
}
