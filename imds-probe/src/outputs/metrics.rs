//! Per-minute metrics in CloudWatch's Embedded Metric Format (EMF), one JSON line a minute in a
//! file of their own (`--metrics-file`). Never in the events file: one EMF line in a file the
//! CloudWatch agent tails switches that whole stream to EMF handling, whose queue drops plain
//! events too when it fills.
//!
//! Every distinct dimension set is a billed custom metric. By default the metrics have no
//! dimension at all, so the fleet shares one metric per name whatever its size; per-instance
//! metrics (`InstanceId`) are an option and cost one metric per name per host (see README).

use std::{collections::HashSet, time::SystemTime};

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{host::identity::Identity, streams::classify::Class};

/// The metrics' CloudWatch namespace.
pub const NAMESPACE: &str = "IMDSProbe";
/// Distinct IMDSv1 callers counted in one minute at most; beyond, the count saturates (a host
/// with more has a bigger problem than the exact number).
const MAX_CALLERS_PER_MINUTE: usize = 4096;

/// Which dimension sets the metrics carry.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Dimensions {
    /// None: one metric per name for the whole fleet (8 custom metrics in all).
    #[default]
    Fleet,
    /// The fleet-wide metrics, and the same per InstanceId (8 more custom metrics per host).
    PerInstance,
}

/// One minute's counts. Pure: the daemon feeds it and writes what `line` returns.
#[derive(Debug, Default)]
pub struct MinuteCounts {
    imdsv1: u64,
    imdsv2: u64,
    token: u64,
    unknown: u64,
    /// Hashes of the IMDSv1 callers' (executable, systemd unit), bounded.
    imdsv1_callers: HashSet<u64>,
    /// IMDSv1 requests that were an SDK's fallback after its token PUT went unanswered (the
    /// hop limit, in a container): the fix is the hop limit, not the SDK.
    fallbacks: u64,
    lost: u64,
}

impl MinuteCounts {
    /// Counts one request of a caller identified by `caller` (a hash of what names it);
    /// `fallback`: an IMDSv1 request after a token PUT that got no answer (the ledger tells).
    /// The daemon's own requests are not counted: they are not callers to fix.
    pub fn request(&mut self, class: Class, fallback: bool, caller: u64) {
        match class {
            Class::Imdsv1 => {
                self.imdsv1 += 1;
                self.fallbacks += u64::from(fallback);
                if self.imdsv1_callers.len() < MAX_CALLERS_PER_MINUTE {
                    self.imdsv1_callers.insert(caller);
                }
            }
            Class::Imdsv2 => self.imdsv2 += 1,
            Class::Token => self.token += 1,
            Class::Unknown => self.unknown += 1,
        }
    }

    /// Adds what a loss report counted since the previous one.
    pub fn lost(&mut self, count: u64) {
        self.lost = self.lost.saturating_add(count);
    }

