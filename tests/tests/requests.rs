//! Every kind of request the first probe must see, classify and attribute, driven by real
//! clients in a namespace of the test's own, against the real daemon and kernel programs.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Stdio},
};

use imds_probe_tests::{Daemon, Netns, PY_READ_TO_EOF, Setup, only, requests_where};
use serde_json::Value;

const V1_PATH: &str = "http://169.254.169.254/latest/meta-data/instance-id";

fn setup() -> Option<Setup> {
    Setup::new("optional", &["169.254.169.254:8080", "169.254.169.253:80"])
}

fn classes(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["class"].as_str().unwrap_or("?"))
        .collect()
}

/// Python that connects to `addr` ("v4", "v6", "mapped") and runs `body` with socket `s`,
/// then reads until the server has answered `responses` requests' worth or closes.
fn py(addr: &str, body: &str) -> String {
    let connect = match addr {
        "v4" => "s = socket.create_connection(('169.254.169.254', 80))",
        "v6" => "s = socket.create_connection(('fd00:ec2::254', 80))",
        "mapped" => "s = socket.socket(socket.AF_INET6); s.connect(('::ffff:169.254.169.254', 80))",
        other => panic!("{other}"),
    };
    format!(
        "import socket, os, time\n{connect}\ns.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n{body}\n\
         s.shutdown(socket.SHUT_WR)\n{PY_READ_TO_EOF}s.close()\n"
    )
}

#[test]
fn curl_v1_and_v2_are_classified_and_the_token_never_leaks() {
    let Some(mut t) = setup() else { return };
    let (v1_pid, out) = t.client("curl", &["-sf", V1_PATH]);
    assert!(out.status.success());
    let (put_pid, out) = t.client(
        "curl",
        &[
            "-sf",
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 300",
            "http://169.254.169.254/latest/api/token",
        ],
    );
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(token.len() >= 16, "fake IMDS returned a token");
    let header = format!("X-aws-ec2-metadata-token: {token}");
    let (v2_pid, out) = t.client("curl", &["-sf", "-H", &header, V1_PATH]);
    assert!(out.status.success());

    let v1 = t.request_from(v1_pid);
    assert_eq!(v1["class"], "imdsv1");
    assert_eq!(v1["method"], "GET");
    assert_eq!(v1["path"], "/latest/meta-data/instance-id");
    assert_eq!(v1["http_version"], "1.1");
    assert_eq!(v1["remote"], "169.254.169.254:80");
    assert_eq!(v1["backend"], imds_probe_tests::backend().1.as_str());
    assert!(v1["user_agent"].as_str().unwrap().starts_with("curl/"));
    assert_eq!(v1["process"]["comm"], "curl");
    assert!(v1["process"]["exe"].as_str().unwrap().ends_with("/curl"));
    assert_eq!(v1["process"]["cmdline"][0], "curl");
    assert_eq!(v1["process"]["uid"], 0);
    assert!(v1["reason"].is_null());
    // RFC 3339, UTC, microseconds.
    let ts = v1["ts"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == "2026-01-01T00:00:00.000000Z".len(),
        "{ts}"
    );

    let put = t.request_from(put_pid);
    assert_eq!(put["class"], "token");
    assert_eq!(put["method"], "PUT");
    assert_eq!(put["token_ttl_seconds"], 300);

    let v2 = t.request_from(v2_pid);
    assert_eq!(v2["class"], "imdsv2");
    assert_eq!(
        v2["process"]["cmdline"][3],
        "X-aws-ec2-metadata-token: [redacted]"
    );

    // The token appears nowhere: not in events, not in the log file, not in our own logs.
    t.daemon.stop();
    let log = std::fs::read_to_string(&t.daemon.log_file).unwrap();
    for (what, text) in [
        ("stdout", t.daemon.stdout()),
        ("log file", log),
        ("stderr", t.daemon.stderr()),
    ] {
        assert!(!text.contains(token.trim()), "token leaked into {what}");
    }
    let (stdout, logged) = t.daemon.requests_in_stdout_and_log();
    // Other tests' clients may send meanwhile: only these three are certain.
    for pid in [v1_pid, put_pid, v2_pid] {
        assert!(stdout.iter().any(|e| e["process"]["pid"] == pid), "{pid}");
    }
    assert_eq!(logged, stdout, "the log file has the same events as stdout");
}

