//! Adversarial load a local user can aim at the daemon: more idle IMDS connections than the
//! kernel's socket hash holds. Host only (see `HOST_ONLY_TESTS` in the VM harness): tens of
//! thousands of connections take minutes under emulation, and the kernel code they exercise
//! runs in every VM cell through the other tests.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
};

use imds_probe_tests::{Netns, Setup, backend};
use serde_json::Value;

const V1_URL: &str = "http://169.254.169.254/latest/meta-data/instance-id";

/// A process in `ns` holding `count` idle connections to the IMDS, until dropped.
struct IdleHolder(Child);

impl IdleHolder {
    fn start(ns: &Netns, count: usize) -> Self {
        let code = "import socket, sys\n\
                    held = [socket.create_connection(('169.254.169.254', 80)) for _ in range(int(sys.argv[1]))]\n\
                    print('ready', flush=True)\n\
                    sys.stdin.read()\n";
        let mut child = ns
            .command("python3")
            .args(["-c", code, &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the idle holder");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read the idle holder");
        assert_eq!(
            line.trim(),
            "ready",
            "the idle holder could not open {count}"
        );
        Self(child)
    }
}

impl Drop for IdleHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last `loss` event's totals (the daemon writes one at shutdown when anything moved).
fn last_loss(events: &[Value]) -> Value {
    events
        .iter()
        .rev()
        .find(|e| e["event"] == "loss")
        .map(|e| e["total"].clone())
        .unwrap_or(Value::Null)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn idle_connections_cannot_hide_new_callers() {
    let (cli, json) = backend();
    let Some(mut t) = Setup::with_daemon_args(
        "optional",
        &[],
        &["--backend", &cli, "--loss-report-interval", "1"],
    ) else {
        return;
    };
    // More than the socket hash's 16,384, within this machine's 20,000 descriptors.
    let holder = IdleHolder::start(&t.ns, 19_000);
    let callers: Vec<u32> = (0..20)
        .map(|_| {
            let (pid, out) = t.client("curl", &["-sf", V1_URL]);
            assert!(out.status.success(), "curl failed");
            pid
        })
        .collect();
    let events = t.requests_where("the 20 callers", |e| {
        callers.iter().any(|&pid| e["process"]["pid"] == pid)
    });
    for pid in callers {
        let of_pid: Vec<&Value> = events
            .iter()
            .filter(|e| e["process"]["pid"] == pid)
            .collect();
        assert_eq!(of_pid.len(), 1, "caller {pid}: {of_pid:#?}");
        assert_eq!(of_pid[0]["class"], "imdsv1", "{:#}", of_pid[0]);
        assert_eq!(of_pid[0]["backend"], json.as_str());
    }
    let peak_kib = vm_hwm_kib(t.daemon.pid());
    drop(holder);
    t.daemon.stop();
    let loss = last_loss(&t.daemon.wait_for("the events so far", |_| true));
    eprintln!("19,000 idle connections: daemon VmHWM {peak_kib} KiB; loss {loss}");
    if json == "sk_msg" {
        assert!(
            loss["sockets_evicted"].as_u64() >= Some(19_000 - 12_288),
            "idle sockets gave up their place: {loss}"
        );
    }
    assert_eq!(
        loss["connections_untracked"].as_u64().unwrap_or(0),
        0,
        "{loss}"
    );
}
