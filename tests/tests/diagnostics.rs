//! The kernel programs' own diagnostics (`--kernel-log`), on the backend under test: the
//! programs load and verify with their log code live, and what they log reaches the
//! daemon's log under `imds_probe::kernel`.

use imds_probe_tests::{Setup, backend};

/// One request of about 4 KiB: a record of its own whichever backend sees it.
const PADDED_REQUEST: &str = "b'GET /latest/meta-data/instance-id HTTP/1.1\\r\\nHost: 169.254.169.254\\r\\nX-Pad: ' + b'a' * 3900 + b'\\r\\n\\r\\n'";

#[test]
fn a_full_ring_buffer_is_logged_from_the_kernel_when_asked() {
    let Some(t) = Setup::with_daemon_args(
        "optional",
        &[],
        &[
            "--backend",
            &backend().0,
            "--kernel-log",
            "debug",
            "--loss-report-interval",
            "1",
        ],
    ) else {
        return;
    };
    // With the reader stopped, 6 MiB of requests cannot fit in the 4 MiB ring buffer.
    t.daemon.pause();
    t.python(&format!(
        "import socket, threading\n\
         s = socket.create_connection(('169.254.169.254', 80))\n\
         def drain():\n    while s.recv(1 << 20): pass\n\
         reader = threading.Thread(target=drain); reader.start()\n\
         request = {PADDED_REQUEST}\n\
         for _ in range(1600): s.sendall(request)\n\
         s.shutdown(socket.SHUT_WR); reader.join(); s.close()\n"
    ));
    t.daemon.resume();
    let log = t.daemon.wait_for_log("ring buffer full: send record");
    assert!(
        log.lines()
            .any(|line| line.contains("DEBUG imds_probe::kernel: ring buffer full")),
        "{log}"
    );
    // Counted as loss as well: the log line explains the count, never replaces it.
    t.daemon
        .wait_for("a loss report with the full ring buffer", |events| {
            events
                .iter()
                .any(|e| e["event"] == "loss" && e["total"]["ring_buffer_full"].as_u64() > Some(0))
        });
}
