//! `imds-probe report` over ledgers the real daemon kept while real clients called a fake IMDS:
//! an old botocore is not safe, a fallback is not an old SDK, other clouds' probes are listed
//! apart, IMDSv2 only is safe; the ledger survives a restart and `kill -9`, and a corrupt one
//! is set aside. Also: a bad config file stops the daemon, and a busy caller is summarised.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use imds_probe_tests::{
    DEADLINE, Daemon, Netns, OrPanic, Server, Setup, TempDir, backend, binary, client, require_root,
};
use serde_json::Value;

const SDK_DIR: &str = "/opt/imds-probe-toolchain/sdk";
/// botocore 1.12 vendors a requests that imports ABCs from `collections`, gone in Python 3.10:
/// put them back so the old SDK runs on this Python, unchanged otherwise.
const OLD_PYTHON_SHIM: &str = "import collections, collections.abc\n\
     for n in ('Mapping', 'MutableMapping', 'Sequence', 'Callable', 'Iterable', 'MutableSet', 'Set'):\n    \
         setattr(collections, n, getattr(collections.abc, n))\n";
/// The whole credential chain, as an application gets it: botocore's session names itself in
/// the User-Agent it gives the IMDS fetcher.
const SESSION_CREDENTIALS: &str = "import botocore.session\n\
     creds = botocore.session.get_session().get_credentials()\n\
     assert creds is not None and creds.access_key, creds\n";

/// A daemon whose ledger is in `state` (kept after the daemon), the namespace and a fake IMDS
/// (tokens optional) started with `imds_args` too.
fn setup(state: &Path, imds_args: &[&str]) -> Option<Setup> {
    if !require_root() {
        return None;
    }
    let metrics = state.join("metrics.jsonl");
    let state = state.to_str().unwrap();
    let daemon = Daemon::start(&[
        "--backend",
        &backend().0,
        "--state-dir",
        state,
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    let ns = Netns::new().or_panic();
    let mut command = ns.command(binary("fake-imds"));
    command.args([
        "--mode",
        "optional",
        "--listen",
        "169.254.169.254:80",
        "--listen",
        "[fd00:ec2::254]:80",
    ]);
    command.args(imds_args);
    let imds = Server::start(command).or_panic();
    Some(Setup { ns, imds, daemon })
}

/// The request events of `pid`, once there are `count`. Not the kit's marker: its curl would be
/// a caller in the ledger, and these tests check the ledger's callers.
fn requests_of(daemon: &Daemon, pid: u32, count: usize) -> Vec<Value> {
    let of_pid = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["event"] == "imds_request" && e["process"]["pid"] == pid)
            .cloned()
            .collect()
    };
    of_pid(
        &daemon.wait_for(&format!("{count} requests of pid {pid}"), |events| {
            of_pid(events).len() >= count
        }),
    )
}

/// Runs Python `code` in the namespace with only this environment (no credentials, no config
/// files, so the chain reaches the IMDS) and botocore from `python_path`; returns its pid.
fn python(ns: &Netns, python_path: &str, code: &str) -> u32 {
    let python_path = format!("PYTHONPATH={python_path}");
    let (pid, out) = client(
        ns,
        "env",
        &[
            "-i",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "HOME=/nonexistent",
            "AWS_CONFIG_FILE=/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE=/nonexistent",
            "AWS_METADATA_SERVICE_TIMEOUT=1",
            "AWS_METADATA_SERVICE_NUM_ATTEMPTS=1",
            &python_path,
            "python3",
            "-c",
            code,
        ],
    );
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pid
}

/// `imds-probe report --format json` over `state`; returns the exit code and the report.
fn run_report(state: &Path, args: &[&str]) -> (i32, Value) {
    let out = Command::new(binary("imds-probe"))
        .args(["report", "--format", "json", "--state-dir"])
        .arg(state)
        .args(args)
        .output()
        .expect("imds-probe report");
    let code = out.status.code().expect("exit code");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}), exit {code}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, json)
}

fn callers_with_exe<'a>(report: &'a Value, list: &str, exe_part: &str) -> Vec<&'a Value> {
    report[list]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["exe"].as_str().is_some_and(|e| e.contains(exe_part)))
        .collect()
}

