//! `imds-probe report`: is it safe to require IMDSv2 here? A verdict from the ledger, the
//! callers that would break and what each must change, and what was not seen. Pure: the
//! ledger's data and the time in, the report out (`table` renders it for a person; the JSON
//! is a contract, documented in the README).

pub mod table;

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::{
    attribution::cgroup_path::Container,
    host::identity::Identity,
    outputs::{
        event::Timestamp,
        ledger::{
            LedgerData,
            caller::{Caller, Requests},
        },
    },
    remediation::{SdkGuess, advise},
    streams::probe::Cloud,
};

/// Time between two runs (or from boot to a run) that is not a gap: a restart, or the boot
/// before the unit starts.
pub const GAP_TOLERANCE: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Safe,
    NotSafe,
    Undetermined,
}

impl Verdict {
    /// The exit code: a fleet-wide run counts hosts by it (3 is an error).
    pub const fn exit_code(self) -> i32 {
        match self {
            Self::Safe => 0,
            Self::NotSafe => 1,
            Self::Undetermined => 2,
        }
    }
}

pub struct Options {
    /// Only the last this long.
    pub since: Option<Duration>,
    /// Watched at least this long for `safe`.
    pub min_observed: Duration,
    pub now: SystemTime,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    /// Why the verdict is what it is, one sentence each.
    pub reasons: Vec<String>,
    /// Who the host is (instance id, region, account, AMI), as the latest run that learned it
    /// from the IMDS recorded; null when no run did (not asked, or not on EC2).
    pub host: Option<Identity>,
    pub observed: Observed,
    /// By IMDSv1 requests, most first.
    pub callers: Vec<CallerReport>,
    /// Other clouds' metadata probes: they break nothing.
    pub probes: Vec<CallerReport>,
}

#[derive(Debug, Serialize)]
pub struct Observed {
    /// The first run's start in range, or null when nothing was watched.
    pub since: Option<Timestamp>,
    /// The last run's last write (or stop).
    pub until: Option<Timestamp>,
    /// Time watched: the runs' durations, summed.
    pub seconds: u64,
    pub runs: usize,
    pub gaps: Vec<Gap>,
    /// Requests that may have gone unseen or unattributed (losses), over the runs.
    pub lost: u64,
    /// Requests seen only in part.
    pub unknown: u64,
}

