//! What the daemon writes: `event` defines the JSON events (a public interface), `loss` the
//! counts of what was not delivered, `ledger` the callers kept across restarts, `summary`
//! bounds the events per caller, `sink` writes lines to stdout and the log file, which
//! `rotation` keeps bounded, `metrics` the per-minute EMF lines, and `cloudwatch` gets both to
//! CloudWatch.

pub mod cloudwatch;
pub mod event;
pub mod ledger;
pub mod loss;
pub mod metrics;
pub mod rotation;
pub mod sink;
pub mod summary;
