//! One record at a time, in ring buffer order: decode -> reassemble per connection ->
//! classify -> attribute -> queue for the sinks. Synchronous and single-threaded: the order
//! of records is the order of sends, and nothing here waits on I/O except the process
//! source's (/proc) reads. Its parts are given to it (the sink, the attributor's process
//! source, the clock), so a test drives it with record bytes and reads JSON lines back.

use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use crate::{
    attribution::{Attributor, Sender},
    capture::{
        Backend,
        open_connections::{MAX_REPORTED, Scan},
        records::Record,
        socket_budget::SocketBudget,
    },
    host::identity::Identity,
    outputs::{
        event::{Clock, Context, LossEvent, OpenConnectionEvent, Remote, RequestEvent},
        ledger::{Ledger, store, window::Window},
        loss::{KernelLoss, LossCounts},
        metrics::{Dimensions, MinuteCounts},
        sink::{Offer, Sink},
        summary::{Limiter, SummaryEvent},
    },
    streams::{
        classify::classify,
        connections::{Connection, ConnectionTable, MAX_CONNECTIONS, StreamOffsets},
        reassembly::{Item, RequestStream, UnknownReason},
    },
};

/// Bytes of partial request heads held across all connections at most. Each connection may
/// hold 64 KiB, so 16,384 connections could otherwise hold 1 GiB; real IMDS requests are a few
/// hundred bytes, so only a deliberate flood of unfinished heads ever reaches this.
pub const MAX_HELD_HEAD_BYTES: usize = 32 * 1024 * 1024;

pub struct Pipeline {
    connections: ConnectionTable,
    /// The sum of every connection's `RequestStream::held_bytes`.
    held_head_bytes: usize,
    /// The kernel's socket hash, as sk_msg's open and send records show it.
    sockets: SocketBudget,
    out: Emitter,
    items: Vec<Item>,
}

/// The half of the pipeline after reassembly, apart from the connection table so both can
/// be borrowed at once.
struct Emitter {
    who: Attributor,
    /// Keys the hash that turns a connection's kernel identity (a socket cookie, or for the
    /// send hooks a kernel address that must not be disclosed) into the opaque id events carry.
    connection_ids: RandomState,
    /// The daemon's own requests (its identity, the SDK's credentials) are marked as such.
    own_pid: u32,
    clock: Clock,
    sink: Box<dyn Sink>,
    /// Per-minute EMF metrics, where asked for.
    metrics: Option<MetricsOutput>,
    /// What the CloudWatch shipper could not ship, where it runs.
    unshipped: Option<Arc<AtomicU64>>,
    /// User-space counters; the kernel's are merged in when reporting.
    counts: LossCounts,
    reported: LossCounts,
    /// Every request is counted here, whatever the events say.
    ledger: Ledger,
    /// The ledger's eviction count when this run began: the file's count spans every run.
    evicted_before: u64,
    /// None: one event per request (`--every-request`).
    limiter: Option<Limiter>,
    summaries: Vec<SummaryEvent>,
}

impl Pipeline {
    /// `ledger` counts every request; `limiter` bounds the request events (None: one per
    /// request).
    pub fn new(
        sink: Box<dyn Sink>,
        who: Attributor,
        clock: Clock,
        ledger: Ledger,
        limiter: Option<Limiter>,
    ) -> Self {
        Self {
            connections: ConnectionTable::new(MAX_CONNECTIONS),
            held_head_bytes: 0,
            sockets: SocketBudget::default(),
            out: Emitter {
                who,
                connection_ids: RandomState::new(),
                own_pid: std::process::id(),
                clock,
                sink,
                metrics: None,
                unshipped: None,
                counts: LossCounts::default(),
                reported: LossCounts::default(),
                evicted_before: ledger.callers_evicted(),
                ledger,
                limiter,
                summaries: Vec::new(),
            },
            items: Vec::new(),
        }
    }

    /// Also count requests per minute, written by `flush_metrics` to `sink` as EMF.
    pub fn with_metrics(mut self, sink: Box<dyn Sink>, dimensions: Dimensions) -> Self {
        self.out.metrics = Some(MetricsOutput {
            counts: MinuteCounts::default(),
            sink,
            dimensions,
        });
        self
    }

    /// Also report what the CloudWatch shipper counts as unshipped.
    pub fn with_unshipped(mut self, unshipped: Arc<AtomicU64>) -> Self {
        self.out.unshipped = Some(unshipped);
        self
    }

