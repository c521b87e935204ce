//! Turns a cgroup v2 path (the part after `0::` in `/proc/<pid>/cgroup`) into the systemd unit
//! and the container a process belongs to. Pure string work, so it is tested on any path
//! without a host running these runtimes.
//!
//! None of these names is an interface: each is a habit of the program that made the cgroup,
//! so the shapes recognised here come from those programs' sources and documentation:
//!
//! - systemd (`systemd.unit(5)`, `systemd.slice(5)`): a slice's name spells its ancestry with
//!   `-` (`user-1000.slice` sits in `user.slice`), which is why a literal `-` in a slice name is
//!   escaped as `\x2d` and why kubelet swaps the dashes of pod UIDs for `_`. Unit names use only
//!   ASCII letters, digits and `:-_.\@`.
//! - runc/crun with the systemd driver: an OCI `cgroupsPath` of `slice:prefix:name` becomes the
//!   transient unit `<prefix>-<name>.scope` in that slice. Docker's prefix is `docker`,
//!   containerd's CRI plugin's `cri-containerd`, CRI-O's `crio` (`crio-conmon` for its monitor),
//!   Podman's `libpod` (`libpod-conmon` for its monitor), nerdctl's `nerdctl`.
//! - the cgroupfs drivers: Docker `/docker/<id>`; containerd `/<namespace>/<id>` (`ctr` and
//!   nerdctl in namespace `default`); Podman `<cgroup parent>/libpod-<id>` with parent
//!   `/libpod_parent`; CRI-O `<pod>/crio-<id>`; containerd's CRI plugin and dockershim
//!   `<pod>/<id>`.
//! - kubelet (`pkg/kubelet/cm`): a pod's cgroup is `kubepods/<qos>/pod<uid>` with QoS
//!   `burstable` or `besteffort`, and Guaranteed pods sit directly in `kubepods`; the systemd
//!   driver spells it `kubepods-<qos>-pod<uid, dashes as _>.slice`, and `--cgroup-root` (kind
//!   uses `/kubelet`) prefixes it all. A static pod's UID is an MD5 in 32 hex, not a UUID
//!   (`pkg/kubelet/config/common.go`).
//! - the ECS agent (`agent/api/task/task_linux.go`): with cgroup v1 a task's cgroup is
//!   `/ecs/<task id>` and Docker nests each container in it; with cgroup v2 it is the slice
//!   `ecstasks-<task id>.slice` in `ecstasks.slice` and the containers are `docker-<id>.scope`.
//!   Task ids are 32 hex (a UUID for tasks with old-format ARNs).
//!
//! Decisions on the ambiguous cases (each is pinned by a test below):
//!
//! - The outermost container in the path wins. The host's runtime made that cgroup, so its id
//!   resolves with the host's tools; anything beneath it was made by a nested runtime (kind,
//!   Docker in Docker) or by the container itself, which with a cgroup namespace and delegation
//!   can create sub-cgroups of any name and so could pass itself off as another container.
//! - `systemd_unit` is taken only from the components above the container, and the container's
//!   own scope (`docker-<id>.scope`) is not reported as the unit: the container already names
//!   it, and a container running its own systemd has an `init.scope` or `nginx.service` of its
//!   own that would point an operator at an unrelated unit of the same name on the host. What
//!   is left is the host unit that owns the container, e.g. `user@1000.service` for a rootless
//!   engine, and nothing for `/system.slice/docker-<id>.scope`.
//! - A service beats a scope even when the scope is nested deeper: inside a user manager,
//!   `user@1000.service/init.scope` is that manager and not PID 1, and desktop app scopes have
//!   per-launch random names, so the service is the name worth aggregating on. When there is no
//!   service, the innermost scope (or socket, mount or swap unit, whose helper processes can also
//!   make calls) is reported.
//! - The monitor scopes `crio-conmon-<id>.scope` and `libpod-conmon-<id>.scope` are not the
//!   container: conmon only watches it, and a call from there was not made by the workload. They
//!   are host units, so the scope is reported as the unit and its name still carries the id.
//! - A bare id in a Kubernetes pod cgroup (cgroupfs driver) is written alike by containerd and
//!   by dockershim, so its runtime is [`Runtime::Kubernetes`]; `crictl inspect <id>` answers for
//!   either. A `crio-`, `cri-containerd-` or `docker-` prefix does tell, and is used.
//! - A container in an ECS task cgroup is [`Runtime::Ecs`] whatever its scope prefix: ECS on EC2
//!   Linux always drives Docker, so `docker inspect <id>` works, and the task id is what the
//!   operator needs. An ECS task without task-level limits gets no task cgroup and reads as
//!   plain Docker; nothing in the path can tell it apart.
//! - Ids must be lowercase hex, 12 to 64 digits: every runtime here writes lowercase, and
//!   requiring it keeps units like `docker-compose@app.service` from reading as containers.
//!   LXC/LXD are not recognised, since their cgroups carry container names, not ids.

