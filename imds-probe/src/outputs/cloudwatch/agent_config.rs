//! `imds-probe cloudwatch agent-config`: the CloudWatch agent's configuration fragment that
//! ships the events file and the metrics file, each to a log group of its own, one stream per
//! instance. Appended to the agent's configuration with
//! `amazon-cloudwatch-agent-ctl -a append-config -m ec2 -c file:PATH -s`.

use std::path::PathBuf;

use serde::Serialize;

/// Retention values the agent (and CloudWatch Logs) accept, in days; -1 keeps logs forever.
pub const RETENTION_DAYS: [i32; 23] = [
    -1, 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
];

/// The agent matches this anywhere in a line and takes the first match as the event's time.
/// Our lines start with `{"ts":"2026-11-24T19:50:13.745032Z"`, so the first match is `ts`.
/// Whole seconds, UTC: the agent translates `%f` into a layout of exactly three digits in some
/// versions, which fails on our six; CloudWatch keeps milliseconds at most anyway, and the
/// line itself keeps the microseconds.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

#[derive(Debug, Clone)]
pub struct AgentConfigOptions {
    pub events_file: PathBuf,
    pub metrics_file: PathBuf,
    pub events_log_group: String,
    pub metrics_log_group: String,
    pub retention_days: i32,
    pub metrics_retention_days: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("retention of {0} days is not one CloudWatch Logs accepts: one of {RETENTION_DAYS:?}")]
    Retention(i32),
    #[error("log group name {0:?} is not valid: 1-512 characters of a-z A-Z 0-9 _ - / . #")]
    LogGroup(String),
}

#[derive(Serialize)]
struct Fragment {
    logs: Logs,
}

#[derive(Serialize)]
struct Logs {
    logs_collected: LogsCollected,
}

#[derive(Serialize)]
struct LogsCollected {
    files: Files,
}

#[derive(Serialize)]
struct Files {
    collect_list: Vec<CollectEntry>,
}

#[derive(Serialize)]
struct CollectEntry {
    file_path: String,
    log_group_name: String,
    log_stream_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp_format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<&'static str>,
    retention_in_days: i32,
}

/// The fragment as pretty JSON.
pub fn render(options: &AgentConfigOptions) -> Result<String, AgentConfigError> {
    for days in [options.retention_days, options.metrics_retention_days] {
        if !RETENTION_DAYS.contains(&days) {
            return Err(AgentConfigError::Retention(days));
        }
    }
    for group in [&options.events_log_group, &options.metrics_log_group] {
        if !valid_log_group(group) {
            return Err(AgentConfigError::LogGroup(group.clone()));
        }
    }
    let fragment = Fragment {
        logs: Logs {
            logs_collected: LogsCollected {
                files: Files {
                    collect_list: vec![
                        CollectEntry {
                            file_path: options.events_file.display().to_string(),
                            log_group_name: options.events_log_group.clone(),
                            log_stream_name: "{instance_id}",
                            timestamp_format: Some(TIMESTAMP_FORMAT),
                            timezone: Some("UTC"),
                            retention_in_days: options.retention_days,
                        },
                        // EMF lines carry their own timestamp (`_aws.Timestamp`).
                        CollectEntry {
                            file_path: options.metrics_file.display().to_string(),
                            log_group_name: options.metrics_log_group.clone(),
                            log_stream_name: "{instance_id}",
                            timestamp_format: None,
                            timezone: None,
                            retention_in_days: options.metrics_retention_days,
                        },
                    ],
                },
            },
        },
    };
    Ok(serde_json::to_string_pretty(&fragment).expect("the fragment serialises"))
}