    /// Writes the minute's metrics line (if metrics are on) and starts the next minute.
    pub fn flush_metrics(&mut self, identity: Option<&Identity>) {
        if let Some(metrics) = self.out.metrics.as_mut() {
            let now = self.out.clock.now().0;
            let line = metrics.counts.take_line(now, metrics.dimensions, identity);
            // One line a minute: a full queue or a dead writer is an output error, logged
            // by the sink; the events' own loss accounting is not the place for it.
            if metrics.sink.offer(line) != Offer::Queued {
                tracing::warn!("the metrics line for this minute could not be queued");
            }
        }
    }

    pub fn handle(&mut self, bytes: &[u8]) {
        match Record::try_from(bytes) {
            Ok(Record::Send {
                chunk,
                backend,
                data,
            }) => {
                let sender = Sender::from_kernel(
                    chunk.pid_tgid,
                    chunk.uid_gid,
                    chunk.cgroup_id,
                    &chunk.comm,
                );
                let ts = chunk.header.ts_ns;
                if backend == Backend::SkMsg {
                    self.sockets.used(chunk.cookie);
                }
                let (connection, evicted) = self.connections.entry(chunk.cookie, || Connection {
                    stream: RequestStream::default(),
                    offsets: StreamOffsets::for_backend(backend),
                    remote: Remote::new(chunk.remote_addr, chunk.remote_port, chunk.family),
                    backend,
                    last_sender: sender.clone(),
                    last_seen_ns: ts,
                });
                connection.last_sender = sender;
                connection.last_seen_ns = ts;
                let offset = connection.offsets.offset(chunk.stream_offset);
                tracing::debug!(
                    cookie = chunk.cookie,
                    raw_offset = chunk.stream_offset,
                    offset,
                    len = data.len(),
                    lost = chunk.lost,
                    send_size = chunk.send_size,
                    "send chunk"
                );
                let held_before = connection.stream.held_bytes();
                connection
                    .stream
                    .feed(offset, data, u64::from(chunk.lost), &mut self.items);
                self.held_head_bytes =
                    self.held_head_bytes - held_before + connection.stream.held_bytes();
                if self.held_head_bytes > MAX_HELD_HEAD_BYTES {
                    self.held_head_bytes -= connection.stream.held_bytes();
                    self.out.counts.heads_shed += 1;
                    connection
                        .stream
                        .finish(UnknownReason::HeadsShed, &mut self.items);
                }
                self.out.emit(chunk.cookie, connection, ts, &mut self.items);
                if let Some((cookie, mut old)) = evicted {
                    self.out.counts.connections_evicted += 1;
                    self.held_head_bytes -= old.stream.held_bytes();
                    old.stream.finish(UnknownReason::Evicted, &mut self.items);
                    self.out.emit(cookie, &old, ts, &mut self.items);
                }
            }
            Ok(Record::Close(close)) => self.close_connection(close.cookie, close.header.ts_ns),
            Ok(Record::Open(open)) => self.sockets.used(open.cookie),
            Ok(Record::Exec(exec)) => self.out.who.exec(*exec),
            Ok(Record::Fork(fork)) => self.out.who.fork(fork),
            Ok(Record::Exit(exit)) => self.out.who.exit(exit),
            Err(e) => {
                self.out.counts.decode_errors += 1;
                tracing::debug!("undecodable record: {e}");
            }
        }
    }

    /// Housekeeping, once a second: follows steps of the wall clock (NTP), drops the
    /// processes whose grace period after exit has ended, and writes the `request_summary`
    /// events of the callers' windows that have ended.
    pub fn tick(&mut self) {
        self.out.clock.resync();
        let now = self.out.clock.monotonic_ns();
        self.out.who.reap(now);
        self.out.summarise(now, false);
    }

    /// Emits a `loss` event and a log line if anything was lost since the last report.
    pub fn report_loss(&mut self, kernel: &KernelLoss) {
        self.out.report_loss(kernel);
    }

    /// One event per IMDS connection that was open before capture started, and a warning in
    /// the log for those the backend does not see (`watched`: the inodes of those it does).
    pub fn report_open_connections(
        &mut self,
        scan: &Scan,
        backend: Backend,
        watched: &HashSet<u64>,
    ) {
        self.out.report_open_connections(scan, backend, watched);
    }

    /// The connection `cookie` closed a moment ago and no program said so: the daemon found
    /// out itself (`capture::sk_msg::closed`).
    pub fn closed_unreported(&mut self, cookie: u64) {
        self.close_connection(cookie, self.out.clock.monotonic_ns());
    }

