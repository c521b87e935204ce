//! The JSON events: a public interface that operators write queries against. Field names
//! and meanings are documented in the README; change them only with a note there.

use std::{
    net::Ipv6Addr,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    attribution::Attribution,
    capture::Backend,
    outputs::loss::LossCounts,
    streams::{
        classify::Class,
        http::RequestHead,
        probe::{Cloud, probe_of},
        reassembly::UnknownReason,
    },
};

#[derive(Debug, Serialize)]
pub struct RequestEvent {
    pub ts: Timestamp,
    pub event: &'static str,
    pub class: Class,
    pub reason: Option<UnknownReason>,
    /// Another cloud's metadata probe (see `streams::probe`): fails on EC2 whatever the IMDS
    /// setting, so it is not a caller that would break.
    pub probe_of: Option<Cloud>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub http_version: Option<&'static str>,
    pub user_agent: Option<String>,
    pub token_ttl_seconds: Option<u32>,
    pub remote: String,
    /// "ipv4", "ipv6", or "ipv4_mapped" (a dual-stack AF_INET6 socket to 169.254.169.254).
    pub socket_family: &'static str,
    pub backend: Backend,
    /// Ties the requests of one connection together: an opaque number (a keyed hash of the
    /// kernel's identity for the connection, which is not disclosed), stable within one run.
    pub connection: u64,
    /// The daemon's own request (learning who this host is, or credentials for shipping):
    /// written only when true; never a caller to fix.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub own: bool,
    /// `process`, `parents`, `cgroup`, `systemd_unit`, `container`.
    #[serde(flatten)]
    pub who: Attribution,
}

/// What a request event needs besides the request itself.
pub struct Context<'a> {
    pub ts: Timestamp,
    pub remote: &'a Remote,
    pub backend: Backend,
    pub connection: u64,
    pub own: bool,
    pub who: Attribution,
}

impl RequestEvent {
    pub const NAME: &'static str = "imds_request";

    pub fn request(head: RequestHead, class: Class, ctx: Context<'_>) -> Self {
        Self {
            probe_of: probe_of(&head),
            method: Some(head.method),
            path: Some(head.path),
            http_version: Some(head.http_version),
            user_agent: head.user_agent,
            token_ttl_seconds: if class == Class::Token {
                head.token_ttl_seconds
            } else {
                None
            },
            ..Self::without_head(class, None, ctx)
        }
    }

    pub fn unknown(reason: UnknownReason, ctx: Context<'_>) -> Self {
        Self::without_head(Class::Unknown, Some(reason), ctx)
    }

    /// Who sent it, where, and how we saw it; no request head fields.
    fn without_head(class: Class, reason: Option<UnknownReason>, ctx: Context<'_>) -> Self {
        Self {
            ts: ctx.ts,
            event: Self::NAME,
            class,
            reason,
            probe_of: None,
            method: None,
            path: None,
            http_version: None,
            user_agent: None,
            token_ttl_seconds: None,
            remote: ctx.remote.endpoint.clone(),
            socket_family: ctx.remote.family,
            backend: ctx.backend,
            connection: ctx.connection,
            own: ctx.own,
            who: ctx.who,
        }
    }
}

/// A connection to the IMDS that was already open when capture started (see
/// `open_connections`), and a process holding it.
#[derive(Debug, Serialize)]
pub struct OpenConnectionEvent {
    pub ts: Timestamp,
    pub event: &'static str,
    pub backend: Backend,
    /// Whether the backend sees this connection's later sends: the send hooks always do;
    /// sk_msg where the daemon could enrol the socket. A request in flight at the start may
    /// come out `unknown`.
    pub watched: bool,
    pub remote: String,
    pub socket_family: &'static str,
    #[serde(flatten)]
    pub who: Attribution,
}

impl OpenConnectionEvent {
    pub const NAME: &'static str = "connection_open_at_start";
}

#[derive(Debug, Serialize)]
pub struct LossEvent {
    pub ts: Timestamp,
    pub event: &'static str,
    /// Counts since the previous loss event.
    pub since_last: LossCounts,
    /// Counts since the daemon started.
    pub total: LossCounts,
}

impl LossEvent {
    pub const NAME: &'static str = "loss";
}

/// The peer of a connection, rendered once per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    pub endpoint: String,
    pub family: &'static str,
}

impl Remote {
    /// `addr` is IPv6-form (IPv4 mapped); `family` the socket's AF_*.
    pub fn new(addr: [u8; 16], port: u16, family: u16) -> Self {
        let v6 = Ipv6Addr::from(addr);
        match v6.to_ipv4_mapped() {
            Some(v4) => Self {
                endpoint: format!("{v4}:{port}"),
                family: if family == imds_probe_common::imds::AF_INET {
                    "ipv4"
                } else {
                    "ipv4_mapped"
                },
            },
            None => Self {
                endpoint: format!("[{v6}]:{port}"),
                family: "ipv6",
            },
        }
    }
}

