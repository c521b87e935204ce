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
use imds_probe_common::loss::LOSS_COUNTERS;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    attribution::{Attributor, redact::Redactor, source::ProcReader},
    capture::{self, BackendChoice, kernel_log::KernelLogLevel, open_connections, read_loss},
    causes::Causes,
    host::{notify::notify, private_files::PrivateFiles, privileges, system},
    outputs::{
        event::Clock,
        ledger::{Ledger, store, window::Window},
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
}

pub async fn run(options: RunOptions) -> Result<()> {
    // Before anything else: without these, every later step fails with a less useful error.
    privileges::check()?;
    PrivateFiles::restrict_process_umask();
    let files = PrivateFiles::new(options.output_group.as_deref())?;
    let _instance = system::single_instance()?;
    // Start-up reads and parses the kernel's BTF twice (our offset reader, then aya's loader,
    // which parses it even though nothing uses it): megabytes, freed right away. With glibc's
    // sliding threshold the first free raises it, the second parse lands on the heap, and the
    // heap never shrinks back; a fixed threshold gives each big buffer its own mapping that
    // goes back to the kernel when freed (VmHWM 28.7 -> 23.2 MiB on 6.18; see README).
    // SAFETY: mallopt only tunes glibc's allocator; it is called before start-up allocates.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
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
    // Hand back what start-up freed below the mmap threshold (the object, small BTF parts)
    // rather than carry it for the daemon's life.
    // SAFETY: malloc_trim only releases free memory of glibc's allocator.
    unsafe { libc::malloc_trim(0) };
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

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut loss_due = Instant::now() + options.loss_report_interval;
    let mut ledger_due = Instant::now() + options.ledger_interval;
    // Sockets the daemon enrolled itself, whose close it looks for (see `capture::sk_msg`).
    let mut enrolled: Vec<u64> = Vec::new();
    let mut kernel_loss = [0; LOSS_COUNTERS as usize];
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
                    read_loss(&loss, &mut kernel_loss);
                    pipeline.report_loss(kernel_loss);
                }
                if now >= ledger_due {
                    ledger_due = now + options.ledger_interval;
                    read_loss(&loss, &mut kernel_loss);
                    write_ledger(&mut pipeline, &options.state_dir, kernel_loss, false);
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
    drop(ebpf);
    drain(ring.get_mut(), &mut pipeline, None);
    pipeline.finish();
    read_loss(&loss, &mut kernel_loss);
    pipeline.report_loss(kernel_loss);
    write_ledger(&mut pipeline, &options.state_dir, kernel_loss, true);
    pipeline.close();
    outcome
}

/// Writes the ledger and updates the status line. A failed write is logged, not fatal: the
/// next one may succeed, and capture goes on either way.
fn write_ledger(
    pipeline: &mut Pipeline,
    state_dir: &Path,
    kernel_loss: [u64; LOSS_COUNTERS as usize],
    stopped: bool,
) {
    if let Err(error) = pipeline.write_ledger(state_dir, kernel_loss, stopped) {
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