    /// The connection `cookie` closed at `ts_ns`: a head in flight is `unknown`.
    fn close_connection(&mut self, cookie: u64, ts_ns: u64) {
        tracing::debug!(cookie, "close");
        self.sockets.forget(cookie);
        self.end_connection(cookie, ts_ns, UnknownReason::IncompleteAtClose);
    }

    /// Chooses the sockets to take out of the kernel's socket hash so that new connections
    /// find room there (`SocketBudget`), counts them, and ends their streams here: a head in
    /// flight on one is `unknown` (`evicted`). Returns their cookies for the kernel.
    pub fn evict_idle_sockets(&mut self) -> Vec<u64> {
        let victims = self.sockets.over_budget();
        if victims.is_empty() {
            return victims;
        }
        let now = self.out.clock.monotonic_ns();
        for &cookie in &victims {
            self.end_connection(cookie, now, UnknownReason::Evicted);
        }
        self.out.counts.sockets_evicted += victims.len() as u64;
        tracing::debug!(
            count = victims.len(),
            left = self.sockets.len(),
            "evicting idle sockets"
        );
        victims
    }

    fn end_connection(&mut self, cookie: u64, ts_ns: u64, reason: UnknownReason) {
        if let Some(mut connection) = self.connections.remove(cookie) {
            self.held_head_bytes -= connection.stream.held_bytes();
            connection.stream.finish(reason, &mut self.items);
            self.out.emit(cookie, &connection, ts_ns, &mut self.items);
        }
    }

    /// The daemon is stopping: heads still in flight become `unknown`, and every window of
    /// the event limiter is summarised.
    pub fn finish(&mut self) {
        let now = self.out.clock.monotonic_ns();
        self.held_head_bytes = 0;
        for (cookie, mut connection) in self.connections.drain() {
            connection
                .stream
                .finish(UnknownReason::IncompleteAtShutdown, &mut self.items);
            self.out.emit(cookie, &connection, now, &mut self.items);
        }
        self.out.summarise(now, true);
    }

    pub fn close(mut self) {
        self.out.sink.close();
        if let Some(metrics) = self.out.metrics.as_mut() {
            metrics.sink.close();
        }
    }

    /// SIGHUP: the log file is opened again (logrotate moved it).
    pub fn reopen_outputs(&self) {
        self.out.sink.reopen();
    }

    /// Opens this run's observation window in the ledger.
    pub fn start_window(&mut self, window: Window) {
        self.out.ledger.start_window(window);
    }

    /// Brings this run's window up to now (with the host's identity, once known) and writes
    /// the ledger (`stopped`: at a clean stop).
    pub fn write_ledger(
        &mut self,
        state_dir: &std::path::Path,
        kernel: &KernelLoss,
        stopped: bool,
        identity: Option<&Identity>,
    ) -> Result<(), store::StoreError> {
        let lost = self.out.total_loss(kernel).unseen();
        let now = self.out.clock.now().0;
        self.out.ledger.update_window(now, lost, stopped, identity);
        store::write(state_dir, self.out.ledger.data())
    }

    /// The line `systemctl status` shows (sd_notify STATUS=).
    pub fn status(&self) -> String {
        let (requests, v1_callers) = self.out.ledger.totals();
        format!(
            "IMDSv1 callers: {v1_callers}; requests: imdsv1 {}, imdsv2 {}, token {}, unknown {}; lost: {}",
            requests.imdsv1,
            requests.imdsv2,
            requests.token,
            requests.unknown,
            self.out.reported.unseen()
        )
    }
}

struct MetricsOutput {
    counts: MinuteCounts,
    sink: Box<dyn Sink>,
    dimensions: Dimensions,
}

impl Emitter {
    fn emit(&mut self, cookie: u64, connection: &Connection, ts: u64, items: &mut Vec<Item>) {
        for item in items.drain(..) {
            let ctx = Context {
                ts: self.clock.wall(ts),
                remote: &connection.remote,
                backend: connection.backend,
                connection: self.connection_ids.hash_one(cookie),
                own: connection.last_sender.pid == self.own_pid,
                who: self.who.describe(&connection.last_sender, &self.clock),
            };
            let event = match item {
                Item::Request(head) => {
                    let class = classify(&head);
                    RequestEvent::request(head, class, ctx)
                }
                Item::Unknown(reason) => RequestEvent::unknown(reason, ctx),
            };
            // The daemon's own requests are not a caller's: they never count against the
            // verdict, nor in the metrics.
            if !event.own {
                let fallback = self.ledger.record(&event, ts);
                if let Some(metrics) = self.metrics.as_mut() {
                    let caller = (&event.who.process.exe, &event.who.systemd_unit);
                    metrics.counts.request(
                        event.class,
                        fallback,
                        self.connection_ids.hash_one(caller),
                    );
                }
            }
            let full = match self.limiter.as_mut() {
                Some(limiter) => limiter.admit(&event, ts, &self.clock, &mut self.summaries),
                None => true,
            };
            self.write_summaries();
            if full {
                self.write(&event);
            }
        }
    }

