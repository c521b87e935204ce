//! The real daemon as a child: started with $NOTIFY_SOCKET and awaited on READY=1, its
//! stderr in a file, its stdout read as events or thrown away, stopped with SIGTERM and
//! reaped with its resource usage.

use std::{
    fs,
    os::unix::{net::UnixDatagram, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal, kill_process};

use crate::{
    Error, Events, LOCKED,
    server::{display, spawn},
};

/// How long the daemon may take to say READY=1, or to exit after SIGTERM. Generous: the
/// VMs run under emulation, where verifying the send hooks on 5.10 took over 30 s with the
/// host at a load average of 10; a daemon that never gets there still fails, only later.
const DEADLINE: Duration = Duration::from_secs(120);

/// What becomes of the daemon's stdout.
pub enum Stdout {
    /// Read as events (`Daemon::events`).
    Events,
    /// /dev/null: timed runs write their events to a log file only.
    Discard,
}

pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    /// From just before fork+exec to READY=1 arriving on the notify socket.
    pub ready_after: Duration,
    pub command: String,
    stderr_path: PathBuf,
    events: Option<Events>,
}

/// How the daemon ended, from wait4(2).
pub struct Stopped {
    pub status: ExitStatus,
    /// SIGTERM to reaped.
    pub took: Duration,
    /// Whole life, including the drain after SIGTERM.
    pub cpu: Duration,
    pub max_rss_kib: u64,
}

impl Daemon {
    /// Starts `command` (`imds-probe run ...`, or a wrapper such as setpriv that execs it in
    /// place) and waits for READY=1. Its notify socket and stderr are files named `tag` in
    /// `dir`. Fails with `Error::Locked` if another imds-probe holds the one-per-host lock.
    pub fn start(
        mut command: Command,
        dir: &Path,
        tag: &str,
        stdout: Stdout,
    ) -> Result<Self, Error> {
        let notify_path = dir.join(format!("{tag}.notify"));
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)
            .map_err(Error::io(format!("binding {}", notify_path.display())))?;
        // Short reads, so a daemon that exits instead of getting ready is noticed at once.
        notify
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(Error::io("setting the notify socket's timeout"))?;
        let stderr_path = dir.join(format!("{tag}.stderr"));
        let stderr = fs::File::create(&stderr_path)
            .map_err(Error::io(format!("creating {}", stderr_path.display())))?;
        command
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(match stdout {
                Stdout::Events => Stdio::piped(),
                Stdout::Discard => Stdio::null(),
            })
            .stderr(stderr);
        let shown = display(&command);
        let started = Instant::now();
        let mut child = spawn(&mut command)?;
        let events = child
            .stdout
            .take()
            .map(|out| Events::read("the daemon's stdout", out));
        let mut daemon = Self {
            pid: child.id(),
            child: Some(child),
            ready_after: Duration::ZERO,
            command: shown,
            stderr_path,
            events,
        };
        daemon.await_ready(&notify, started)?;
        daemon.ready_after = started.elapsed();
        let _ = fs::remove_file(&notify_path);
        Ok(daemon)
    }

    fn await_ready(&mut self, notify: &UnixDatagram, started: Instant) -> Result<(), Error> {
        let mut buf = [0u8; 512];
        loop {
            match notify.recv(&mut buf) {
                Ok(n) if buf[..n].windows(7).any(|w| w == b"READY=1") => return Ok(()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(Error::io("reading the notify socket")(e)),
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                self.child = None;
                let stderr = self.stderr();
                if stderr.contains(LOCKED) {
                    return Err(Error::Locked);
                }
                return Err(Error::ExitedBeforeReady {
                    command: self.command.clone(),
                    status,
                    stderr,
                });
            }
            if started.elapsed() > DEADLINE {
                return Err(Error::NotReady {
                    command: self.command.clone(),
                    waited: DEADLINE,
                    stderr: self.stderr(),
                });
            }
        }
    }

    /// Its stdout's events, if started with `Stdout::Events`.
    pub fn events(&self) -> Option<&Events> {
        self.events.as_ref()
    }

    /// Its log (stderr) so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until its log contains `text`; returns the log.
    pub fn wait_for_log(&self, text: &str, deadline: Duration) -> Result<String, Error> {
        let until = Instant::now() + deadline;
        loop {
            let log = self.stderr();
            if log.contains(text) {
                return Ok(log);
            }
            if Instant::now() > until {
                return Err(Error::NotSeen {
                    what: format!("{text:?} in the daemon's log"),
                    ended: false,
                    events: log,
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the daemon reads nothing until `resume`, while the kernel side keeps
    /// capturing into the ring buffer. What a slow reader looks like, made certain.
    pub fn pause(&self) {
        self.signal(Signal::STOP);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    fn signal(&self, signal: Signal) {
        // Only while the child is not reaped: until then the pid is still ours.
        if self.child.is_some() {
            send(self.pid as libc::pid_t, signal);
        }
    }

    /// SIGTERM (the daemon drains, flushes and detaches), then reaps it with its resource
    /// usage. The exit status is the caller's to judge.
    pub fn stop(&mut self) -> Result<Stopped, Error> {
        let Some(child) = self.child.take() else {
            return Err(Error::io("stopping the daemon")(std::io::Error::other(
                "already stopped",
            )));
        };
        let pid = child.id() as libc::pid_t;
        let sent = Instant::now();
        // A paused daemon would not act on SIGTERM.
        send(pid, Signal::CONT);
        send(pid, Signal::TERM);
        loop {
            let mut status = 0;
            // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers; pid is our unreaped child (std's Child never reaps
            // behind our back, and we took it out of self). std has no wait with rusage.
            let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if reaped == pid {
                let time = |t: libc::timeval| {
                    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
                };
                return Ok(Stopped {
                    status: ExitStatus::from_raw(status),
                    took: sent.elapsed(),
                    cpu: time(usage.ru_utime) + time(usage.ru_stime),
                    max_rss_kib: usage.ru_maxrss as u64,
                });
            }
            if reaped < 0 {
                return Err(Error::io("wait4 on the daemon")(
                    std::io::Error::last_os_error(),
                ));
            }
            if sent.elapsed() > DEADLINE {
                send(pid, Signal::KILL);
                // SAFETY: as above.
                let _ = unsafe { libc::waitpid(pid, &mut status, 0) };
                return Err(Error::DidNotExit {
                    command: self.command.clone(),
                    waited: DEADLINE,
                });
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

fn send(pid: libc::pid_t, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, signal);
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
