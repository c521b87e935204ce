//! cgroup v2 paths: whatever a container runtime or a local user names a cgroup.
#![no_main]

use imds_probe::attribution::cgroup_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    let _ = cgroup_path::parse(path);
});
