//! Command-line scrubbing over any argv (NUL-separated, as /proc and the kernel give it). A
//! value after `--password=` never survives, whatever surrounds it.
#![no_main]

use std::sync::LazyLock;

use imds_probe::attribution::{proc_fs::parse_cmdline, redact::Redactor};
use libfuzzer_sys::fuzz_target;

static REDACTOR: LazyLock<Redactor> = LazyLock::new(Redactor::default);
const SECRET: &str = "Zq9SECRETVALUEq9Z";

fuzz_target!(|data: &[u8]| {
    let mut raw = data.to_vec();
    raw.extend_from_slice(b"\0--password=");
    raw.extend_from_slice(SECRET.as_bytes());
    let args = REDACTOR.redact(parse_cmdline(&raw));
    if raw.split(|&b| b == 0).count() <= 64 {
        assert!(args.iter().all(|arg| !arg.contains(SECRET)), "{args:?}");
    }
});
