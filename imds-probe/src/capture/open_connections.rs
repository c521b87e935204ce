//! IMDS connections that were already open when capture started. sock_ops enrols a socket
//! when it connects, so the sk_msg backend needs these enrolled by the daemon; the send hooks
//! see their next send. Either way the operator is told who holds one. Found in every network
//! namespace's TCP tables, with their owners (and their descriptor there) from
//! /proc/<pid>/fd: one pass at start-up, bounded.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::SocketAddr,
};

use imds_probe_common::imds::{AF_INET, AF_INET6, IMDS_PORT, ipv4_mapped, is_imds_addr};
use procfs::{
    net::{TcpNetEntry, TcpState},
    process::FDTarget,
};

use crate::attribution::proc_fs;

/// Connections reported (and, for sk_msg, enrolled) at most: as many as the kernel side
/// tracks. The rest are counted in the log.
pub const MAX_REPORTED: usize = imds_probe_common::send::MAX_CONNECTIONS as usize;

/// One socket of a TCP table that is connected to the IMDS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImdsSocket {
    pub inode: u64,
    /// IPv6 form; IPv4 mapped.
    pub remote: [u8; 16],
    pub port: u16,
    /// `AF_INET` for /proc/net/tcp, `AF_INET6` for /proc/net/tcp6.
    pub family: u16,
}

/// An open IMDS connection and a process holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenConnection {
    pub pid: u32,
    /// The process's descriptor for the socket.
    pub fd: i32,
    pub socket: ImdsSocket,
}

#[derive(Debug, Default)]
pub struct Scan {
    /// At most `MAX_REPORTED`, ordered by pid.
    pub connections: Vec<OpenConnection>,
    /// Found beyond `MAX_REPORTED`.
    pub not_reported: usize,
}

/// Walks /proc: one TCP table pair per network namespace, then every process's descriptors
/// for the sockets found. Processes and namespaces that vanish meanwhile are skipped.
pub fn scan() -> Scan {
    let mut pids = Vec::new();
    let mut sockets: HashMap<u64, ImdsSocket> = HashMap::new();
    let mut namespaces = HashSet::new();
    for process in proc_fs::processes().into_iter().flatten() {
        let Ok(pid) = u32::try_from(process.pid) else {
            continue;
        };
        pids.push(pid);
        let Ok(netns) = fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if !namespaces.insert(netns) {
            continue;
        }
        for (table, family) in [(process.tcp(), AF_INET), (process.tcp6(), AF_INET6)] {
            if let Ok(entries) = table {
                sockets.extend(imds_sockets(entries, family).map(|s| (s.inode, s)));
            }
        }
    }
    let mut scan = Scan::default();
    if sockets.is_empty() {
        return scan;
    }
    pids.sort_unstable();
    for pid in pids {
        let Some(fds) = proc_fs::process(pid).and_then(|process| process.fd().ok()) else {
            continue;
        };
        // One descriptor per socket: a process may hold several for the same one.
        let mut held: HashMap<u64, i32> = HashMap::new();
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target
                && sockets.contains_key(&inode)
            {
                held.entry(inode).or_insert(fd.fd);
            }
        }
        for (inode, fd) in held {
            if scan.connections.len() < MAX_REPORTED {
                scan.connections.push(OpenConnection {
                    pid,
                    fd,
                    socket: sockets[&inode].clone(),
                });
            } else {
                scan.not_reported += 1;
            }
        }
    }
    scan
}

