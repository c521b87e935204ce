//! A network namespace of the caller's own whose loopback holds the IMDS addresses, so IMDS
//! traffic from inside it never leaves the machine.

use std::{
    ffi::OsStr,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use rustix::process::{Pid, Signal, kill_process};

use crate::{
    Error,
    server::{output, spawn},
};

/// Names are `imdsk-<pid>-<n>`: a namespace whose pid no longer runs was left behind by a
/// run that was killed, and the next one removes it.
const PREFIX: &str = "imdsk-";

/// The addresses on the namespace's loopback: the IMDS on IPv4 and IPv6, and a neighbour of
/// the IPv4 one that must not count as the IMDS.
const ADDRESSES: &[&[&str]] = &[
    &["169.254.169.254/32"],
    &["169.254.169.253/32"],
    &["fd00:ec2::254/128", "nodad"],
];

pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> Result<Self, Error> {
        remove_stale();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        output(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on, Drop deletes it whatever fails next.
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        for address in ADDRESSES {
            ns.ip(&[
                &["addr", "add"],
                &address[..1],
                &["dev", "lo"],
                &address[1..],
            ]
            .concat())?;
        }
        // What everything else rests on: inside, the IMDS addresses are local. The kernel
        // adds an IPv6 address's local route from a work queue, after `ip addr add` returns:
        // on a loaded host it was seen missing at the first look, so it gets two seconds.
        for addr in ["169.254.169.254", "fd00:ec2::254"] {
            let mut tries = 0;
            loop {
                let route = output(
                    Command::new("ip")
                        .args(["-n", &ns.name, "route", "get", addr])
                        .env("LC_ALL", "C"),
                )?;
                if route.trim_start().starts_with("local") {
                    break;
                }
                tries += 1;
                if tries == 40 {
                    return Err(Error::NotLocal {
                        addr,
                        netns: ns.name.clone(),
                        route: route.trim().to_owned(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn ip(&self, args: &[&str]) -> Result<(), Error> {
        output(Command::new("ip").arg("-n").arg(&self.name).args(args)).map(drop)
    }

    /// `program` inside the namespace (`ip netns exec` execs in place, so the child's pid is
    /// the program's pid).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `program args` inside to completion; returns its pid and output (not checked).
    pub fn client(
        &self,
        program: impl AsRef<OsStr>,
        args: &[&str],
    ) -> Result<(u32, std::process::Output), Error> {
        let mut command = self.command(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = spawn(&mut command)?;
        let pid = child.id();
        let output = child
            .wait_with_output()
            .map_err(Error::io("waiting for a client"))?;
        Ok((pid, output))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

/// Kills what still runs inside (it would keep the namespace alive), then deletes it.
fn delete(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some(pid) = pid.parse().ok().and_then(Pid::from_raw) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Namespaces a killed run (SIGKILL, power loss) left behind.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            eprintln!("removing stale namespace {name}");
            delete(name);
        }
    }
}
