//! The caller ledger: per caller, what it sent and what it is, plus every daemon run's window,
//! kept across restarts and reboots in the state directory, so `imds-probe report` can answer
//! "is it safe to require IMDSv2?" (`caller` is one caller and its key, `window` one run,
//! `fallback` spots SDKs that fell back to IMDSv1, `store` reads and writes the file).

pub mod caller;
pub mod fallback;
pub mod store;
pub mod window;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{
    host::identity::Identity,
    outputs::{
        event::RequestEvent,
        ledger::{
            caller::{Caller, CallerKey, Request, Requests},
            fallback::FallbackTracker,
            window::Window,
        },
    },
    streams::classify::Class,
};

/// The file format's version: a newer daemon reads older files; an older one sets a newer
/// file aside rather than misread it.
pub const VERSION: u32 = 1;
/// Windows kept: years of daily restarts. Older ones are dropped and counted.
const MAX_WINDOWS: usize = 4096;

/// What the ledger file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct LedgerData {
    pub version: u32,
    pub windows: Vec<Window>,
    /// Windows dropped to stay within MAX_WINDOWS (the oldest first).
    pub windows_dropped: u64,
    /// Callers dropped to stay within the ledger's bound (`ledger_callers_evicted` in `loss`).
    pub callers_evicted: u64,
    pub callers: Vec<Caller>,
    /// Other clouds' metadata probes, kept apart: they break nothing.
    pub probes: Vec<Caller>,
}

impl Default for LedgerData {
    fn default() -> Self {
        Self {
            version: VERSION,
            windows: Vec::new(),
            windows_dropped: 0,
            callers_evicted: 0,
            callers: Vec::new(),
            probes: Vec::new(),
        }
    }
}

/// The live ledger: the data, indexed by caller key, bounded.
pub struct Ledger {
    data: LedgerData,
    callers: HashMap<CallerKey, usize>,
    probes: HashMap<CallerKey, usize>,
    max_callers: usize,
    fallback: FallbackTracker,
}

impl Ledger {
    pub fn new(data: LedgerData, max_callers: usize) -> Self {
        let index = |list: &[Caller]| {
            list.iter()
                .enumerate()
                .map(|(i, caller)| (caller.key.clone(), i))
                .collect()
        };
        let mut ledger = Self {
            callers: index(&data.callers),
            probes: index(&data.probes),
            data,
            max_callers: max_callers.max(1),
            fallback: FallbackTracker::default(),
        };
        // A smaller bound than the file was written with: trim now, counted like any eviction.
        while ledger.data.callers.len() > ledger.max_callers {
            ledger.evict(false);
        }
        while ledger.data.probes.len() > ledger.max_callers {
            ledger.evict(true);
        }
        ledger
    }

    pub fn data(&self) -> &LedgerData {
        &self.data
    }

    /// Opens this run's window.
    pub fn start_window(&mut self, window: Window) {
        if self.data.windows.len() >= MAX_WINDOWS {
            self.data.windows.remove(0);
            self.data.windows_dropped += 1;
        }
        self.data.windows.push(window);
    }

    /// Brings this run's window up to `now` with its losses so far, and who the host is once
    /// known.
    pub fn update_window(
        &mut self,
        now: std::time::SystemTime,
        lost: u64,
        stopped: bool,
        identity: Option<&Identity>,
    ) {
        if let Some(window) = self.data.windows.last_mut() {
            window.end = crate::outputs::event::Timestamp(now);
            window.lost = lost;
            window.stopped = stopped;
            if let Some(identity) = identity {
                window.identity = Some(identity.clone());
            }
        }
    }

    /// Counts one request; `monotonic_ns` orders a process's requests for fallback detection.
    /// Returns whether the request is a fallback to IMDSv1 (see `fallback`).
    pub fn record(&mut self, event: &RequestEvent, monotonic_ns: u64) -> bool {
        let pid = event.who.process.pid;
        let fallback = self.fallback.observe(pid, event.class, monotonic_ns);
        if event.class == Class::Unknown
            && let Some(window) = self.data.windows.last_mut()
        {
            window.unknown += 1;
        }
        let request = Request {
            ts: event.ts,
            class: event.class,
            path: event.path.as_deref(),
            user_agent: event.user_agent.as_deref(),
            probe_of: event.probe_of,
            fallback,
            who: &event.who,
        };
        let key = CallerKey::of(&event.who);
        let probe = event.probe_of.is_some();
        let index = match self.index(probe).get(&key) {
            Some(&i) => i,
            None => {
                if self.list(probe).len() >= self.max_callers {
                    self.evict(probe);
                }
                let list = self.list_mut(probe);
                list.push(Caller::new(key.clone(), event.ts));
                let i = list.len() - 1;
                self.index_mut(probe).insert(key, i);
                i
            }
        };
        self.list_mut(probe)[index].record(&request);
        fallback
    }

    pub fn callers_evicted(&self) -> u64 {
        self.data.callers_evicted
    }

    /// Requests by class over every caller (not probes), and how many callers sent IMDSv1.
    pub fn totals(&self) -> (Requests, usize) {
        let mut total = Requests::default();
        for caller in &self.data.callers {
            total.merge(&caller.requests);
        }
        let v1_callers = self
            .data
            .callers
            .iter()
            .filter(|c| c.requests.imdsv1 > 0)
            .count();
        (total, v1_callers)
    }

