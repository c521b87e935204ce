//! One caller of the IMDS as the ledger keeps it: who it is (the key), and what it did.

use serde::{Deserialize, Serialize};

use crate::{
    attribution::{Attribution, cgroup_path::Container},
    outputs::event::Timestamp,
    streams::{classify::Class, probe::Cloud},
};

/// Distinct paths and User-Agents kept per caller: enough to recognise it, bounded.
const MAX_SAMPLE_PATHS: usize = 5;
const MAX_USER_AGENTS: usize = 3;

/// Interpreters whose executable says little: the script they run is part of the key.
const INTERPRETERS: &[&str] = &[
    "python", "node", "nodejs", "java", "ruby", "php", "perl", "bash", "sh", "dash",
];

/// Who a caller is, across restarts and deploys: the program (executable, and the script an
/// interpreter runs), the systemd unit it runs in, and the kind of container. Not the pid,
/// nor the container or pod id, which change with every restart and deploy; the last seen
/// container id is kept beside the key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallerKey {
    pub exe: Option<String>,
    /// For an interpreter: the first argument that is not an option (its script).
    pub script: Option<String>,
    pub systemd_unit: Option<String>,
    /// `docker`, `containerd`, ...: the runtime, not the container.
    pub container_runtime: Option<String>,
}

impl CallerKey {
    pub fn of(who: &Attribution) -> Self {
        let exe = who.process.exe.clone();
        Self {
            script: exe
                .as_deref()
                .filter(|exe| is_interpreter(exe))
                .and_then(|_| script_of(who.process.cmdline.as_deref()?)),
            exe,
            systemd_unit: who.systemd_unit.clone(),
            container_runtime: who
                .container
                .as_ref()
                .map(|c| c.runtime.as_str().to_owned()),
        }
    }
}

pub fn is_interpreter(exe: &str) -> bool {
    let base = exe.rsplit('/').next().unwrap_or(exe);
    INTERPRETERS.iter().any(|name| {
        base.strip_prefix(name)
            .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
    })
}

/// The script an interpreter runs: its first argument that is not an option. Inline code
/// (`python -c`, `node -e`) has none: code is not a name.
fn script_of(cmdline: &[String]) -> Option<String> {
    let mut args = cmdline.iter().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "-e" | "--eval" | "-m" => return None,
            // Options whose value is the next argument.
            "-cp" | "-classpath" | "--class-path" | "-W" | "-X" => {
                args.next();
            }
            "-jar" => return args.next().cloned(),
            a if a.starts_with('-') => {}
            a => return Some(a.to_owned()),
        }
    }
    None
}

/// Requests by class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requests {
    pub imdsv1: u64,
    pub imdsv2: u64,
    pub token: u64,
    pub unknown: u64,
}

impl Requests {
    pub fn add(&mut self, class: Class) {
        let count = match class {
            Class::Imdsv1 => &mut self.imdsv1,
            Class::Imdsv2 => &mut self.imdsv2,
            Class::Token => &mut self.token,
            Class::Unknown => &mut self.unknown,
        };
        *count += 1;
    }

    pub fn merge(&mut self, other: &Self) {
        self.imdsv1 += other.imdsv1;
        self.imdsv2 += other.imdsv2;
        self.token += other.token;
        self.unknown += other.unknown;
    }

    pub fn total(&self) -> u64 {
        self.imdsv1 + self.imdsv2 + self.token + self.unknown
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    #[serde(flatten)]
    pub key: CallerKey,
    pub requests: Requests,
    /// Token-less requests that followed a token request of the same process within seconds:
    /// the token got no answer and the SDK fell back to IMDSv1.
    pub fallback_requests: u64,
    /// A token-less GET of the role credentials, the pattern of a pre-IMDSv2 SDK.
    pub credentials_without_token: bool,
    /// For other clouds' probes: which cloud.
    pub probe_of: Option<Cloud>,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub sample_paths: Vec<String>,
    pub user_agents: Vec<String>,
    /// The last sender's command line (token values already redacted) and user.
    pub cmdline: Option<Vec<String>>,
    pub user: Option<String>,
    /// The last container it ran in.
    pub container: Option<Container>,
}

/// What one request tells the ledger about its caller.
pub struct Request<'a> {
    pub ts: Timestamp,
    pub class: Class,
    pub path: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub probe_of: Option<Cloud>,
    pub fallback: bool,
    pub who: &'a Attribution,
}

const CREDENTIALS_PATH: &str = "/latest/meta-data/iam/security-credentials/";

impl Caller {
    pub fn new(key: CallerKey, ts: Timestamp) -> Self {
        Self {
            key,
            requests: Requests::default(),
            fallback_requests: 0,
            credentials_without_token: false,
            probe_of: None,
            first_seen: ts,
            last_seen: ts,
            sample_paths: Vec::new(),
            user_agents: Vec::new(),
            cmdline: None,
            user: None,
            container: None,
        }
    }

    pub fn record(&mut self, request: &Request<'_>) {
        self.requests.add(request.class);
        self.fallback_requests += u64::from(request.fallback);
        self.last_seen = self.last_seen.max(request.ts);
        self.probe_of = self.probe_of.or(request.probe_of);
        if let Some(path) = request.path {
            self.credentials_without_token |=
                request.class == Class::Imdsv1 && path.starts_with(CREDENTIALS_PATH);
            add_sample(&mut self.sample_paths, path, MAX_SAMPLE_PATHS);
        }
        if let Some(agent) = request.user_agent {
            add_sample(&mut self.user_agents, agent, MAX_USER_AGENTS);
        }
        if request.who.process.cmdline.is_some() {
            self.cmdline.clone_from(&request.who.process.cmdline);
        }
        self.user.clone_from(&request.who.process.user);
        self.container.clone_from(&request.who.container);
    }
}

fn add_sample(samples: &mut Vec<String>, value: &str, max: usize) {
    if samples.len() < max && !samples.iter().any(|s| s == value) {
        samples.push(value.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn an_interpreters_script_is_part_of_the_key() {
        assert!(is_interpreter("/usr/bin/python3.11"));
        assert!(is_interpreter("/usr/bin/node"));
        assert!(!is_interpreter("/usr/bin/pythonista"));
        assert!(!is_interpreter("/usr/local/bin/amazon-ssm-agent"));
        assert_eq!(
            script_of(&args("python3 -u /usr/bin/aws s3 ls")),
            Some("/usr/bin/aws".into())
        );
        assert_eq!(
            script_of(&args("java -cp lib/* -jar app.jar")),
            Some("app.jar".into())
        );
        assert_eq!(script_of(&args("python3 -c import")), None);
        assert_eq!(script_of(&args("node")), None);
    }

    #[test]
    fn samples_are_distinct_and_bounded() {
        let mut samples = Vec::new();
        for i in 0..10 {
            add_sample(&mut samples, &format!("/p{}", i % 7), 5);
            add_sample(&mut samples, "/p0", 5);
        }
        assert_eq!(samples, ["/p0", "/p1", "/p2", "/p3", "/p4"]);
    }
}
