//! The ledger loader and what a loaded ledger feeds: the daemon's start (indexing, trimming to
//! its bound) and `imds-probe report` (verdict, advice, table). A damaged or hand-edited file
//! must give an error or a report, never a panic.
#![no_main]

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use imds_probe::{
    outputs::ledger::{Ledger, store},
    report,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(data) = store::parse(Path::new("/var/lib/imds-probe/ledger.json"), bytes) else {
        return;
    };
    let report = report::build(
        Some(&data),
        &report::Options {
            since: Some(Duration::from_secs(86_400)),
            min_observed: Duration::from_secs(3_600),
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        },
    );
    let _ = report::table::render(&report);
    // A bound smaller than most files: the trimming path runs too.
    let _ = Ledger::new(data, 4);
});
