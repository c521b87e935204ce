//! What the integration tests (`tests/`) and the benchmarks (`cargo xtask bench`) stand on:
//! a network namespace of their own with the IMDS addresses on its loopback, servers in it
//! (the fake IMDS of `src/bin/fake-imds`), the real daemon started and awaited on READY=1,
//! scratch directories, and readers of the daemon's JSON lines. Each piece is a guard that
//! cleans up on drop, so a failing test or an interrupted benchmark leaves nothing behind.
//!
//! Nothing here sends a packet anywhere but the namespace's own loopback.

mod bins;
mod daemon;
mod error;
mod events;
mod netns;
mod server;
mod temp_dir;

pub use bins::{bin, bin_in};
pub use daemon::{Daemon, Stdout, Stopped};
pub use error::{Error, OrPanic};
pub use events::{Events, for_each_event};
pub use netns::Netns;
pub use server::{Server, display, output};
pub use temp_dir::TempDir;

/// The daemon's own words when another instance holds the one-per-host lock.
pub const LOCKED: &str = "another imds-probe is running";

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
