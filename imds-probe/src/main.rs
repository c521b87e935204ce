//! imds-probe's command line. Errors end here, as anyhow reports.

use std::{
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use imds_probe::{
    capture::kernel_log,
    config::{self, run_flags::RunFlags},
    daemon,
    outputs::{
        cloudwatch::{
            DEFAULT_EVENTS_LOG_GROUP, DEFAULT_METRICS_LOG_GROUP,
            agent_config::{self, AgentConfigOptions},
        },
        ledger::store,
    },
    report,
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
    /// Capture IMDS requests, write JSON events and keep the caller ledger.
    ///
    /// Needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN). Sends READY=1
    /// on $NOTIFY_SOCKET once capture has begun; stops cleanly on SIGTERM or SIGINT; SIGHUP
    /// reopens the log file. Flags override the config file.
    Run {
        /// The config file (every key is optional; see the shipped config/config.toml).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        #[command(flatten)]
        flags: RunFlags,
    },
    /// Is it safe to require IMDSv2 here? Reads the ledger (the daemon may run or not).
    ///
    /// Exit code: 0 safe, 1 not_safe, 2 undetermined, 3 error.
    Report {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only the last DURATION (e.g. 30d, 12h).
        #[arg(long, value_name = "DURATION")]
        since: Option<humantime::Duration>,
        /// `safe` needs at least this much watching.
        #[arg(long, value_name = "DURATION", default_value = "7d")]
        min_observed: humantime::Duration,
        /// Where the ledger is (default: the config file's, /var/lib/imds-probe).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// The config file, for its state_dir.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// `report`'s exit code when it cannot answer (0-2 are verdicts).
const REPORT_ERROR: i32 = 3;

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
            EnvFilter::try_from_env("IMDS_PROBE_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info"))
                // `--kernel-log` chooses what the programs write; all of it is shown.
                .add_directive(format!("{}=trace", kernel_log::TARGET).parse()?),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: journald and log files keep escape codes.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Run { config, flags } => {
            let options = flags.resolve(load_config(config.as_deref())?);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(daemon::run(options))
        }
        Command::Cloudwatch { command } => cloudwatch(command),
        Command::Report {
            format,
            since,
            min_observed,
            state_dir,
            config,
        } => {
            let code = match report(format, since, min_observed, state_dir, config.as_deref()) {
                Ok(verdict) => verdict.exit_code(),
                Err(error) => {
                    eprintln!("imds-probe report: {error:#}");
                    REPORT_ERROR
                }
            };
            std::process::exit(code);
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<config::Config> {
    Ok(config::load(
        path.unwrap_or(Path::new(config::DEFAULT_PATH)),
        path.is_some(),
    )?)
}

fn report(
    format: Format,
    since: Option<humantime::Duration>,
    min_observed: humantime::Duration,
    state_dir: Option<PathBuf>,
    config: Option<&Path>,
) -> Result<report::Verdict> {
    let state_dir = match state_dir {
        Some(dir) => dir,
        None => load_config(config)?.ledger.state_dir,
    };
    let data = store::read(&store::path_in(&state_dir))?;
    let report = report::build(
        data.as_ref(),
        &report::Options {
            since: since.map(Into::into),
            min_observed: min_observed.into(),
            now: SystemTime::now(),
        },
    );
    let mut stdout = std::io::stdout().lock();
    match format {
        Format::Table => stdout.write_all(report::table::render(&report).as_bytes())?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut stdout, &report)?;
            stdout.write_all(b"\n")?;
        }
    }
    stdout.flush()?;
    Ok(report.verdict)
}
