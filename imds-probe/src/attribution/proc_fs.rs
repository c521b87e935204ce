//! Best-effort details from /proc, cached per process so a busy caller costs one lookup,
//! not one per request. A cached entry is trusted only while the kernel-reported comm still
//! matches it, which catches most pid reuse and exec.

use std::{collections::HashMap, fs};

use super::{ProcessJson, Sender};
use crate::redact::redact_cmdline;

/// Processes remembered at once; the cache is cleared when it fills (cheap, and rare).
const CACHE_CAPACITY: usize = 4096;
/// Arguments kept from a command line; longer ones are cut.
const MAX_ARGS: usize = 64;
const MAX_ARG_CHARS: usize = 512;

#[derive(Clone)]
struct Cached {
    comm: String,
    exe: Option<String>,
    cmdline: Option<Vec<String>>,
}

#[derive(Default)]
pub struct ProcCache {
    entries: HashMap<u32, Cached>,
}

impl ProcCache {
    pub fn describe(&mut self, sender: &Sender) -> ProcessJson {
        let cached = match self.entries.get(&sender.pid) {
            Some(entry) if entry.comm == sender.comm => entry.clone(),
            _ => {
                if self.entries.len() >= CACHE_CAPACITY {
                    self.entries.clear();
                }
                let entry = read(sender);
                self.entries.insert(sender.pid, entry.clone());
                entry
            }
        };
        ProcessJson {
            pid: sender.pid,
            tid: sender.tid,
            comm: sender.comm.clone(),
            uid: sender.uid,
            gid: sender.gid,
            exe: cached.exe,
            cmdline: cached.cmdline,
            cgroup_id: sender.cgroup_id,
        }
    }
}

fn read(sender: &Sender) -> Cached {
    let dir = format!("/proc/{}", sender.pid);
    let exe = fs::read_link(format!("{dir}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let cmdline = fs::read(format!("{dir}/cmdline"))
        .ok()
        .filter(|raw| !raw.is_empty())
        .map(|raw| parse_cmdline(&raw));
    Cached {
        comm: sender.comm.clone(),
        exe,
        cmdline,
    }
}

/// NUL-separated argv, bounded, with token values redacted.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let args = raw
        .split(|&b| b == 0)
        .take(MAX_ARGS)
        .map(|arg| {
            String::from_utf8_lossy(arg)
                .chars()
                .take(MAX_ARG_CHARS)
                .collect()
        })
        .collect();
    redact_cmdline(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_is_split_bounded_and_redacted() {
        assert_eq!(
            parse_cmdline(b"curl\0-H\0X-aws-ec2-metadata-token: s3cret\0http://169.254.169.254/\0"),
            [
                "curl",
                "-H",
                "X-aws-ec2-metadata-token: [redacted]",
                "http://169.254.169.254/"
            ]
        );
        let many = "a\0".repeat(100);
        assert_eq!(parse_cmdline(many.as_bytes()).len(), MAX_ARGS);
    }

    #[test]
    fn describes_this_process() {
        let me = std::process::id();
        let comm = fs::read_to_string(format!("/proc/{me}/comm"))
            .unwrap()
            .trim()
            .to_owned();
        let sender = Sender {
            pid: me,
            tid: me,
            uid: 0,
            gid: 0,
            comm,
            cgroup_id: 0,
        };
        let process = ProcCache::default().describe(&sender);
        assert!(process.exe.is_some());
        assert!(process.cmdline.is_some_and(|args| !args.is_empty()));
    }
}
