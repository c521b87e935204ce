//! imds-probe: finds the processes that call the EC2 Instance Metadata Service without a
//! session token. Data flows one way: kernel records (`wire`) -> per-connection reassembly
//! (`reassembly`, `http`) -> classification (`classify`) -> attribution (`attribution`) ->
//! events (`event`) -> sinks (`sink`), driven record by record by `pipeline`.

pub mod attribution;
pub mod backend;
pub mod btf_offsets;
pub mod classify;
pub mod connections;
pub mod daemon;
pub mod event;
pub mod http;
pub mod loss;
pub mod notify;
pub mod open_connections;
pub mod pipeline;
pub mod process_fd;
pub mod reassembly;
pub mod redact;
pub mod sink;
pub mod system;
pub mod wire;
