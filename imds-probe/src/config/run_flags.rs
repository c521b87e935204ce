//! The flags of `imds-probe run`, and how they combine with the config file into the daemon's
//! options: in one place, so every setting follows the same rule (a flag given wins over the
//! file; the file wins over the default) and a test can check each one.

use std::{path::PathBuf, time::Duration};

use crate::{
    capture::{BackendChoice, kernel_log::KernelLogLevel},
    config::Config,
    daemon::{CloudWatchOptions, RunOptions},
    outputs::metrics::Dimensions,
};

/// Each flag's config key is named in its help; see the shipped config/config.toml.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct RunFlags {
    /// Which kernel hook sees the requests. `auto` takes the first that works here.
    /// [capture] backend.
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// Also append events to this file (JSON lines); parent directories are created.
    /// [events] log_file.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Do not write events to stdout. [events] stdout = false.
    #[arg(long)]
    pub no_stdout: bool,
    /// One event per request (default: the first few per caller, class and minute, then
    /// one request_summary per caller and minute). [events] every_request.
    #[arg(long)]
    pub every_request: bool,
    /// How often to check for lost events and report them (seconds).
    /// [capture] loss_report_interval_seconds.
    #[arg(long, value_name = "SECONDS")]
    pub loss_report_interval: Option<u64>,
    /// Where the caller ledger is kept. [ledger] state_dir.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Scrub the value after this word in command lines too (repeatable; added to the
    /// config file's), beside password, passwd, secret, token, api_key, apikey,
    /// access_key, secret_key, credential, auth and private_key.
    /// [attribution] sensitive_words.
    #[arg(long = "sensitive-word", value_name = "WORD")]
    pub sensitive_words: Vec<String>,
    /// Let this group (name or gid) read the log file and the directories made for it
    /// (mode 0640/0750); without it only root can. [events] output_group.
    #[arg(long, value_name = "GROUP")]
    pub output_group: Option<String>,
    /// Log the kernel programs' diagnostics up to this level (a connection left
    /// untracked, a send the hooks cannot read, a record the full ring buffer refused;
    /// each is also counted as loss). Off (the default) costs the programs nothing.
    /// [capture] kernel_log.
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub kernel_log: Option<KernelLogLevel>,
    /// Write per-minute metrics in CloudWatch Embedded Metric Format to this file (never
    /// the events file: see README, "A fleet in CloudWatch"). [metrics] file.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Dimensions of the metrics: `fleet` (none; a fixed number of custom metrics, the
    /// default) or `per-instance` (also by InstanceId; custom metrics grow with the fleet).
    /// [metrics] dimensions.
    #[arg(long, value_enum)]
    pub metrics_dimensions: Option<Dimensions>,
    /// Do not ask the IMDS who this host is (instance id, region, account, AMI). By default
    /// the daemon asks once, with IMDSv2 only, retrying in the background.
    /// [identity] ask_imds = false.
    #[arg(long)]
    pub no_identity: bool,
    /// Ship the events (and metrics) files to CloudWatch Logs from the daemon itself, events
    /// to this log group, one stream per instance. Needs --log-file: the file is the buffer.
    /// [cloudwatch] log_group.
    #[arg(long, value_name = "NAME")]
    pub cloudwatch_log_group: Option<String>,
    /// Log group of the metrics file when shipping (default /imds-probe/metrics).
    /// [cloudwatch] metrics_log_group.
    #[arg(long, value_name = "NAME")]
    pub cloudwatch_metrics_log_group: Option<String>,
    /// CloudWatch Logs endpoint URL instead of the region's (VPC endpoints, tests).
    /// [cloudwatch] endpoint.
    #[arg(long, value_name = "URL")]
    pub cloudwatch_endpoint: Option<String>,
    /// Region to ship to, instead of $AWS_REGION or the instance's own. [cloudwatch] region.
    #[arg(long, value_name = "REGION")]
    pub cloudwatch_region: Option<String>,
}

