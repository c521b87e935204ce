//! What can go wrong in the harness. Messages never repeat their source: a reader prints the
//! chain (`Error::chain`).

use std::{error::Error as _, io, path::PathBuf, process::ExitStatus, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{addr} is not local in namespace {netns}: {route}")]
    NotLocal {
        addr: &'static str,
        netns: String,
        route: String,
    },
    #[error("`{command}` did not print `listening`: {said:?}")]
    ServerNotListening { command: String, said: String },
    #[error("`{command}` exited ({status}) before READY=1; stderr:\n{stderr}")]
    ExitedBeforeReady {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("another imds-probe holds /run/imds-probe.lock")]
    Locked,
    #[error("no READY=1 from `{command}` within {waited:?}; stderr:\n{stderr}")]
    NotReady {
        command: String,
        waited: Duration,
        stderr: String,
    },
    #[error("`{command}` did not exit within {waited:?} of SIGTERM")]
    DidNotExit { command: String, waited: Duration },
    #[error("a line is not JSON ({reason}): {line}")]
    UnparsableLine { line: String, reason: String },
    #[error("{what} not seen ({}); events:\n{events}", if *ended { "the stream ended" } else { "timed out" })]
    NotSeen {
        what: String,
        ended: bool,
        events: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is missing (build it with `cargo build --release -p imds-probe -p imds-probe-test-kit --bins`)"
    )]
    MissingBinary { path: PathBuf },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// The message and each cause after it, for a panic message or a log line.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut cause = self.source();
        while let Some(err) = cause {
            text.push_str(": ");
            text.push_str(&err.to_string());
            cause = err.source();
        }
        text
    }
}

/// For tests, where an error of the harness fails the test with its whole chain.
pub trait OrPanic<T> {
    fn or_panic(self) -> T;
}

impl<T> OrPanic<T> for Result<T, Error> {
    #[track_caller]
    fn or_panic(self) -> T {
        self.unwrap_or_else(|err| panic!("{}", err.chain()))
    }
}
