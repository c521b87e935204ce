//! What every measurement stands on: the binaries, a scratch directory, a network namespace
//! that owns the IMDS addresses, servers inside it, and the daemon. Each is a guard that
//! cleans up on drop, so an error or Ctrl-C mid-run leaves nothing behind.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::Ctx;
use crate::cmd;

/// How long a daemon may take to say READY=1, or to exit after SIGTERM.
const DAEMON_DEADLINE: Duration = Duration::from_secs(30);

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
// Binaries and the scratch directory

pub struct Bins {
    pub daemon: PathBuf,
    pub fake_imds: PathBuf,
    pub load: PathBuf,
}

impl Bins {
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let bins = Self {
            daemon: dir.join("imds-probe"),
            fake_imds: dir.join("fake-imds"),
            load: dir.join("imds-load"),
        };
        for path in [&bins.daemon, &bins.fake_imds, &bins.load] {
            if !path.is_file() {
                bail!(
                    "{} is missing (build it, or drop --no-build)",
                    path.display()
                );
            }
        }
        Ok(bins)
    }
}

/// A directory under /tmp for logs and sockets, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("imds-bench-{}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The network namespace

/// A network namespace of this run with 169.254.169.254/32 and fd00:ec2::254/128 on its
/// loopback: IMDS traffic from inside it never leaves the machine. Deleted on drop, after
/// killing whatever still runs in it.
pub struct Netns {
    pub name: String,
}

const NETNS_PREFIX: &str = "imdsb-";