impl RunFlags {
    /// The daemon's options: each flag given over the file's key, the file's key over its
    /// default. The switches that only turn something off (`--no-stdout`, `--no-identity`)
    /// win when given; `--every-request` turns on what the file may have left off; sensitive
    /// words add up.
    pub fn resolve(self, file: Config) -> RunOptions {
        let mut sensitive_words = file.attribution.sensitive_words;
        sensitive_words.extend(self.sensitive_words);
        let cloudwatch = file.cloudwatch;
        RunOptions {
            backend: self.backend.unwrap_or(file.capture.backend),
            log_file: self.log_file.or(file.events.log_file),
            stdout: !self.no_stdout && file.events.stdout,
            loss_report_interval: Duration::from_secs(
                self.loss_report_interval
                    .unwrap_or(file.capture.loss_report_interval_seconds.get())
                    .max(1),
            ),
            state_dir: self.state_dir.unwrap_or(file.ledger.state_dir),
            ledger_interval: Duration::from_secs(file.ledger.write_interval_seconds.get()),
            max_callers: file.ledger.max_callers.get(),
            every_request: self.every_request || file.events.every_request,
            full_requests_per_minute: file.events.full_requests_per_minute.get(),
            max_file_bytes: file.events.max_file_bytes.get(),
            files_kept: file.events.files_kept.get(),
            sensitive_words,
            output_group: self.output_group.or(file.events.output_group),
            kernel_log: self.kernel_log.unwrap_or(file.capture.kernel_log),
            metrics_file: self.metrics_file.or(file.metrics.file),
            metrics_dimensions: self.metrics_dimensions.unwrap_or(file.metrics.dimensions),
            identity: !self.no_identity && file.identity.ask_imds,
            cloudwatch: self
                .cloudwatch_log_group
                .or(cloudwatch.log_group)
                .map(|log_group| CloudWatchOptions {
                    log_group,
                    metrics_log_group: self
                        .cloudwatch_metrics_log_group
                        .unwrap_or(cloudwatch.metrics_log_group),
                    endpoint: self.cloudwatch_endpoint.or(cloudwatch.endpoint),
                    region: self.cloudwatch_region.or(cloudwatch.region),
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fmt::Debug, path::Path};

    use clap::Parser;

    use super::*;
    use crate::{config::parse, outputs::cloudwatch::DEFAULT_METRICS_LOG_GROUP};

    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        flags: RunFlags,
    }

    fn resolved(file: &str, args: &[&str]) -> RunOptions {
        let config = parse(Path::new("c.toml"), file).unwrap();
        let run = Run::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap_or_else(|error| panic!("{args:?}: {error}"));
        run.flags.resolve(config)
    }

    /// One setting, three ways: neither file nor flag (the default), the file alone, and a flag
    /// over a file that says otherwise.
    fn precedence<T: PartialEq + Debug>(
        get: impl Fn(&RunOptions) -> T,
        default: T,
        (file, from_file): (&str, T),
        (flag, from_flag): (&[&str], T),
    ) {
        assert_eq!(get(&resolved("", &[])), default, "default");
        assert_eq!(get(&resolved(file, &[])), from_file, "{file}");
        assert_eq!(
            get(&resolved(file, flag)),
            from_flag,
            "{flag:?} over {file}"
        );
    }

    #[test]
    fn capture_and_ledger_flags_win_over_the_file() {
        precedence(
            |o| o.backend,
            BackendChoice::Auto,
            ("[capture]\nbackend = \"kprobe\"", BackendChoice::Kprobe),
            (&["--backend", "sk-msg"], BackendChoice::SkMsg),
        );
        precedence(
            |o| o.loss_report_interval,
            Duration::from_secs(10),
            (
                "[capture]\nloss_report_interval_seconds = 30",
                Duration::from_secs(30),
            ),
            (&["--loss-report-interval", "2"], Duration::from_secs(2)),
        );
        precedence(
            |o| o.kernel_log,
            KernelLogLevel::Off,
            ("[capture]\nkernel_log = \"warn\"", KernelLogLevel::Warn),
            (&["--kernel-log", "debug"], KernelLogLevel::Debug),
        );
        precedence(
            |o| o.state_dir.clone(),
            PathBuf::from("/var/lib/imds-probe"),
            ("[ledger]\nstate_dir = \"/a\"", PathBuf::from("/a")),
            (&["--state-dir", "/b"], PathBuf::from("/b")),
        );
        precedence(
            |o| o.sensitive_words.clone(),
            vec![],
            (
                "[attribution]\nsensitive_words = [\"pin\"]",
                vec!["pin".to_owned()],
            ),
            (
                &["--sensitive-word", "otp"],
                vec!["pin".to_owned(), "otp".to_owned()],
            ),
        );
    }

    #[test]
    fn events_flags_win_over_the_file() {
        precedence(
            |o| o.log_file.clone(),
            None,
            ("[events]\nlog_file = \"/a\"", Some(PathBuf::from("/a"))),
            (&["--log-file", "/b"], Some(PathBuf::from("/b"))),
        );
        precedence(
            |o| o.stdout,
            true,
            ("[events]\nstdout = true", true),
            (&["--no-stdout"], false),
        );
        assert!(!resolved("[events]\nstdout = false", &[]).stdout);
        precedence(
            |o| o.every_request,
            false,
            ("[events]\nevery_request = false", false),
            (&["--every-request"], true),
        );
        assert!(resolved("[events]\nevery_request = true", &[]).every_request);
        precedence(
            |o| o.output_group.clone(),
            None,
            ("[events]\noutput_group = \"adm\"", Some("adm".to_owned())),
            (&["--output-group", "cwagent"], Some("cwagent".to_owned())),
        );
    }

    #[test]
    fn metrics_and_identity_flags_win_over_the_file() {
        precedence(
            |o| o.metrics_file.clone(),
            None,
            ("[metrics]\nfile = \"/m\"", Some(PathBuf::from("/m"))),
            (&["--metrics-file", "/n"], Some(PathBuf::from("/n"))),
        );
        precedence(
            |o| o.metrics_dimensions,
            Dimensions::Fleet,
            (
                "[metrics]\ndimensions = \"per-instance\"",
                Dimensions::PerInstance,
            ),
            (&["--metrics-dimensions", "fleet"], Dimensions::Fleet),
        );
        precedence(
            |o| o.identity,
            true,
            ("[identity]\nask_imds = true", true),
            (&["--no-identity"], false),
        );
        assert!(!resolved("[identity]\nask_imds = false", &[]).identity);
    }

    #[test]
    fn cloudwatch_flags_win_over_the_file() {
        let group = |o: &RunOptions| o.cloudwatch.as_ref().map(|c| c.log_group.clone());
        precedence(
            group,
            None,
            ("[cloudwatch]\nlog_group = \"/a\"", Some("/a".to_owned())),
            (&["--cloudwatch-log-group", "/b"], Some("/b".to_owned())),
        );
        // The other keys matter only when shipping, so the cases below ship.
        let shipping = "[cloudwatch]\nlog_group = \"/a\"\n";
        let field = |get: fn(&CloudWatchOptions) -> Option<String>| {
            move |o: &RunOptions| o.cloudwatch.as_ref().and_then(get)
        };
        let with = |key: &str, value: &str| format!("{shipping}{key} = \"{value}\"");
        for (key, flag, get) in [
            (
                "metrics_log_group",
                "--cloudwatch-metrics-log-group",
                (|c| Some(c.metrics_log_group.clone())) as fn(&CloudWatchOptions) -> _,
            ),
            ("endpoint", "--cloudwatch-endpoint", |c| c.endpoint.clone()),
            ("region", "--cloudwatch-region", |c| c.region.clone()),
        ] {
            let from_default = field(get)(&resolved(shipping, &[]));
            assert_eq!(
                from_default,
                (key == "metrics_log_group").then(|| DEFAULT_METRICS_LOG_GROUP.to_owned()),
                "{key}"
            );
            let file = with(key, "from-file");
            assert_eq!(
                field(get)(&resolved(&file, &[])).as_deref(),
                Some("from-file")
            );
            assert_eq!(
                field(get)(&resolved(&file, &[flag, "from-flag"])).as_deref(),
                Some("from-flag")
            );
        }
        assert!(
            resolved("[cloudwatch]\nregion = \"eu-west-1\"", &[])
                .cloudwatch
                .is_none(),
            "no log group, no shipping"
        );
    }
}