use serde::{Deserialize, Serialize};

/// The kernel prints a cgroup path through a `PATH_MAX` buffer, so anything longer was not
/// read from `/proc` and is not worth walking.
const MAX_PATH_LEN: usize = 4096;
/// A cgroup is a directory, so one component is at most `NAME_MAX` bytes.
const MAX_COMPONENT_LEN: usize = 255;
/// systemd's `UNIT_NAME_MAX` is 256 including the terminating NUL.
const MAX_UNIT_NAME_LEN: usize = 255;
const MIN_CONTAINER_ID_LEN: usize = 12;
const MAX_CONTAINER_ID_LEN: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CgroupInfo {
    /// The systemd service or scope the process belongs to, outside any container: the
    /// innermost `*.service`, else the innermost `*.scope` (or socket, mount, swap unit), e.g.
    /// "nginx.service", "session-3.scope", "user@1000.service".
    pub systemd_unit: Option<String>,
    pub container: Option<Container>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub runtime: Runtime,
    /// The container id as the path spells it (usually 64 hex).
    pub id: String,
    /// The Kubernetes pod UID, in the API's form (dashes, or 32 hex for static pods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The ECS task id (the last part of the task ARN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecs_task: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Docker,
    /// containerd, through its Kubernetes CRI plugin or directly (ctr, nerdctl).
    Containerd,
    CriO,
    Podman,
    /// A container of an ECS task (run by Docker).
    Ecs,
    /// A container of a Kubernetes pod whose runtime the path does not tell (containerd or
    /// dockershim with the cgroupfs driver).
    Kubernetes,
}

