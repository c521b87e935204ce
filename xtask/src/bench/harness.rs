//! The benchmarks' side of the test kit (`imds-probe-test-kit`, which the integration tests
//! share): Ctrl-C that stops between steps and lets the kit's guards clean up, the daemon
//! started for a timed run (waiting out another instance's lock), clients run with a
//! deadline, and other daemons on the host noticed.

use std::{
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
pub use imds_probe_test_kit::{Daemon, Netns, Server, Stopped, TempDir};
use imds_probe_test_kit::{Error, Stdout, bin_in};

use super::Ctx;
use crate::cmd;

// ---------------------------------------------------------------------------------------------
// Ctrl-C: stop between steps and let the guards clean up.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set a flag instead of killing xtask, so the guards' Drop runs (namespace
/// deleted, daemon stopped, sysctl restored).
pub fn install_interrupt_handler() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) on Ctrl-C.
pub fn sleep(duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        check_interrupted()?;
        thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    check_interrupted()
}

// ---------------------------------------------------------------------------------------------
// Binaries

pub struct Bins {
    pub daemon: PathBuf,
    pub fake_imds: PathBuf,
    pub load: PathBuf,
}

impl Bins {
    pub fn in_dir(dir: &Path) -> Result<Self> {
        Ok(Self {
            daemon: bin_in(dir, "imds-probe")?,
            fake_imds: bin_in(dir, "fake-imds")?,
            load: bin_in(dir, "imds-load")?,
        })
    }
}

/// fake-imds in `ns` on both IMDS addresses, tokens optional: it serves v1 and v2 alike.
pub fn fake_imds(ctx: &Ctx, ns: &Netns) -> Result<Server> {
    Ok(Server::fake_imds(&ctx.bins.fake_imds, ns, "optional", &[])?)
}

// ---------------------------------------------------------------------------------------------
// Clients

/// Runs a client to completion with a deadline; returns its stdout. Fails (with its stderr)
/// unless it exits 0.
pub fn run_client(mut command: Command, deadline: Duration) -> Result<String> {
    let shown = cmd::display(&command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let mut stdout = child.stdout.take().context("piped stdout")?;
    let mut stderr = child.stderr.take().context("piped stderr")?;
    let out = thread::spawn(move || {
        let mut buf = String::new();
        let _ = stdout.read_to_string(&mut buf);
        buf
    });
    let err = thread::spawn(move || {
        let mut buf = String::new();
        let _ = stderr.read_to_string(&mut buf);
        buf
    });
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if INTERRUPTED.load(Ordering::SeqCst) || Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupted()?;
            bail!("`{shown}` did not finish within {deadline:?}");
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        bail!("`{shown}` failed ({status}): {}", stderr.trim());
    }
    Ok(stdout)
}

/// The last line of `stdout` that parses as a JSON object: the load generator's summary.
pub fn summary(stdout: &str) -> Result<serde_json::Value> {
    stdout
        .lines()
        .rev()
        .find_map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(serde_json::Value::is_object)
        })
        .with_context(|| format!("no JSON summary in the load generator's output: {stdout:?}"))
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// The daemon on `backend`, with the events going to `log` only: how every timed
/// measurement runs it.
pub fn logging_daemon(ctx: &Ctx, backend: &str, log: &Path, tag: &str) -> Result<Daemon> {
    let log = log.to_string_lossy();
    // One event per request: what the capacity and latency figures have always measured.
    start_daemon(
        ctx,
        &[
            "--backend",
            backend,
            "--no-stdout",
            "--every-request",
            "--log-file",
            &log,
        ],
        tag,
    )
}

/// `imds-probe run ARGS`, awaited on READY=1; `tag` names its notify socket, stderr file and
/// ledger directory in the scratch directory. While another imds-probe (an integration test, say) holds the
/// one-per-host lock, retries for up to two minutes.
pub fn start_daemon(ctx: &Ctx, args: &[&str], tag: &str) -> Result<Daemon> {
    start_daemon_from(ctx, &ctx.bins.daemon, args, &[], tag)
}

/// `start_daemon` with these environment variables set for the daemon.
pub fn start_daemon_with_env(
    ctx: &Ctx,
    args: &[&str],
    env: &[(&str, &str)],
    tag: &str,
) -> Result<Daemon> {
    start_daemon_from(ctx, &ctx.bins.daemon, args, env, tag)
}

/// [`start_daemon`] with the daemon binary at `daemon` (another build's, say) and these
/// environment variables.
pub fn start_daemon_from(
    ctx: &Ctx,
    daemon: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    tag: &str,
) -> Result<Daemon> {
    let until = Instant::now() + Duration::from_secs(120);
    let mut noted = false;
    loop {
        check_interrupted()?;
        let mut command = Command::new(daemon);
        command
            .arg("run")
            // Benchmarks run in the host's namespace: asking who the host is would be a
            // request to a real 169.254.169.254.
            .arg("--no-identity")
            // The benchmark's own ledger, not the host's.
            .arg("--state-dir")
            .arg(ctx.tmp.join(&format!("{tag}.state")))
            .args(args)
            .envs(env.iter().copied());
        match Daemon::start(command, ctx.tmp.path(), tag, Stdout::Discard) {
            Err(Error::Locked) if Instant::now() < until => {
                if !std::mem::replace(&mut noted, true) {
                    println!(
                        "  another imds-probe holds /run/imds-probe.lock: waiting for it to exit (up to 120 s)"
                    );
                }
                sleep(Duration::from_millis(250))?;
            }
            Err(Error::Locked) => {
                bail!("another imds-probe kept /run/imds-probe.lock for 120 s; stop it and re-run")
            }
            started => return Ok(started?),
        }
    }
}

/// SIGTERM (drain, flush, detach), then reap with rusage. Fails unless it exits 0.
pub fn stop(daemon: &mut Daemon) -> Result<Stopped> {
    let stopped = daemon.stop()?;
    if !stopped.status.success() {
        bail!(
            "`{}` did not exit 0 after SIGTERM ({}); stderr:\n{}",
            daemon.command,
            stopped.status,
            daemon.stderr()
        );
    }
    Ok(stopped)
}

/// Other imds-probe daemons on the host: a socket joins only one daemon's sockhash, so one
/// started before ours would take the benchmark's connections (and CPU).
pub fn other_daemons(ours: &[u32]) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "imds-probe")
        })
        .collect()
}
