//! The `run` command: attach, read the ring buffer until told to stop, then detach, drain
//! what is left and flush. One task owns the loaded programs and the reader.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};

#[cfg(feature = "cloudwatch-logs")]
use crate::outputs::cloudwatch::ship::{ShipOptions, Shipper};
use crate::{
    attribution::{Attributor, redact::Redactor, source::ProcReader},
    capture::{self, BackendChoice, kernel_log::KernelLogLevel, open_connections, read_loss},
    causes::Causes,
    host::{
        allocator,
        identity::{self, Identity},
        notify::notify,
        private_files::PrivateFiles,
        privileges, system,
    },
    outputs::{
        event::Clock,
        ledger::{Ledger, store, window::Window},
        loss::KernelLoss,
        metrics::Dimensions,
        sink::{Outputs, WriterThread},
        summary::Limiter,
    },
    pipeline::Pipeline,
};

/// The daemon's one timer, so an idle daemon wakes about once a second. Each tick drains the
/// process records that did not wake the reader (the kernel wakes it for those only once they
/// pile up), looks for the close of sockets the daemon enrolled itself (a look through the
/// socket hash's keys, only while there are such sockets), follows clock steps, reaps exited
/// processes, writes the callers' `request_summary` events, and reports loss and writes the
/// ledger when those are due.
const TICK: Duration = Duration::from_secs(1);

/// How often the metrics file gets a line (on the tick at or after each minute's start).
const METRICS_INTERVAL: Duration = Duration::from_secs(60);

/// What `run` does: the flags over the config file (`config::run_flags`).
#[derive(Debug)]
pub struct RunOptions {
    pub backend: BackendChoice,
    pub log_file: Option<PathBuf>,
    pub stdout: bool,
    pub loss_report_interval: Duration,
    /// Words whose values are scrubbed from command lines, beside the default ones.
    pub sensitive_words: Vec<String>,
    /// The group (name or gid) that may read the files the daemon writes, besides root.
    pub output_group: Option<String>,
    /// Where the ledger lives.
    pub state_dir: PathBuf,
    pub ledger_interval: Duration,
    pub max_callers: usize,
    /// One event per request; else the first few per caller and class a minute, then
    /// summaries.
    pub every_request: bool,
    pub full_requests_per_minute: u32,
    pub max_file_bytes: u64,
    pub files_kept: u32,
    pub kernel_log: KernelLogLevel,
    /// Per-minute EMF metrics go to this file.
    pub metrics_file: Option<PathBuf>,
    pub metrics_dimensions: Dimensions,
    /// Ask the IMDS who this host is (IMDSv2 only).
    pub identity: bool,
    /// Ship the files to CloudWatch Logs from the daemon itself.
    pub cloudwatch: Option<CloudWatchOptions>,
}

