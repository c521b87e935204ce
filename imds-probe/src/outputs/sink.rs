//! Writing events. The pipeline hands each event, as a JSON line, to a [`Sink`]. The daemon's
//! sink is [`WriterThread`]: a dedicated thread owns the outputs so a slow disk or a blocked
//! stdout never stalls the ring buffer reader; the queue between them is bounded and what
//! does not fit is counted by the caller.

use std::{
    io::{self, BufWriter, Write},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
    },
    thread::JoinHandle,
};

use crate::{host::private_files::PrivateFiles, outputs::rotation::RotatingFile};

/// Events queued for writing at most: about a second of a 20,000 requests/s burst. The
/// queue's slots are allocated up front.
pub const QUEUE_CAPACITY: usize = 16_384;
/// Stdout's buffer: events are one to a few KiB, so the default 8 KiB would mean a write(2)
/// every few events.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("opening log file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting the writer thread")]
    Thread(#[source] io::Error),
}

pub struct Outputs {
    pub stdout: bool,
    pub log_file: Option<PathBuf>,
    /// Who may read the log file and the directories made for it.
    pub files: PrivateFiles,
    /// Rotation of the log file (see `rotation`).
    pub max_file_bytes: u64,
    pub files_kept: u32,
}

/// Anything that takes the pipeline's events: the writer thread in the daemon, a list of
/// lines in tests.
pub trait Sink {
    /// Takes one JSON line (without its newline), or says why not; never blocks.
    fn offer(&mut self, line: Vec<u8>) -> Offer;
    /// Lines taken but not written since the start (`output_errors`).
    fn output_errors(&self) -> u64;
    /// Writes out everything taken and flushes; nothing is taken afterwards.
    fn close(&mut self);
    /// Opens the log file again before the next lines (SIGHUP, for logrotate). Sinks without
    /// a file have nothing to reopen.
    fn reopen(&self) {}
}

pub struct WriterThread {
    queue: Option<SyncSender<Vec<u8>>>,
    writer: Option<JoinHandle<()>>,
    output_errors: Arc<AtomicU64>,
    /// Set by `reopen`: the writer reopens the log file before its next lines.
    reopen: Arc<AtomicBool>,
}

/// Result of offering a line to the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The writer is behind: the line is dropped (`queue_full`).
    Full,
    /// The writer thread is gone (it panicked, or the sink was closed): nothing offered will
    /// be written again (`output_errors`).
    WriterGone,
}

impl WriterThread {
    pub fn start(outputs: Outputs) -> Result<Self, SinkError> {
        let file = outputs
            .log_file
            .as_deref()
            .map(|path| {
                RotatingFile::open(
                    outputs.files,
                    path,
                    outputs.max_file_bytes,
                    outputs.files_kept,
                )
                .map_err(|source| SinkError::Open {
                    path: path.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let (queue, lines) = mpsc::sync_channel(QUEUE_CAPACITY);
        let output_errors = Arc::new(AtomicU64::new(0));
        let errors = Arc::clone(&output_errors);
        let reopen = Arc::new(AtomicBool::new(false));
        let reopen_flag = Arc::clone(&reopen);
        let stdout = outputs.stdout;
        let writer = std::thread::Builder::new()
            .name("imds-probe-sink".into())
            .spawn(move || write_lines(lines, stdout, file, &errors, &reopen_flag))
            .map_err(SinkError::Thread)?;
        Ok(Self {
            queue: Some(queue),
            writer: Some(writer),
            output_errors,
            reopen,
        })
    }
}

impl Sink for WriterThread {
    fn offer(&mut self, line: Vec<u8>) -> Offer {
        self.queue
            .as_ref()
            .map_or(Offer::WriterGone, |queue| offer_to(queue, line))
    }

    fn output_errors(&self) -> u64 {
        self.output_errors.load(Ordering::Relaxed)
    }

    fn close(&mut self) {
        self.queue = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }

    fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.close();
    }
}

fn offer_to(queue: &SyncSender<Vec<u8>>, line: Vec<u8>) -> Offer {
    match queue.try_send(line) {
        Ok(()) => Offer::Queued,
        Err(TrySendError::Full(_)) => Offer::Full,
        Err(TrySendError::Disconnected(_)) => Offer::WriterGone,
    }
}

fn write_lines(
    lines: Receiver<Vec<u8>>,
    stdout: bool,
    mut file: Option<RotatingFile>,
    errors: &AtomicU64,
    reopen: &AtomicBool,
) {
    let mut out = stdout.then(|| BufWriter::with_capacity(WRITE_BUFFER_BYTES, io::stdout().lock()));
    let mut failed_before = false;
    let mut record = |result: io::Result<()>| {
        if let Err(e) = result {
            errors.fetch_add(1, Ordering::Relaxed);
            // Logged once per run of failures, not once per event.
            if !std::mem::replace(&mut failed_before, true) {
                tracing::error!("writing events failed: {e}");
            }
        } else {
            failed_before = false;
        }
    };
    // Block for the first line, then take whatever else is already queued before flushing:
    // one flush per burst, not per event.
    while let Ok(first) = lines.recv() {
        if reopen.swap(false, Ordering::Relaxed)
            && let Some(file) = file.as_mut()
        {
            record(file.reopen());
        }
        let mut line = Some(first);
        while let Some(mut bytes) = line.take().or_else(|| lines.try_recv().ok()) {
            bytes.push(b'\n');
            if let Some(out) = out.as_mut() {
                record(out.write_all(&bytes));
            }
            if let Some(file) = file.as_mut() {
                record(file.write_line(&bytes));
            }
        }
        if let Some(out) = out.as_mut() {
            record(out.flush());
        }
        if let Some(file) = file.as_mut() {
            record(file.flush());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_writer_is_told_apart_from_a_full_queue() {
        let (queue, lines) = mpsc::sync_channel(1);
        assert_eq!(offer_to(&queue, b"1".to_vec()), Offer::Queued);
        assert_eq!(offer_to(&queue, b"2".to_vec()), Offer::Full);
        drop(lines);
        assert_eq!(offer_to(&queue, b"3".to_vec()), Offer::WriterGone);
    }

    #[test]
    fn writes_lines_to_a_new_log_file_and_appends() {
        let dir = std::env::temp_dir().join(format!("imds-probe-sink-{}", std::process::id()));
        let path = dir.join("nested/events.jsonl");
        for line in ["{\"a\":1}", "{\"b\":2}"] {
            let mut sink = WriterThread::start(Outputs {
                stdout: false,
                log_file: Some(path.clone()),
                files: PrivateFiles::default(),
                max_file_bytes: 1 << 20,
                files_kept: 1,
            })
            .unwrap();
            assert_eq!(sink.offer(line.as_bytes().to_vec()), Offer::Queued);
            sink.close();
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
