//! Every event names the right program, parents, unit or container: short-lived callers,
//! threads, shells, exec right after the send, cgroups named as container runtimes and
//! systemd name them, and pid namespaces.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use imds_probe_tests::{Setup, only};
use serde_json::Value;

fn setup() -> Option<Setup> {
    Setup::new("optional", &[])
}

/// A marker unique to this call, to find the client's event by its path or command line.
fn marker(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn send_and(then: &str, mark: &str) -> String {
    format!(
        "import socket, os, sys, threading\ns = socket.create_connection(('169.254.169.254', 80))\n\
         s.sendall(b'GET /latest/meta-data/{mark} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n{then}\n"
    )
}

/// The event names python, our client, as the executable.
fn assert_exe_is_python(event: &Value) {
    assert!(
        event["process"]["exe"]
            .as_str()
            .unwrap()
            .starts_with("/usr/bin/python3"),
        "{event:#}"
    );
}

fn cmdline(event: &Value) -> Vec<String> {
    event["process"]["cmdline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// The daemon is paused (SIGSTOP) while the caller sends and exits, and resumes only once
/// the caller is gone from /proc: only what the process table took at exec can name it.
#[test]
fn a_caller_that_exits_right_after_its_send_is_still_named() {
    let Some(t) = setup() else { return };
    let mark = marker("exits");
    t.daemon.pause();
    let (pid, out) = t.client(
        "/usr/bin/python3",
        &["-c", &send_and("os._exit(0)", &mark), &mark],
    );
    t.daemon.resume();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the caller is gone"
    );
    let event = t.request_from(pid);
    assert_eq!(event["class"], "imdsv1");
    assert_exe_is_python(&event);
    assert!(cmdline(&event).contains(&mark), "{event:#}");
    assert_eq!(event["process"]["user"], "root");
    assert!(
        event["process"]["start_time"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
}

#[test]
fn a_request_from_a_second_thread_resolves_to_its_process() {
    let Some(t) = setup() else { return };
    let mark = marker("thread");
    let code = format!(
        "import socket, threading\ndef send():\n    s = socket.create_connection(('169.254.169.254', 80))\n    \
         s.sendall(b'GET /latest/meta-data/{mark} HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n    s.recv(100)\n\
         t = threading.Thread(target=send)\nt.start()\nt.join()\n"
    );
    let event = &only(t.requests_of("/usr/bin/python3", &["-c", &code]));
    assert_ne!(
        event["process"]["tid"], event["process"]["pid"],
        "sent from another thread"
    );
    assert_exe_is_python(event);
}

#[test]
fn a_caller_started_by_a_shell_has_its_parent_chain() {
    let Some(t) = setup() else { return };
    let mark = marker("shell");
    // `; true` keeps the shell from exec'ing curl in its place.
    let script =
        format!("/usr/bin/curl -s http://169.254.169.254/latest/meta-data/{mark} >/dev/null; true");
    let (sh_pid, out) = t.client("/bin/sh", &["-c", &script]);
    assert!(out.status.success());
    let event = &only(t.requests_where("the shell's curl", |e| {
        e["path"].as_str().is_some_and(|p| p.ends_with(&mark))
    }));
    assert_eq!(event["process"]["comm"], "curl");
    assert_eq!(event["process"]["ppid"], sh_pid);
    let parents = event["parents"].as_array().unwrap();
    assert_eq!(parents[0]["pid"], sh_pid, "{event:#}");
    assert_eq!(parents[0]["comm"], "sh");
    assert_eq!(parents[0]["cmdline"][2], script.as_str());
    assert_eq!(
        parents[1]["pid"],
        std::process::id(),
        "the test started the shell"
    );
    assert_eq!(parents.last().unwrap()["pid"], 1, "the chain reaches pid 1");
}

/// The daemon is paused (SIGSTOP) while the caller sends and execs `sleep`, and resumes once
/// /proc shows the sleep: the event must still name what sent, as the process table took it.
#[test]
fn exec_right_after_the_send_does_not_rewrite_the_attribution() {
    let Some(t) = setup() else { return };
    let mark = marker("exec");
    let then = "os.execv('/bin/sleep', ['sleep', '30'])";
    t.daemon.pause();
    let mut client =
        t.ns.command("/usr/bin/python3")
            .args(["-c", &send_and(then, &mark), &mark])
            .spawn()
            .unwrap();
    let pid = client.id();
    let comm = format!("/proc/{pid}/comm");
    let deadline = Instant::now() + imds_probe_tests::DEADLINE;
    while fs::read_to_string(&comm).unwrap_or_default().trim() != "sleep" {
        assert!(Instant::now() < deadline, "the client did not exec sleep");
        thread::sleep(Duration::from_millis(10));
    }
    t.daemon.resume();
    let event = t.request_from(pid);
    let _ = client.kill();
    let _ = client.wait();
    assert_exe_is_python(&event);
    assert!(cmdline(&event).contains(&mark), "{event:#}");
}

#[test]
fn a_caller_in_its_own_pid_namespace_has_its_namespace_pid() {
    let Some(t) = setup() else { return };
    let mark = marker("pidns");
    let url = format!("http://169.254.169.254/latest/meta-data/{mark}");
    let (_, out) = t.client("unshare", &["--pid", "--fork", "/usr/bin/curl", "-s", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = &only(t.requests_where("curl in a pid namespace", |e| {
        e["path"].as_str().is_some_and(|p| p.ends_with(&mark))
    }));
    assert_eq!(
        event["process"]["ns_pid"], 1,
        "curl is pid 1 of its namespace: {event:#}"
    );
    assert_ne!(event["process"]["pid"], 1);
    assert_eq!(event["parents"][0]["comm"], "unshare");
}

/// The cgroup v2 hierarchy's mount point.
fn cgroup2_root() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            right
                .starts_with("cgroup2 ")
                .then(|| PathBuf::from(mount_point))
        })
        .expect("a cgroup2 mount")
}

/// Cgroups this test created, removed innermost first on drop.
struct Cgroups(Vec<PathBuf>);

impl Cgroups {
    fn create(root: &Path, relative: &str) -> (Self, PathBuf) {
        let mut created = Vec::new();
        let mut path = root.to_path_buf();
        for part in relative.trim_start_matches('/').split('/') {
            path.push(part);
            if !path.exists() {
                fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
                created.push(path.clone());
            }
        }
        (Self(created), path)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

fn hex(len: usize, seed: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    (0..len.div_ceil(16))
        .map(|i| format!("{:016x}", state.hash_one((seed, i))))
        .collect::<String>()[..len]
        .to_owned()
}

/// Assertions on the event of a caller placed in a cgroup.
type Check<'a> = Box<dyn Fn(&Value) + 'a>;

#[test]
fn callers_in_container_and_service_cgroups_are_named() {
    let Some(t) = setup() else { return };
    let root = cgroup2_root();
    let (docker, containerd, ecs, ecs_task) = (
        hex(64, "docker"),
        hex(64, "containerd"),
        hex(64, "ecs"),
        hex(32, "task"),
    );
    let pod = "4f5e6d7c-1234-4abc-9def-0123456789ab";
    let service = format!("imds-probe-test-{}.service", std::process::id());
    let cases: Vec<(String, Check)> = vec![
        (
            format!("/system.slice/docker-{docker}.scope"),
            Box::new(|e: &Value| {
                assert_eq!(e["container"]["runtime"], "docker");
                assert_eq!(e["container"]["id"], docker.as_str());
            }),
        ),
        (
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{containerd}.scope",
                pod.replace('-', "_")
            ),
            Box::new(|e: &Value| {
                assert_eq!(e["container"]["runtime"], "containerd");
                assert_eq!(e["container"]["id"], containerd.as_str());
                assert_eq!(e["container"]["pod_uid"], pod);
            }),
        ),
        (
            format!("/ecs/{ecs_task}/{ecs}"),
            Box::new(|e: &Value| {
                assert_eq!(e["container"]["runtime"], "ecs");
                assert_eq!(e["container"]["id"], ecs.as_str());
                assert_eq!(e["container"]["ecs_task"], ecs_task.as_str());
            }),
        ),
        (
            format!("/system.slice/{service}"),
            Box::new(|e: &Value| {
                assert_eq!(e["systemd_unit"], service.as_str());
                assert!(e["container"].is_null());
            }),
        ),
    ];
    for (relative, check) in cases {
        let (_guard, dir) = Cgroups::create(&root, &relative);
        let mark = marker("cgroup");
        // `ip netns exec` mounts a sysfs of its own, without the cgroup2 mount, so the test
        // moves the client from outside, while the client waits on its stdin.
        let script = format!(
            "read go && exec /usr/bin/curl -s http://169.254.169.254/latest/meta-data/{mark}"
        );
        let mut client =
            t.ns.command("/bin/sh")
                .args(["-c", &script])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
        let pid = client.id();
        fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        client.stdin.take().unwrap().write_all(b"go\n").unwrap();
        assert!(client.wait().unwrap().success(), "{relative}");
        let event = &t.request_from(pid);
        assert_eq!(event["cgroup"], relative.as_str(), "{event:#}");
        check(event);
    }
}