/// `run --cloudwatch-*`: the log files go to these log groups.
#[derive(Debug)]
pub struct CloudWatchOptions {
    pub log_group: String,
    pub metrics_log_group: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

const NEEDS_LOG_FILE: &str = "--cloudwatch-log-group (cloudwatch.log_group) needs --log-file (events.log_file): the file is what is shipped, and the buffer while CloudWatch is out of reach";

pub async fn run(options: RunOptions) -> Result<()> {
    // Options that cannot work are refused before anything is loaded.
    if options.cloudwatch.is_some() {
        anyhow::ensure!(
            cfg!(feature = "cloudwatch-logs"),
            "this imds-probe was built without the cloudwatch-logs feature: ship with the CloudWatch agent (`imds-probe cloudwatch agent-config`), or rebuild with it"
        );
        anyhow::ensure!(options.log_file.is_some(), NEEDS_LOG_FILE);
    }
    // Before anything else: without these, every later step fails with a less useful error.
    privileges::check()?;
    PrivateFiles::restrict_process_umask();
    let files = PrivateFiles::new(options.output_group.as_deref())?;
    let _instance = system::single_instance()?;
    allocator::before_start_up();
    let sink = WriterThread::start(Outputs {
        stdout: options.stdout,
        log_file: options.log_file.clone(),
        files,
        max_file_bytes: options.max_file_bytes,
        files_kept: options.files_kept,
    })?;
    let ledger = Ledger::new(
        store::load_or_set_aside(&options.state_dir)?,
        options.max_callers,
    );
    let limiter = (!options.every_request).then(|| Limiter::new(options.full_requests_per_minute));
    let cgroup_root = system::cgroup2_root().ok();
    let redactor = Redactor::new(&options.sensitive_words)?;
    let mut who = Attributor::new(Box::new(ProcReader::new(cgroup_root)), redactor);
    who.seed();
    let mut pipeline = Pipeline::new(Box::new(sink), who, Clock::host(), ledger, limiter);
    if let Some(path) = &options.metrics_file {
        // Rotated like the events file: the agent and the shipper follow renames alike.
        let metrics = WriterThread::start(Outputs {
            stdout: false,
            log_file: Some(path.clone()),
            files,
            max_file_bytes: options.max_file_bytes,
            files_kept: options.files_kept,
        })?;
        pipeline = pipeline.with_metrics(Box::new(metrics), options.metrics_dimensions);
    }
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;

    let capture::Probe {
        backend,
        mut ebpf,
        ring,
        loss,
        kernel_log,
    } = capture::start(options.backend, options.kernel_log)?;
    if let Some(reader) = kernel_log {
        tokio::spawn(reader.run());
    }
    allocator::after_start_up();
    // SAFETY: the RingBuf owns its map fd and returns that same fd from as_raw_fd for as long
    // as it lives, and the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .context("registering the ring buffer with the reactor")?;
    // After attaching, so that every connection is either enrolled or in the scan. Off the
    // start-up path: each /proc/<pid>/net/tcp read walks the kernel's whole established hash
    // (4.5 ms per table on a 24 GiB host, whatever it holds), once per network namespace.
    let mut open_scan = Some(tokio::task::spawn_blocking(open_connections::scan));
    pipeline.start_window(Window::start(SystemTime::now(), &backend.to_string()));
    notify("READY=1").context("sd_notify READY=1")?;
    tracing::info!(
        %backend,
        log_file = ?options.log_file,
        state_dir = %options.state_dir.display(),
        "capturing IMDS requests"
    );
    // After attaching: the daemon's own requests are captured and marked as its own.
    let identity = if options.identity {
        identity::learn(identity::IMDS_ENDPOINT)
    } else {
        identity::unknown()
    };
    #[cfg(feature = "cloudwatch-logs")]
    let mut options = options;
    #[cfg(feature = "cloudwatch-logs")]
    let shipper = match options.cloudwatch.take() {
        Some(cloudwatch) => {
            let shipper = ship(cloudwatch, &options, identity.clone())?;
            pipeline = pipeline.with_unshipped(shipper.unshipped());
            Some(shipper)
        }
        None => None,
    };

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut loss_due = Instant::now() + options.loss_report_interval;
    let mut ledger_due = Instant::now() + options.ledger_interval;
    // Sockets the daemon enrolled itself, whose close it looks for (see `capture::sk_msg`).
    let mut enrolled: Vec<u64> = Vec::new();
    let mut kernel_loss = KernelLoss::default();
    let mut metrics_due = Instant::now() + until_next_minute();
    // An error ends the loop but not the shutdown below: what was captured is still drained,
    // written and accounted for before the error is returned.
    let outcome = loop {
        tokio::select! {
            readable = ring.readable_mut() => match readable {
                Ok(mut guard) => {
                    drain(guard.get_inner_mut(), &mut pipeline, Some(&mut ebpf));
                    guard.clear_ready();
                }
                Err(error) => break Err(anyhow::Error::new(error).context("waiting on the ring buffer")),
            },
            now = tick.tick() => {
                // First: the sends before a close, and the process records before any later
                // send, are in the ring buffer already.
                drain(ring.get_mut(), &mut pipeline, Some(&mut ebpf));
                if !enrolled.is_empty() {
                    for cookie in capture::sk_msg::closed(&ebpf, &mut enrolled) {
                        pipeline.closed_unreported(cookie);
                    }
                }
                pipeline.tick();
                if now >= loss_due {
                    loss_due = now + options.loss_report_interval;
                    read_loss(&loss, Some(&ebpf), &mut kernel_loss);
                    pipeline.report_loss(&kernel_loss);
                }
                if now >= metrics_due {
                    metrics_due = now + until_next_minute();
                    pipeline.flush_metrics(identity.borrow().as_deref());
                }
                if now >= ledger_due {
                    ledger_due = now + options.ledger_interval;
                    read_loss(&loss, Some(&ebpf), &mut kernel_loss);
                    let identity = identity.borrow().clone();
                    write_ledger(&mut pipeline, &options.state_dir, &kernel_loss, false, identity.as_deref());
                }
            }
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reopening the log file");
                pipeline.reopen_outputs();
            }
            scan = async { open_scan.as_mut().unwrap().await }, if open_scan.is_some() => {
                open_scan = None;
                match scan {
                    Ok(scan) => {
                        let watch = capture::watch_open(backend, &mut ebpf, &scan.connections);
                        pipeline.report_open_connections(&scan, backend, &watch.inodes);
                        enrolled = watch.enrolled;
                    }
                    Err(error) => tracing::error!(%error, "scanning for connections open before start failed"),
                }
            }
            _ = terminate.recv() => break Ok(()),
            _ = interrupt.recv() => break Ok(()),
        }
    };

