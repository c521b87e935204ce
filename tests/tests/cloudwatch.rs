//! CloudWatch: the daemon's identity (IMDSv2 only, its own requests marked), the EMF metrics
//! file, the agent's fragment, the CloudFormation template, and shipping with the AWS SDK to
//! moto's server. moto runs inside the test's network namespace on its loopback, and so does
//! the shipping daemon: its credentials come from the fake IMDS, and nothing outside the
//! namespace is reachable from it, so no test can reach real AWS.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use imds_probe_tests::{
    Daemon, Netns, OrPanic as _, Setup, TempDir, backend, binary, client, netns_with_imds,
    requests_where, require_root,
};
use serde_json::Value;

/// moto, cfn-lint and their botocore, installed by `cargo xtask setup`.
const TOOLS: &str = "/opt/imds-probe-toolchain/cloudwatch/python";
const MOTO_PORT: &str = "4566";
const ENDPOINT: &str = "http://127.0.0.1:4566";
const EVENTS_GROUP: &str = "/imds-probe/events";
const METRICS_GROUP: &str = "/imds-probe/metrics";
/// The fake IMDS's instance id: the stream name.
const INSTANCE_ID: &str = "i-0123456789abcdef0";
const SHIP_DEADLINE: Duration = Duration::from_secs(90);