    fn summarise(&mut self, now_ns: u64, all: bool) {
        if let Some(limiter) = self.limiter.as_mut() {
            let ended = limiter.ended(now_ns, all, &self.clock);
            self.summaries.extend(ended);
            self.write_summaries();
        }
    }

    fn write_summaries(&mut self) {
        let summaries = std::mem::take(&mut self.summaries);
        for summary in &summaries {
            self.write(summary);
        }
        // The buffer is reused: no allocation per request.
        self.summaries = summaries;
        self.summaries.clear();
    }

    fn write<T: serde::Serialize>(&mut self, event: &T) {
        match serde_json::to_vec(event) {
            Ok(line) => match self.sink.offer(line) {
                Offer::Queued => {}
                Offer::Full => self.counts.queue_full += 1,
                Offer::WriterGone => {
                    if self.counts.writer_gone == 0 {
                        tracing::error!(
                            "the event writer thread has stopped: events are no longer written"
                        );
                    }
                    self.counts.writer_gone += 1;
                }
            },
            Err(e) => {
                self.counts.output_errors += 1;
                tracing::error!("serialising an event failed: {e}");
            }
        }
    }

    fn report_open_connections(&mut self, scan: &Scan, backend: Backend, watched: &HashSet<u64>) {
        let mut unwatched = 0usize;
        for open in &scan.connections {
            let remote = Remote::new(open.socket.remote, open.socket.port, open.socket.family);
            let event = OpenConnectionEvent {
                ts: self.clock.now(),
                event: OpenConnectionEvent::NAME,
                backend,
                watched: watched.contains(&open.socket.inode),
                remote: remote.endpoint,
                socket_family: remote.family,
                who: self.who.describe_pid(open.pid, &self.clock),
            };
            unwatched += usize::from(!event.watched);
            self.write(&event);
        }
        if !scan.connections.is_empty() {
            tracing::info!(
                count = scan.connections.len() + scan.not_reported,
                watched = watched.len(),
                %backend,
                "connections to the IMDS were open before capture started (events: {}); a request in flight on one may come out unknown",
                OpenConnectionEvent::NAME
            );
        }
        if scan.not_reported > 0 {
            tracing::warn!(
                not_reported = scan.not_reported,
                limit = MAX_REPORTED,
                "more connections to the IMDS were open before capture started than are reported; the rest are neither reported nor enrolled"
            );
        }
        if unwatched > 0 {
            tracing::warn!(
                unwatched,
                %backend,
                "connections to the IMDS that were open before capture started are not watched (events {} with watched=false name their processes): restart those processes, or run with --backend fentry",
                OpenConnectionEvent::NAME
            );
        }
    }

    /// Everything lost since this run began, the kernel's `kernel` counts merged in.
    fn total_loss(&self, kernel: &KernelLoss) -> LossCounts {
        let mut total = self.counts;
        total.processes_evicted = self.who.evicted();
        total.ledger_callers_evicted = self.ledger.callers_evicted() - self.evicted_before;
        total.set_kernel(kernel);
        total.output_errors += self.sink.output_errors();
        if let Some(unshipped) = &self.unshipped {
            total.cloudwatch_unshipped = unshipped.load(Ordering::Relaxed);
        }
        total
    }

    /// Emits a `loss` event and a log line if anything was lost since the last report.
    fn report_loss(&mut self, kernel: &KernelLoss) {
        let total = self.total_loss(kernel);
        let since_last = total.since(&self.reported);
        if since_last.is_zero() {
            return;
        }
        tracing::warn!(?since_last, ?total, "events were lost");
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.counts.lost(since_last.sum());
        }
        self.reported = total;
        self.write(&LossEvent {
            ts: self.clock.now(),
            event: LossEvent::NAME,
            since_last,
            total,
        });
    }
}

#[cfg(test)]
mod golden;