#[test]
fn botocore_before_imdsv2_is_not_safe_and_told_to_upgrade() {
    let state = TempDir::new("report-old").or_panic();
    let Some(mut t) = setup(state.path(), &[]) else {
        return;
    };
    let pid = python(
        &t.ns,
        &format!("{SDK_DIR}/python-botocore-1.12"),
        &format!("{OLD_PYTHON_SHIM}{SESSION_CREDENTIALS}"),
    );
    let events = requests_of(&t.daemon, pid, 2);
    assert!(
        events.iter().all(|e| e["class"] == "imdsv1"),
        "botocore 1.12 never asks for a token: {events:#?}"
    );
    assert!(t.daemon.stop().success());
    let (code, report) = run_report(state.path(), &["--min-observed", "0s"]);
    assert_eq!(
        (code, report["verdict"].as_str()),
        (1, Some("not_safe")),
        "{report:#}"
    );
    let callers = callers_with_exe(&report, "callers", "python");
    assert_eq!(callers.len(), 1, "{report:#}");
    let caller = callers[0];
    assert_eq!(caller["sdk"]["name"], "botocore", "{caller:#}");
    assert_eq!(caller["sdk"]["version"], "1.12.253", "{caller:#}");
    assert_eq!(caller["remediation"], "upgrade botocore to >= 1.13.25");
    assert_eq!(caller["fallback"], false);
    assert!(caller["requests"]["imdsv1"].as_u64().unwrap() >= 2);
    assert!(
        caller["sample_paths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/latest/meta-data/iam/security-credentials/"),
        "{caller:#}"
    );
}

#[test]
fn a_pre_imdsv2_fetch_without_user_agent_is_inferred_as_botocore() {
    let state = TempDir::new("report-infer").or_panic();
    let Some(mut t) = setup(state.path(), &[]) else {
        return;
    };
    // The fetcher alone, as libraries built on botocore 1.12 use it: no User-Agent of its own.
    let code = format!(
        "{OLD_PYTHON_SHIM}from botocore.utils import InstanceMetadataFetcher\n\
         creds = InstanceMetadataFetcher(timeout=2, num_attempts=1).retrieve_iam_role_credentials()\n\
         assert creds.get('access_key'), creds\n"
    );
    let pid = python(&t.ns, &format!("{SDK_DIR}/python-botocore-1.12"), &code);
    let events = requests_of(&t.daemon, pid, 2);
    assert!(
        events
            .iter()
            .all(|e| !e["user_agent"].as_str().unwrap_or("").contains("otocore")),
        "{events:#?}"
    );
    assert!(t.daemon.stop().success());
    let (_, report) = run_report(state.path(), &["--min-observed", "0s"]);
    let caller = callers_with_exe(&report, "callers", "python")[0];
    assert_eq!(caller["sdk"]["name"], "botocore", "{caller:#}");
    assert_eq!(caller["sdk"]["version"], Value::Null);
    assert_eq!(caller["sdk"]["confidence"], "likely");
    assert!(
        caller["remediation"]
            .as_str()
            .unwrap()
            .starts_with("upgrade botocore to >= 1.13.25"),
        "{caller:#}"
    );
}

