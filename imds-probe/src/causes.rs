//! One convention for errors: an error's message never repeats its source; the causes are
//! printed by whoever reports it. anyhow does that at the binary's edge (`Caused by:`); log
//! lines use [`Causes`], which prints the chain on one line.

use std::{error::Error, fmt};

/// An error and its causes, as one line: `outer: cause: root cause`.
pub struct Causes<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(next) = cause {
            write!(f, ": {next}")?;
            cause = next.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening log file /x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_each_cause_once() {
        let error = Outer(std::io::Error::from(std::io::ErrorKind::ReadOnlyFilesystem));
        assert_eq!(
            Causes(&error).to_string(),
            "opening log file /x: read-only filesystem or storage medium"
        );
        let report = format!("{:?}", anyhow::Error::new(error));
        assert_eq!(report.matches("read-only").count(), 1, "{report}");
    }
}
