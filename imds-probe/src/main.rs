//! imds-probe's command line. Errors end here, as anyhow reports.

use std::{io::IsTerminal as _, path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use imds_probe::{
    capture::{
        BackendChoice,
        kernel_log::{self, KernelLogLevel},
    },
    daemon::{self, RunOptions},
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
        /// Log the kernel programs' diagnostics up to this level (a connection left
        /// untracked, a send the hooks cannot read, a record the full ring buffer refused;
        /// each is also counted as loss). Off costs the programs nothing.
        #[arg(long, value_enum, value_name = "LEVEL", default_value_t = KernelLogLevel::Off)]
        kernel_log: KernelLogLevel,
    },
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
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Run {
            backend,
            log_file,
            no_stdout,
            loss_report_interval,
            sensitive_words,
            output_group,
            kernel_log,
        } => runtime.block_on(daemon::run(RunOptions {
            backend,
            log_file,
            stdout: !no_stdout,
            loss_report_interval: Duration::from_secs(loss_report_interval.max(1)),
            sensitive_words,
            output_group,
            kernel_log,
        })),
    }
}