impl Runtime {
    /// The name it serializes to, for logs and labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Containerd => "containerd",
            Self::CriO => "cri_o",
            Self::Podman => "podman",
            Self::Ecs => "ecs",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// Reads a cgroup v2 path such as `/system.slice/docker-<id>.scope`. Never fails: a path that
/// matches nothing known gives empty fields.
pub fn parse(path: &str) -> CgroupInfo {
    if path.len() > MAX_PATH_LEN {
        return CgroupInfo::default();
    }
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let found = components
        .iter()
        .enumerate()
        .find_map(|(i, component)| container_at(&components[..i], component).map(|c| (i, c)));
    let (outside, container) = match found {
        Some((i, container)) => (&components[..i], Some(container)),
        None => (&components[..], None),
    };
    CgroupInfo {
        systemd_unit: unit_of(outside),
        container,
    }
}

/// Scope prefixes of the systemd driver; CRI-O and Podman use the same prefix, without
/// `.scope`, under cgroupfs. The conmon scopes (`crio-conmon-<id>`, `libpod-conmon-<id>`) match
/// a prefix too, but the rest is not an id, so they fall through to being plain units.
const PREFIXES: &[(&str, Runtime, bool)] = &[
    // (prefix, runtime, also without ".scope")
    ("docker-", Runtime::Docker, false),
    ("cri-containerd-", Runtime::Containerd, false),
    ("nerdctl-", Runtime::Containerd, false),
    ("crio-", Runtime::CriO, true),
    ("libpod-", Runtime::Podman, true),
];

fn container_at(parents: &[&str], component: &str) -> Option<Container> {
    if component.len() > MAX_COMPONENT_LEN {
        return None;
    }
    let ecs_task = ecs_task_of(parents);
    let pod_uid = pod_uid_of(parents);
    let (runtime, id) = match prefixed_id(component) {
        Some(found) => found,
        None if is_container_id(component) => {
            // A bare id is only a container where a runtime is known to write bare ids;
            // anywhere else a hex directory name means nothing.
            let runtime = if ecs_task.is_some() {
                Runtime::Ecs
            } else if pod_uid.is_some() {
                Runtime::Kubernetes
            } else {
                match parents {
                    [.., "docker"] => Runtime::Docker,
                    ["default"] => Runtime::Containerd,
                    _ => return None,
                }
            };
            (runtime, component)
        }
        None => return None,
    };
    let runtime = if ecs_task.is_some() {
        Runtime::Ecs
    } else {
        runtime
    };
    Some(Container {
        runtime,
        id: id.to_owned(),
        pod_uid,
        ecs_task,
    })
}

fn prefixed_id(component: &str) -> Option<(Runtime, &str)> {
    let (stem, is_scope) = match component.strip_suffix(".scope") {
        Some(stem) => (stem, true),
        None => (component, false),
    };
    PREFIXES.iter().find_map(|&(prefix, runtime, bare_too)| {
        let id = stem.strip_prefix(prefix)?;
        ((is_scope || bare_too) && is_container_id(id)).then_some((runtime, id))
    })
}

/// The ECS task whose cgroup directly holds the container, in either of the agent's shapes.
fn ecs_task_of(parents: &[&str]) -> Option<String> {
    let task = match parents {
        [.., "ecs", task] => task,
        [.., slice] => slice.strip_prefix("ecstasks-")?.strip_suffix(".slice")?,
        [] => return None,
    };
    is_ecs_task_id(task).then(|| task.to_owned())
}

/// The pod whose cgroup directly holds the container, in the API's spelling of its UID.
fn pod_uid_of(parents: &[&str]) -> Option<String> {
    let (parent, ancestors) = parents.split_last()?;
    let uid = match parent.strip_suffix(".slice") {
        // The slice name carries its whole ancestry, so it must itself say "kubepods"; the UID
        // is its last dash-separated part, with its own dashes written as underscores.
        Some(slice) if slice.contains("kubepods") => {
            let (_, last) = slice.rsplit_once('-')?;
            last.strip_prefix("pod")?.replace('_', "-")
        }
        Some(_) => return None,
        None if ancestors.iter().any(|a| a.contains("kubepods")) => {
            parent.strip_prefix("pod")?.to_owned()
        }
        None => return None,
    };
    (is_uuid(&uid) || is_hex_of_len(&uid, 32)).then_some(uid)
}

fn unit_of(outside: &[&str]) -> Option<String> {
    let innermost = |suffixes: &[&str]| {
        outside.iter().rev().find(|c| {
            suffixes
                .iter()
                .any(|s| c.strip_suffix(s).is_some_and(|stem| !stem.is_empty()))
                && is_unit_name(c)
        })
    };
    innermost(&[".service"])
        .or_else(|| innermost(&[".scope", ".socket", ".mount", ".swap"]))
        .map(|unit| (*unit).to_owned())
}

/// Names under a delegated unit are chosen by whoever it was delegated to; keeping to systemd's
/// own alphabet keeps control characters and the like out of reports.
fn is_unit_name(name: &str) -> bool {
    name.len() <= MAX_UNIT_NAME_LEN
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'\\' | b'@')
        })
}

fn is_container_id(s: &str) -> bool {
    (MIN_CONTAINER_ID_LEN..=MAX_CONTAINER_ID_LEN).contains(&s.len()) && is_lower_hex(s)
}

fn is_ecs_task_id(s: &str) -> bool {
    is_hex_of_len(s, 32) || is_uuid(s)
}