#[derive(Debug, Serialize)]
pub struct Gap {
    pub from: Timestamp,
    pub to: Timestamp,
    pub seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct CallerReport {
    pub exe: Option<String>,
    pub script: Option<String>,
    pub cmdline: Option<Vec<String>>,
    pub user: Option<String>,
    pub systemd_unit: Option<String>,
    pub container: Option<Container>,
    pub requests: Requests,
    pub sdk: Option<SdkGuess>,
    pub fallback: bool,
    pub remediation: String,
    pub probe_of: Option<Cloud>,
    pub user_agents: Vec<String>,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub sample_paths: Vec<String>,
}

impl CallerReport {
    fn of(caller: &Caller) -> Self {
        let advice = advise(caller);
        Self {
            exe: caller.key.exe.clone(),
            script: caller.key.script.clone(),
            cmdline: caller.cmdline.clone(),
            user: caller.user.clone(),
            systemd_unit: caller.key.systemd_unit.clone(),
            container: caller.container.clone(),
            requests: caller.requests,
            sdk: advice.sdk,
            fallback: advice.fallback,
            remediation: if caller.probe_of.is_some() {
                "nothing: another cloud's metadata probe fails on EC2 whatever the setting"
                    .to_owned()
            } else {
                advice.remediation
            },
            probe_of: caller.probe_of,
            user_agents: caller.user_agents.clone(),
            first_seen: caller.first_seen,
            last_seen: caller.last_seen,
            sample_paths: caller.sample_paths.clone(),
        }
    }
}

pub fn build(data: Option<&LedgerData>, options: &Options) -> Report {
    let Some(data) = data else {
        return Report {
            verdict: Verdict::Undetermined,
            reasons: vec![
                "no ledger: the daemon has not run here (or --state-dir points elsewhere)"
                    .to_owned(),
            ],
            host: None,
            observed: observed(&[], options),
            callers: Vec::new(),
            probes: Vec::new(),
        };
    };
    let cutoff = options
        .since
        .and_then(|since| options.now.checked_sub(since))
        .map(Timestamp);
    let in_range = |caller: &&Caller| cutoff.is_none_or(|cutoff| caller.last_seen >= cutoff);
    let mut callers: Vec<_> = data
        .callers
        .iter()
        .filter(in_range)
        .map(CallerReport::of)
        .collect();
    callers.sort_by_key(|c| std::cmp::Reverse((c.requests.imdsv1, c.last_seen)));
    let probes: Vec<_> = data
        .probes
        .iter()
        .filter(in_range)
        .map(CallerReport::of)
        .collect();
    let observed = observed(&data.windows, options);

    let mut reasons = Vec::new();
    let breaking = callers.iter().filter(|c| c.requests.imdsv1 > 0).count();
    if breaking > 0 {
        let requests: u64 = callers.iter().map(|c| c.requests.imdsv1).sum();
        reasons.push(format!(
            "{breaking} caller{} sent {requests} IMDSv1 request{}: {} if HttpTokens=required",
            plural(breaking as u64),
            plural(requests),
            if breaking == 1 {
                "it breaks"
            } else {
                "they break"
            }
        ));
    }
    let incomplete = incompleteness(&observed, options, data);
    let verdict = if breaking > 0 {
        Verdict::NotSafe
    } else if !incomplete.is_empty() {
        Verdict::Undetermined
    } else {
        reasons.push(format!(
            "no IMDSv1 request in {} of watching over {} run{}, nothing lost, nothing unknown",
            human(observed.seconds),
            observed.runs,
            plural(observed.runs as u64)
        ));
        Verdict::Safe
    };
    reasons.extend(incomplete);
    Report {
        verdict,
        reasons,
        host: data.windows.iter().rev().find_map(|w| w.identity.clone()),
        observed,
        callers,
        probes,
    }
}

/// Why what was watched is not enough to call it safe.
fn incompleteness(observed: &Observed, options: &Options, data: &LedgerData) -> Vec<String> {
    let mut reasons = Vec::new();
    if observed.runs == 0 {
        reasons.push("nothing watched in this period".to_owned());
    } else if observed.seconds < options.min_observed.as_secs() {
        reasons.push(format!(
            "watched {} only, less than --min-observed {}",
            human(observed.seconds),
            human(options.min_observed.as_secs())
        ));
    }
    if !observed.gaps.is_empty() {
        let longest = observed.gaps.iter().map(|g| g.seconds).max().unwrap_or(0);
        reasons.push(format!(
            "{} gap{} when the daemon was not watching (longest {})",
            observed.gaps.len(),
            plural(observed.gaps.len() as u64),
            human(longest)
        ));
    }
    if observed.lost > 0 {
        reasons.push(format!(
            "{} request{} may have gone unseen or unattributed (see `loss` events)",
            observed.lost,
            plural(observed.lost)
        ));
    }
    if observed.unknown > 0 {
        reasons.push(format!(
            "{} request{} seen only in part (class unknown)",
            observed.unknown,
            plural(observed.unknown)
        ));
    }
    if data.callers_evicted > 0 {
        reasons.push(format!(
            "{} caller{} dropped from the full ledger (max_callers)",
            data.callers_evicted,
            plural(data.callers_evicted)
        ));
    }
    reasons
}

/// The runs in range, clipped to it, and the gaps between them and up to now.
fn observed(windows: &[crate::outputs::ledger::window::Window], options: &Options) -> Observed {
    let cutoff = options
        .since
        .and_then(|since| options.now.checked_sub(since));
    let mut windows: Vec<_> = windows
        .iter()
        .filter(|w| cutoff.is_none_or(|cutoff| w.end.0 >= cutoff))
        .collect();
    windows.sort_by_key(|w| w.start);
    let clip = |t: SystemTime| cutoff.map_or(t, |cutoff| t.max(cutoff));
    let seconds_between = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap_or_default();
    let mut gaps = Vec::new();
    let mut gap = |from: SystemTime, to: SystemTime| {
        let length = seconds_between(from, to);
        if length > GAP_TOLERANCE {
            gaps.push(Gap {
                from: Timestamp(from),
                to: Timestamp(to),
                seconds: length.as_secs(),
            });
        }
    };
    for pair in windows.windows(2) {
        let (previous, next) = (pair[0], pair[1]);
        let same_boot = previous.boot_id.is_some() && previous.boot_id == next.boot_id;
        let from = match (same_boot, next.boot_time) {
            (true, _) | (false, None) => previous.end.0,
            // Across a reboot, the host was down from the last run to the boot: only the time
            // from boot to the next start was unwatched.
            (false, Some(boot)) => previous.end.0.max(boot.0),
        };
        gap(clip(from), next.start.0);
    }
    if let Some(last) = windows.last() {
        gap(clip(last.end.0), options.now);
    }
    Observed {
        since: windows.first().map(|w| Timestamp(clip(w.start.0))),
        until: windows.last().map(|w| w.end),
        seconds: windows
            .iter()
            .map(|w| seconds_between(clip(w.start.0), w.end.0).as_secs())
            .sum(),
        runs: windows.len(),
        gaps,
        lost: windows.iter().map(|w| w.lost).sum(),
        unknown: windows.iter().map(|w| w.unknown).sum(),
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Seconds as a person reads them: `3d 4h`, `5m 2s`.
pub fn human(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds))
        .to_string()
        .split(' ')
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::ledger::{
        Ledger,
        tests::{V1, V2, request, who},
        window::Window,
    };

    const HOUR: u64 = 3600;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn window(start: u64, end: u64, boot: &str) -> Window {
        Window {
            start: Timestamp(at(start)),
            end: Timestamp(at(end)),
            stopped: true,
            boot_id: Some(boot.into()),
            boot_time: Some(Timestamp(at(start.saturating_sub(10)))),
            backend: "sk_msg".into(),
            lost: 0,
            unknown: 0,
            identity: None,
        }
    }

    fn options(now: u64, min_observed: u64) -> Options {
        Options {
            since: None,
            min_observed: Duration::from_secs(min_observed),
            now: at(now),
        }
    }

    fn ledger(windows: Vec<Window>, requests: &[&str]) -> LedgerData {
        let mut ledger = Ledger::new(LedgerData::default(), 100);
        for (i, raw) in requests.iter().enumerate() {
            ledger.record(
                &request(raw, who(1, "/usr/bin/app"), 100 + i as u64),
                i as u64,
            );
        }
        let mut data = LedgerData {
            callers: ledger.data().callers.clone(),
            ..LedgerData::default()
        };
        data.windows = windows;
        data
    }

    #[test]
    fn only_imdsv2_over_a_long_enough_window_is_safe() {
        let data = ledger(vec![window(0, 8 * 24 * HOUR, "a")], &[V2, V2]);
        let report = build(Some(&data), &options(8 * 24 * HOUR + 5, 7 * 24 * HOUR));
        assert_eq!(report.verdict, Verdict::Safe, "{:?}", report.reasons);
        assert_eq!(report.observed.runs, 1);
        assert_eq!(report.observed.seconds, 8 * 24 * HOUR);
    }

    #[test]
    fn one_imdsv1_request_is_not_safe_whatever_else() {
        let data = ledger(vec![window(0, 60, "a")], &[V2, V1]);
        let report = build(Some(&data), &options(61, 7 * 24 * HOUR));
        assert_eq!(report.verdict, Verdict::NotSafe);
        assert_eq!(report.callers[0].requests.imdsv1, 1);
        assert!(
            report.reasons[0].starts_with("1 caller sent 1 IMDSv1 request"),
            "{:?}",
            report.reasons
        );
        assert_eq!(report.verdict.exit_code(), 1);
    }

    #[test]
    fn too_short_gaps_losses_and_unknowns_are_undetermined() {
        let short = ledger(vec![window(0, 60, "a")], &[V2]);
        let report = build(Some(&short), &options(61, 7 * 24 * HOUR));
        assert_eq!(report.verdict, Verdict::Undetermined);
        assert!(
            report.reasons[0].contains("less than --min-observed 7days"),
            "{:?}",
            report.reasons
        );

        // Same boot, an hour between runs: a gap. Another boot 30 s after its start: none.
        let mut w3 = window(3 * HOUR, 4 * HOUR, "b");
        w3.boot_time = Some(Timestamp(at(3 * HOUR - 30)));
        let gappy = ledger(
            vec![
                window(0, HOUR, "a"),
                window(2 * HOUR, 2 * HOUR + 1, "a"),
                w3,
            ],
            &[V2],
        );
        let report = build(Some(&gappy), &options(4 * HOUR, 0));
        assert_eq!(report.verdict, Verdict::Undetermined);
        assert_eq!(report.observed.gaps.len(), 1, "{:?}", report.observed.gaps);
        assert_eq!(report.observed.gaps[0].seconds, HOUR);

        let mut lossy = window(0, HOUR, "a");
        lossy.lost = 3;
        lossy.unknown = 2;
        let report = build(Some(&ledger(vec![lossy], &[V2])), &options(HOUR, 0));
        assert_eq!(report.verdict, Verdict::Undetermined);
        assert_eq!((report.observed.lost, report.observed.unknown), (3, 2));
        assert_eq!(report.reasons.len(), 2, "{:?}", report.reasons);

        // Not watching now is a gap too.
        let report = build(
            Some(&ledger(vec![window(0, HOUR, "a")], &[V2])),
            &options(2 * HOUR, 0),
        );
        assert_eq!(report.verdict, Verdict::Undetermined);
        assert_eq!(build(None, &options(0, 0)).verdict, Verdict::Undetermined);
    }

    #[test]
    fn since_clips_runs_and_callers() {
        let data = ledger(vec![window(0, 10 * HOUR, "a")], &[V1]);
        let mut opts = options(10 * HOUR, 0);
        opts.since = Some(Duration::from_secs(HOUR));
        let report = build(Some(&data), &opts);
        assert_eq!(report.observed.seconds, HOUR);
        assert!(report.callers.is_empty(), "its last request is older");
        assert_eq!(report.verdict, Verdict::Safe, "{:?}", report.reasons);
    }

    #[test]
    fn the_json_contract_has_its_fields() {
        let data = ledger(vec![window(0, 60, "a")], &[V1]);
        let json = serde_json::to_value(build(Some(&data), &options(61, 0))).unwrap();
        for key in [
            "verdict", "reasons", "host", "observed", "callers", "probes",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        for key in ["since", "seconds", "runs", "gaps", "lost"] {
            assert!(json["observed"].get(key).is_some(), "observed.{key}");
        }
        let caller = &json["callers"][0];
        for key in [
            "exe",
            "systemd_unit",
            "container",
            "requests",
            "sdk",
            "fallback",
            "remediation",
            "first_seen",
            "last_seen",
            "sample_paths",
        ] {
            assert!(caller.get(key).is_some(), "callers[].{key}");
        }
        assert_eq!(caller["requests"]["imdsv1"], 1);
        assert_eq!(json["verdict"], "not_safe");
        assert_eq!(json["host"], serde_json::Value::Null, "never learned");
    }

    fn identity(instance_id: &str) -> Identity {
        Identity {
            instance_id: instance_id.into(),
            region: "eu-west-1".into(),
            account_id: "123456789012".into(),
            image_id: "ami-0abcdef1234567890".into(),
        }
    }

    #[test]
    fn the_host_is_the_latest_run_that_learned_it() {
        let mut learned = window(0, HOUR, "a");
        learned.identity = Some(identity("i-0aaaaaaaaaaaaaaaa"));
        let mut newer = window(2 * HOUR, 3 * HOUR, "a");
        newer.identity = Some(identity("i-0bbbbbbbbbbbbbbbb"));
        // The latest run was off the network the whole time: the one before tells.
        let unknown = window(4 * HOUR, 5 * HOUR, "a");
        let data = ledger(vec![learned, newer, unknown], &[V2]);
        let report = build(Some(&data), &options(5 * HOUR, 0));
        assert_eq!(report.host, Some(identity("i-0bbbbbbbbbbbbbbbb")));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["host"]["instance_id"], "i-0bbbbbbbbbbbbbbbb");
        for key in ["region", "account_id", "image_id"] {
            assert!(json["host"][key].is_string(), "host.{key}");
        }
    }
}