impl Netns {
    pub fn new() -> Result<Self> {
        remove_stale_namespaces();
        let name = format!("{NETNS_PREFIX}{}", std::process::id());
        cmd::output(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on, Drop deletes it whatever fails next.
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.ip(&["addr", "add", "169.254.169.254/32", "dev", "lo"])?;
        ns.ip(&["addr", "add", "fd00:ec2::254/128", "dev", "lo", "nodad"])?;
        // The guarantee the whole benchmark rests on: inside, the IMDS addresses are local.
        for addr in ["169.254.169.254", "fd00:ec2::254"] {
            let route = cmd::output(
                Command::new("ip")
                    .args(["-n", &ns.name, "route", "get", addr])
                    .env("LC_ALL", "C"),
            )?;
            if !route.trim_start().starts_with("local") {
                bail!(
                    "{addr} is not local in namespace {}: {}",
                    ns.name,
                    route.trim()
                );
            }
        }
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        cmd::output(Command::new("ip").arg("-n").arg(&self.name).args(args)).map(drop)
    }

    /// `program` inside the namespace (`ip netns exec` execs in place: the child's pid is
    /// the program's pid).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_namespace_pids(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn kill_namespace_pids(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill(2) on a process inside our own benchmark namespace.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Namespaces a killed (SIGKILL, power loss) earlier run left behind: `imdsb-<pid>` whose
/// pid no longer runs.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            eprintln!("removing stale namespace {name}");
            kill_namespace_pids(name);
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A server that prints `listening` once bound; killed on drop.
pub struct Server {
    child: Child,
    pub command: String,
}

impl Server {
    /// fake-imds in `ns` on both IMDS addresses, tokens optional: it serves v1 and v2 alike.
    pub fn fake_imds(ctx: &Ctx, ns: &Netns) -> Result<Self> {
        let mut imds = ns.command(&ctx.bins.fake_imds);
        imds.args([
            "--mode",
            "optional",
            "--listen",
            "169.254.169.254:80",
            "--listen",
            "[fd00:ec2::254]:80",
        ]);
        Self::start(imds)
    }

    pub fn start(mut command: Command) -> Result<Self> {
        let shown = cmd::display(&command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting `{shown}`"))?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            // Keep draining so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let server = Self {
            child,
            command: shown,
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(line)) if line.trim() == "listening" => Ok(server),
            other => bail!("`{}` did not start: {other:?}", server.command),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// `imds-probe run ARGS` with $NOTIFY_SOCKET; killed on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    /// From just before fork+exec to READY=1 arriving on the notify socket.
    pub ready_after: Duration,
    pub command: String,
    stderr_path: PathBuf,
}

/// How the daemon ended, from wait4(2).
pub struct Stopped {
    /// SIGTERM to reaped.
    pub took: Duration,
    /// Whole life, including the drain after SIGTERM.
    pub cpu: Duration,
    pub max_rss_kib: u64,
}

/// One attempt at starting the daemon.
enum Attempt {
    Ready(Daemon),
    /// Another imds-probe holds the one-per-host lock.
    Locked,
}

/// What the daemon says when another instance holds /run/imds-probe.lock.
const LOCKED: &str = "another imds-probe is running";

impl Daemon {
    /// `start` on `backend`, with the events going to `log` only: how every timed
    /// measurement runs it.
    pub fn logging(ctx: &Ctx, backend: &str, log: &Path, tag: &str) -> Result<Self> {
        let log = log.to_string_lossy();
        // One event per request: what the capacity and latency figures have always measured.
        let args = [
            "--backend",
            backend,
            "--no-stdout",
            "--every-request",
            "--log-file",
            &log,
        ];
        Self::start(&ctx.bins.daemon, &args, &ctx.tmp, tag)
    }

    /// Starts the daemon and waits for READY=1. `tag` names its notify socket, stderr file and
    /// ledger directory in `dir`. While another imds-probe (an integration test, say) holds the
    /// one-per-host lock, retries for up to two minutes.
    pub fn start(daemon: &Path, args: &[&str], dir: &TempDir, tag: &str) -> Result<Self> {
        let until = Instant::now() + Duration::from_secs(120);
        let mut noted = false;
        loop {
            match Self::try_start(daemon, args, dir, tag)? {
                Attempt::Ready(daemon) => return Ok(daemon),
                Attempt::Locked if Instant::now() < until => {
                    if !std::mem::replace(&mut noted, true) {
                        println!(
                            "  another imds-probe holds /run/imds-probe.lock: waiting for it to exit (up to 120 s)"
                        );
                    }
                    sleep(Duration::from_millis(250))?;
                }
                Attempt::Locked => bail!(
                    "another imds-probe kept /run/imds-probe.lock for 120 s; stop it and re-run"
                ),
            }
        }
    }

    fn try_start(daemon: &Path, args: &[&str], dir: &TempDir, tag: &str) -> Result<Attempt> {
        check_interrupted()?;
        let notify_path = dir.join(&format!("{tag}.notify"));
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)
            .with_context(|| format!("binding {}", notify_path.display()))?;
        notify.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stderr_path = dir.join(&format!("{tag}.stderr"));
        let stderr = fs::File::create(&stderr_path)?;
        let mut command = Command::new(daemon);
        command
            .arg("run")
            // The benchmark's own ledger, not the host's.
            .arg("--state-dir")
            .arg(dir.join(&format!("{tag}.state")))
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let shown = cmd::display(&command);
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("starting `{shown}`"))?;
        let mut daemon = Self {
            pid: child.id(),
            child: Some(child),
            ready_after: Duration::ZERO,
            command: shown,
            stderr_path,
        };
        let mut buf = [0u8; 512];
        loop {
            match notify.recv(&mut buf) {
                Ok(n) if buf[..n].windows(7).any(|w| w == b"READY=1") => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e).context("reading the notify socket"),
            }
            check_interrupted()?;
            if let Some(status) = daemon.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                daemon.child = None;
                let stderr = daemon.stderr();
                if stderr.contains(LOCKED) {
                    return Ok(Attempt::Locked);
                }
                bail!(
                    "`{}` exited ({status}) before READY=1; stderr:\n{stderr}",
                    daemon.command,
                );
            }
            if started.elapsed() > DAEMON_DEADLINE {
                bail!(
                    "no READY=1 from `{}` within {DAEMON_DEADLINE:?}; stderr:\n{}",
                    daemon.command,
                    daemon.stderr()
                );
            }
        }
        daemon.ready_after = started.elapsed();
        let _ = fs::remove_file(&notify_path);
        Ok(Attempt::Ready(daemon))
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM (drain, flush, detach), then reap with rusage. Fails unless it exits 0.
    pub fn stop(&mut self) -> Result<Stopped> {
        let child = self.child.take().context("daemon already stopped")?;
        let pid = child.id() as libc::pid_t;
        let sent = Instant::now();
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        loop {
            let mut status = 0;
            // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers; pid is our unreaped child (std's Child never reaps
            // behind our back, and we took it out of self).
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == pid {
                let took = sent.elapsed();
                let tv = |t: libc::timeval| {
                    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
                };
                if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                    bail!(
                        "`{}` did not exit 0 after SIGTERM (wait status {status:#x}); stderr:\n{}",
                        self.command,
                        self.stderr()
                    );
                }
                return Ok(Stopped {
                    took,
                    cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
                    max_rss_kib: usage.ru_maxrss as u64,
                });
            }
            if reaped < 0 {
                bail!("wait4: {}", std::io::Error::last_os_error());
            }
            if sent.elapsed() > DAEMON_DEADLINE {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = unsafe { libc::waitpid(pid, &mut status, 0) };
                bail!(
                    "`{}` did not exit within {DAEMON_DEADLINE:?} of SIGTERM",
                    self.command
                );
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
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