#[test]
fn a_request_split_over_many_sends() {
    let Some(t) = setup() else { return };
    let pid = t.python(&py(
        "v4",
        "for part in [b'GE', b'T /latest/meta-data/ HT', b'TP/1.1\\r\\nHost: x\\r\\nX-aws-ec2-', b'metadata-token: abc\\r', b'\\n\\r\\n']:\n    s.send(part); time.sleep(0.02)",
    ));
    let events = t.requests_from(pid);
    assert_eq!(classes(&events), ["imdsv2"]);
    assert_eq!(events[0]["path"], "/latest/meta-data/");
}

#[test]
fn writev_with_the_token_header_in_a_later_iovec() {
    let Some(t) = setup() else { return };
    let pid = t.python(&py(
        "v4",
        "s.sendmsg([b'GET /latest/meta-data/ami-id HTTP/1.1\\r\\n', b'Host: 169.254.169.254\\r\\n', b'User-Agent: writev\\r\\n', b'X-aws-ec2-metadata-token: abc\\r\\n', b'\\r\\n'])",
    ));
    let events = t.requests_from(pid);
    assert_eq!(classes(&events), ["imdsv2"]);
    assert_eq!(events[0]["user_agent"], "writev");
}

#[test]
fn write_and_sendfile_are_seen() {
    let Some(t) = setup() else { return };
    let pid = t.python(&py(
        "v4",
        "os.write(s.fileno(), b'GET /via-write HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         import tempfile\nf = tempfile.TemporaryFile()\nf.write(b'GET /via-sendfile HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); f.flush(); f.seek(0)\n\
         os.sendfile(s.fileno(), f.fileno(), 0, 1024)",
    ));
    let events = t.requests_from(pid);
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["path"], "/via-write");
    assert_eq!(events[0]["class"], "imdsv1");
    if imds_probe_tests::backend().1 == "sk_msg" {
        assert_eq!(events[1]["path"], "/via-sendfile");
        assert_eq!(events[1]["class"], "imdsv1");
    } else {
        // A send hook cannot read page-cache pages; the request is reported, as unknown.
        assert_eq!(events[1]["class"], "unknown", "{:#}", events[1]);
        assert_eq!(events[1]["reason"], "capture_gap");
    }
}

#[test]
fn pipelined_requests_in_one_send() {
    let Some(t) = setup() else { return };
    let pid = t.python(&py(
        "v4",
        "s.sendall(b'PUT /latest/api/token HTTP/1.1\\r\\nX-aws-ec2-metadata-token-ttl-seconds: 60\\r\\nContent-Length: 3\\r\\n\\r\\nabc'\n\
         b'GET /a HTTP/1.1\\r\\nX-aws-ec2-metadata-token: t\\r\\n\\r\\nGET /b HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')",
    ));
    let events = t.requests_from(pid);
    assert_eq!(classes(&events), ["token", "imdsv2", "imdsv1"]);
    let connections: Vec<_> = events.iter().map(|e| e["connection"].clone()).collect();
    assert!(
        connections.windows(2).all(|w| w[0] == w[1]),
        "one connection"
    );
}

#[test]
fn ipv6_and_dual_stack_mapped_sockets() {
    let Some(t) = setup() else { return };
    let (v6_pid, out) = t.client("curl", &["-sf", "http://[fd00:ec2::254]/latest/meta-data/"]);
    assert!(out.status.success());
    let v6 = t.request_from(v6_pid);
    assert_eq!(v6["class"], "imdsv1");
    assert_eq!(v6["remote"], "[fd00:ec2::254]:80");
    assert_eq!(v6["socket_family"], "ipv6");

    let mapped_pid = t.python(&py(
        "mapped",
        "s.sendall(b'GET /latest/meta-data/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')",
    ));
    let mapped = t.request_from(mapped_pid);
    assert_eq!(mapped["class"], "imdsv1");
    assert_eq!(mapped["remote"], "169.254.169.254:80");
    assert_eq!(mapped["socket_family"], "ipv4_mapped");
}

#[test]
fn lower_case_headers_and_a_large_header_block() {
    let Some(t) = setup() else { return };
    let pid = t.python(&py(
        "v4",
        "s.sendall(b'GET /lower HTTP/1.1\\r\\nhost: x\\r\\nx-aws-ec2-metadata-token: t\\r\\nuser-agent: lower\\r\\n\\r\\n')\n\
         filler = b''.join(b'X-Filler-%d: %s\\r\\n' % (i, b'a' * 200) for i in range(100))\n\
         s.sendall(b'GET /large HTTP/1.1\\r\\n' + filler + b'X-AWS-EC2-METADATA-TOKEN: t\\r\\n\\r\\n')",
    ));
    let events = t.requests_from(pid);
    assert_eq!(classes(&events), ["imdsv2", "imdsv2"], "{events:#?}");
    assert_eq!(events[0]["user_agent"], "lower");
    assert_eq!(events[1]["path"], "/large");
}

