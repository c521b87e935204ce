//! Bounded event volume. Per caller and class, the first requests of each minute are written
//! in full; the rest are counted and written as one `request_summary` event per caller and
//! minute. An agent polling the IMDS every second then costs a few events a minute, not 60.
//! The ledger counts every request either way; `--every-request` turns this off.

use std::collections::HashMap;

use serde::Serialize;

use crate::{
    attribution::cgroup_path::Container,
    outputs::{
        event::{Clock, RequestEvent, Timestamp},
        ledger::caller::{CallerKey, Requests},
    },
    streams::classify::Class,
};

/// A caller's window.
const WINDOW_NS: u64 = 60_000_000_000;
/// Callers limited at once; beyond this a new caller's requests are all written in full
/// (more volume, nothing hidden) until windows end.
const MAX_CALLERS: usize = 4096;
const MAX_PATHS: usize = 5;

#[derive(Debug, Serialize)]
pub struct SummaryEvent {
    pub ts: Timestamp,
    pub event: &'static str,
    /// The window: from its first request to its end (or the daemon's stop).
    pub since: Timestamp,
    pub until: Timestamp,
    /// Requests of the window not written as `imds_request` events, by class.
    pub requests: Requests,
    /// A few of their paths.
    pub sample_paths: Vec<String>,
    pub exe: Option<String>,
    pub script: Option<String>,
    pub systemd_unit: Option<String>,
    pub container: Option<Container>,
    /// The last such request's sender and User-Agent.
    pub pid: u32,
    pub user_agent: Option<String>,
}

impl SummaryEvent {
    pub const NAME: &'static str = "request_summary";
}

struct Slot {
    start_ns: u64,
    since: Timestamp,
    written: [u32; 4],
    summarised: Requests,
    paths: Vec<String>,
    pid: u32,
    user_agent: Option<String>,
    container: Option<Container>,
}

pub struct Limiter {
    full_per_window: u32,
    slots: HashMap<CallerKey, Slot>,
}

impl Limiter {
    pub fn new(full_per_window: u32) -> Self {
        Self {
            full_per_window,
            slots: HashMap::new(),
        }
    }

    /// Whether to write this request in full. A caller's window that ended before it is
    /// summarised into `out` first.
    pub fn admit(
        &mut self,
        event: &RequestEvent,
        now_ns: u64,
        clock: &Clock,
        out: &mut Vec<SummaryEvent>,
    ) -> bool {
        let key = CallerKey::of(&event.who);
        if let Some(slot) = self.slots.get(&key)
            && now_ns.saturating_sub(slot.start_ns) >= WINDOW_NS
        {
            let (key, slot) = self.slots.remove_entry(&key).expect("present");
            out.extend(summary(key, slot, clock.wall(now_ns)));
        }
        if !self.slots.contains_key(&key) && self.slots.len() >= MAX_CALLERS {
            return true;
        }
        let slot = self.slots.entry(key).or_insert_with(|| Slot {
            start_ns: now_ns,
            since: event.ts,
            written: [0; 4],
            summarised: Requests::default(),
            paths: Vec::new(),
            pid: 0,
            user_agent: None,
            container: None,
        });
        let written = &mut slot.written[class_index(event.class)];
        if *written < self.full_per_window {
            *written += 1;
            return true;
        }
        slot.summarised.add(event.class);
        if let Some(path) = &event.path
            && slot.paths.len() < MAX_PATHS
            && !slot.paths.contains(path)
        {
            slot.paths.push(path.clone());
        }
        slot.pid = event.who.process.pid;
        slot.user_agent.clone_from(&event.user_agent);
        slot.container.clone_from(&event.who.container);
        false
    }

    /// Summaries of the windows that have ended by `now_ns` (all of them when `all`, at stop).
    pub fn ended(&mut self, now_ns: u64, all: bool, clock: &Clock) -> Vec<SummaryEvent> {
        let until = clock.wall(now_ns);
        let ended: Vec<CallerKey> = self
            .slots
            .iter()
            .filter(|(_, slot)| all || now_ns.saturating_sub(slot.start_ns) >= WINDOW_NS)
            .map(|(key, _)| key.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|key| {
                let slot = self.slots.remove(&key)?;
                summary(key, slot, until)
            })
            .collect()
    }
}

/// The window's summary, if anything in it went unwritten.
fn summary(key: CallerKey, slot: Slot, until: Timestamp) -> Option<SummaryEvent> {
    (slot.summarised.total() > 0).then_some(SummaryEvent {
        ts: until,
        event: SummaryEvent::NAME,
        since: slot.since,
        until,
        requests: slot.summarised,
        sample_paths: slot.paths,
        exe: key.exe,
        script: key.script,
        systemd_unit: key.systemd_unit,
        container: slot.container,
        pid: slot.pid,
        user_agent: slot.user_agent,
    })
}

const fn class_index(class: Class) -> usize {
    match class {
        Class::Imdsv1 => 0,
        Class::Imdsv2 => 1,
        Class::Token => 2,
        Class::Unknown => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::ledger::tests::{V1, V2, request, who};

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_first_requests_in_full_then_one_summary_per_window() {
        let clock = Clock::host();
        let mut limiter = Limiter::new(3);
        let mut summaries = Vec::new();
        let mut written = 0;
        // 10 requests a second for two minutes, v1 and v2 alternating.
        for i in 0..1200u64 {
            let raw = if i % 2 == 0 { V1 } else { V2 };
            let event = request(raw, who(7, "/usr/bin/agent"), i / 10);
            written += u64::from(limiter.admit(&event, i * S / 10, &clock, &mut summaries));
        }
        summaries.extend(limiter.ended(120 * S, true, &clock));
        assert_eq!(written, 2 * 2 * 3, "3 per class and window");
        assert_eq!(summaries.len(), 2);
        let counted: u64 = summaries.iter().map(|s| s.requests.total()).sum();
        assert_eq!(
            written + counted,
            1200,
            "every request is written or counted"
        );
        assert_eq!(summaries[0].requests.imdsv1, 300 - 3);
        assert_eq!(summaries[0].sample_paths, ["/latest/meta-data/instance-id"]);
        assert_eq!(summaries[0].exe.as_deref(), Some("/usr/bin/agent"));
    }

    #[test]
    fn callers_are_limited_apart_and_quiet_windows_make_no_summary() {
        let clock = Clock::host();
        let mut limiter = Limiter::new(1);
        let mut summaries = Vec::new();
        assert!(limiter.admit(&request(V1, who(1, "/a"), 0), 0, &clock, &mut summaries));
        assert!(limiter.admit(&request(V1, who(2, "/b"), 0), 0, &clock, &mut summaries));
        assert!(!limiter.admit(&request(V1, who(3, "/a"), 0), 1, &clock, &mut summaries));
        let ended = limiter.ended(61 * S, false, &clock);
        assert_eq!(ended.len(), 1, "only /a had requests left unwritten");
        assert_eq!(ended[0].pid, 3);
        assert!(limiter.ended(61 * S, true, &clock).is_empty());
    }
}
