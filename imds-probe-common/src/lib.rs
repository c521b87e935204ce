//! Types that cross the kernel/user boundary. Every type here is `#[repr(C)]`, made only of
//! integers and byte arrays (no `bool`, no Rust enum), and its size is pinned by a const
//! assertion so the two sides cannot drift apart silently.
#![no_std]

pub mod backend;
pub mod close;
pub mod imds;
pub mod loss;
pub mod process;
pub mod record;
pub mod send;
pub mod socket_state;
