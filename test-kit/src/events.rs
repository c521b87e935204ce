//! The daemon's JSON lines, read back: live from a pipe on a thread of its own (`Events`), or
//! from a finished log file (`for_each_event`). A line that is not JSON is never skipped: it
//! fails the wait at once, with the line.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read},
    path::Path,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::Error;

/// Events as they arrive on a stream, with waits that have a deadline.
pub struct Events {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    events: Vec<Value>,
    /// Every line as read, for checks on the raw text (no secret in it, say).
    raw: String,
    /// The first line that was not JSON, and why; the reader stops there.
    unparsable: Option<(String, String)>,
    /// The stream ended (the writer exited or closed it).
    ended: bool,
}

impl Events {
    /// Reads JSON lines from `source` (`what` names it in errors) until it ends.
    pub fn read(what: &str, source: impl Read + Send + 'static) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let writer = Arc::clone(&shared);
        let what = what.to_owned();
        thread::Builder::new()
            .name(format!("read {what}"))
            .spawn(move || {
                for line in BufReader::new(source).lines() {
                    let Ok(line) = line else { break };
                    let parsed = serde_json::from_str::<Value>(&line);
                    let mut state = writer.lock();
                    state.raw.push_str(&line);
                    state.raw.push('\n');
                    match parsed {
                        Ok(value) => state.events.push(value),
                        Err(e) => {
                            state.unparsable = Some((line, e.to_string()));
                            break;
                        }
                    }
                    drop(state);
                    writer.changed.notify_all();
                }
                writer.lock().ended = true;
                writer.changed.notify_all();
            })
            .expect("spawning a reader thread");
        Self { shared }
    }

    /// Waits until `want` holds over the events so far and returns them. Fails at once when
    /// a line is not JSON or the stream ends first, else after `deadline`.
    pub fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        want: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>, Error> {
        let until = Instant::now() + deadline;
        let mut state = self.shared.lock();
        loop {
            if let Some((line, reason)) = &state.unparsable {
                return Err(Error::UnparsableLine {
                    line: line.clone(),
                    reason: reason.clone(),
                });
            }
            if want(&state.events) {
                return Ok(state.events.clone());
            }
            let left = until.saturating_duration_since(Instant::now());
            if state.ended || left.is_zero() {
                return Err(Error::NotSeen {
                    what: what.to_owned(),
                    ended: state.ended,
                    events: format!("{:#?}", state.events),
                });
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Every line read so far.
    pub fn raw(&self) -> String {
        self.shared.lock().raw.clone()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The reader holds the lock only to append; a panic elsewhere leaves the state whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Calls `each` with every event of the JSON-lines file `path`, in order; a missing file
/// has none.
pub fn for_each_event(path: &Path, mut each: impl FnMut(Value)) -> Result<(), Error> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()))(e)),
    };
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line.map_err(Error::io(format!("reading {}", path.display())))?;
        let value = serde_json::from_str(&line).map_err(|e| Error::UnparsableLine {
            reason: e.to_string(),
            line,
        })?;
        each(value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unparsable_line_fails_the_wait_at_once_with_the_line() {
        let events = Events::read("test", &b"{\"a\":1}\nnot json\n{\"a\":2}\n"[..]);
        let started = Instant::now();
        let err = events
            .wait_for("two events", Duration::from_secs(20), |e| e.len() >= 2)
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "failed at once");
        assert!(
            matches!(&err, Error::UnparsableLine { line, .. } if line == "not json"),
            "{err:?}"
        );
    }

    #[test]
    fn a_stream_that_ends_first_fails_the_wait_at_once() {
        let events = Events::read("test", &b"{\"a\":1}\n"[..]);
        let err = events
            .wait_for("two events", Duration::from_secs(20), |e| e.len() >= 2)
            .unwrap_err();
        assert!(matches!(err, Error::NotSeen { ended: true, .. }), "{err:?}");
        let got = events
            .wait_for("one event", Duration::from_secs(1), |e| e.len() == 1)
            .unwrap();
        assert_eq!(got[0]["a"], 1);
    }

    #[test]
    fn a_file_with_a_bad_line_names_it() {
        let dir = crate::TempDir::new("events-test").unwrap();
        let path = dir.join("events.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":\n").unwrap();
        let mut seen = Vec::new();
        let err = for_each_event(&path, |v| seen.push(v)).unwrap_err();
        assert_eq!(seen.len(), 1);
        assert!(
            matches!(&err, Error::UnparsableLine { line, .. } if line == "{\"a\":"),
            "{err:?}"
        );
    }
}
