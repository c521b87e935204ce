//! The IMDS endpoints, in the byte order the kernel hands them to programs (network order).

pub const IMDS_PORT: u16 = 80;
/// 169.254.169.254
pub const IMDS_IPV4: [u8; 4] = [169, 254, 169, 254];
/// fd00:ec2::254
pub const IMDS_IPV6: [u8; 16] = [
    0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54,
];
/// ::ffff:169.254.169.254, what a dual-stack AF_INET6 socket (a JVM's) connects to.
pub const IMDS_IPV4_MAPPED: [u8; 16] = ipv4_mapped(IMDS_IPV4);

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The IPv6 form records carry an IPv4 address in: ::ffff:a.b.c.d.
#[inline(always)]
pub const fn ipv4_mapped(ip4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ip4[0], ip4[1], ip4[2], ip4[3],
    ]
}

/// An IPv6 address from the four 32-bit words the kernel keeps it in, each read as a
/// native-endian number (the bytes stay in memory order).
#[inline(always)]
pub fn ipv6_from_words(words: [u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    for (i, word) in words.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    addr
}

/// Whether an IPv6-form address (IPv4 stored mapped) is an IMDS endpoint.
pub fn is_imds_addr(addr: &[u8; 16]) -> bool {
    *addr == IMDS_IPV6 || *addr == IMDS_IPV4_MAPPED
}
