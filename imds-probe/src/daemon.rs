//! The `run` command: attach, read the ring buffer until told to stop, then detach, drain
//! what is left and flush. One task owns the loaded programs and the reader.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    attribution::Attributor,
    backend::{self, BackendChoice, read_loss},
    notify::notify,
    pipeline::Pipeline,
    sink::{Outputs, Sink},
};

pub struct RunOptions {
    pub backend: BackendChoice,
    pub log_file: Option<PathBuf>,
    pub stdout: bool,
    pub loss_report_interval: Duration,
}

pub async fn run(options: RunOptions) -> Result<()> {
    let sink = Sink::start(Outputs {
        stdout: options.stdout,
        log_file: options.log_file.clone(),
    })?;
    let cgroup_root = crate::system::cgroup2_root().ok();
    let mut pipeline = Pipeline::new(sink, Attributor::new(cgroup_root));
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let backend::Probe {
        backend,
        ebpf,
        ring,
        loss,
    } = backend::start(options.backend)?;
    // SAFETY: the RingBuf owns its map fd and returns that same fd from as_raw_fd for as long
    // as it lives, and the AsyncFd owns the RingBuf.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("registering the ring buffer with the reactor: {e}"))?;
    notify("READY=1").context("sd_notify READY=1")?;
    tracing::info!(%backend, log_file = ?options.log_file, "capturing IMDS requests");

    let mut loss_tick = tokio::time::interval(options.loss_report_interval);
    loop {
        tokio::select! {
            readable = ring.readable_mut() => {
                let mut guard = readable.context("waiting on the ring buffer")?;
                let ring = guard.get_inner_mut();
                while let Some(record) = ring.next() {
                    pipeline.handle(&record);
                }
                guard.clear_ready();
            }
            _ = loss_tick.tick() => pipeline.report_loss(read_loss(&loss)),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }

    tracing::info!("stopping: detaching programs and draining the ring buffer");
    drop(ebpf);
    let ring = ring.get_mut();
    while let Some(record) = ring.next() {
        pipeline.handle(&record);
    }
    pipeline.finish();
    pipeline.report_loss(read_loss(&loss));
    pipeline.close();
    Ok(())
}
