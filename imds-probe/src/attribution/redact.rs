//! Secrets that could reach an event through a command line. Callers put credentials in their
//! argv (`mysql -p hunter2`, `--password=...`, `AWS_SECRET_ACCESS_KEY=... aws ...`, a token in
//! `curl -H "X-aws-ec2-metadata-token: ..."`); an event keeps the arguments but never the
//! values, as the process agents security teams already run do.
//!
//! Arguments are read as runs of non-blank text (a shell's `sh -c "..."` holds a whole command
//! in one argument), and a value is whatever follows a sensitive name:
//! - `name=value` and `name:value` (also inside a longer run: `--conf=db.password=x`,
//!   `?token=x`), where the part before the separator holds a sensitive word;
//! - `--name value` and `-name value`: the run after a dash option whose name holds one;
//! - `Name: value ...` (a header): the rest of that argument, or the next one;
//! - `-p value` (`mysql -p`, `sshpass -p`);
//! - `scheme://user:password@host`: the password.
//!
//! A sensitive word matches anywhere in a name, ASCII case ignored, so `AWS_SECRET_ACCESS_KEY`
//! and `X-aws-ec2-metadata-token` are caught by `secret` and `token`. Over-redacting a harmless
//! value (`--author`, `-p 22`) is the price of never writing a secret.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

pub const REDACTED: &str = "[redacted]";

/// Matched anywhere in an option or variable name, ASCII case ignored.
pub const DEFAULT_SENSITIVE_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "secret_key",
    "credential",
    "auth",
    "private_key",
];

#[derive(Debug, thiserror::Error)]
#[error("building the sensitive-word matcher")]
pub struct RedactorError(#[from] aho_corasick::BuildError);

/// Scrubs command lines; built once, shared by every lookup.
#[derive(Clone, Debug)]
pub struct Redactor {
    words: AhoCorasick,
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(std::iter::empty::<&str>()).expect("the default words build a matcher")
    }
}

/// What the runs seen so far ask of the next one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pending {
    Nothing,
    /// The next run, in this argument or the next.
    NextRun,
    /// Every remaining run of this argument (a header value), or the next argument's first.
    RestOfArgument,
}

