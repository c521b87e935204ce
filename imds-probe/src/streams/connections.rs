//! Open IMDS connections, bounded. When the table is full the connection idle the longest
//! is evicted (and counted): a fleet host with thousands of open IMDS connections is broken
//! in a way worth reporting, not worth unbounded memory.

use std::collections::HashMap;

use crate::{
    attribution::Sender, capture::Backend, outputs::event::Remote,
    streams::reassembly::RequestStream,
};

/// Matches the kernel side's limit, so user space never evicts what the kernel still tracks
/// under normal operation.
pub const MAX_CONNECTIONS: usize = imds_probe_common::send::MAX_CONNECTIONS as usize;

pub struct Connection {
    pub stream: RequestStream,
    pub offsets: StreamOffsets,
    pub remote: Remote,
    pub backend: Backend,
    /// Who sent on it last: the sender of a request that is cut off by the close.
    pub last_sender: Sender,
    pub last_seen_ns: u64,
}

/// Turns a backend's stream offsets into offsets from the first byte captured on the
/// connection, which is what reassembly follows.
pub enum StreamOffsets {
    /// Already a byte count from the connection's first byte (sk_msg).
    Counted,
    /// TCP's 32-bit write sequence (send hooks): unwrapped relative to the first seen.
    TcpSequence { last: Option<(u32, u64)> },
}

impl StreamOffsets {
    pub fn for_backend(backend: Backend) -> Self {
        if backend.offsets_are_tcp_sequence() {
            Self::TcpSequence { last: None }
        } else {
            Self::Counted
        }
    }

    pub fn offset(&mut self, raw: u64) -> u64 {
        match self {
            Self::Counted => raw,
            Self::TcpSequence { last } => {
                let seq = raw as u32;
                // Signed: a send may start before the last one's end (bytes sent again).
                let offset = match *last {
                    None => 0,
                    Some((last_seq, last_offset)) => last_offset
                        .saturating_add_signed(i64::from(seq.wrapping_sub(last_seq) as i32)),
                };
                *last = Some((seq, offset));
                offset
            }
        }
    }
}

pub struct ConnectionTable {
    connections: HashMap<u64, Connection>,
    capacity: usize,
}

impl ConnectionTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            connections: HashMap::new(),
            capacity,
        }
    }

    /// The connection for `cookie`, created by `make` if new. Returns the evicted
    /// connection, if making room evicted one.
    pub fn entry(
        &mut self,
        cookie: u64,
        make: impl FnOnce() -> Connection,
    ) -> (&mut Connection, Option<(u64, Connection)>) {
        let mut evicted = None;
        if !self.connections.contains_key(&cookie) && self.connections.len() >= self.capacity {
            let oldest = self
                .connections
                .iter()
                .min_by_key(|(_, c)| c.last_seen_ns)
                .map(|(&k, _)| k);
            evicted = oldest.and_then(|k| self.connections.remove(&k).map(|c| (k, c)));
        }
        (self.connections.entry(cookie).or_insert_with(make), evicted)
    }

    pub fn remove(&mut self, cookie: u64) -> Option<Connection> {
        self.connections.remove(&cookie)
    }

    pub fn drain(&mut self) -> impl Iterator<Item = (u64, Connection)> + '_ {
        self.connections.drain()
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_sequences_unwrap_across_the_32_bit_edge() {
        let mut offsets = StreamOffsets::for_backend(Backend::Kprobe);
        assert_eq!(offsets.offset(u64::from(u32::MAX - 9)), 0);
        assert_eq!(offsets.offset(5), 15);
        assert_eq!(offsets.offset(0), 10, "a resend of earlier bytes goes back");
        let mut counted = StreamOffsets::for_backend(Backend::SkMsg);
        assert_eq!(counted.offset(1234), 1234);
    }

    fn conn(seen: u64) -> Connection {
        Connection {
            stream: RequestStream::default(),
            offsets: StreamOffsets::Counted,
            remote: Remote::new(imds_probe_common::imds::IMDS_IPV4_MAPPED, 80, 2),
            backend: Backend::SkMsg,
            last_sender: Sender {
                pid: 1,
                tid: 1,
                uid: 0,
                gid: 0,
                comm: "x".into(),
                cgroup_id: 0,
            },
            last_seen_ns: seen,
        }
    }

    #[test]
    fn evicts_the_longest_idle_when_full() {
        let mut table = ConnectionTable::new(2);
        assert!(table.entry(1, || conn(10)).1.is_none());
        assert!(table.entry(2, || conn(5)).1.is_none());
        assert!(
            table.entry(1, || conn(99)).1.is_none(),
            "existing entries never evict"
        );
        let (_, evicted) = table.entry(3, || conn(20));
        assert_eq!(evicted.map(|(k, _)| k), Some(2));
        assert_eq!(table.len(), 2);
    }
}
