//! Identity of an IMDS connection as both `sock_ops` and `sk_msg` can see it. `sk_msg` cannot
//! ask for the socket cookie, so the two programs meet on the connection's addresses plus its
//! network namespace, and `sock_ops` stores the cookie there for `sk_msg` to pick up.

use imds_probe_common::imds::{AF_INET, AF_INET6, IMDS_PORT, is_imds_addr};

/// The address fields `bpf_sock_ops` and `sk_msg_md` share, as the kernel hands them over.
pub struct RawEndpoints {
    pub family: u32,
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub local_ip6: [u32; 4],
    /// Network order, in the high 16 bits.
    pub remote_port: u32,
    /// Host order.
    pub local_port: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnKey {
    pub netns_cookie: u64,
    /// IPv6 form; IPv4 stored mapped.
    pub remote: [u8; 16],
    pub local: [u8; 16],
    pub remote_port: u16,
    pub local_port: u16,
    pub family: u16,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnState {
    pub cookie: u64,
    /// Bytes sent on the connection so far.
    pub offset: u64,
}

#[inline(always)]
fn ipv6_form(family: u16, ip4: u32, ip6: &[u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&ip4.to_ne_bytes());
    } else {
        for (i, word) in ip6.iter().enumerate() {
            addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
    }
    addr
}

impl ConnKey {
    #[inline(always)]
    pub fn new(netns_cookie: u64, raw: &RawEndpoints) -> Self {
        let family = raw.family as u16;
        Self {
            netns_cookie,
            remote: ipv6_form(family, raw.remote_ip4, &raw.remote_ip6),
            local: ipv6_form(family, raw.local_ip4, &raw.local_ip6),
            remote_port: u32::from_be(raw.remote_port) as u16,
            local_port: raw.local_port as u16,
            family,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub fn is_imds(&self) -> bool {
        self.remote_port == IMDS_PORT
            && (self.family == AF_INET || self.family == AF_INET6)
            && is_imds_addr(&self.remote)
    }
}
