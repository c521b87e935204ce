//! `/etc/imds-probe/config.toml`: every setting of `imds-probe run`, each with a default (the
//! shipped `config/config.toml` lists them all, commented). Flags override the file. An
//! unknown key or a bad value is an error naming the file, the line and the key, and the
//! daemon does not start: a typo must not silently leave a default in force. How the flags and
//! the file combine is `run_flags`.

pub mod run_flags;

use std::{
    num::{NonZeroU32, NonZeroU64, NonZeroUsize},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    capture::{BackendChoice, kernel_log::KernelLogLevel},
    outputs::{cloudwatch::DEFAULT_METRICS_LOG_GROUP, metrics::Dimensions},
};

pub const DEFAULT_PATH: &str = "/etc/imds-probe/config.toml";

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub capture: Capture,
    pub attribution: AttributionSettings,
    pub events: Events,
    pub ledger: LedgerSettings,
    pub metrics: MetricsSettings,
    pub identity: IdentitySettings,
    pub cloudwatch: CloudWatchSettings,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionSettings {
    /// Words whose values are scrubbed from command lines, beside the built-in ones.
    pub sensitive_words: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capture {
    pub backend: BackendChoice,
    pub loss_report_interval_seconds: NonZeroU64,
    pub kernel_log: KernelLogLevel,
}

impl Default for Capture {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            loss_report_interval_seconds: NonZeroU64::new(10).unwrap(),
            kernel_log: KernelLogLevel::Off,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Events {
    pub stdout: bool,
    pub log_file: Option<PathBuf>,
    /// The group (name or gid) that may read the log file, besides root.
    pub output_group: Option<String>,
    /// One event per request, instead of the first few per caller and class a minute plus a
    /// `request_summary`.
    pub every_request: bool,
    pub full_requests_per_minute: NonZeroU32,
    /// The log file is rotated (renamed to `.1`, `.1` to `.2`, ...) before it passes this.
    pub max_file_bytes: NonZeroU64,
    /// Rotated files kept besides the live one.
    pub files_kept: NonZeroU32,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            stdout: true,
            log_file: None,
            output_group: None,
            every_request: false,
            full_requests_per_minute: NonZeroU32::new(10).unwrap(),
            max_file_bytes: NonZeroU64::new(100 * 1024 * 1024).unwrap(),
            files_kept: NonZeroU32::new(5).unwrap(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    pub state_dir: PathBuf,
    pub write_interval_seconds: NonZeroU64,
    pub max_callers: NonZeroUsize,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/imds-probe"),
            write_interval_seconds: NonZeroU64::new(5).unwrap(),
            max_callers: NonZeroUsize::new(10_000).unwrap(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Per-minute EMF metrics go to this file; none by default.
    pub file: Option<PathBuf>,
    pub dimensions: Dimensions,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySettings {
    /// Ask the IMDS (IMDSv2 only) who this host is.
    pub ask_imds: bool,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self { ask_imds: true }
    }
}

/// Shipping from the daemon itself; off unless `log_group` is set.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloudWatchSettings {
    pub log_group: Option<String>,
    pub metrics_log_group: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

impl Default for CloudWatchSettings {
    fn default() -> Self {
        Self {
            log_group: None,
            metrics_log_group: DEFAULT_METRICS_LOG_GROUP.to_owned(),
            endpoint: None,
            region: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}, key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

/// Reads the config file. The default path may be absent (defaults then); a path given
/// explicitly must exist.
pub fn load(path: &Path, explicit: bool) -> Result<Config, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(Config::default()),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    toml::from_str(text).map_err(|error| {
        let start = error.span().map_or(0, |span| span.start).min(text.len());
        let line = text[..start].matches('\n').count() + 1;
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            key: key_on_line(text.lines().nth(line - 1).unwrap_or("")),
            message: error.message().trim().to_owned(),
        }
    })
}

/// The key a line sets (`key = value`), or the table it opens (`[table]`).
fn key_on_line(line: &str) -> String {
    let line = line.trim();
    match line.split_once('=') {
        Some((key, _)) => key.trim().trim_matches('"').to_owned(),
        None => line.trim_matches(['[', ']']).trim().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> (usize, String, String) {
        match parse(Path::new("/etc/x.toml"), text) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let shipped = include_str!("../../config/config.toml");
        assert_eq!(
            parse(Path::new("config.toml"), shipped).unwrap(),
            Config::default()
        );
        // Every key is in it, uncommented or (for those without a default) commented.
        for key in [
            "backend",
            "loss_report_interval_seconds",
            "kernel_log",
            "stdout",
            "log_file",
            "output_group",
            "sensitive_words",
            "every_request",
            "full_requests_per_minute",
            "max_file_bytes",
            "files_kept",
            "state_dir",
            "write_interval_seconds",
            "max_callers",
            "file",
            "dimensions",
            "ask_imds",
            "log_group",
            "metrics_log_group",
            "endpoint",
            "region",
        ] {
            assert!(
                shipped.lines().any(|line| line
                    .trim_start_matches("# ")
                    .starts_with(&format!("{key} ="))),
                "{key} missing"
            );
        }
    }

    #[test]
    fn values_are_read() {
        let config = parse(
            Path::new("c.toml"),
            "[capture]\nbackend = \"sk-msg\"\n[events]\nlog_file = \"/var/log/x.jsonl\"\nevery_request = true\n",
        )
        .unwrap();
        assert_eq!(config.capture.backend, BackendChoice::SkMsg);
        assert_eq!(
            config.events.log_file.as_deref(),
            Some(Path::new("/var/log/x.jsonl"))
        );
        assert!(config.events.every_request);
        assert_eq!(config.ledger, LedgerSettings::default());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_line_and_key() {
        let (line, key, message) = invalid("[events]\nstdout = true\nmax_file_byte = 5\n");
        assert_eq!((line, key.as_str()), (3, "max_file_byte"));
        assert!(message.contains("unknown field"), "{message}");
        let (line, key, _) = invalid("[ledger]\n\nmax_callers = 0\n");
        assert_eq!((line, key.as_str()), (3, "max_callers"));
        let (line, key, _) = invalid("[capture]\nbackend = \"ebpf\"\n");
        assert_eq!((line, key.as_str()), (2, "backend"));
        let (line, key, _) = invalid("[capture]\nloss_report_interval_seconds = \"10\"\n");
        assert_eq!((line, key.as_str()), (2, "loss_report_interval_seconds"));
        let (line, key, _) = invalid("[output]\n");
        assert_eq!((line, key.as_str()), (1, "output"));
        let error = parse(Path::new("/etc/x.toml"), "[events]\nstdout = 1\n").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("/etc/x.toml, line 2, key `stdout`: "),
            "{error}"
        );
    }

    #[test]
    fn an_absent_default_file_is_the_defaults_an_absent_named_one_an_error() {
        let missing = Path::new("/nonexistent/imds-probe.toml");
        assert_eq!(load(missing, false).unwrap(), Config::default());
        assert!(matches!(load(missing, true), Err(ConfigError::Read { .. })));
    }
}
