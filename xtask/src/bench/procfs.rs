//! What /proc says about a process (CPU time, memory, its threads, its BPF programs), and
//! the kernel's BPF run-time statistics switch.

use std::{collections::BTreeMap, fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result};

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// utime + stime of a process (all its threads) or of one task, from a `stat` file.
fn stat_cpu(path: &Path) -> Result<(u64, u64, String)> {
    let stat = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let open = stat.find('(').context("stat: no comm")?;
    let close = stat.rfind(')').context("stat: no comm")?;
    let comm = stat[open + 1..close].to_owned();
    // Fields after "pid (comm)": state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("stat field {n} of {}", path.display()))
    };
    Ok((field(14)?, field(15)?, comm))
}

/// CPU time of a whole process as /proc/<pid>/stat counts it (clock ticks).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTicks {
    pub user: u64,
    pub system: u64,
}

impl CpuTicks {
    pub fn of(pid: u32) -> Result<Self> {
        let (user, system, _) = stat_cpu(&Path::new("/proc").join(pid.to_string()).join("stat"))?;
        Ok(Self { user, system })
    }

    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }

    pub fn total(&self) -> Duration {
        let tck = clock_ticks_per_second();
        Duration::from_secs_f64((self.user + self.system) as f64 / tck as f64)
    }

    pub fn user_time(&self) -> Duration {
        Duration::from_secs_f64(self.user as f64 / clock_ticks_per_second() as f64)
    }

    pub fn system_time(&self) -> Duration {
        Duration::from_secs_f64(self.system as f64 / clock_ticks_per_second() as f64)
    }
}

/// On-CPU nanoseconds per thread (schedstat, exact), keyed by thread name + tid.
pub fn thread_cpu_ns(pid: u32) -> BTreeMap<(String, u32), u64> {
    let mut threads = BTreeMap::new();
    let task_dir = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(entries) = fs::read_dir(&task_dir) else {
        return threads;
    };
    for entry in entries.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default();
        let ns = fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        threads.insert((comm, tid), ns);
    }
    threads
}

/// Sum of the on-CPU nanoseconds of every thread of `pid` (schedstat).
pub fn process_cpu_ns(pid: u32) -> u64 {
    thread_cpu_ns(pid).values().sum()
}

/// Context switches, voluntary and involuntary, summed over every thread of `pid`: each is
/// a time a thread was woken (or preempted) and ran. Threads that exited are not counted.
pub fn context_switches(pid: u32) -> u64 {
    let task_dir = Path::new("/proc").join(pid.to_string()).join("task");
    let Ok(entries) = fs::read_dir(&task_dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| fs::read_to_string(entry.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    matches!(
                        key,
                        "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches"
                    )
                    .then(|| value.trim().parse::<u64>().ok())?
                })
                .sum::<u64>()
        })
        .sum()
}

/// A `Vm*` line of /proc/<pid>/status, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = Path::new("/proc").join(pid.to_string()).join("status");
    let status =
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("no {field} in {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// BPF programs

/// `kernel.bpf_stats_enabled=1` while alive; the previous value is restored on drop.
pub struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let previous = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        println!("(kernel.bpf_stats_enabled: {previous} -> 1 for this measurement)");
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        match fs::write(BPF_STATS, &self.previous) {
            Ok(()) => println!("(kernel.bpf_stats_enabled restored to {})", self.previous),
            Err(e) => eprintln!(
                "warning: could not restore {BPF_STATS} to {}: {e}",
                self.previous
            ),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ProgStats {
    pub id: u64,
    pub prog_type: String,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every BPF program `pid` holds an fd of, with its run-time statistics (fdinfo), named by
/// bpftool when it is installed (fdinfo has no name).
pub fn bpf_programs(pid: u32) -> Result<Vec<ProgStats>> {
    let fd_dir = Path::new("/proc").join(pid.to_string()).join("fd");
    let mut progs: BTreeMap<u64, ProgStats> = BTreeMap::new();
    for entry in fs::read_dir(&fd_dir).with_context(|| format!("reading {}", fd_dir.display()))? {
        let entry = entry?;
        let is_prog = fs::read_link(entry.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let fdinfo = Path::new("/proc")
            .join(pid.to_string())
            .join("fdinfo")
            .join(entry.file_name());
        let Ok(info) = fs::read_to_string(&fdinfo) else {
            continue;
        };
        let field = |name: &str| {
            info.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_owned())
            })
        };
        let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
        let Some(id) = number("prog_id") else {
            continue;
        };
        progs.insert(
            id,
            ProgStats {
                id,
                prog_type: number("prog_type")
                    .map_or_else(|| "?".into(), |t| prog_type_name(t).to_owned()),
                name: field("prog_tag").map_or_else(String::new, |tag| format!("tag {tag}")),
                run_time_ns: number("run_time_ns").unwrap_or(0),
                run_cnt: number("run_cnt").unwrap_or(0),
            },
        );
    }
    if let Some(names) = bpftool_names() {
        for prog in progs.values_mut() {
            if let Some(name) = names.get(&prog.id) {
                prog.name.clone_from(name);
            }
        }
    }
    Ok(progs.into_values().collect())
}

fn bpftool_names() -> Option<BTreeMap<u64, String>> {
    // bpftool lives in sbin, which a non-login root shell may not have on PATH.
    let path = std::env::var("PATH").unwrap_or_default() + ":/usr/sbin:/sbin:/usr/local/sbin";
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .env("PATH", path)
        .output()
        .ok()?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        progs
            .as_array()?
            .iter()
            .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_owned())))
            .collect(),
    )
}

/// `enum bpf_prog_type` of include/uapi/linux/bpf.h.
fn prog_type_name(t: u64) -> &'static str {
    const NAMES: &[&str] = &[
        "unspec",
        "socket_filter",
        "kprobe",
        "sched_cls",
        "sched_act",
        "tracepoint",
        "xdp",
        "perf_event",
        "cgroup_skb",
        "cgroup_sock",
        "lwt_in",
        "lwt_out",
        "lwt_xmit",
        "sock_ops",
        "sk_skb",
        "cgroup_device",
        "sk_msg",
        "raw_tracepoint",
        "cgroup_sock_addr",
        "lwt_seg6local",
        "lirc_mode2",
        "sk_reuseport",
        "flow_dissector",
        "cgroup_sysctl",
        "raw_tracepoint_writable",
        "cgroup_sockopt",
        "tracing",
        "struct_ops",
        "ext",
        "lsm",
        "sk_lookup",
        "syscall",
        "netfilter",
    ];
    usize::try_from(t)
        .ok()
        .and_then(|t| NAMES.get(t))
        .copied()
        .unwrap_or("?")
}
