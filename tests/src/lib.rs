//! The integration tests' side of the test kit: the backend under test, the daemon shared out
//! one test at a time, and waits that fail the test. A network namespace of the test's own
//! with the IMDS addresses on its loopback, the project's fake IMDS in it, the real daemon
//! with its real kernel programs, and real clients; everything removed on drop, even when
//! the test fails. Tests wait for events with a deadline, never a fixed sleep.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use imds_probe_test_kit::{Events, Stdout, bin, for_each_event};
pub use imds_probe_test_kit::{Netns, OrPanic, Server, TempDir};
use serde_json::Value;

pub const DEADLINE: Duration = Duration::from_secs(20);

/// The backend under test: $IMDS_PROBE_TEST_BACKEND (`sk-msg`, `fentry`, `kprobe`), default
/// `sk-msg`. Returns the CLI name and the name events carry.
pub fn backend() -> (String, String) {
    let cli = std::env::var("IMDS_PROBE_TEST_BACKEND").unwrap_or_else(|_| "sk-msg".to_owned());
    let json = cli.replace('-', "_");
    (cli, json)
}

/// A binary of the daemon's or the kit's; the test fails if it was not built.
pub fn binary(name: &str) -> PathBuf {
    bin(name).or_panic()
}

/// Privileged tests need root. They fail rather than pass silently without it, unless the
/// caller opted out explicitly.
pub fn require_root() -> bool {
    if imds_probe_test_kit::is_root() {
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

/// A namespace of the test's own, with the fake IMDS in it in token `mode`, also listening
/// on `extra_listen`.
pub fn netns_with_imds(mode: &str, extra_listen: &[&str]) -> (Netns, Server) {
    let ns = Netns::new().or_panic();
    let imds = Server::fake_imds(&binary("fake-imds"), &ns, mode, extra_listen).or_panic();
    (ns, imds)
}

/// Runs a client in `ns` to completion; returns its pid and output.
pub fn client(ns: &Netns, program: &str, args: &[&str]) -> (u32, Output) {
    ns.client(program, args).or_panic()
}

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
        let (ns, imds) = netns_with_imds(mode, extra_listen);
        Some(Self { ns, imds, daemon })
    }

    /// Runs a client in the namespace; returns its pid and output.
    pub fn client(&self, program: &str, args: &[&str]) -> (u32, Output) {
        client(&self.ns, program, args)
    }

    /// Runs Python code in the namespace; asserts it succeeded; returns its pid.
    pub fn python(&self, code: &str) -> u32 {
        let (pid, output) = self.client("python3", &["-c", code]);
        assert!(
            output.status.success(),
            "python client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        pid
    }

    /// Runs `program args` in the namespace as a client, asserts that it exited 0, and
    /// returns exactly the request events of its process.
    pub fn requests_of(&self, program: &str, args: &[&str]) -> Vec<Value> {
        let (pid, out) = self.client(program, args);
        assert!(
            out.status.success(),
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.requests_from(pid)
    }

    /// Every request event of `pid`, exactly (see `requests_where`).
    pub fn requests_from(&self, pid: u32) -> Vec<Value> {
        requests_where(&self.ns, &self.daemon, &format!("pid {pid}"), |e| {
            e["process"]["pid"] == pid
        })
    }

    /// The one request event of `pid`; fails the test unless there is exactly one.
    pub fn request_from(&self, pid: u32) -> Value {
        only(self.requests_from(pid))
    }

    /// Every request event for which `select` holds, exactly (see `requests_where`).
    pub fn requests_where(&self, what: &str, select: impl Fn(&Value) -> bool) -> Vec<Value> {
        requests_where(&self.ns, &self.daemon, what, select)
    }
}

/// Every request event for which `select` holds, exactly: sends a marker request in `ns`
/// and returns what came before its event.
pub fn requests_where(
    ns: &Netns,
    daemon: &Daemon,
    what: &str,
    select: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let marker = marker(ns);
    let events = daemon.wait_for(&format!("the marker after {what}"), |events| {
        events.iter().any(|e| is_request_of(e, marker))
    });
    let marker_at = events
        .iter()
        .position(|e| is_request_of(e, marker))
        .expect("waited for it");
    events[..marker_at]
        .iter()
        .filter(|e| e["event"] == "imds_request" && select(e))
        .cloned()
        .collect()
}

/// The one event of `events`; fails the test unless there is exactly one.
pub fn only(events: Vec<Value>) -> Value {
    match <[Value; 1]>::try_from(events) {
        Ok([event]) => event,
        Err(events) => panic!("expected exactly one request event, got {events:#?}"),
    }
}

/// A request that must be seen, sent in `ns` after everything before it: the ring buffer is
/// ordered, so once its event is there, every event of what came before is there too.
/// Returns its pid.
fn marker(ns: &Netns) -> u32 {
    let (pid, out) = client(
        ns,
        "curl",
        // Not -f: under `required` tokens the answer is 401, and the request is what counts.
        &[
            "-s",
            "-o",
            "/dev/null",
            "http://169.254.169.254/latest/meta-data/instance-id",
        ],
    );
    assert!(
        out.status.success(),
        "the marker request failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

fn is_request_of(event: &Value, pid: u32) -> bool {
    event["event"] == "imds_request" && event["process"]["pid"] == pid
}

/// Only one daemon runs at a time: a socket joins the sockhash of the first daemon that
/// enrols it, and a second daemon's enrolment fails (and is counted as a loss). Tests in one
/// binary therefore take turns; cargo runs test binaries one after another.
static ONE_DAEMON: Mutex<()> = Mutex::new(());

/// The real daemon, with events collected from its stdout as they arrive.
pub struct Daemon {
    // Dropped in this order: the daemon, its directory, then the turn.
    daemon: imds_probe_test_kit::Daemon,
    pub log_file: PathBuf,
    _dir: TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl Daemon {
    /// Starts `imds-probe run` with `args` in the host's network namespace and waits for
    /// READY=1. It does not ask who the host is: from here, that would be a request to a real
    /// 169.254.169.254.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(binary("imds-probe"));
        command.arg("run").arg("--no-identity").args(args);
        Self::start_command(command)
    }

    /// Starts `imds-probe run` with `args` inside `ns`, where 169.254.169.254 is the test's
    /// fake IMDS: the daemon learns its identity there, and the AWS SDK its credentials (no
    /// credentials or config files, nothing from this process's environment). Nothing but
    /// the namespace's loopback is reachable from there. `log_file` (kept across restarts)
    /// replaces the temporary one.
    pub fn start_in(ns: &Netns, args: &[&str], log_file: Option<&Path>) -> Self {
        let mut command = ns.command(binary("imds-probe"));
        command
            .arg("run")
            .arg("--every-request")
            .args(args)
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_CONFIG_FILE", "/nonexistent");
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
            "AWS_EC2_METADATA_DISABLED",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ] {
            command.env_remove(var);
        }
        Self::launch(command, log_file)
    }

    /// Starts `command`, which must exec `imds-probe run` in place (setpriv, say), with a
    /// log file, and waits for READY=1. One event per request (`--every-request`: the markers
    /// and clients of a test must not be summarised), and a ledger of the test's own unless
    /// `command` names a `--state-dir`.
    pub fn start_command(mut command: Command) -> Self {
        command.arg("--every-request");
        Self::launch(command, None)
    }

    /// As `start`, without `--every-request`: request events are limited per caller and
    /// minute, as the daemon's defaults say.
    pub fn start_raw(args: &[&str]) -> Self {
        let mut command = Command::new(binary("imds-probe"));
        command.arg("run").arg("--no-identity").args(args);
        Self::launch(command, None)
    }

    fn launch(mut command: Command, log_file: Option<&Path>) -> Self {
        // A test that failed while holding the turn poisons it; the next one may still run.
        let turn = ONE_DAEMON
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = TempDir::new("test-daemon").or_panic();
        let log_file = log_file.map_or_else(|| dir.join("logs/events.jsonl"), Path::to_owned);
        command.arg("--log-file").arg(&log_file);
        if !command.get_args().any(|arg| arg == "--state-dir") {
            command.arg("--state-dir").arg(dir.join("state"));
        }
        let daemon =
            imds_probe_test_kit::Daemon::start(command, dir.path(), "daemon", Stdout::Events)
                .or_panic();
        Self {
            daemon,
            log_file,
            _dir: dir,
            _turn: turn,
        }
    }

    fn events(&self) -> &Events {
        self.daemon.events().expect("started with Stdout::Events")
    }

    /// Waits until `want` holds over the events seen so far; returns them.
    pub fn wait_for(&self, what: &str, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        self.events()
            .wait_for(what, DEADLINE, want)
            .unwrap_or_else(|e| panic!("{}\nstderr:\n{}", e.chain(), self.stderr()))
    }

    /// Waits until the daemon's own log contains `text`; returns the log.
    pub fn wait_for_log(&self, text: &str) -> String {
        self.daemon.wait_for_log(text, DEADLINE).or_panic()
    }

    pub fn stderr(&self) -> String {
        self.daemon.stderr()
    }

    pub fn stdout(&self) -> String {
        self.events().raw()
    }

    /// The request events on its stdout so far, and those in its log file.
    pub fn requests_in_stdout_and_log(&self) -> (Vec<Value>, Vec<Value>) {
        let requests = |events: &[Value]| -> Vec<Value> {
            events
                .iter()
                .filter(|e| e["event"] == "imds_request")
                .cloned()
                .collect()
        };
        let stdout = requests(&self.wait_for("the events so far", |_| true));
        let mut logged = Vec::new();
        for_each_event(&self.log_file, |event| logged.push(event)).or_panic();
        (stdout, requests(&logged))
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid
    }

    /// See `imds_probe_test_kit::Daemon::pause`.
    pub fn pause(&self) {
        self.daemon.pause();
    }

    pub fn resume(&self) {
        self.daemon.resume();
    }

    /// SIGTERM, then wait for it to exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.daemon.stop().or_panic().status
    }

    /// `kill -9`: no chance to write anything more. Reaped by the SIGTERM-and-wait of `stop`.
    pub fn kill(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-9", &self.pid().to_string()])
            .status()
            .expect("kill -9");
        assert!(status.success(), "kill -9 {}", self.pid());
        self.stop()
    }
}

/// Python that reads socket `s` to EOF (with `time` imported), retrying EAGAIN. On a socket in
/// sk_msg's socket hash a blocking recv after a half-close can get EAGAIN on a write-space
/// wakeup (the README's "What a watched client may notice"; a 6.1 sk-msg cell failed a test on
/// it once): tests that check the events, not the client's read, read with this.
pub const PY_READ_TO_EOF: &str = "while True:\n    try:\n        if not s.recv(65536): break\n    except BlockingIOError:\n        time.sleep(0.01)\n";
