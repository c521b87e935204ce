//! What the daemon writes: `event` defines the JSON events (a public interface), `loss` the
//! counts of what was not delivered, `sink` writes lines to stdout and the log file.

pub mod event;
pub mod ledger;
pub mod loss;
pub mod sink;