fn is_hex_of_len(s: &str, len: usize) -> bool {
    s.len() == len && is_lower_hex(s)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The 8-4-4-4-12 form the API server gives pod UIDs and old ECS ARNs give task ids.
fn is_uuid(s: &str) -> bool {
    let mut groups = s.split('-');
    [8, 4, 4, 4, 12]
        .iter()
        .all(|&len| groups.next().is_some_and(|g| is_hex_of_len(g, len)))
        && groups.next().is_none()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ID: &str = "3f4c9e2b7a1d8f60c5b2e9a7d4f1c8b3a6e0d9f2c5b8a1e4d7f0c3b6a9e2d5f8";
    const ID2: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";
    const POD: &str = "5e2d7c1a-9b3f-4e8d-a6c0-1f2b3c4d5e6f";
    const POD_SYSTEMD: &str = "5e2d7c1a_9b3f_4e8d_a6c0_1f2b3c4d5e6f";
    const STATIC_POD: &str = "8d3e1f0a9c2b4d6e7f8091a2b3c4d5e6";
    const TASK: &str = "e95a40efbde84cbc8600660a109ec194";
    const OLD_TASK: &str = "1f0e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";

    fn unit(name: &str) -> CgroupInfo {
        CgroupInfo {
            systemd_unit: Some(name.to_owned()),
            container: None,
        }
    }

    fn ctr(runtime: Runtime, id: &str) -> CgroupInfo {
        CgroupInfo {
            systemd_unit: None,
            container: Some(Container {
                runtime,
                id: id.to_owned(),
                pod_uid: None,
                ecs_task: None,
            }),
        }
    }

    fn in_pod(runtime: Runtime, id: &str, pod: &str) -> CgroupInfo {
        let mut info = ctr(runtime, id);
        if let Some(c) = info.container.as_mut() {
            c.pod_uid = Some(pod.to_owned());
        }
        info
    }

    fn in_task(id: &str, task: &str) -> CgroupInfo {
        let mut info = ctr(Runtime::Ecs, id);
        if let Some(c) = info.container.as_mut() {
            c.ecs_task = Some(task.to_owned());
        }
        info
    }

    fn with_unit(mut info: CgroupInfo, name: &str) -> CgroupInfo {
        info.systemd_unit = Some(name.to_owned());
        info
    }

    fn cases() -> Vec<(String, CgroupInfo)> {
        use Runtime::*;
        vec![
            // Plain systemd units.
            ("/system.slice/nginx.service".into(), unit("nginx.service")),
            ("/system.slice/system-getty.slice/getty@tty1.service".into(), unit("getty@tty1.service")),
            ("/user.slice/user-1000.slice/session-3.scope".into(), unit("session-3.scope")),
            ("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service".into(), unit("foo.service")),
            // The user manager itself: its init.scope is not PID 1's.
            ("/user.slice/user-1000.slice/user@1000.service/init.scope".into(), unit("user@1000.service")),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-org.gnome.Terminal.slice/vte-spawn-0b9c4a1e.scope"
                    .into(),
                unit("user@1000.service"),
            ),
            ("/init.scope".into(), unit("init.scope")),
            ("/system.slice/docker.service".into(), unit("docker.service")),
            ("/system.slice/containerd.service".into(), unit("containerd.service")),
            ("/system.slice/ecs.service".into(), unit("ecs.service")),
            ("/system.slice/amazon-ssm-agent.service".into(), unit("amazon-ssm-agent.service")),
            ("/system.slice/system-docker\\x2dcompose.slice/docker-compose@app.service".into(), unit("docker-compose@app.service")),
            ("/system.slice/system-foo\\x2dbar.slice/foo\\x2dbar@1.service".into(), unit("foo\\x2dbar@1.service")),
            ("/system.slice/dbus.socket".into(), unit("dbus.socket")),
            ("/machine.slice/systemd-nspawn@web.service".into(), unit("systemd-nspawn@web.service")),
            // Docker.
            (format!("/system.slice/docker-{ID}.scope"), ctr(Docker, ID)),
            (format!("/docker/{ID}"), ctr(Docker, ID)),
            (format!("/system.slice/docker-{ID}.scope/init.scope"), ctr(Docker, ID)),
            (format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service"), ctr(Docker, ID)),
            (format!("/docker/{ID}/docker/{ID2}"), ctr(Docker, ID)),
            (format!("/custom.slice/docker-{ID}.scope"), ctr(Docker, ID)),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope"),
                with_unit(ctr(Docker, ID), "user@1000.service"),
            ),
            // kind: the node is the host's Docker container; the pod inside it is not the host's.
            (
                format!(
                    "/system.slice/docker-{ID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_SYSTEMD}.slice/cri-containerd-{ID2}.scope"
                ),
                ctr(Docker, ID),
            ),
            // Kubernetes, systemd driver.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SYSTEMD}.slice/cri-containerd-{ID}.scope"
                ),
                in_pod(Containerd, ID, POD),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_SYSTEMD}.slice/cri-containerd-{ID}.scope"
                ),
                in_pod(Containerd, ID, POD),
            ),
            (format!("/kubepods.slice/kubepods-pod{POD_SYSTEMD}.slice/cri-containerd-{ID}.scope"), in_pod(Containerd, ID, POD)),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_POD}.slice/cri-containerd-{ID}.scope"),
                in_pod(Containerd, ID, STATIC_POD),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SYSTEMD}.slice/crio-{ID}.scope"),
                in_pod(CriO, ID, POD),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_SYSTEMD}.slice/crio-conmon-{ID}.scope"),
                unit(&format!("crio-conmon-{ID}.scope")),
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_SYSTEMD}.slice/docker-{ID}.scope"),
                in_pod(Docker, ID, POD),
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_SYSTEMD}.slice/cri-containerd-{ID}.scope"
                ),
                in_pod(Containerd, ID, POD),
            ),
            // Kubernetes, cgroupfs driver.
            (format!("/kubepods/burstable/pod{POD}/{ID}"), in_pod(Kubernetes, ID, POD)),
            (format!("/kubepods/besteffort/pod{POD}/{ID}"), in_pod(Kubernetes, ID, POD)),
            (format!("/kubepods/pod{POD}/{ID}"), in_pod(Kubernetes, ID, POD)),
            (format!("/kubepods/burstable/pod{STATIC_POD}/{ID}"), in_pod(Kubernetes, ID, STATIC_POD)),
            (format!("/kubepods/burstable/pod{POD}/crio-{ID}"), in_pod(CriO, ID, POD)),
            (format!("/kubepods/burstable/pod{POD}/crio-conmon-{ID}"), CgroupInfo::default()),
            (format!("/kubelet/kubepods/burstable/pod{POD}/{ID}"), in_pod(Kubernetes, ID, POD)),
            // containerd without Kubernetes.
            (format!("/system.slice/nerdctl-{ID}.scope"), ctr(Containerd, ID)),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/nerdctl-{ID}.scope"),
                with_unit(ctr(Containerd, ID), "user@1000.service"),
            ),
            (format!("/default/{ID}"), ctr(Containerd, ID)),
            // Podman.
            (format!("/machine.slice/libpod-{ID}.scope"), ctr(Podman, ID)),
            (format!("/machine.slice/libpod-{ID}.scope/container"), ctr(Podman, ID)),
            (format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope"), ctr(Podman, ID)),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                with_unit(ctr(Podman, ID), "user@1000.service"),
            ),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), unit(&format!("libpod-conmon-{ID}.scope"))),
            (format!("/libpod_parent/libpod-{ID}"), ctr(Podman, ID)),
            (format!("/libpod_parent/libpod-conmon-{ID}"), CgroupInfo::default()),
            // ECS on EC2.
            (format!("/ecs/{TASK}/{ID}"), in_task(ID, TASK)),
            (format!("/ecs/{OLD_TASK}/{ID}"), in_task(ID, OLD_TASK)),
            (format!("/ecstasks.slice/ecstasks-{TASK}.slice/docker-{ID}.scope"), in_task(ID, TASK)),
            (format!("/ecs/{TASK}"), CgroupInfo::default()),
            // Nothing to find.
            ("/".into(), CgroupInfo::default()),
            (String::new(), CgroupInfo::default()),
            ("////".into(), CgroupInfo::default()),
            ("/system.slice".into(), CgroupInfo::default()),
            ("/user.slice/user-1000.slice".into(), CgroupInfo::default()),
            ("not a cgroup path".into(), CgroupInfo::default()),
            ("/docker/".into(), CgroupInfo::default()),
            ("/docker/not-an-id".into(), CgroupInfo::default()),
            (format!("/docker/{}", ID.to_uppercase()), CgroupInfo::default()),
            (format!("/docker/{ID}0"), CgroupInfo::default()),
            ("/system.slice/docker-abc.scope".into(), unit("docker-abc.scope")),
            (format!("/something/{ID}"), CgroupInfo::default()),
            (format!("/kubepods/burstable/podnot-a-uid/{ID}"), CgroupInfo::default()),
            (format!("/system.slice/docker-{ID}"), CgroupInfo::default()),
            ("/system.slice/evil\u{1b}[31m.service".into(), CgroupInfo::default()),
            ("/system.slice/.service".into(), CgroupInfo::default()),
            (format!("/{}", "a/".repeat(3000)), CgroupInfo::default()),
        ]
    }

    #[test]
    fn parses_real_world_shapes() {
        let cases = cases();
        assert!(cases.len() >= 25);
        for (path, want) in cases {
            assert_eq!(parse(&path), want, "path {path:?}");
        }
    }

    #[test]
    fn extra_slashes_do_not_matter() {
        assert_eq!(
            parse(&format!("//system.slice//docker-{ID}.scope/")),
            ctr(Runtime::Docker, ID)
        );
    }

    #[test]
    fn serializes_snake_case_and_skips_absent_ids() {
        let json = serde_json::to_value(parse(&format!("/kubepods/burstable/pod{POD}/crio-{ID}")))
            .unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "systemd_unit": null,
                "container": { "runtime": "cri_o", "id": ID, "pod_uid": POD },
            })
        );
        let json = serde_json::to_value(parse(&format!("/ecs/{TASK}/{ID}"))).unwrap_or_default();
        assert_eq!(
            json["container"],
            serde_json::json!({ "runtime": "ecs", "id": ID, "ecs_task": TASK })
        );
    }

    #[test]
    fn as_str_matches_serialization() {
        use Runtime::*;
        for runtime in [Docker, Containerd, CriO, Podman, Ecs, Kubernetes] {
            assert_eq!(
                serde_json::to_value(runtime).unwrap_or_default(),
                runtime.as_str()
            );
        }
    }

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("system.slice".to_owned()),
            Just("kubepods".to_owned()),
            Just("kubepods.slice".to_owned()),
            Just("docker".to_owned()),
            Just("ecs".to_owned()),
            Just("default".to_owned()),
            Just(ID.to_owned()),
            Just(TASK.to_owned()),
            Just(format!("pod{POD}")),
            Just(format!("kubepods-pod{POD_SYSTEMD}.slice")),
            Just(format!("ecstasks-{TASK}.slice")),
            Just(format!("docker-{ID}.scope")),
            Just(format!("crio-conmon-{ID}.scope")),
            "[a-z0-9_.@:\\\\-]{0,80}",
            "(pod|docker-|libpod-|crio-|ecstasks-|kubepods-)[0-9a-f_-]{0,70}(\\.slice|\\.scope|\\.service)?",
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_strings(path in any::<String>()) {
            let _ = parse(&path);
        }

        #[test]
        fn findings_are_well_formed(parts in prop::collection::vec(component(), 0..12)) {
            let info = parse(&parts.join("/"));
            if let Some(c) = &info.container {
                prop_assert!(is_container_id(&c.id));
                prop_assert!(c.pod_uid.as_deref().is_none_or(|p| is_uuid(p) || is_hex_of_len(p, 32)));
                prop_assert!(c.ecs_task.as_deref().is_none_or(is_ecs_task_id));
                prop_assert_eq!(c.ecs_task.is_some(), c.runtime == Runtime::Ecs);
            }
            if let Some(u) = &info.systemd_unit {
                prop_assert!(is_unit_name(u));
            }
        }
    }
}
