//! A connection's bytes, in order, to classified HTTP requests: `connections` keeps each open
//! connection's state (bounded), `reassembly` follows its byte stream by offset, `http` parses
//! request heads, `classify` says which kind of IMDS request each is, `probe` which are other clouds'
//! metadata probes.

pub mod classify;
pub mod connections;
pub mod http;
pub mod probe;
pub mod reassembly;
