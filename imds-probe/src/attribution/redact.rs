//! Secrets that could reach an event through a command line. A caller that runs
//! `curl -H "X-aws-ec2-metadata-token: $TOKEN" ...` carries the token in its argv; the event
//! keeps the argument but never the value.

use crate::streams::http::TOKEN_HEADER;

pub const REDACTED: &str = "[redacted]";

/// Redacts token values in command-line arguments: `<token header>: value` inside one
/// argument, and a bare value in the argument after one that ends with the header name.
pub fn redact_cmdline(args: Vec<String>) -> Vec<String> {
    let mut redact_next = false;
    args.into_iter()
        .map(|arg| {
            if std::mem::take(&mut redact_next) {
                return REDACTED.to_owned();
            }
            let lower = arg.to_ascii_lowercase();
            let Some(at) = lower.find(TOKEN_HEADER) else {
                return arg;
            };
            let after = &arg[at + TOKEN_HEADER.len()..];
            // The TTL header shares the prefix and carries no secret.
            if after.to_ascii_lowercase().starts_with("-ttl-seconds") {
                return arg;
            }
            match after.find([':', '=']) {
                Some(sep) => {
                    let spaces = after[sep + 1..].len() - after[sep + 1..].trim_start().len();
                    format!(
                        "{}{}{REDACTED}",
                        &arg[..at + TOKEN_HEADER.len()],
                        &after[..=sep + spaces]
                    )
                }
                None => {
                    redact_next = after.trim().is_empty();
                    arg
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn redacts_header_values() {
        assert_eq!(
            redact_cmdline(args(&[
                "curl",
                "-H",
                "X-aws-ec2-metadata-token: AQAE123==",
                "http://169.254.169.254/"
            ])),
            args(&[
                "curl",
                "-H",
                "X-aws-ec2-metadata-token: [redacted]",
                "http://169.254.169.254/"
            ])
        );
        assert_eq!(
            redact_cmdline(args(&["tool", "--header=x-aws-ec2-metadata-token:abc"])),
            args(&["tool", "--header=x-aws-ec2-metadata-token:[redacted]"])
        );
        assert_eq!(
            redact_cmdline(args(&["tool", "--x-aws-ec2-metadata-token", "abc", "next"])),
            args(&["tool", "--x-aws-ec2-metadata-token", "[redacted]", "next"])
        );
        let ttl = args(&["curl", "-H", "X-aws-ec2-metadata-token-ttl-seconds: 21600"]);
        assert_eq!(redact_cmdline(ttl.clone()), ttl);
    }

    proptest! {
        #[test]
        fn token_never_survives(prefix in "[ -~]{0,10}", token in "[A-Za-z0-9+/=]{8,60}", sep in prop::sample::select(vec![": ", ":", "="])) {
            let out = redact_cmdline(vec![format!("{prefix}X-AWS-EC2-METADATA-TOKEN{sep}{token}")]);
            prop_assert!(!out[0].contains(&token));
        }
    }
}
