//! CloudWatch, where a fleet's operators look: the agent's configuration fragment that ships
//! our files (`agent_config`), and shipping them from the daemon itself on hosts without the
//! agent (`ship`, feature `cloudwatch-logs`).

pub mod agent_config;
#[cfg(feature = "cloudwatch-logs")]
pub mod batch;
#[cfg(feature = "cloudwatch-logs")]
pub mod cursor;
#[cfg(feature = "cloudwatch-logs")]
pub mod ship;
#[cfg(feature = "cloudwatch-logs")]
pub mod tail;

/// Where the events and metrics land unless told otherwise, in the agent's fragment, the
/// daemon's own shipping and the CloudFormation template alike.
pub const DEFAULT_EVENTS_LOG_GROUP: &str = "/imds-probe/events";
pub const DEFAULT_METRICS_LOG_GROUP: &str = "/imds-probe/metrics";