    /// The EMF line for the minute that ends now, and a fresh minute. `at` is the minute's
    /// timestamp; `identity`, if known, goes into every line (and the InstanceId dimension).
    pub fn take_line(
        &mut self,
        at: SystemTime,
        dimensions: Dimensions,
        identity: Option<&Identity>,
    ) -> Vec<u8> {
        let counts = std::mem::take(self);
        let values = [
            ("RequestsIMDSv1", counts.imdsv1),
            ("RequestsIMDSv2", counts.imdsv2),
            ("RequestsToken", counts.token),
            ("RequestsUnknown", counts.unknown),
            ("IMDSv1Callers", counts.imdsv1_callers.len() as u64),
            ("HostsWithIMDSv1", u64::from(counts.imdsv1 > 0)),
            ("IMDSv1Fallbacks", counts.fallbacks),
            ("LostEvents", counts.lost),
        ];
        let dimension_sets = match (dimensions, identity) {
            (Dimensions::PerInstance, Some(_)) => json!([[], ["InstanceId"]]),
            // Per instance without an instance id would put every such host in one bucket.
            _ => json!([[]]),
        };
        let millis = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut line = Map::new();
        line.insert(
            "_aws".into(),
            json!({
                "Timestamp": millis,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": dimension_sets,
                    "Metrics": values.iter().map(|(name, _)| json!({"Name": name, "Unit": "Count"})).collect::<Vec<_>>(),
                }],
            }),
        );
        if let Some(identity) = identity {
            line.insert("InstanceId".into(), identity.instance_id.clone().into());
            line.insert("Region".into(), identity.region.clone().into());
            line.insert("AccountId".into(), identity.account_id.clone().into());
            line.insert("ImageId".into(), identity.image_id.clone().into());
        }
        for (name, value) in values {
            line.insert(name.into(), value.into());
        }
        serde_json::to_vec(&Value::Object(line)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn identity() -> Identity {
        Identity {
            instance_id: "i-0123456789abcdef0".into(),
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            image_id: "ami-0abcdef1234567890".into(),
        }
    }

    fn line(counts: &mut MinuteCounts, dimensions: Dimensions, who: Option<&Identity>) -> Value {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_040);
        serde_json::from_slice(&counts.take_line(at, dimensions, who)).unwrap()
    }

    #[test]
    fn a_minute_of_requests_becomes_one_emf_line() {
        let mut counts = MinuteCounts::default();
        for caller in [1, 1, 2] {
            counts.request(Class::Imdsv1, false, caller);
        }
        counts.request(Class::Token, false, 3);
        counts.request(Class::Imdsv2, false, 3);
        counts.request(Class::Unknown, false, 4);
        // An SDK whose token PUT went unanswered, falling back twice.
        counts.request(Class::Token, false, 5);
        counts.request(Class::Imdsv1, true, 5);
        counts.request(Class::Imdsv1, true, 5);
        counts.lost(5);
        let line = line(&mut counts, Dimensions::Fleet, Some(&identity()));
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(line["_aws"]["Timestamp"], 1_700_000_040_000u64);
        assert_eq!(directive["Namespace"], NAMESPACE);
        assert_eq!(directive["Dimensions"], json!([[]]));
        // Every metric the directive names is a number at the top level, as EMF requires.
        for metric in directive["Metrics"].as_array().unwrap() {
            let name = metric["Name"].as_str().unwrap();
            assert!(line[name].is_u64(), "{name} missing");
            assert_eq!(metric["Unit"], "Count");
        }
        assert_eq!(line["RequestsIMDSv1"], 5);
        assert_eq!(line["IMDSv1Callers"], 3);
        assert_eq!(line["IMDSv1Fallbacks"], 2);
        assert_eq!(line["HostsWithIMDSv1"], 1);
        assert_eq!(line["RequestsToken"], 2);
        assert_eq!(line["RequestsIMDSv2"], 1);
        assert_eq!(line["RequestsUnknown"], 1);
        assert_eq!(line["LostEvents"], 5);
        assert_eq!(line["InstanceId"], "i-0123456789abcdef0");
        // The next minute starts from nothing.
        let next = super::tests::line(&mut counts, Dimensions::Fleet, None);
        assert_eq!(next["RequestsIMDSv1"], 0);
        assert_eq!(next["HostsWithIMDSv1"], 0);
        assert_eq!(next["IMDSv1Fallbacks"], 0);
        assert!(next.get("InstanceId").is_none());
    }

    #[test]
    fn per_instance_dimensions_only_with_an_instance_id() {
        let mut counts = MinuteCounts::default();
        let with = line(&mut counts, Dimensions::PerInstance, Some(&identity()));
        assert_eq!(
            with["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[], ["InstanceId"]])
        );
        let without = line(&mut counts, Dimensions::PerInstance, None);
        assert_eq!(
            without["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[]])
        );
    }

    #[test]
    fn distinct_callers_are_bounded() {
        let mut counts = MinuteCounts::default();
        for caller in 0..(MAX_CALLERS_PER_MINUTE as u64 + 100) {
            counts.request(Class::Imdsv1, false, caller);
        }
        let line = line(&mut counts, Dimensions::Fleet, None);
        assert_eq!(line["IMDSv1Callers"], MAX_CALLERS_PER_MINUTE as u64);
        assert_eq!(line["RequestsIMDSv1"], MAX_CALLERS_PER_MINUTE as u64 + 100);
    }
}
