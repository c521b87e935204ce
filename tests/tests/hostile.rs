//! What a hostile or careless local user can put in front of the daemon: secrets on command
//! lines, and the files the daemon writes about everyone's processes.

use std::os::unix::fs::MetadataExt as _;

use imds_probe_tests::{PY_READ_TO_EOF, Setup, backend, only};

#[test]
fn secrets_on_command_lines_are_written_nowhere() {
    let backend = backend().0;
    let Some(mut t) = Setup::with_daemon_args(
        "optional",
        &[],
        &["--backend", &backend, "--sensitive-word", "signing"],
    ) else {
        return;
    };
    // The caller carries two secrets, its parent shell (not exec'd away: `; true`) a third
    // under a word of the test's own.
    let caller = "python3 -c 'import socket; s = socket.create_connection((\"169.254.169.254\", 80)); \
                  s.sendall(b\"GET /latest/meta-data/ HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n\"); s.recv(99)' \
                  --password hunter2 AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIexample; true";
    let (shell, out) = t.client("sh", &["-c", caller, "sh", "--signing-key", "parentSeed42"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = &only(t.requests_where("the shell's child", |e| e["parents"][0]["pid"] == shell));
    assert_eq!(event["class"], "imdsv1");
    let cmdline = &event["process"]["cmdline"];
    assert_eq!(cmdline[3], "--password", "{cmdline}");
    assert_eq!(cmdline[4], "[redacted]", "{cmdline}");
    assert_eq!(cmdline[5], "AWS_SECRET_ACCESS_KEY=[redacted]", "{cmdline}");
    let parent = &event["parents"][0]["cmdline"];
    assert_eq!(parent[5], "[redacted]", "{parent}");

    t.daemon.stop();
    let log = std::fs::read_to_string(&t.daemon.log_file).unwrap();
    assert!(log.contains("imdsv1"), "the log file has the event");
    for (what, text) in [
        ("stdout", t.daemon.stdout()),
        ("log file", log),
        ("stderr", t.daemon.stderr()),
    ] {
        for secret in ["hunter2", "wJalrXUtnFEMIexample", "parentSeed42"] {
            assert!(!text.contains(secret), "{secret} leaked into {what}");
        }
    }
}

#[test]
fn written_files_are_closed_to_other_users() {
    let backend = backend().0;
    // A gid other than root's, so the test sees the daemon change it; a group need not
    // exist in /etc/group to own a file (the VMs have none).
    let gid = 4242;
    let Some(mut t) = Setup::with_daemon_args(
        "optional",
        &[],
        &["--backend", &backend, "--output-group", &gid.to_string()],
    ) else {
        return;
    };
    t.daemon.stop();
    let file = std::fs::metadata(&t.daemon.log_file).unwrap();
    assert_eq!(file.mode() & 0o7777, 0o640, "log file mode");
    assert_eq!(file.gid(), gid, "log file group");
    // The daemon made the log's directory (the test's temp dir holds only its parent).
    let dir = std::fs::metadata(t.daemon.log_file.parent().unwrap()).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o750, "log directory mode");
    assert_eq!(dir.gid(), gid, "log directory group");
}

/// A send of 40,000 bytes is captured in 4 KiB chunks and ends on a short one (3,136 bytes).
/// sk_msg used to leave the rest of that chunk's 4 KiB applied to the next send, whose first
/// 960 bytes then passed unseen while the offsets stayed contiguous: a request hidden there
/// had no event. Every request must have one.
#[test]
fn a_large_send_hides_nothing_of_the_next() {
    let backend = backend().0;
    let Some(t) = Setup::with_daemon_args("optional", &[], &["--backend", &backend]) else {
        return;
    };
    let code = r#"
import socket, time
s = socket.create_connection(("169.254.169.254", 80))
head = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
body = 40000 - len(head % 40000)
s.sendall(head % body + b"b" * body)
hidden = b"GET /hidden-v1 HTTP/1.1\r\nHost: x\r\nX-Pad: "
hidden += b"p" * (960 - len(hidden) - 4) + b"\r\n\r\n"
assert len(hidden) == 960
tail = b"GET /after HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: abc\r\nConnection: close\r\n\r\n"
s.sendall(hidden + tail)
s.shutdown(socket.SHUT_WR)
"#;
    let pid = t.python(&format!("{code}{PY_READ_TO_EOF}"));
    let events = t.requests_from(pid);
    let paths: Vec<&str> = events
        .iter()
        .map(|e| e["path"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(paths, ["/big", "/hidden-v1", "/after"], "{events:#?}");
    assert_eq!(events[1]["class"], "imdsv1");
    assert_eq!(events[2]["class"], "imdsv2");
}