impl Redactor {
    /// The default words plus `extra` (empty ones are ignored).
    pub fn new<S: AsRef<str>>(extra: impl IntoIterator<Item = S>) -> Result<Self, RedactorError> {
        let extra: Vec<String> = extra
            .into_iter()
            .map(|word| word.as_ref().to_owned())
            .filter(|word| !word.is_empty())
            .collect();
        let words = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostFirst)
            .build(
                DEFAULT_SENSITIVE_WORDS
                    .iter()
                    .copied()
                    .chain(extra.iter().map(String::as_str)),
            )?;
        Ok(Self { words })
    }

    pub fn redact(&self, args: Vec<String>) -> Vec<String> {
        let mut pending = Pending::Nothing;
        args.into_iter()
            .map(|arg| self.redact_argument(arg, &mut pending))
            .collect()
    }

    fn redact_argument(&self, arg: String, pending: &mut Pending) -> String {
        // Most arguments hold no sensitive word, no `-p`, no URL: nothing to do.
        if *pending == Pending::Nothing
            && !self.words.is_match(&arg)
            && !arg.contains("-p")
            && !arg.contains("://")
        {
            return arg;
        }
        let mut out = String::with_capacity(arg.len());
        let mut rest = arg.as_str();
        loop {
            let blank = rest.len() - rest.trim_start().len();
            out.push_str(&rest[..blank]);
            rest = &rest[blank..];
            if rest.is_empty() {
                break;
            }
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let run = &rest[..end];
            rest = &rest[end..];
            match *pending {
                Pending::RestOfArgument => out.push_str(REDACTED),
                Pending::NextRun => {
                    out.push_str(REDACTED);
                    // A value that is itself a sensitive name (`--token --password x`, a token
                    // header after `--secret-file`) still hides what follows it: over-redacting
                    // beats writing the secret (found by the `redact` fuzz target).
                    *pending = self.redact_run(run, &mut String::new());
                }
                Pending::Nothing => *pending = self.redact_run(run, &mut out),
            }
        }
        // A header name closing its argument has its value in the next one.
        if *pending == Pending::RestOfArgument && out.trim_end().ends_with(':') {
            *pending = Pending::NextRun;
        } else if *pending == Pending::RestOfArgument {
            *pending = Pending::Nothing;
        }
        out
    }

    /// Writes `run`, scrubbed, to `out`; says what the following runs need.
    fn redact_run(&self, run: &str, out: &mut String) -> Pending {
        if let Some(value_at) = self.assigned_value(run) {
            out.push_str(&run[..value_at]);
            if value_at < run.len() {
                out.push_str(REDACTED);
                return Pending::Nothing;
            }
            // `Name:` or `--name=` with the value after a blank.
            return if run.ends_with(':') {
                Pending::RestOfArgument
            } else {
                Pending::NextRun
            };
        }
        if let Some(userinfo) = url_password(run) {
            out.push_str(&run[..userinfo.start]);
            out.push_str(REDACTED);
            out.push_str(&run[userinfo.end..]);
            return Pending::Nothing;
        }
        out.push_str(run);
        if run == "-p" || (run.starts_with('-') && self.words.is_match(run)) {
            Pending::NextRun
        } else {
            Pending::Nothing
        }
    }

    /// Where the value starts in `name=value` or `name:value` whose name (the text since the
    /// previous separator) holds a sensitive word.
    fn assigned_value(&self, run: &str) -> Option<usize> {
        let mut name_start = 0;
        for (at, separator) in run.match_indices(['=', ':']) {
            // `://` starts a URL's authority, not a value.
            if separator == ":" && run[at..].starts_with("://") {
                name_start = at + 3;
                continue;
            }
            if self.words.is_match(&run[name_start..at]) {
                return Some(at + 1);
            }
            name_start = at + 1;
        }
        None
    }
}

