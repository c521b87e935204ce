//! Parsing what /proc holds about a process.

use std::{fs, io};

use crate::attribution::redact::redact_cmdline;

/// Arguments kept from a command line; longer ones are cut.
const MAX_ARGS: usize = 64;
const MAX_ARG_CHARS: usize = 512;

/// The pids of the processes present now (the numeric entries of /proc).
pub fn pids() -> io::Result<Vec<u32>> {
    Ok(fs::read_dir("/proc")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// NUL-separated argv, bounded, with token values redacted.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let args = raw
        .split(|&b| b == 0)
        .take(MAX_ARGS)
        .map(|arg| {
            String::from_utf8_lossy(arg)
                .chars()
                .take(MAX_ARG_CHARS)
                .collect()
        })
        .collect();
    redact_cmdline(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_is_split_bounded_and_redacted() {
        assert_eq!(
            parse_cmdline(b"curl\0-H\0X-aws-ec2-metadata-token: s3cret\0http://169.254.169.254/\0"),
            [
                "curl",
                "-H",
                "X-aws-ec2-metadata-token: [redacted]",
                "http://169.254.169.254/"
            ]
        );
        let many = "a\0".repeat(100);
        assert_eq!(parse_cmdline(many.as_bytes()).len(), MAX_ARGS);
    }
}
