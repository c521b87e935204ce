//! The User-Agent -> SDK parser: the header is whatever the calling program sent.
#![no_main]

use imds_probe::remediation::user_agent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|header: &str| {
    let _ = user_agent::parse(header);
});