/// The byte range of the password in `scheme://user:password@host...`.
fn url_password(run: &str) -> Option<std::ops::Range<usize>> {
    let authority_start = run.find("://")? + 3;
    let authority_len = run[authority_start..]
        .find(['/', '?', '#'])
        .unwrap_or(run.len() - authority_start);
    let authority = &run[authority_start..authority_start + authority_len];
    let userinfo = &authority[..authority.rfind('@')?];
    let colon = userinfo.find(':')?;
    Some(authority_start + colon + 1..authority_start + userinfo.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn redact(list: &[&str]) -> Vec<String> {
        Redactor::default().redact(args(list))
    }

    #[test]
    fn redacts_token_header_values() {
        assert_eq!(
            redact(&[
                "curl",
                "-H",
                "X-aws-ec2-metadata-token: AQAE123==",
                "http://169.254.169.254/"
            ]),
            args(&[
                "curl",
                "-H",
                "X-aws-ec2-metadata-token: [redacted]",
                "http://169.254.169.254/"
            ])
        );
        assert_eq!(
            redact(&["tool", "--header=x-aws-ec2-metadata-token:abc"]),
            args(&["tool", "--header=x-aws-ec2-metadata-token:[redacted]"])
        );
        assert_eq!(
            redact(&["tool", "--x-aws-ec2-metadata-token", "abc", "next"]),
            args(&["tool", "--x-aws-ec2-metadata-token", "[redacted]", "next"])
        );
        assert_eq!(
            redact(&["curl", "-H", "X-aws-ec2-metadata-token:", "abc", "next"]),
            args(&[
                "curl",
                "-H",
                "X-aws-ec2-metadata-token:",
                "[redacted]",
                "next"
            ])
        );
    }

    #[test]
    fn redacts_every_form() {
        assert_eq!(
            redact(&[
                "mysql",
                "--password=hunter2",
                "--db-passwd",
                "pw2",
                "-p",
                "pw3",
                "AWS_SECRET_ACCESS_KEY=abc/def",
                "-Dspring.datasource.password=x1",
                "--conf=spark.api_key=x2",
                "https://user:pw4@example.com/path",
                "http://h/p?a=1&token=x3",
                "-H",
                "Authorization: Bearer x4",
                "plain",
            ]),
            args(&[
                "mysql",
                "--password=[redacted]",
                "--db-passwd",
                "[redacted]",
                "-p",
                "[redacted]",
                "AWS_SECRET_ACCESS_KEY=[redacted]",
                "-Dspring.datasource.password=[redacted]",
                "--conf=spark.api_key=[redacted]",
                "https://user:[redacted]@example.com/path",
                "http://h/p?a=1&token=[redacted]",
                "-H",
                "Authorization: [redacted] [redacted]",
                "plain",
            ])
        );
    }

    #[test]
    fn a_sensitive_name_taken_as_a_value_still_hides_its_own_value() {
        for list in [
            &["--token", "--password", "hunter2"][..],
            &["--secret", "", "X-aws-ec2-metadata-token: hunter2"],
            &["-p", "--password=", "hunter2"],
            &["--auth", "-p", "hunter2"],
        ] {
            let out = redact(list);
            assert!(
                out.iter().all(|arg| !arg.contains("hunter2")),
                "{list:?} -> {out:?}"
            );
        }
    }

    #[test]
    fn reads_inside_a_shell_command() {
        assert_eq!(
            redact(&["sh", "-c", "mysql --password hunter2 -e 'select 1'"]),
            args(&["sh", "-c", "mysql --password [redacted] -e 'select 1'"])
        );
    }

    #[test]
    fn leaves_ordinary_arguments_alone() {
        let plain = args(&[
            "curl",
            "-sf",
            "http://169.254.169.254/latest/meta-data/instance-id",
            "--max-time=3",
        ]);
        assert_eq!(Redactor::default().redact(plain.clone()), plain);
    }

    #[test]
    fn takes_configured_words() {
        let redactor = Redactor::new(["Signing"]).unwrap();
        assert_eq!(
            redactor.redact(args(&["tool", "--signing-seed=abc", "--password", "x"])),
            args(&[
                "tool",
                "--signing-seed=[redacted]",
                "--password",
                "[redacted]"
            ])
        );
    }

    /// A sensitive name spelled as a caller might: any case, any position in a longer name.
    fn name() -> impl Strategy<Value = String> {
        (
            "[a-zA-Z_.]{0,6}",
            prop::sample::select(DEFAULT_SENSITIVE_WORDS.to_vec()),
            "[a-zA-Z_.]{0,6}",
            any::<bool>(),
        )
            .prop_map(|(before, word, after, upper)| {
                let word = if upper {
                    word.to_ascii_uppercase()
                } else {
                    word.to_owned()
                };
                format!("{before}{word}{after}")
            })
    }

    proptest! {
        #[test]
        fn no_listed_value_survives(
            name in name(),
            value in "[A-Za-z0-9+/=@!#%^&*._~-]{8,40}",
            form in 0..6u8,
            before in prop::collection::vec("[a-z0-9./-]{1,8}", 0..4),
            after in prop::collection::vec("[a-z0-9./-]{1,8}", 0..4),
        ) {
            let mut list: Vec<String> = before.clone();
            match form {
                0 => list.push(format!("--{name}={value}")),
                1 => list.extend([format!("--{name}"), value.clone()]),
                2 => list.push(format!("{name}={value}")),
                3 => list.extend(["-p".to_owned(), value.clone()]),
                4 => list.push(format!("{name}: {value}")),
                _ => list.push(format!("sh -c 'prog -{name} {value}'")),
            }
            list.extend(after);
            let out = Redactor::default().redact(list);
            for arg in &out {
                prop_assert!(!arg.contains(&value), "{value} survived in {out:?}");
            }
        }

        #[test]
        fn never_panics_and_keeps_the_argument_count(list in prop::collection::vec(".{0,40}", 0..8)) {
            prop_assert_eq!(Redactor::default().redact(list.clone()).len(), list.len());
        }
    }
}
