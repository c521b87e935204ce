//! What the daemon says when it lacks privileges: started without the capabilities it needs,
//! it names each one missing (and nothing it happened to open first); started without
//! CAP_DAC_READ_SEARCH, it runs and says once why cgroup, systemd_unit and container are null.

use std::process::Command;

use imds_probe_tests::{Daemon, binary, netns_with_imds, requests_where, require_root};

/// As the `nobody` user, with no capabilities at all.
#[test]
fn an_unprivileged_start_names_each_missing_capability() {
    if !require_root() {
        return;
    }
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary("imds-probe"))
        .args(["run", "--no-stdout"])
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for capability in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        assert!(stderr.contains(capability), "{capability} named: {stderr}");
    }
    // Checked before anything else: not the instance lock's "Permission denied".
    assert!(!stderr.contains("imds-probe.lock"), "{stderr}");
    assert!(!stderr.contains("Permission denied"), "{stderr}");
}

/// As root without CAP_DAC_READ_SEARCH (out of the bounding set, so the exec'd daemon cannot
/// have it): it starts, warns at start, and says once, at the first cgroup it cannot open,
/// that cgroups stay null.
#[test]
fn without_dac_read_search_cgroups_are_null_and_said_once() {
    if !require_root() {
        return;
    }
    let (ns, _imds) = netns_with_imds("optional", &[]);
    let mut command = Command::new("setpriv");
    command
        .args([
            "--bounding-set=-dac_read_search",
            "--inh-caps=-dac_read_search",
        ])
        .arg(binary("imds-probe"))
        // In the host's namespace: asking who the host is would reach a real 169.254.169.254.
        .args([
            "run",
            "--no-identity",
            "--backend",
            &imds_probe_tests::backend().0,
        ]);
    let daemon = Daemon::start_command(command);
    let url = "http://169.254.169.254/latest/meta-data/instance-id";
    let mut pids = Vec::new();
    for _ in 0..2 {
        let (pid, out) = imds_probe_tests::client(&ns, "curl", &["-sf", url]);
        assert!(out.status.success());
        pids.push(pid);
    }
    let events = requests_where(&ns, &daemon, "both curls", |e| {
        pids.iter().any(|&pid| e["process"]["pid"] == pid)
    });
    assert_eq!(events.len(), 2, "{events:#?}");
    for event in &events {
        assert!(event["cgroup"].is_null(), "{event:#}");
        assert!(event["systemd_unit"].is_null(), "{event:#}");
        assert!(event["container"].is_null(), "{event:#}");
    }
    let log = daemon.stderr();
    assert_eq!(
        log.matches("running without CAP_DAC_READ_SEARCH").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("cannot open cgroups by id").count(),
        1,
        "said once, not per event: {log}"
    );
}
