//! The IMDS endpoints, in the byte order the kernel hands them to programs (network order).

pub const IMDS_PORT: u16 = 80;
/// 169.254.169.254
pub const IMDS_IPV4: [u8; 4] = [169, 254, 169, 254];
/// fd00:ec2::254
pub const IMDS_IPV6: [u8; 16] = [
    0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54,
];
/// ::ffff:169.254.169.254, what a dual-stack AF_INET6 socket (a JVM's) connects to.
pub const IMDS_IPV4_MAPPED: [u8; 16] =
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 169, 254, 169, 254];

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Whether an IPv6-form address (IPv4 stored mapped) is an IMDS endpoint.
pub fn is_imds_addr(addr: &[u8; 16]) -> bool {
    *addr == IMDS_IPV6 || *addr == IMDS_IPV4_MAPPED
}