#[test]
fn a_current_botocore_whose_token_puts_go_unanswered_is_a_fallback_not_an_old_sdk() {
    let state = TempDir::new("report-fallback").or_panic();
    let Some(mut t) = setup(state.path(), &["--drop-token-puts"]) else {
        return;
    };
    let pid = python(&t.ns, &format!("{SDK_DIR}/python"), SESSION_CREDENTIALS);
    let events = requests_of(&t.daemon, pid, 3);
    assert_eq!(events[0]["class"], "token", "{events:#?}");
    assert!(
        events[1..].iter().any(|e| e["class"] == "imdsv1"),
        "{events:#?}"
    );
    assert!(t.daemon.stop().success());
    // The per-minute metrics count the fallbacks too (a stop writes the minute so far).
    let metrics = std::fs::read_to_string(state.path().join("metrics.jsonl")).unwrap();
    let fallbacks: u64 = metrics
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["IMDSv1Fallbacks"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let imdsv1 = events[1..]
        .iter()
        .filter(|e| e["class"] == "imdsv1")
        .count() as u64;
    assert!(fallbacks >= imdsv1, "{fallbacks} < {imdsv1}: {metrics}");
    let (code, report) = run_report(state.path(), &["--min-observed", "0s"]);
    assert_eq!(code, 1, "{report:#}");
    let caller = callers_with_exe(&report, "callers", "python")[0];
    assert_eq!(caller["fallback"], true, "{caller:#}");
    assert_eq!(caller["sdk"]["name"], "botocore");
    assert_eq!(caller["sdk"]["version"], "1.44.8");
    let remediation = caller["remediation"].as_str().unwrap();
    assert!(remediation.contains("fell back to IMDSv1"), "{remediation}");
    assert!(!remediation.contains("upgrade"), "{remediation}");
}

#[test]
fn another_clouds_probe_is_listed_apart() {
    let state = TempDir::new("report-probe").or_panic();
    let Some(mut t) = setup(state.path(), &[]) else {
        return;
    };
    let (pid, _) = client(
        &t.ns,
        "curl",
        &[
            "-s",
            "-H",
            "Metadata-Flavor: Google",
            "http://169.254.169.254/computeMetadata/v1/instance/id",
        ],
    );
    let events = requests_of(&t.daemon, pid, 1);
    assert_eq!(events[0]["probe_of"], "gce", "{:#}", events[0]);
    assert!(t.daemon.stop().success());
    let (code, report) = run_report(state.path(), &["--min-observed", "0s"]);
    assert_eq!(code, 0, "a probe breaks nothing: {report:#}");
    assert!(
        callers_with_exe(&report, "callers", "curl").is_empty(),
        "{report:#}"
    );
    let probes = callers_with_exe(&report, "probes", "curl");
    assert_eq!(probes.len(), 1, "{report:#}");
    assert_eq!(probes[0]["probe_of"], "gce");
    assert_eq!(probes[0]["requests"]["imdsv1"], 1);
}

#[test]
fn only_imdsv2_callers_over_a_window_is_safe() {
    let state = TempDir::new("report-safe").or_panic();
    let Some(mut t) = setup(state.path(), &[]) else {
        return;
    };
    let pid = python(&t.ns, &format!("{SDK_DIR}/python"), SESSION_CREDENTIALS);
    let events = requests_of(&t.daemon, pid, 3);
    assert!(events.iter().all(|e| e["class"] != "imdsv1"), "{events:#?}");
    assert!(t.daemon.stop().success());
    let (code, report) = run_report(state.path(), &["--min-observed", "0s"]);
    assert_eq!(
        (code, report["verdict"].as_str()),
        (0, Some("safe")),
        "{report:#}"
    );
    assert_eq!(report["observed"]["runs"], 1);
    assert_eq!(report["observed"]["lost"], 0);
    // The default asks for a week of watching.
    let (code, report) = run_report(state.path(), &[]);
    assert_eq!(
        (code, report["verdict"].as_str()),
        (2, Some("undetermined")),
        "{report:#}"
    );
}

/// Waits until the ledger file holds `imdsv1` such requests of a curl caller.
fn wait_for_ledger(state: &Path, imdsv1: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let ledger: Option<Value> = std::fs::read(state.join("ledger.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let count = ledger.as_ref().and_then(|l| {
            l["callers"]
                .as_array()?
                .iter()
                .find(|c| c["exe"].as_str().is_some_and(|e| e.ends_with("curl")))?["requests"]
                ["imdsv1"]
                .as_u64()
        });
        if count == Some(imdsv1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ledger never had {imdsv1}: {ledger:#?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_ledger_survives_a_restart_and_kill_9() {
    if !require_root() {
        return;
    }
    let state = TempDir::new("report-restart").or_panic();
    let config = state.join("config.toml");
    std::fs::write(&config, "[ledger]\nwrite_interval_seconds = 1\n").unwrap();
    let (state_dir, config) = (state.join("state"), config.to_str().unwrap().to_owned());
    let args = |backend: &str| -> Vec<String> {
        ["--backend", backend, "--config", &config, "--state-dir"]
            .map(str::to_owned)
            .into_iter()
            .chain([state_dir.to_str().unwrap().to_owned()])
            .collect()
    };
    let ns = Netns::new().or_panic();
    let _imds = Server::fake_imds(&binary("fake-imds"), &ns, "optional", &[]).or_panic();
    let curl = || {
        client(
            &ns,
            "curl",
            &["-s", "http://169.254.169.254/latest/meta-data/instance-id"],
        )
        .0
    };
    for (run, kill) in [(1, false), (2, true)] {
        let args = args(&backend().0);
        let mut daemon = Daemon::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        requests_of(&daemon, curl(), 1);
        if kill {
            // Once a periodic write holds it, kill -9 loses nothing of it.
            wait_for_ledger(&state_dir, run);
            daemon.kill();
        } else {
            assert!(daemon.stop().success());
        }
    }
    let (code, report) = run_report(&state_dir, &["--min-observed", "0s"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["observed"]["runs"], 2, "{report:#}");
    let caller = callers_with_exe(&report, "callers", "curl")[0];
    assert_eq!(caller["requests"]["imdsv1"], 2, "{caller:#}");
    assert_eq!(
        caller["remediation"].as_str().unwrap().split(':').next(),
        Some("a hand-made call")
    );
}

#[test]
fn a_corrupt_ledger_is_set_aside_and_a_fresh_one_started() {
    if !require_root() {
        return;
    }
    let state = TempDir::new("report-corrupt").or_panic();
    let state_dir: PathBuf = state.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(
        state_dir.join("ledger.json"),
        b"{\"version\": 1, \"callers\": [tru",
    )
    .unwrap();
    let mut daemon = Daemon::start(&[
        "--backend",
        &backend().0,
        "--state-dir",
        state_dir.to_str().unwrap(),
    ]);
    daemon.wait_for_log("the ledger could not be read: set aside");
    assert!(daemon.stop().success());
    let names: Vec<String> = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("ledger.json.corrupt-")),
        "{names:?}"
    );
    let (code, report) = run_report(&state_dir, &["--min-observed", "0s"]);
    assert_eq!(code, 0, "the fresh ledger reads: {report:#}");
    assert_eq!(report["observed"]["runs"], 1);
}

#[test]
fn a_bad_config_stops_the_daemon_naming_file_line_and_key() {
    let dir = TempDir::new("report-config").or_panic();
    let config = dir.join("config.toml");
    std::fs::write(&config, "[events]\nmax_file_byte = 5\n").unwrap();
    let out = Command::new(binary("imds-probe"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("imds-probe run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}, line 2, key `max_file_byte`: unknown field",
            config.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_busy_caller_is_written_in_full_then_summarised() {
    if !require_root() {
        return;
    }
    let state = TempDir::new("report-summary").or_panic();
    // Without --every-request: the default limits.
    let mut daemon = Daemon::start_raw(&[
        "--backend",
        &backend().0,
        "--state-dir",
        state.path().to_str().unwrap(),
    ]);
    let ns = Netns::new().or_panic();
    let _imds = Server::fake_imds(&binary("fake-imds"), &ns, "optional", &[]).or_panic();
    let (pid, out) = client(
        &ns,
        "python3",
        &[
            "-c",
            "import http.client\n\
         c = http.client.HTTPConnection('169.254.169.254', 80, timeout=5)\n\
         for i in range(30):\n    \
             c.request('GET', '/latest/meta-data/instance-id')\n    \
             c.getresponse().read()\n",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    requests_of(&daemon, pid, 10);
    assert!(daemon.stop().success());
    let events = daemon.wait_for("the request_summary", |events| {
        events.iter().any(|e| e["event"] == "request_summary")
    });
    let full = events
        .iter()
        .filter(|e| e["event"] == "imds_request" && e["process"]["pid"] == pid)
        .count();
    let summary = events
        .iter()
        .find(|e| e["event"] == "request_summary")
        .unwrap();
    assert_eq!(full, 10, "the first 10 a minute in full");
    assert_eq!(summary["requests"]["imdsv1"], 20, "{summary:#}");
    assert_eq!(summary["pid"], pid);
    assert_eq!(summary["sample_paths"][0], "/latest/meta-data/instance-id");
    // The ledger counted all 30.
    let (_, report) = run_report(state.path(), &["--min-observed", "0s"]);
    assert_eq!(
        callers_with_exe(&report, "callers", "python")[0]["requests"]["imdsv1"],
        30
    );
}
