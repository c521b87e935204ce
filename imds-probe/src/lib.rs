//! imds-probe: finds the processes that call the EC2 Instance Metadata Service without a
//! session token. Data flows one way: kernel records (`wire`) -> per-connection reassembly
//! (`reassembly`) -> classification (`classify`) -> attribution (`attribution`) -> sinks.

pub mod backend;
pub mod system;
pub mod classify;
pub mod http;
pub mod reassembly;
pub mod wire;
