//! Harness for the privileged integration tests: a network namespace of the test's own with
//! the IMDS addresses on its loopback, the project's fake IMDS in it, the real daemon with
//! its real kernel programs, and real clients. Everything is removed on drop, even when the
//! test fails. Tests wait for events with a deadline, never a fixed sleep.

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// The backend under test: $IMDS_PROBE_TEST_BACKEND (`sk-msg`, `fentry`, `kprobe`), default
/// `sk-msg`. Returns the CLI name and the name events carry.
pub fn backend() -> (String, String) {
    let cli = std::env::var("IMDS_PROBE_TEST_BACKEND").unwrap_or_else(|_| "sk-msg".to_owned());
    let json = cli.replace('-', "_");
    (cli, json)
}

/// Where the built binaries are: $IMDS_PROBE_BIN_DIR (set by `cargo xtask test`), else the
/// workspace's release, then debug, directory.
pub fn bin(name: &str) -> PathBuf {
    let candidates = std::env::var_os("IMDS_PROBE_BIN_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(["release", "debug"].map(|profile| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target")
                .join(profile)
        }));
    for dir in candidates {
        let path = dir.join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "binary {name} not found: run `cargo xtask test`, or build with `cargo build --release -p imds-probe --bins`"
    )
}

/// Privileged tests need root. They fail rather than pass silently without it, unless the
/// caller opted out explicitly.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("IMDS_PROBE_SKIP_PRIVILEGED").is_some() {
        eprintln!("skipped: not root and IMDS_PROBE_SKIP_PRIVILEGED is set");
        return false;
    }
    panic!(
        "privileged integration test: run as root (or set IMDS_PROBE_SKIP_PRIVILEGED=1 to skip)"
    );
}