/// Wall-clock time, written as RFC 3339 UTC with microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_rfc3339_micros(self.0))
    }
}

/// The ledger reads back what it wrote.
impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        humantime::parse_rfc3339(&text)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// The three clocks events are stamped from, read at one moment, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Readings {
    pub realtime: i128,
    /// CLOCK_MONOTONIC: the clock of the kernel's record timestamps.
    pub monotonic: i128,
    /// CLOCK_BOOTTIME (also counts suspend): the clock of process start times.
    pub boottime: i128,
}

impl Readings {
    /// The host's clocks now.
    pub fn host() -> Self {
        let nanos = |id| {
            nix::time::clock_gettime(id)
                .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
                .unwrap_or(0)
        };
        Self {
            realtime: nanos(nix::time::ClockId::CLOCK_REALTIME),
            monotonic: nanos(nix::time::ClockId::CLOCK_MONOTONIC),
            boottime: nanos(nix::time::ClockId::CLOCK_BOOTTIME),
        }
    }
}

/// Converts the kernel's CLOCK_MONOTONIC timestamps to wall-clock time. Reads time only
/// through `read`, so a test can give it a clock that stands still.
pub struct Clock {
    read: fn() -> Readings,
    /// Wall clock minus monotonic clock, in nanoseconds.
    offset_ns: i128,
    /// Wall clock minus boot-time clock, in nanoseconds.
    boot_offset_ns: i128,
}

impl Clock {
    /// The host's clocks.
    pub fn host() -> Self {
        Self::reading(Readings::host)
    }

    pub fn reading(read: fn() -> Readings) -> Self {
        let mut clock = Self {
            read,
            offset_ns: 0,
            boot_offset_ns: 0,
        };
        clock.resync();
        clock
    }

    /// Re-reads the offsets, so NTP steps are followed.
    pub fn resync(&mut self) {
        let now = (self.read)();
        self.offset_ns = now.realtime - now.monotonic;
        self.boot_offset_ns = now.realtime - now.boottime;
    }

    /// For process start times, which the kernel keeps on the boot-time clock.
    pub fn wall_from_boottime(&self, boottime_ns: u64) -> Timestamp {
        unix(i128::from(boottime_ns) + self.boot_offset_ns)
    }

    pub fn wall(&self, monotonic_ns: u64) -> Timestamp {
        unix(i128::from(monotonic_ns) + self.offset_ns)
    }

    pub fn now(&self) -> Timestamp {
        unix((self.read)().realtime)
    }

    /// Now on the clock of the kernel's record timestamps.
    pub fn monotonic_ns(&self) -> u64 {
        u64::try_from((self.read)().monotonic).unwrap_or(0)
    }
}

/// Nanoseconds since the Unix epoch; before it (a clock stepped far back) is the epoch.
fn unix(ns: i128) -> Timestamp {
    let ns = u64::try_from(ns.max(0)).unwrap_or(u64::MAX);
    Timestamp(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes() {
        let v4 = Remote::new(imds_probe_common::imds::IMDS_IPV4_MAPPED, 80, 2);
        assert_eq!(
            (v4.endpoint.as_str(), v4.family),
            ("169.254.169.254:80", "ipv4")
        );
        let mapped = Remote::new(imds_probe_common::imds::IMDS_IPV4_MAPPED, 80, 10);
        assert_eq!(
            (mapped.endpoint.as_str(), mapped.family),
            ("169.254.169.254:80", "ipv4_mapped")
        );
        let v6 = Remote::new(imds_probe_common::imds::IMDS_IPV6, 80, 10);
        assert_eq!(
            (v6.endpoint.as_str(), v6.family),
            ("[fd00:ec2::254]:80", "ipv6")
        );
    }

    #[test]
    fn timestamps_are_rfc3339_micros_utc() {
        let ts =
            Timestamp(SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789));
        assert_eq!(
            serde_json::to_string(&ts).unwrap(),
            "\"2023-11-14T22:13:20.123456Z\""
        );
    }

    #[test]
    fn clock_converts_kernel_times_through_the_offsets_it_read() {
        fn readings() -> Readings {
            Readings {
                realtime: 1_700_000_000_000_000_000,
                monotonic: 5_000_000_000,
                boottime: 7_000_000_000,
            }
        }
        let clock = Clock::reading(readings);
        let at = |ts: Timestamp| ts.0.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(at(clock.now()), Duration::from_secs(1_700_000_000));
        assert_eq!(
            at(clock.wall(6_000_000_000)),
            Duration::from_secs(1_700_000_001)
        );
        assert_eq!(
            at(clock.wall_from_boottime(6_000_000_000)),
            Duration::from_secs(1_699_999_999)
        );
        assert_eq!(clock.monotonic_ns(), 5_000_000_000);
        assert_eq!(
            at(clock.wall_from_boottime(0)),
            Duration::from_secs(1_699_999_993)
        );
    }
}