    /// Drops one caller to make room: the least recently seen of those without IMDSv1
    /// requests if there is one (they matter least to the verdict), else the least recently
    /// seen.
    fn evict(&mut self, probe: bool) {
        let list = self.list(probe);
        let oldest = |only_quiet: bool| {
            list.iter()
                .enumerate()
                .filter(|(_, c)| !only_quiet || c.requests.imdsv1 == 0)
                .min_by_key(|(_, c)| c.last_seen)
                .map(|(i, _)| i)
        };
        let Some(victim) = oldest(true).or_else(|| oldest(false)) else {
            return;
        };
        let list = self.list_mut(probe);
        let removed = list.swap_remove(victim);
        let moved = list.get(victim).map(|c| c.key.clone());
        let index = self.index_mut(probe);
        index.remove(&removed.key);
        if let Some(moved) = moved {
            index.insert(moved, victim);
        }
        self.data.callers_evicted += 1;
    }

    fn list(&self, probe: bool) -> &Vec<Caller> {
        if probe {
            &self.data.probes
        } else {
            &self.data.callers
        }
    }

    fn list_mut(&mut self, probe: bool) -> &mut Vec<Caller> {
        if probe {
            &mut self.data.probes
        } else {
            &mut self.data.callers
        }
    }

    fn index(&self, probe: bool) -> &HashMap<CallerKey, usize> {
        if probe { &self.probes } else { &self.callers }
    }

    fn index_mut(&mut self, probe: bool) -> &mut HashMap<CallerKey, usize> {
        if probe {
            &mut self.probes
        } else {
            &mut self.callers
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        attribution::{Attribution, ProcessJson},
        capture::Backend,
        outputs::event::{Context, Remote, Timestamp},
        streams::http::{Parsed, parse_head},
    };

    pub fn who(pid: u32, exe: &str) -> Attribution {
        Attribution {
            process: ProcessJson {
                pid,
                ns_pid: None,
                tid: pid,
                ppid: Some(1),
                comm: "x".into(),
                exe: Some(exe.into()),
                cmdline: Some(vec![exe.into()]),
                uid: 0,
                gid: 0,
                user: Some("root".into()),
                start_time: None,
                cgroup_id: 1,
            },
            parents: Vec::new(),
            cgroup: None,
            systemd_unit: Some("app.service".into()),
            container: None,
        }
    }

    /// A request event as the pipeline makes it, `secs` seconds after the epoch.
    pub fn request(raw: &str, who: Attribution, secs: u64) -> RequestEvent {
        let Parsed::Complete(head) = parse_head(raw.as_bytes()) else {
            panic!("{raw}");
        };
        let class = crate::streams::classify::classify(&head);
        let remote = Remote::new(imds_probe_common::imds::IMDS_IPV4_MAPPED, 80, 2);
        RequestEvent::request(
            head,
            class,
            Context {
                ts: Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
                remote: &remote,
                backend: Backend::SkMsg,
                connection: 1,
                own: false,
                who,
            },
        )
    }

    pub const V1: &str = "GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n";
    pub const V2: &str =
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aws-ec2-metadata-token: t\r\n\r\n";

    #[test]
    fn counts_per_caller_and_keeps_probes_apart() {
        let mut ledger = Ledger::new(LedgerData::default(), 10);
        ledger.record(&request(V1, who(10, "/usr/bin/a"), 1), 1);
        ledger.record(&request(V2, who(11, "/usr/bin/a"), 2), 2);
        ledger.record(&request(V2, who(12, "/usr/bin/b"), 3), 3);
        ledger.record(
            &request(
                "GET /computeMetadata/v1/ HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\n",
                who(13, "/usr/bin/google_guest_agent"),
                4,
            ),
            4,
        );
        let data = ledger.data();
        assert_eq!(data.callers.len(), 2, "pids do not split a caller");
        assert_eq!(data.callers[0].requests.imdsv1, 1);
        assert_eq!(data.callers[0].requests.imdsv2, 1);
        assert_eq!(
            data.callers[0].first_seen.0,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1)
        );
        assert_eq!(
            data.callers[0].last_seen.0,
            SystemTime::UNIX_EPOCH + Duration::from_secs(2)
        );
        assert_eq!(data.probes.len(), 1);
        assert_eq!(
            data.probes[0].probe_of,
            Some(crate::streams::probe::Cloud::Gce)
        );
        assert_eq!(ledger.totals().1, 1);
    }

    #[test]
    fn bounded_eviction_spares_imdsv1_callers_and_is_counted() {
        let mut ledger = Ledger::new(LedgerData::default(), 2);
        ledger.record(&request(V1, who(1, "/v1-caller"), 1), 1);
        ledger.record(&request(V2, who(2, "/old-v2"), 2), 2);
        ledger.record(&request(V2, who(3, "/new-v2"), 3), 3);
        ledger.record(&request(V2, who(4, "/newer-v2"), 4), 4);
        let exes: Vec<_> = ledger
            .data()
            .callers
            .iter()
            .map(|c| c.key.exe.clone().unwrap())
            .collect();
        assert_eq!(exes, ["/v1-caller", "/newer-v2"]);
        assert_eq!(ledger.callers_evicted(), 2);
        // The index still finds the survivors.
        ledger.record(&request(V1, who(5, "/newer-v2"), 5), 5);
        assert_eq!(ledger.data().callers[1].requests.imdsv1, 1);
        assert_eq!(ledger.data().callers.len(), 2);
    }
}
