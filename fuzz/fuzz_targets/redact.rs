//! Command-line scrubbing over any argv (NUL-separated, as /proc and the kernel give it): after
//! whatever arguments the input holds, a secret in one of the shapes the scrubber promises to
//! catch (the input's first byte picks it) never survives, whatever came before.
#![no_main]

use std::sync::LazyLock;

use imds_probe::attribution::{proc_fs::parse_cmdline, redact::Redactor};
use libfuzzer_sys::fuzz_target;

static REDACTOR: LazyLock<Redactor> = LazyLock::new(Redactor::default);
const SECRET: &str = "Zq9SECRETVALUEq9Z";
/// The shapes, with `{}` where the secret goes; `\0` separates arguments.
const SHAPES: &[&str] = &[
    "--password={}",
    "--password\0{}",
    "AWS_SECRET_ACCESS_KEY={}",
    "-p\0{}",
    "https://user:{}@example.com/",
    "X-aws-ec2-metadata-token: {}",
    "--conf=db.passwd={}",
];
/// Fewer arguments before the secret than parse_cmdline keeps (64), so it is never cut off.
const MAX_PREFIX_ARGS: usize = 60;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    // The secret must come from our shape only: libFuzzer learns it from the comparisons.
    if rest.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()) {
        return;
    }
    let shape = SHAPES[usize::from(pick) % SHAPES.len()].replace("{}", SECRET);
    let mut raw: Vec<u8> = rest
        .split(|&b| b == 0)
        .take(MAX_PREFIX_ARGS)
        .collect::<Vec<_>>()
        .join(&0);
    raw.push(0);
    raw.extend_from_slice(shape.as_bytes());
    let args = REDACTOR.redact(parse_cmdline(&raw));
    assert!(args.iter().all(|arg| !arg.contains(SECRET)), "{args:?}");
});
