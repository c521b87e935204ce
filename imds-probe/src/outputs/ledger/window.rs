//! Observation windows: one per daemon run, so a report knows when the host was watched, and
//! how completely.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::{host::identity::Identity, outputs::event::Timestamp};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: Timestamp,
    /// The last time this run wrote the ledger: its stop, or, after a crash or `kill -9`,
    /// the last write before it.
    pub end: Timestamp,
    /// Whether the run stopped cleanly (SIGTERM/SIGINT).
    pub stopped: bool,
    /// /proc/sys/kernel/random/boot_id: windows of one boot follow each other; across boots
    /// the time from boot to the daemon's start is unwatched.
    pub boot_id: Option<String>,
    pub boot_time: Option<Timestamp>,
    pub backend: String,
    /// Requests that may have gone unseen or unattributed during the run (see
    /// `LossCounts::unseen`).
    pub lost: u64,
    /// Requests seen only in part (`unknown`).
    pub unknown: u64,
    /// Who the host was during the run, once the IMDS told (absent: not asked, not yet
    /// answered, off EC2, or a ledger from before identities were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
}

impl Window {
    pub fn start(now: SystemTime, backend: &str) -> Self {
        Self {
            start: Timestamp(now),
            end: Timestamp(now),
            stopped: false,
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .map(|id| id.trim().to_owned()),
            boot_time: boot_time(),
            backend: backend.to_owned(),
            lost: 0,
            unknown: 0,
            identity: None,
        }
    }

    pub fn seconds(&self) -> f64 {
        self.end
            .0
            .duration_since(self.start.0)
            .unwrap_or_default()
            .as_secs_f64()
    }
}

/// `btime` of /proc/stat: when this boot began.
fn boot_time() -> Option<Timestamp> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let seconds: u64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(Timestamp(
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
    ))
}
