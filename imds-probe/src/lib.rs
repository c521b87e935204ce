//! imds-probe: finds the processes that call the EC2 Instance Metadata Service without a
//! session token. The folders are the stages an event passes through, in order:
//!
//! - `capture`: loads the kernel programs, picks the backend that works here, decodes the
//!   ring buffer's records, and finds the IMDS connections open before start;
//! - `streams`: each connection's bytes, reassembled into HTTP request heads and classified;
//! - `attribution`: who sent each request (process, parents, user, cgroup, container);
//! - `outputs`: JSON events, loss reports, and the sinks that write them;
//!
//! `pipeline` drives a record through those stages; `daemon` runs it against the kernel; `host`
//! holds what the daemon needs of the machine (privileges, mounts, the instance lock, sd_notify).

pub mod attribution;
pub mod capture;
pub(crate) mod causes;
pub mod config;
pub mod daemon;
pub(crate) mod host;
pub mod outputs;
pub mod pipeline;
pub mod remediation;
pub mod report;
pub mod streams;