fn tools() -> &'static str {
    assert!(
        Path::new(TOOLS).join("moto").is_dir(),
        "{TOOLS} is missing: run `cargo xtask setup`"
    );
    TOOLS
}

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn the_template_passes_cfn_lint_and_holds_the_queries() {
    let template = repo_file("cloudwatch/imds-probe.yaml");
    let out = Command::new("python3")
        .arg(Path::new(tools()).join("bin/cfn-lint"))
        .arg("--")
        .arg(&template)
        .env("PYTHONPATH", tools())
        .output()
        .expect("run cfn-lint");
    assert!(
        out.status.success(),
        "cfn-lint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The saved queries are the files' text, so the two cannot drift apart.
    let text = fs::read_to_string(&template).unwrap();
    let mut queries = 0;
    for entry in fs::read_dir(repo_file("cloudwatch/queries")).unwrap() {
        let query = fs::read_to_string(entry.unwrap().path()).unwrap();
        let indented: String = query
            .lines()
            .map(|line| format!("        {line}\n"))
            .collect();
        assert!(
            text.contains(&format!("QueryString: |\n{indented}")),
            "the template lacks:\n{query}"
        );
        queries += 1;
    }
    assert_eq!(queries, text.matches("AWS::Logs::QueryDefinition").count());
}

#[test]
fn agent_config_prints_the_fragment_and_refuses_bad_retention() {
    let out = Command::new(binary("imds-probe"))
        .args(["cloudwatch", "agent-config", "--retention-days", "90"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let fragment: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = &fragment["logs"]["logs_collected"]["files"]["collect_list"];
    assert_eq!(entries[0]["retention_in_days"], 90);
    assert_eq!(entries[0]["log_group_name"], EVENTS_GROUP);
    assert_eq!(entries[1]["log_group_name"], METRICS_GROUP);
    let refused = Command::new(binary("imds-probe"))
        .args(["cloudwatch", "agent-config", "--retention-days", "31"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("retention of 31 days"));
}

#[test]
fn the_daemon_learns_who_it_is_with_imdsv2_only_and_marks_its_requests() {
    if !require_root() {
        return;
    }
    // `required`: a token-less request would be refused, and the identity never learnt.
    let (ns, _imds) = netns_with_imds("required", &[]);
    let daemon = Daemon::start_in(&ns, &["--backend", &backend().0], None);
    let log = daemon.wait_for_log("this host's identity");
    assert!(log.contains(INSTANCE_ID), "{log}");
    let pid = daemon.pid();
    let own = requests_where(&ns, &daemon, "the daemon's own", |e| {
        e["process"]["pid"] == pid
    });
    assert!(own.len() >= 2, "{own:#?}");
    for request in &own {
        assert_eq!(request["own"], true, "{request}");
        assert!(
            request["class"] == "token" || request["class"] == "imdsv2",
            "{request}"
        );
    }
    // A client's requests are not marked.
    let url = "http://169.254.169.254/latest/meta-data/";
    let (curl, out) = client(&ns, "curl", &["-s", "-o", "/dev/null", url]);
    assert!(out.status.success());
    let theirs = requests_where(&ns, &daemon, "curl", |e| e["process"]["pid"] == curl);
    assert_eq!(theirs.len(), 1, "{theirs:#?}");
    assert!(theirs[0].get("own").is_none(), "{}", theirs[0]);
}

#[test]
fn off_ec2_the_daemon_carries_on_and_says_so_once() {
    if !require_root() {
        return;
    }
    // No IMDS in this namespace: nobody answers, as off EC2.
    let ns = Netns::new().or_panic();
    let mut daemon = Daemon::start_in(&ns, &["--backend", &backend().0], None);
    daemon.wait_for_log("no instance identity yet");
    // Attempts after 1 and 2 more seconds fail too, and are not told again.
    thread::sleep(Duration::from_secs(4));
    assert_eq!(
        daemon.stderr().matches("no instance identity yet").count(),
        1,
        "{}",
        daemon.stderr()
    );
    assert!(daemon.stop().success());
}

#[test]
fn metrics_go_to_their_own_file_as_emf() {
    let dir = TempDir::new("metrics").or_panic();
    let metrics = dir.join("metrics.jsonl");
    let args = [
        "--backend",
        &backend().0,
        "--metrics-file",
        metrics.to_str().unwrap(),
    ];
    let Some(mut t) = Setup::with_daemon_args("optional", &[], &args) else {
        return;
    };
    let url = "http://169.254.169.254/latest/meta-data/instance-id";
    let v1 = t.requests_of("curl", &["-s", url, "-s", url, "-s", url]);
    assert_eq!(v1.len(), 3, "{v1:#?}");
    assert!(v1.iter().all(|e| e["class"] == "imdsv1"));
    // A stop writes the minute so far.
    assert!(t.daemon.stop().success());
    let lines = fs::read_to_string(&metrics).unwrap();
    let last: Value = serde_json::from_str(lines.lines().last().expect("a metrics line")).unwrap();
    let directive = &last["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "IMDSProbe");
    assert!(last["RequestsIMDSv1"].as_u64().unwrap() >= 3, "{last}");
    assert!(last["IMDSv1Callers"].as_u64().unwrap() >= 1, "{last}");
    assert_eq!(last["HostsWithIMDSv1"], 1);
    assert_eq!(
        last["IMDSv1Fallbacks"], 0,
        "curl asked for no token: {last}"
    );
    // The events file: no EMF in it, and `ts` first in every line, where the agent's
    // timestamp pattern finds it (see agent_config).
    let events = fs::read_to_string(&t.daemon.log_file).unwrap();
    assert!(!events.contains("\"_aws\""));
    for line in events.lines() {
        assert!(line.starts_with("{\"ts\":\""), "{line}");
    }
}

/// moto's server on the namespace's loopback.
struct Moto {
    child: Child,
}

impl Moto {
    fn start(ns: &Netns) -> Self {
        let child = ns
            .command("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", MOTO_PORT])
            .env("PYTHONPATH", tools())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        // Killed and reaped on drop, also when it does not come up.
        let moto = Self { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = ns
                .command("curl")
                .args(["-s", "-o", "/dev/null", &format!("{ENDPOINT}/moto-api/")])
                .status()
                .unwrap();
            if up.success() {
                return moto;
            }
            assert!(Instant::now() < deadline, "moto did not start");
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The messages of a log stream in moto, in order (empty if it does not exist).
fn messages(ns: &Netns, group: &str) -> Vec<String> {
    let script = r#"
import json, sys, botocore.session
client = botocore.session.get_session().create_client(
    "logs", region_name="us-east-1", endpoint_url=sys.argv[1],
    aws_access_key_id="test", aws_secret_access_key="test")
args = dict(logGroupName=sys.argv[2], logStreamName=sys.argv[3], startFromHead=True)
out = []
try:
    while True:
        page = client.get_log_events(**args)
        out += [event["message"] for event in page["events"]]
        if not page["events"] or page["nextForwardToken"] == args.get("nextToken"):
            break
        args["nextToken"] = page["nextForwardToken"]
except client.exceptions.ResourceNotFoundException:
    pass
print(json.dumps(out))
"#;
    let out = ns
        .command("python3")
        .args(["-c", script, ENDPOINT, group, INSTANCE_ID])
        .env("PYTHONPATH", tools())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until moto's events stream holds exactly the events file's lines from line `from`
/// on, in order.
fn wait_shipped(ns: &Netns, daemon: &Daemon, from: usize) {
    let deadline = Instant::now() + SHIP_DEADLINE;
    loop {
        let got = messages(ns, EVENTS_GROUP);
        let want = lines(&daemon.log_file).split_off(from);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "moto has {} messages, want {}; first difference at {:?}\ndaemon log:\n{}",
            got.len(),
            want.len(),
            got.iter().zip(&want).position(|(a, b)| a != b),
            daemon.stderr()
        );
        thread::sleep(Duration::from_millis(500));
    }
}

fn ship_args<'a>(state: &'a str, metrics: &'a str, backend: &'a str) -> Vec<&'a str> {
    vec![
        "--backend",
        backend,
        "--cloudwatch-log-group",
        EVENTS_GROUP,
        "--cloudwatch-endpoint",
        ENDPOINT,
        "--state-dir",
        state,
        "--metrics-file",
        metrics,
        "--no-stdout",
    ]
}

/// Makes `count` IMDSv1 requests over one connection, each with a path and User-Agent of 1000
/// characters, so that a few hundred add up to more than one PutLogEvents batch (1 MiB).
fn poll(ns: &Netns, count: usize) {
    let code = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('169.254.169.254', 80)\n\
         for i in range({count}):\n\
         \x20   c.request('GET', '/latest/meta-data/' + 'p' * 1000, headers={{'User-Agent': 'u' * 1000}})\n\
         \x20   c.getresponse().read()\n"
    );
    let (_, out) = client(ns, "python3", &["-c", &code]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shipping_survives_an_outage_and_a_restart_and_sends_nothing_twice() {
    if !require_root() {
        return;
    }
    let (ns, _imds) = netns_with_imds("optional", &[]);
    let dir = TempDir::new("ship").or_panic();
    let log_file = dir.join("events.jsonl");
    let metrics = dir.join("metrics.jsonl");
    let state = dir.join("state");
    let (state_arg, metrics_arg) = (state.to_str().unwrap(), metrics.to_str().unwrap());
    let backend = backend().0;
    let args = ship_args(state_arg, metrics_arg, &backend);

    // 1. Everything arrives, complete and in order: the events file line for line.
    let moto = Moto::start(&ns);
    let mut daemon = Daemon::start_in(&ns, &args, Some(&log_file));
    poll(&ns, 5);
    daemon.wait_for_log("shipping to CloudWatch Logs");
    wait_shipped(&ns, &daemon, 0);
    let before_outage = lines(&log_file).len();

    // 2. moto goes away (with everything it held); the daemon keeps writing more than a batch.
    drop(moto);
    poll(&ns, 400);
    daemon.wait_for_log("PutLogEvents failed");
    let moto = Moto::start(&ns);
    let backlog = lines(&log_file);
    let bytes: usize = backlog[before_outage..].iter().map(|l| l.len() + 26).sum();
    assert!(bytes > 1_048_576, "only {bytes} bytes of backlog");
    // The new moto gets exactly what came after the outage began: nothing twice.
    wait_shipped(&ns, &daemon, before_outage);
    assert!(daemon.wait_for_log("works again").contains("works again"));

    // 3. A clean restart resumes at the cursor.
    assert!(daemon.stop().success());
    drop(daemon);
    let daemon = Daemon::start_in(&ns, &args, Some(&log_file));
    poll(&ns, 3);
    wait_shipped(&ns, &daemon, before_outage);
    assert!(lines(&log_file).len() > before_outage + 400 + 3);
    // The first run's last metrics line (written at its stop) went to the metrics group.
    let metric_lines = messages(&ns, METRICS_GROUP);
    assert!(
        metric_lines.iter().any(|l| l.contains("\"_aws\"")),
        "{metric_lines:?}"
    );
    drop(moto);
}
