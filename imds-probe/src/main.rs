//! imds-probe's command line. Errors end here, as anyhow reports.

use std::{
    io::{IsTerminal as _, Write as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use imds_probe::{
    capture::{
        BackendChoice,
        kernel_log::{self, KernelLogLevel},
    },
    config,
    daemon::{self, RunOptions},
    outputs::ledger::store,
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
        /// Which kernel hook sees the requests. `auto` takes the first that works here.
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
        /// Also append events to this file (JSON lines); parent directories are created.
        #[arg(long, value_name = "PATH")]
        log_file: Option<PathBuf>,
        /// Do not write events to stdout.
        #[arg(long)]
        no_stdout: bool,
        /// One event per request (default: the first few per caller, class and minute, then
        /// one request_summary per caller and minute).
        #[arg(long)]
        every_request: bool,
        /// How often to check for lost events and report them (seconds).
        #[arg(long, value_name = "SECONDS")]
        loss_report_interval: Option<u64>,
        /// Where the caller ledger is kept.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Scrub the value after this word in command lines too (repeatable; added to the
        /// config file's), beside password, passwd, secret, token, api_key, apikey,
        /// access_key, secret_key, credential, auth and private_key.
        #[arg(long = "sensitive-word", value_name = "WORD")]
        sensitive_words: Vec<String>,
        /// Let this group (name or gid) read the log file and the directories made for it
        /// (mode 0640/0750); without it only root can.
        #[arg(long, value_name = "GROUP")]
        output_group: Option<String>,
        /// Log the kernel programs' diagnostics up to this level (a connection left
        /// untracked, a send the hooks cannot read, a record the full ring buffer refused;
        /// each is also counted as loss). Off (the default) costs the programs nothing.
        #[arg(long, value_enum, value_name = "LEVEL")]
        kernel_log: Option<KernelLogLevel>,
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
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// `report`'s exit code when it cannot answer (0-2 are verdicts).
const REPORT_ERROR: i32 = 3;

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
        Command::Run {
            config,
            backend,
            log_file,
            no_stdout,
            every_request,
            loss_report_interval,
            state_dir,
            sensitive_words,
            output_group,
            kernel_log,
        } => {
            let file = load_config(config.as_deref())?;
            let mut words = file.attribution.sensitive_words;
            words.extend(sensitive_words);
            let options = RunOptions {
                backend: backend.unwrap_or(file.capture.backend),
                log_file: log_file.or(file.events.log_file),
                stdout: !no_stdout && file.events.stdout,
                loss_report_interval: Duration::from_secs(
                    loss_report_interval
                        .unwrap_or(file.capture.loss_report_interval_seconds.get())
                        .max(1),
                ),
                state_dir: state_dir.unwrap_or(file.ledger.state_dir),
                ledger_interval: Duration::from_secs(file.ledger.write_interval_seconds.get()),
                max_callers: file.ledger.max_callers.get(),
                every_request: every_request || file.events.every_request,
                full_requests_per_minute: file.events.full_requests_per_minute.get(),
                max_file_bytes: file.events.max_file_bytes.get(),
                files_kept: file.events.files_kept.get(),
                sensitive_words: words,
                output_group: output_group.or(file.events.output_group),
                kernel_log: kernel_log.unwrap_or(file.capture.kernel_log),
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(daemon::run(options))
        }
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
