//! The config file: whatever an operator (or a tool templating it) writes there must load or
//! give an error naming the line, never a panic.
#![no_main]

use std::path::Path;

use imds_probe::config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = config::parse(Path::new("/etc/imds-probe/config.toml"), text);
});