    tracing::info!("stopping: detaching programs and draining the ring buffer");
    // The programs' skip counts go with them.
    read_loss(&loss, Some(&ebpf), &mut kernel_loss);
    drop(ebpf);
    drain(ring.get_mut(), &mut pipeline, None);
    pipeline.finish();
    read_loss(&loss, None, &mut kernel_loss);
    pipeline.report_loss(&kernel_loss);
    // The minute so far, so a stop loses none of it (CloudWatch adds it up per minute).
    pipeline.flush_metrics(identity.borrow().as_deref());
    let known = identity.borrow().clone();
    write_ledger(
        &mut pipeline,
        &options.state_dir,
        &kernel_loss,
        true,
        known.as_deref(),
    );
    pipeline.close();
    // After the files are flushed: the shipper sends what they hold for a moment more.
    #[cfg(feature = "cloudwatch-logs")]
    if let Some(shipper) = shipper {
        shipper.stop();
    }
    outcome
}

#[cfg(feature = "cloudwatch-logs")]
fn ship(
    cloudwatch: CloudWatchOptions,
    options: &RunOptions,
    identity: identity::IdentityWatch,
) -> Result<Shipper> {
    Ok(Shipper::start(
        ShipOptions {
            events_file: options.log_file.clone().context(NEEDS_LOG_FILE)?,
            events_log_group: cloudwatch.log_group,
            metrics_file: options.metrics_file.clone(),
            metrics_log_group: cloudwatch.metrics_log_group,
            endpoint: cloudwatch.endpoint,
            region: cloudwatch.region,
            state_dir: options.state_dir.clone(),
        },
        identity,
    )?)
}

/// Metrics lines fall on the minute, as CloudWatch aggregates them.
fn until_next_minute() -> Duration {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    METRICS_INTERVAL
        - Duration::from_nanos((since_epoch.as_nanos() % METRICS_INTERVAL.as_nanos()) as u64)
}

/// Writes the ledger and updates the status line. A failed write is logged, not fatal: the
/// next one may succeed, and capture goes on either way.
fn write_ledger(
    pipeline: &mut Pipeline,
    state_dir: &Path,
    kernel_loss: &KernelLoss,
    stopped: bool,
    identity: Option<&Identity>,
) {
    if let Err(error) = pipeline.write_ledger(state_dir, kernel_loss, stopped, identity) {
        tracing::error!(error = %Causes(&error), "writing the ledger failed");
    }
    let status = pipeline.status();
    if let Err(error) = notify(&format!("STATUS={status}")) {
        tracing::debug!(%error, "sd_notify STATUS");
    }
}

/// Hands every record in the ring buffer to the pipeline. While the programs are attached
/// (`ebpf`), it also takes the sockets the pipeline gives up out of the socket hash, as soon
/// as it does: a flood of connections is met while it arrives, not after.
fn drain(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline, mut ebpf: Option<&mut Ebpf>) {
    while let Some(record) = ring.next() {
        pipeline.handle(&record);
        drop(record);
        if let Some(ebpf) = ebpf.as_deref_mut() {
            let victims = pipeline.evict_idle_sockets();
            if !victims.is_empty() {
                capture::sk_msg::evict(ebpf, &victims);
            }
        }
    }
}
