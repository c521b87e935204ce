//! Everything that was not delivered, counted where it happened: the kernel side's per-CPU
//! counters and user space's own. Reported as `loss` events and in the daemon's log whenever
//! a count moves.

use serde::Serialize;

/// What the kernel side lost, as last read.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelLoss {
    /// The programs' own counters, indexed as in `imds_probe_common::loss`.
    pub counters: [u64; imds_probe_common::loss::LOSS_COUNTERS as usize],
    /// Runs of the programs the kernel skipped (`capture::missed_runs`).
    pub program_runs_missed: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LossCounts {
    /// Kernel: send records that did not fit in the ring buffer.
    pub ring_buffer_full: u64,
    /// Kernel: close records that did not fit in the ring buffer.
    pub ring_buffer_full_close: u64,
    /// Kernel: sends larger than the capture limit; their tail was not captured.
    pub send_truncated: u64,
    /// Kernel (send hooks): sends whose bytes sit in kernel pages (sendfile/splice on 6.5+),
    /// which a hook at tcp_sendmsg's entry cannot read.
    pub send_unreadable: u64,
    /// Kernel: IMDS connections that could not be tracked (tables full).
    pub connections_untracked: u64,
    /// Kernel: reading a send's bytes failed.
    pub read_failed: u64,
    /// Kernel: exec/fork/exit records that did not fit in the ring buffer (attribution of
    /// the processes concerned falls back to /proc).
    pub ring_buffer_full_process: u64,
    /// Kernel: runs of our programs that the kernel skipped (a send or close not seen),
    /// from the programs' `recursion_misses`.
    pub program_runs_missed: u64,
    /// User space: records that did not decode.
    pub decode_errors: u64,
    /// User space: connections dropped from a full connection table.
    pub connections_evicted: u64,
    /// sk_msg: idle sockets taken out of the socket hash to keep room for new connections;
    /// their later sends are not seen (see `capture::socket_budget`).
    pub sockets_evicted: u64,
    /// User space: partial request heads given up because all connections together held
    /// `MAX_HELD_HEAD_BYTES` (32 MiB); each is an `unknown` event with reason `heads_shed`.
    pub heads_shed: u64,
    /// User space: processes dropped from a full process table.
    pub processes_evicted: u64,
    /// User space: events dropped because the output queue was full.
    pub queue_full: u64,
    /// User space: events that failed to write to an output.
    pub output_errors: u64,
    /// User space: events dropped because the writer thread had stopped (it panicked).
    pub writer_gone: u64,
    /// User space: callers dropped from the full ledger (their counts are gone).
    pub ledger_callers_evicted: u64,
    /// Shipping: lines CloudWatch Logs refused (too old, too new, past retention) or that no
    /// log event can hold. A network outage is not a loss: the file keeps them.
    pub cloudwatch_unshipped: u64,
}

impl LossCounts {
    /// What moved since `earlier`. Saturating: a counter that went back (a kernel counter read
    /// that failed once, or a reset) reports nothing rather than an underflow.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            ring_buffer_full: self
                .ring_buffer_full
                .saturating_sub(earlier.ring_buffer_full),
            ring_buffer_full_close: self
                .ring_buffer_full_close
                .saturating_sub(earlier.ring_buffer_full_close),
            send_truncated: self.send_truncated.saturating_sub(earlier.send_truncated),
            send_unreadable: self.send_unreadable.saturating_sub(earlier.send_unreadable),
            connections_untracked: self
                .connections_untracked
                .saturating_sub(earlier.connections_untracked),
            read_failed: self.read_failed.saturating_sub(earlier.read_failed),
            ring_buffer_full_process: self
                .ring_buffer_full_process
                .saturating_sub(earlier.ring_buffer_full_process),
            program_runs_missed: self
                .program_runs_missed
                .saturating_sub(earlier.program_runs_missed),
            decode_errors: self.decode_errors.saturating_sub(earlier.decode_errors),
            connections_evicted: self
                .connections_evicted
                .saturating_sub(earlier.connections_evicted),
            sockets_evicted: self.sockets_evicted.saturating_sub(earlier.sockets_evicted),
            heads_shed: self.heads_shed.saturating_sub(earlier.heads_shed),
            processes_evicted: self
                .processes_evicted
                .saturating_sub(earlier.processes_evicted),
            queue_full: self.queue_full.saturating_sub(earlier.queue_full),
            output_errors: self.output_errors.saturating_sub(earlier.output_errors),
            writer_gone: self.writer_gone.saturating_sub(earlier.writer_gone),
            ledger_callers_evicted: self
                .ledger_callers_evicted
                .saturating_sub(earlier.ledger_callers_evicted),
            cloudwatch_unshipped: self
                .cloudwatch_unshipped
                .saturating_sub(earlier.cloudwatch_unshipped),
        }
    }

    /// Everything counted, all kinds together (the `LostEvents` metric).
    pub fn sum(&self) -> u64 {
        self.unseen()
            .saturating_add(self.queue_full)
            .saturating_add(self.output_errors)
            .saturating_add(self.writer_gone)
            .saturating_add(self.cloudwatch_unshipped)
    }

    /// What may have kept a request out of the ledger, or its caller from being known: every
    /// count but the event outputs' own (`queue_full`, `output_errors`, `writer_gone`), which
    /// lose events after the ledger has counted them.
    pub fn unseen(&self) -> u64 {
        self.ring_buffer_full
            + self.ring_buffer_full_close
            + self.send_truncated
            + self.send_unreadable
            + self.connections_untracked
            + self.read_failed
            + self.ring_buffer_full_process
            + self.program_runs_missed
            + self.decode_errors
            + self.connections_evicted
            + self.processes_evicted
            + self.ledger_callers_evicted
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Takes the kernel's counts.
    pub fn set_kernel(&mut self, kernel: &KernelLoss) {
        use imds_probe_common::loss::*;
        self.program_runs_missed = kernel.program_runs_missed;
        let kernel = &kernel.counters;
        self.ring_buffer_full = kernel[LOSS_RING_BUFFER_SEND as usize];
        self.ring_buffer_full_close = kernel[LOSS_RING_BUFFER_CLOSE as usize];
        self.send_truncated = kernel[LOSS_SEND_TRUNCATED as usize];
        self.send_unreadable = kernel[LOSS_SEND_UNREADABLE as usize];
        self.connections_untracked = kernel[LOSS_CONNECTION_UNTRACKED as usize];
        self.read_failed = kernel[LOSS_READ_FAILED as usize];
        self.ring_buffer_full_process = kernel[LOSS_RING_BUFFER_PROCESS as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_that_went_back_reports_nothing_instead_of_underflowing() {
        let earlier = LossCounts {
            ring_buffer_full: 5,
            queue_full: 2,
            ..LossCounts::default()
        };
        let later = LossCounts {
            ring_buffer_full: 0,
            queue_full: 3,
            ..LossCounts::default()
        };
        let moved = later.since(&earlier);
        assert_eq!(moved.ring_buffer_full, 0);
        assert_eq!(moved.queue_full, 1);
    }
}
