//! Ring-buffer records: any bytes decode to a record or an error, never a panic.
#![no_main]

use imds_probe::capture::records::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Record::try_from(data);
});
