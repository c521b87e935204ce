//! What the daemon writes: `event` defines the JSON events (a public interface), `loss` the
//! counts of what was not delivered, `sink` writes lines to stdout and the log file, `metrics`
//! the per-minute EMF lines, and `cloudwatch` gets both to CloudWatch.

pub mod cloudwatch;
pub mod event;
pub mod loss;
pub mod metrics;
pub mod sink;