#[test]
fn a_send_beyond_the_capture_limit_is_counted_and_what_follows_is_unknown() {
    let backend = imds_probe_tests::backend().0;
    let args = ["--backend", &backend, "--loss-report-interval", "1"];
    let Some(t) = Setup::with_daemon_args("optional", &[], &args) else {
        return;
    };
    // One 1 MiB send, far past what any backend copies of one send (sk_msg 128 KiB, the send
    // hooks 64 KiB): a request with a body, and a v1 request behind it. A send buffer large
    // enough to take it whole keeps the kernel from handing it over in small pieces.
    // It closes without reading the answers: on a socket in a socket hash, a blocking recv
    // after a send that filled the send buffer can fail with EAGAIN (the kernel's
    // tcp_bpf_recvmsg, on a write-space wakeup; see the README, "What a watched client may
    // notice").
    let pid = t.python(
        "import socket\ns = socket.create_connection(('169.254.169.254', 80))\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)\n\
         body = b'x' * (1 << 20)\n\
         s.sendall(b'PUT /big HTTP/1.1\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(body) + body \
         + b'GET /after HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
         s.close()",
    );
    let events = t.requests_from(pid);
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["path"], "/big", "{events:#?}");
    assert_eq!(events[1]["class"], "unknown", "{events:#?}");
    assert_eq!(events[1]["reason"], "capture_gap");
    t.daemon
        .wait_for("send_truncated in a loss event", |events| {
            events
                .iter()
                .any(|e| e["event"] == "loss" && e["total"]["send_truncated"].as_u64() > Some(0))
        });
}

#[test]
fn garbage_and_cut_off_requests_are_unknown_never_v1() {
    let Some(t) = setup() else { return };
    let garbage = t.python(&py("v4", "s.sendall(bytes(range(256)) * 4)"));
    let events = t.requests_from(garbage);
    assert_eq!(classes(&events), ["unknown"]);
    assert_eq!(events[0]["reason"], "not_http");

    let cut = t.python(&py(
        "v4",
        "s.sendall(b'GET /latest/meta-data/ HTTP/1.1\\r\\nHost: x\\r\\n')",
    ));
    let events = t.requests_from(cut);
    assert_eq!(classes(&events), ["unknown"]);
    assert_eq!(events[0]["reason"], "incomplete_at_close");
}

#[test]
fn other_ports_neighbouring_addresses_and_the_server_itself_produce_nothing() {
    let Some(t) = setup() else { return };
    let other_port = t.python(
        "import socket\ns = socket.create_connection(('169.254.169.254', 8080))\ns.sendall(b'GET / HTTP/1.1\\r\\n\\r\\n')\ns.recv(100)",
    );
    let neighbour = t.python(
        "import socket\ns = socket.create_connection(('169.254.169.253', 80))\ns.sendall(b'GET / HTTP/1.1\\r\\n\\r\\n')\ns.recv(100)",
    );
    assert_no_requests(&t, other_port);
    assert_no_requests(&t, neighbour);
    assert_no_requests(&t, t.imds.pid());
}

#[test]
fn sigterm_stops_cleanly_after_capturing() {
    let Some(mut t) = setup() else { return };
    let (pid, _) = t.client("curl", &["-sf", V1_PATH]);
    assert_eq!(classes(&t.requests_from(pid)), ["imdsv1"]);
    let status = t.daemon.stop();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        t.daemon.stderr()
    );
    assert!(
        t.daemon.stderr().contains("draining"),
        "{}",
        t.daemon.stderr()
    );
}