/// CloudWatch Logs' rule for log group names.
pub fn valid_log_group(name: &str) -> bool {
    (1..=512).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-/.#".contains(&b))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::Value;

    use super::*;
    use crate::outputs::{
        event::{LossEvent, Timestamp},
        loss::LossCounts,
    };

    fn options() -> AgentConfigOptions {
        AgentConfigOptions {
            events_file: "/var/log/imds-probe/events.jsonl".into(),
            metrics_file: "/var/log/imds-probe/metrics.jsonl".into(),
            events_log_group: "/imds-probe/events".into(),
            metrics_log_group: "/imds-probe/metrics".into(),
            retention_days: 30,
            metrics_retention_days: 7,
        }
    }

    /// The keys the agent's configuration schema allows in a `collect_list` entry of
    /// `logs.logs_collected.files` (amazon-cloudwatch-agent, translator/config/schema.json;
    /// the entry has `additionalProperties: false`, so any other key fails validation).
    const COLLECT_LIST_KEYS: &[&str] = &[
        "file_path",
        "log_group_name",
        "log_stream_name",
        "log_group_class",
        "multi_line_start_pattern",
        "timestamp_format",
        "timezone",
        "trim_timestamp",
        "encoding",
        "auto_removal",
        "backpressure_mode",
        "blacklist",
        "publish_multi_logs",
        "retention_in_days",
        "filters",
        "service.name",
        "deployment.environment",
    ];

    /// The agent's translation of `timestamp_format` into the pattern it searches lines with
    /// (its TimeFormatRexMap), for the directives the agent knows: a token is a run of digits
    /// of fixed length or a literal character.
    fn agent_pattern(format: &str) -> Vec<Option<char>> {
        let mut tokens = Vec::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                tokens.push(Some(c));
                continue;
            }
            let digits = match chars.next() {
                Some('Y') => 4,
                Some('m' | 'd' | 'H' | 'M' | 'S' | 'y' | 'I') => 2,
                other => panic!("directive %{other:?} not handled by this test"),
            };
            tokens.extend(std::iter::repeat_n(None, digits));
        }
        tokens
    }

    /// Where the agent's pattern first matches `line`, and the text it matched.
    fn first_match<'a>(pattern: &[Option<char>], line: &'a str) -> Option<&'a str> {
        let bytes = line.as_bytes();
        (0..bytes.len().saturating_sub(pattern.len() - 1)).find_map(|start| {
            let candidate = &bytes[start..start + pattern.len()];
            let hit = pattern
                .iter()
                .zip(candidate)
                .all(|(token, &b)| match token {
                    None => b.is_ascii_digit(),
                    Some(c) => b == *c as u8,
                });
            hit.then(|| &line[start..start + pattern.len()])
        })
    }

    #[test]
    fn every_key_is_one_the_agent_allows() {
        let fragment: Value = serde_json::from_str(&render(&options()).unwrap()).unwrap();
        let top: Vec<_> = fragment.as_object().unwrap().keys().collect();
        assert_eq!(top, ["logs"]);
        let logs: Vec<_> = fragment["logs"].as_object().unwrap().keys().collect();
        assert_eq!(logs, ["logs_collected"]);
        let entries = fragment["logs"]["logs_collected"]["files"]["collect_list"]
            .as_array()
            .unwrap();
        assert_eq!(entries.len(), 2);
        for entry in entries {
            for key in entry.as_object().unwrap().keys() {
                assert!(COLLECT_LIST_KEYS.contains(&key.as_str()), "{key}");
            }
            assert!(entry["file_path"].is_string(), "file_path is required");
            let days = entry["retention_in_days"].as_i64().unwrap() as i32;
            assert!(RETENTION_DAYS.contains(&days));
            // The agent resolves {instance_id} itself: one stream per host.
            assert_eq!(entry["log_stream_name"], "{instance_id}");
        }
        assert_eq!(entries[0]["timezone"], "UTC");
        assert_ne!(entries[0]["file_path"], entries[1]["file_path"]);
    }

    #[test]
    fn refuses_retention_and_group_names_the_service_would_refuse() {
        for days in [0, 2, 31, 10_000] {
            let options = AgentConfigOptions {
                retention_days: days,
                ..options()
            };
            assert!(matches!(
                render(&options),
                Err(AgentConfigError::Retention(d)) if d == days
            ));
        }
        for group in ["", "has space", "colon:", &"a".repeat(513)] {
            let options = AgentConfigOptions {
                events_log_group: group.to_owned(),
                ..options()
            };
            assert!(matches!(
                render(&options),
                Err(AgentConfigError::LogGroup(_))
            ));
        }
    }

    #[test]
    fn the_timestamp_pattern_finds_ts_first_in_event_lines() {
        let pattern = agent_pattern(TIMESTAMP_FORMAT);
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_764_011_413_745_032);
        let line = serde_json::to_string(&LossEvent {
            ts: Timestamp(at),
            event: LossEvent::NAME,
            since_last: LossCounts::default(),
            total: LossCounts::default(),
        })
        .unwrap();
        assert_eq!(first_match(&pattern, &line), Some("2025-11-24T19:10:13"));
        // A time earlier in the line would win: `ts` must stay the first key.
        let decoy = line.replacen("{", "{\"x\":\"1999-01-01T00:00:00\",", 1);
        assert_eq!(first_match(&pattern, &decoy), Some("1999-01-01T00:00:00"));
    }
}
