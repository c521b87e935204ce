//! What the send hooks (fentry, kprobe) once lost without a trace (issue 12), for every
//! backend: a request whose bytes no hook can read (sendfile), whatever came before it on its
//! connection, and bursts of short connections from many processes, where the kernel reuses
//! socket addresses at once and may skip a program run.

use std::collections::{HashMap, HashSet};

use imds_probe_tests::{PY_READ_TO_EOF, Setup, backend, binary};
use serde_json::Value;

const PROCESSES: usize = 30;
const THREADS: usize = 10;
const ROUNDS: usize = 3;

fn setup() -> Option<Setup> {
    let backend = backend().0;
    Setup::with_daemon_args(
        "optional",
        &[],
        &["--backend", &backend, "--loss-report-interval", "1"],
    )
}

/// Python that sends `before` on a new connection, then `by_file` with sendfile(2), and
/// reads the answers to the end.
fn sendfile_client(before: &str, by_file: &str) -> String {
    format!(
        "import os, socket, tempfile, time\n\
         s = socket.create_connection(('169.254.169.254', 80))\n\
         s.sendall(b'{before}')\n\
         f = tempfile.TemporaryFile(); f.write(b'{by_file}'); f.flush()\n\
         n = os.sendfile(s.fileno(), f.fileno(), 0, {len})\n\
         assert n == {len}, n\n\
         s.shutdown(socket.SHUT_WR)\n{PY_READ_TO_EOF}",
        len = by_file.replace("\\r\\n", "..").len(),
    )
}

/// (class, path or reason) of each request event.
fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["class"].as_str() {
            Some("unknown") => format!("unknown {}", e["reason"].as_str().unwrap_or("?")),
            class => format!(
                "{} {}",
                class.unwrap_or("?"),
                e["path"].as_str().unwrap_or("?")
            ),
        })
        .collect()
}

/// A request sent with sendfile(2) after `before` on a new connection, and what it gives:
/// with sk_msg, which reads the socket's message wherever its bytes came from, and with a send
/// hook, which cannot read sendfile's page-cache pages and says so, naming the sender.
struct SendfileCase {
    before: &'static str,
    by_file: &'static str,
    sk_msg: &'static [&'static str],
    send_hook: &'static [&'static str],
}

const SENDFILE_CASES: [SendfileCase; 3] = [
    SendfileCase {
        before: "",
        by_file: "GET /alone HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
        sk_msg: &["imdsv1 /alone"],
        send_hook: &["unknown capture_gap"],
    },
    SendfileCase {
        before: "GET /before HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
        by_file: "GET /after-a-request HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
        sk_msg: &["imdsv1 /before", "imdsv1 /after-a-request"],
        send_hook: &["imdsv1 /before", "unknown capture_gap"],
    },
    SendfileCase {
        before: "GET /split HTTP/1.1\\r\\n",
        by_file: "Host: x\\r\\n\\r\\n",
        sk_msg: &["imdsv1 /split"],
        send_hook: &["unknown capture_gap"],
    },
];

#[test]
fn a_request_sent_with_sendfile_is_reported_whatever_came_before_it() {
    let Some(t) = setup() else { return };
    let sk_msg = backend().1 == "sk_msg";
    for case in &SENDFILE_CASES {
        let pid = t.python(&sendfile_client(case.before, case.by_file));
        let want = if sk_msg { case.sk_msg } else { case.send_hook };
        assert_eq!(summary(&t.requests_from(pid)), want, "client {pid}");
    }
    if !sk_msg {
        t.daemon
            .wait_for("send_unreadable in a loss event", |events| {
                events.iter().any(|e| {
                    e["event"] == "loss" && e["total"]["send_unreadable"].as_u64() >= Some(3)
                })
            });
    }
}

#[test]
fn bursts_of_short_connections_give_exactly_one_event_per_request() {
    let Some(t) = setup() else { return };
    let client = binary("burst-client");
    for round in 0..ROUNDS {
        let tag = format!("round{round}");
        let (_, out) = t.client(
            client.to_str().unwrap(),
            &[
                "169.254.169.254:80",
                &tag,
                &PROCESSES.to_string(),
                &THREADS.to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "burst-client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Every request event so far (all of them before a marker request sent now).
        let requests = t.requests_where(&tag, |_| true);
        let losses = t.daemon.wait_for("the events so far", |_| true);
        let losses: Vec<&Value> = losses.iter().filter(|e| e["event"] == "loss").collect();
        // Nothing but v1 requests was sent: no unknown in their place, ever.
        let other: Vec<&Value> = requests.iter().filter(|e| e["class"] != "imdsv1").collect();
        assert!(
            other.is_empty(),
            "round {round}: {other:#?}; loss: {losses:#?}"
        );
        let prefix = format!("/burst/{tag}/");
        let mut per_path: HashMap<&str, usize> = HashMap::new();
        let mut pids = HashSet::new();
        for event in &requests {
            let Some(path) = event["path"].as_str().filter(|p| p.starts_with(&prefix)) else {
                continue;
            };
            *per_path.entry(path).or_default() += 1;
            // The path names the process that sent it.
            let pid = path.split('/').nth(3).unwrap();
            assert_eq!(event["process"]["pid"].to_string(), pid, "{event:#}");
            pids.insert(pid);
        }
        let repeated: Vec<_> = per_path.iter().filter(|(_, n)| **n > 1).collect();
        assert!(repeated.is_empty(), "reported twice: {repeated:?}");
        assert_eq!(
            per_path.len(),
            PROCESSES * THREADS,
            "round {round}: requests reported of those sent; loss events: {losses:#?}"
        );
        assert_eq!(pids.len(), PROCESSES, "round {round}: one pid per worker");
    }
}