#[test]
fn io_uring_sends_are_seen() {
    let Some(t) = setup() else { return };
    let client = imds_probe_tests::binary("uring-client");
    let (pid, out) = t.client(
        client.to_str().unwrap(),
        &[
            "169.254.169.254:80",
            "GET /via-io-uring HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = t.request_from(pid);
    assert_eq!(event["path"], "/via-io-uring");
    assert_eq!(event["class"], "imdsv1");
}

#[test]
fn connections_open_before_the_daemon_started_are_reported_and_watched() {
    if !imds_probe_tests::require_root() {
        return;
    }
    let (ns, _imds) = imds_probe_tests::netns_with_imds("optional", &[]);
    // Connected, and sends only when told: after the daemon has started.
    let (mut live, live_pid) = waiting_client(
        &ns,
        &py(
            "v4",
            "print('ready', flush=True)\nimport sys; sys.stdin.readline()\n\
             s.sendall(b'GET /after-start HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n\
             s.sendall(b'GET /cut-off-by-the-close HTTP/1.1\\r\\nHost: x\\r\\n')",
        ),
    );
    // The server has closed its side (HTTP/1.0), so the socket is in CLOSE_WAIT: it could
    // still send, but a socket hash takes only established sockets.
    let (mut half_closed, half_closed_pid) = waiting_client(
        &ns,
        "import socket, sys\ns = socket.create_connection(('169.254.169.254', 80))\n\
         s.sendall(b'GET /before-start HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n')\n\
         while s.recv(65536): pass\nprint('ready', flush=True)\nsys.stdin.readline()",
    );

    let (backend_cli, backend) = imds_probe_tests::backend();
    let daemon = Daemon::start(&["--backend", &backend_cli]);
    let reported = daemon.wait_for("both open connections' reports", |events| {
        [live_pid, half_closed_pid]
            .iter()
            .all(|&pid| events.iter().any(|e| is_open_connection_of(e, pid)))
    });
    let report = |pid| {
        reported
            .iter()
            .find(|e| is_open_connection_of(e, pid))
            .unwrap()
    };
    let event = report(live_pid);
    assert_eq!(event["backend"], backend.as_str());
    assert_eq!(event["watched"], true, "{event:#}");
    assert_eq!(event["remote"], "169.254.169.254:80");
    assert_eq!(event["socket_family"], "ipv4");
    assert!(
        event["process"]["exe"]
            .as_str()
            .is_some_and(|exe| exe.contains("python")),
        "{event:#}"
    );
    // Only sk_msg needs the socket hash; the send hooks see every socket.
    let half_closed_watched = backend != "sk_msg";
    assert_eq!(report(half_closed_pid)["watched"], half_closed_watched);
    if !half_closed_watched {
        // With the kernel's reason for the socket.
        let log = daemon.wait_for_log("are not watched");
        assert!(log.contains("Operation not supported"), "{log}");
    }

    writeln!(live.stdin.take().unwrap()).unwrap();
    assert!(live.wait().unwrap().success());
    // Its close is seen too, though sock_ops never saw it open (sk_msg: the daemon notices
    // the socket leave the socket hash).
    // The close of a socket enrolled at start is noticed by a once-a-second check, not by
    // the ring buffer: wait for it, then make sure nothing else came.
    let of_live = |e: &Value| e["event"] == "imds_request" && e["process"]["pid"] == live_pid;
    daemon.wait_for("the live client's two requests", |events| {
        events.iter().filter(|e| of_live(e)).count() >= 2
    });
    let events = requests_where(&ns, &daemon, "the live client", of_live);
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["path"], "/after-start");
    assert_eq!(events[0]["class"], "imdsv1");
    assert_eq!(events[1]["class"], "unknown");
    assert_eq!(events[1]["reason"], "incomplete_at_close");
    drop(half_closed.stdin.take());
    assert!(half_closed.wait().unwrap().success());
}

/// Starts Python `code` in the namespace and waits for it to print "ready".
fn waiting_client(ns: &Netns, code: &str) -> (Child, u32) {
    let mut child = ns
        .command("python3")
        .args(["-c", code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let pid = child.id();
    (child, pid)
}

fn is_open_connection_of(event: &Value, pid: u32) -> bool {
    event["event"] == "connection_open_at_start" && event["process"]["pid"] == pid
}

/// Every kernel of the test matrix (and the development host) has cgroup v2 and loads
/// `sk_msg`, the first backend `auto` tries: so `auto` must pick it, and say so. Whatever
/// backend the pass is for.
#[test]
fn auto_picks_sk_msg_where_it_attaches_and_names_it() {
    let Some(t) = Setup::with_daemon_args("optional", &[], &["--backend", "auto"]) else {
        return;
    };
    let event = only(t.requests_of("curl", &["-sf", V1_PATH]));
    assert_eq!(event["backend"], "sk_msg");
    assert!(
        t.daemon
            .stderr()
            .contains("programs attached backend=sk_msg choice=Auto"),
        "{}",
        t.daemon.stderr()
    );
}

fn assert_no_requests(t: &Setup, pid: u32) {
    let events = t.requests_from(pid);
    assert!(events.is_empty(), "no requests from {pid}: {events:#?}");
}
