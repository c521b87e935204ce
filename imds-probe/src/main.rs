//! imds-probe's command line. Errors end here, as anyhow reports.

use std::{io::IsTerminal as _, path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use imds_probe::{
    capture::BackendChoice,
    daemon::{self, CloudWatchOptions, RunOptions},
    outputs::{
        cloudwatch::{
            DEFAULT_EVENTS_LOG_GROUP, DEFAULT_METRICS_LOG_GROUP,
            agent_config::{self, AgentConfigOptions},
        },
        metrics::Dimensions,
    },
};
use tracing_subscriber::EnvFilter;

/// Finds every process that calls the EC2 Instance Metadata Service without a session token
/// (IMDSv1), so it can be fixed before HttpTokens=required is switched on.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture IMDS requests and write one JSON event per request.
    ///
    /// Needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN). Sends READY=1
    /// on $NOTIFY_SOCKET once capture has begun; stops cleanly on SIGTERM or SIGINT.
    Run {
        /// Which kernel hook sees the requests. `auto` takes the first that works here.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// Also append events to this file (JSON lines); parent directories are created.
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
        /// Do not write events to stdout.
        #[arg(long)]
        no_stdout: bool,
        /// How often to check for lost events and report them (seconds).
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        loss_report_interval: u64,
        /// Scrub the value after this word in command lines too (repeatable), beside password,
        /// passwd, secret, token, api_key, apikey, access_key, secret_key, credential, auth
        /// and private_key.
        #[arg(long = "sensitive-word", value_name = "WORD")]
        sensitive_words: Vec<String>,
        /// Let this group (name or gid) read the log file and the directories made for it
        /// (mode 0640/0750); without it only root can.
        #[arg(long, value_name = "GROUP")]
        output_group: Option<String>,
        /// Write per-minute metrics in CloudWatch Embedded Metric Format to this file (never
        /// the events file: see README, "A fleet in CloudWatch").
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
        /// Dimensions of the metrics: `fleet` (none; a fixed number of custom metrics) or
        /// `per-instance` (also by InstanceId; custom metrics grow with the fleet).
        #[arg(long, value_enum, default_value_t = Dimensions::Fleet)]
        metrics_dimensions: Dimensions,
        /// Do not ask the IMDS who this host is (instance id, region, account, AMI). By default
        /// the daemon asks once, with IMDSv2 only, retrying in the background.
        #[arg(long)]
        no_identity: bool,
        /// Ship the events (and metrics) files to CloudWatch Logs from the daemon itself, events
        /// to this log group, one stream per instance. Needs --log-file: the file is the buffer.
        #[arg(long, value_name = "NAME")]
        cloudwatch_log_group: Option<String>,
        /// Log group of the metrics file when shipping.
        #[arg(long, value_name = "NAME", default_value = DEFAULT_METRICS_LOG_GROUP)]
        cloudwatch_metrics_log_group: String,
        /// CloudWatch Logs endpoint URL instead of the region's (VPC endpoints, tests).
        #[arg(long, value_name = "URL")]
        cloudwatch_endpoint: Option<String>,
        /// Region to ship to, instead of $AWS_REGION or the instance's own.
        #[arg(long, value_name = "REGION")]
        cloudwatch_region: Option<String>,
        /// Where the daemon keeps its state (shipping cursors).
        #[arg(long, value_name = "DIR", default_value = "/var/lib/imds-probe")]
        state_dir: PathBuf,
    },
    /// CloudWatch set-up (see README, "A fleet in CloudWatch").
    Cloudwatch {
        #[command(subcommand)]
        command: CloudwatchCommand,
    },
}

#[derive(Subcommand)]
enum CloudwatchCommand {
    /// Print the CloudWatch agent's configuration fragment for our files, for
    /// `amazon-cloudwatch-agent-ctl -a append-config -m ec2 -c file:PATH -s`.
    AgentConfig {
        /// The events file, as given to `run --log-file`.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/var/log/imds-probe/events.jsonl"
        )]
        log_file: PathBuf,
        /// The metrics file, as given to `run --metrics-file`.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/var/log/imds-probe/metrics.jsonl"
        )]
        metrics_file: PathBuf,
        /// Log group of the events; one stream per instance.
        #[arg(long, value_name = "NAME", default_value = DEFAULT_EVENTS_LOG_GROUP)]
        log_group: String,
        /// Log group of the metrics (EMF); one stream per instance.
        #[arg(long, value_name = "NAME", default_value = DEFAULT_METRICS_LOG_GROUP)]
        metrics_log_group: String,
        /// Days the events are kept: one of CloudWatch's values (1, 3, 5, 7, 14, 30, 60, 90,
        /// 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653; -1 = forever).
        #[arg(
            long,
            value_name = "DAYS",
            default_value_t = 30,
            allow_negative_numbers = true
        )]
        retention_days: i32,
        /// Days the raw metrics lines are kept (the metrics themselves live in CloudWatch
        /// Metrics for 15 months whatever this says).
        #[arg(
            long,
            value_name = "DAYS",
            default_value_t = 7,
            allow_negative_numbers = true
        )]
        metrics_retention_days: i32,
    },
}

fn cloudwatch(command: CloudwatchCommand) -> Result<()> {
    match command {
        CloudwatchCommand::AgentConfig {
            log_file,
            metrics_file,
            log_group,
            metrics_log_group,
            retention_days,
            metrics_retention_days,
        } => {
            let fragment = agent_config::render(&AgentConfigOptions {
                events_file: log_file,
                metrics_file,
                events_log_group: log_group,
                metrics_log_group,
                retention_days,
                metrics_retention_days,
            })?;
            println!("{fragment}");
            Ok(())
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("IMDS_PROBE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: journald and log files keep escape codes.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Run {
            backend,
            log_file,
            no_stdout,
            loss_report_interval,
            sensitive_words,
            output_group,
            metrics_file,
            metrics_dimensions,
            no_identity,
            cloudwatch_log_group,
            cloudwatch_metrics_log_group,
            cloudwatch_endpoint,
            cloudwatch_region,
            state_dir,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(daemon::run(RunOptions {
                backend,
                log_file,
                stdout: !no_stdout,
                loss_report_interval: Duration::from_secs(loss_report_interval.max(1)),
                sensitive_words,
                output_group,
                metrics_file,
                metrics_dimensions,
                identity: !no_identity,
                cloudwatch: cloudwatch_log_group.map(|log_group| CloudWatchOptions {
                    log_group,
                    metrics_log_group: cloudwatch_metrics_log_group,
                    endpoint: cloudwatch_endpoint,
                    region: cloudwatch_region,
                    state_dir,
                }),
            })),
        Command::Cloudwatch { command } => cloudwatch(command),
    }
}