/// The entries of a TCP table whose peer is the IMDS and which can still send a request.
pub fn imds_sockets(table: Vec<TcpNetEntry>, family: u16) -> impl Iterator<Item = ImdsSocket> {
    table.into_iter().filter_map(move |entry| {
        let remote = match entry.remote_address {
            SocketAddr::V4(addr) => ipv4_mapped(addr.ip().octets()),
            SocketAddr::V6(addr) => addr.ip().octets(),
        };
        let socket = ImdsSocket {
            inode: entry.inode,
            remote,
            port: entry.remote_address.port(),
            family,
        };
        (matches!(entry.state, TcpState::Established | TcpState::CloseWait)
            && socket.port == IMDS_PORT
            && is_imds_addr(&remote)
            && socket.inode != 0)
            .then_some(socket)
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use procfs::{FromReadSI, net::TcpNetEntries};
    use proptest::prelude::*;

    use super::*;

    /// The table as procfs reads the kernel's text.
    fn parse(text: &str) -> Vec<TcpNetEntry> {
        TcpNetEntries::from_read(text.as_bytes(), procfs::current_system_info())
            .unwrap()
            .0
    }

    /// How the kernel prints an address: each 32-bit word of the in-memory (network order)
    /// address as a native-endian number.
    fn kernel_hex(bytes: &[u8]) -> String {
        bytes
            .chunks(4)
            .map(|w| format!("{:08X}", u32::from_ne_bytes(w.try_into().unwrap())))
            .collect()
    }

    fn row(remote: &str, state: &str, inode: u64) -> String {
        format!(
            "   0: {}:9C40 {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 20 4 30 10 -1",
            kernel_hex(&[10, 0, 0, 5])
        )
    }

    fn table(rows: &[String]) -> String {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
        std::iter::once(header.to_owned())
            .chain(rows.iter().cloned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn v4(addr: Ipv4Addr, port: u16) -> String {
        format!("{}:{port:04X}", kernel_hex(&addr.octets()))
    }

    fn v6(addr: Ipv6Addr, port: u16) -> String {
        format!("{}:{port:04X}", kernel_hex(&addr.octets()))
    }

    const IMDS4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
    const IMDS6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

    #[test]
    fn established_and_close_wait_connections_to_the_imds_are_found() {
        let text = table(&[
            row(&v4(IMDS4, 80), "01", 11),
            row(&v4(IMDS4, 80), "08", 12),
            // Gone or going: cannot send another request.
            row(&v4(IMDS4, 80), "06", 13),
            // Not yet connected: sock_ops enrols it when it is.
            row(&v4(IMDS4, 80), "02", 14),
            row(&v4(IMDS4, 8080), "01", 15),
            row(&v4(Ipv4Addr::new(169, 254, 169, 253), 80), "01", 16),
            // A listener's unconnected peer.
            row(&v4(Ipv4Addr::UNSPECIFIED, 0), "0A", 17),
        ]);
        let found: Vec<u64> = imds_sockets(parse(&text), AF_INET)
            .map(|s| s.inode)
            .collect();
        assert_eq!(found, [11, 12]);
        let socket = imds_sockets(parse(&text), AF_INET).next().unwrap();
        assert_eq!(Ipv6Addr::from(socket.remote).to_ipv4_mapped(), Some(IMDS4));
        assert_eq!((socket.port, socket.family), (80, AF_INET));
    }

    #[test]
    fn ipv6_and_mapped_peers_in_tcp6_are_found() {
        let text = table(&[
            row(&v6(IMDS6, 80), "01", 21),
            row(&v6(IMDS4.to_ipv6_mapped(), 80), "01", 22),
            row(&v6(Ipv6Addr::LOCALHOST, 80), "01", 23),
        ]);
        let found: Vec<_> = imds_sockets(parse(&text), AF_INET6)
            .map(|s| (s.inode, Ipv6Addr::from(s.remote)))
            .collect();
        assert_eq!(found, [(21, IMDS6), (22, IMDS4.to_ipv6_mapped())]);
    }

    proptest! {
        /// procfs reads each word of the address in the kernel's (host) order.
        #[test]
        fn printed_addresses_read_back(octets in any::<[u8; 16]>(), port in any::<u16>()) {
            let addr = Ipv6Addr::from(octets);
            let entry = &parse(&table(&[row(&v6(addr, port), "01", 1)]))[0];
            prop_assert_eq!(entry.remote_address, SocketAddr::from((addr, port)));
        }
    }
}