fn run(cmd: &mut Command) -> Output {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A network namespace with 169.254.169.254 and fd00:ec2::254 on its loopback: traffic to
/// the IMDS addresses from inside it never leaves the machine.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "imdsp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["addr", "add", "169.254.169.254/32", "dev", "lo"]);
        ns.ip(&["addr", "add", "169.254.169.253/32", "dev", "lo"]);
        ns.ip(&["addr", "add", "fd00:ec2::254/128", "dev", "lo", "nodad"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// A command that runs inside the namespace (`ip netns exec` execs in place, so the
    /// child's pid is the client's pid).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a client to completion; returns its pid and output.
    pub fn client(&self, program: &str, args: &[&str]) -> (u32, Output) {
        let child = self
            .command(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let pid = child.id();
        let output = child.wait_with_output().expect("client wait");
        (pid, output)
    }

    /// Runs Python code inside the namespace; asserts it succeeded; returns its pid.
    pub fn python(&self, code: &str) -> u32 {
        let (pid, output) = self.client("python3", &["-c", code]);
        assert!(
            output.status.success(),
            "python client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        pid
    }

    /// Starts the project's fake IMDS in the namespace and waits until it listens.
    pub fn fake_imds(&self, mode: &str, extra_listen: &[&str]) -> Server {
        let mut cmd = self.command(bin("fake-imds"));
        cmd.args([
            "--mode",
            mode,
            "--listen",
            "169.254.169.254:80",
            "--listen",
            "[fd00:ec2::254]:80",
        ]);
        for listen in extra_listen {
            cmd.args(["--listen", listen]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fake-imds");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read fake-imds");
        assert_eq!(line.trim(), "listening", "fake-imds did not start");
        Server { child }
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside would keep it alive; kill them first.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

pub struct Server {
    child: Child,
}

impl Server {
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

/// Only one daemon runs at a time: a socket joins the sockhash of the first daemon that
/// enrols it, and a second daemon's enrolment fails (and is counted as a loss). Tests in one
/// binary therefore take turns; cargo runs test binaries one after another.
static ONE_DAEMON: Mutex<()> = Mutex::new(());

/// What every privileged test starts from: the daemon on the backend under test, a namespace
/// with the IMDS addresses, and the fake IMDS in it. None when the test is to be skipped.
pub struct Setup {
    pub ns: Netns,
    pub imds: Server,
    pub daemon: Daemon,
}

impl Setup {
    pub fn new(mode: &str, extra_listen: &[&str]) -> Option<Self> {
        Self::with_daemon_args(mode, extra_listen, &["--backend", &backend().0])
    }

    /// As `new`, with these arguments for `imds-probe run` (the backend among them).
    pub fn with_daemon_args(mode: &str, extra_listen: &[&str], args: &[&str]) -> Option<Self> {
        if !require_root() {
            return None;
        }
        let daemon = Daemon::start(args);
        let ns = Netns::new();
        let imds = ns.fake_imds(mode, extra_listen);
        Some(Self { ns, imds, daemon })
    }

    /// Runs `program args` in the namespace as a client, asserts that it exited 0, and
    /// returns the first `count` request events of its process.
    pub fn requests_of(&self, count: usize, program: &str, args: &[&str]) -> Vec<Value> {
        let (pid, out) = self.ns.client(program, args);
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.daemon.requests_from(pid, count)
    }
}

/// The real daemon, with events collected from its stdout as they arrive.
pub struct Daemon {
    _turn: MutexGuard<'static, ()>,
    child: Option<Child>,
    events: Arc<(Mutex<Vec<Value>>, Condvar)>,
    stderr: Arc<Mutex<String>>,
    raw_stdout: Arc<Mutex<String>>,
    pub log_file: PathBuf,
    _notify_dir: TempDir,
}

impl Daemon {
    /// Starts `imds-probe run` with `args` and waits for READY=1 on its $NOTIFY_SOCKET.
    pub fn start(args: &[&str]) -> Self {
        // A test that failed while holding the turn poisons it; the next one may still run.
        let turn = ONE_DAEMON
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = TempDir::new("daemon");
        let notify_path = dir.0.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        // Short reads, so a daemon that exits instead of getting ready fails the test at once.
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let log_file = dir.0.join("logs/events.jsonl");
        let mut child = Command::new(bin("imds-probe"))
            .arg("run")
            .arg("--log-file")
            .arg(&log_file)
            .args(args)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn imds-probe");
        let events = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let raw_stdout = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped");
        let (sink, raw) = (Arc::clone(&events), Arc::clone(&raw_stdout));
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                raw.lock().unwrap().push_str(&line);
                raw.lock().unwrap().push('\n');
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                let (lock, cvar) = &*sink;
                lock.lock().unwrap().push(value);
                cvar.notify_all();
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut err_pipe, err_sink) = (child.stderr.take().expect("piped"), Arc::clone(&stderr));
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err_sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut daemon = Self {
            _turn: turn,
            child: Some(child),
            events,
            stderr,
            raw_stdout,
            log_file,
            _notify_dir: dir,
        };
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + DEADLINE;
        loop {
            match notify.recv(&mut buf) {
                Ok(n) if buf[..n].windows(7).any(|w| w == b"READY=1") => break,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let exited = daemon
                        .child
                        .as_mut()
                        .and_then(|c| c.try_wait().ok().flatten());
                    if exited.is_some() || Instant::now() > deadline {
                        // Let the stderr reader catch up with the daemon's last words.
                        thread::sleep(Duration::from_millis(100));
                        panic!(
                            "no READY=1 from imds-probe; exit: {exited:?}; stderr:\n{}",
                            daemon.stderr()
                        );
                    }
                }
                Err(e) => panic!("reading the notify socket: {e}"),
            }
        }
        daemon
    }

    /// Waits until the daemon's own log contains `text`; returns the log.
    pub fn wait_for_log(&self, text: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let log = self.stderr();
            if log.contains(text) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {text:?} in the daemon's log:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.raw_stdout.lock().unwrap().clone()
    }

    /// Waits until `want` holds over the events seen so far; returns them.
    pub fn wait_for(&self, what: &str, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let (lock, cvar) = &*self.events;
        let deadline = Instant::now() + DEADLINE;
        let mut events = lock.lock().unwrap();
        while !want(&events) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; events: {events:#?}\nstderr:\n{}",
                self.stderr()
            );
            events = cvar.wait_timeout(events, left).unwrap().0;
        }
        events.clone()
    }

    /// Request events whose sender is `pid`, once at least `count` of them are there.
    pub fn requests_from(&self, pid: u32, count: usize) -> Vec<Value> {
        self.requests_where(&format!("pid {pid}"), count, |e| e["process"]["pid"] == pid)
    }

    /// Request events for which `select` holds, once at least `count` of them are there.
    pub fn requests_where(
        &self,
        what: &str,
        count: usize,
        select: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let matching = |events: &[Value]| -> Vec<Value> {
            events
                .iter()
                .filter(|e| e["event"] == "imds_request" && select(e))
                .cloned()
                .collect()
        };
        let events = self.wait_for(&format!("{count} request events from {what}"), |e| {
            matching(e).len() >= count
        });
        matching(&events)
    }

    /// Proves a negative with a marker: `marker_pid`'s requests arrive after anything `pid`
    /// could have sent (the ring buffer is ordered), so no request from `pid` by then means none.
    pub fn assert_none_from(&self, pid: u32, marker_pid: u32) {
        self.requests_from(marker_pid, 1);
        let from_pid: Vec<_> = self
            .events
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "imds_request" && e["process"]["pid"] == pid)
            .cloned()
            .collect();
        assert!(
            from_pid.is_empty(),
            "expected no requests from pid {pid}, got {from_pid:#?}"
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Every event so far, in the order the daemon wrote them.
    pub fn events(&self) -> Vec<Value> {
        self.events.0.lock().unwrap().clone()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "imds-probe did not exit after SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
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

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "imds-probe-test-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
