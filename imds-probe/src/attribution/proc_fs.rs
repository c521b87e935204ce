//! Parsing what /proc holds about a process.

use std::{fs, io};

/// Arguments kept from a command line; longer ones are cut.
const MAX_ARGS: usize = 64;
const MAX_ARG_CHARS: usize = 512;

/// The pids of the processes present now (the numeric entries of /proc).
pub fn pids() -> io::Result<Vec<u32>> {
    Ok(fs::read_dir("/proc")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// NUL-separated argv, bounded. Not yet redacted: see `Redactor`.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    raw.split(|&b| b == 0)
        .take(MAX_ARGS)
        .map(|arg| {
            String::from_utf8_lossy(arg)
                .chars()
                .take(MAX_ARG_CHARS)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_is_split_and_bounded() {
        assert_eq!(
            parse_cmdline(b"curl\0-sf\0http://169.254.169.254/\0"),
            ["curl", "-sf", "http://169.254.169.254/"]
        );
        let many = "a\0".repeat(100);
        assert_eq!(parse_cmdline(many.as_bytes()).len(), MAX_ARGS);
    }
}
