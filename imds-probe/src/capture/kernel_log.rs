//! The kernel programs' diagnostics (imds-probe-ebpf/src/diagnostics.rs), read from
//! aya-log's ring buffer and logged through `tracing` under the target `imds_probe::kernel`.
//! Off by default: the level is fixed in the programs when they load, so with it off their
//! log code never runs and no reader is started.

use aya::Ebpf;
use aya_log::{EbpfLogger, Level};
use tokio::io::{Interest, unix::AsyncFd};

use crate::capture::LoadError;

/// The `tracing` target of every kernel log line.
pub const TARGET: &str = "imds_probe::kernel";

/// `--kernel-log`: the most verbose kernel diagnostics to log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelLogLevel {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl KernelLogLevel {
    fn level(self) -> Option<Level> {
        match self {
            Self::Off => None,
            Self::Error => Some(Level::Error),
            Self::Warn => Some(Level::Warn),
            Self::Info => Some(Level::Info),
            Self::Debug => Some(Level::Debug),
            Self::Trace => Some(Level::Trace),
        }
    }

    /// The value of aya-log's `AYA_LOG_LEVEL` global: a program logs at levels up to it
    /// (Error = 1 ... Trace = 5), so 0 logs nothing.
    pub fn global(self) -> u8 {
        self.level().map_or(0, u8::from)
    }
}

/// Hands aya-log's records to `tracing`, at their own level.
pub struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{message}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{message}"),
            log::Level::Info => tracing::info!(target: TARGET, "{message}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{message}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The reader of the programs' log, when the level is not `Off`. Takes aya-log's ring buffer
/// out of the loaded object.
pub fn open(ebpf: &mut Ebpf, level: KernelLogLevel) -> Result<Option<Reader>, LoadError> {
    if level == KernelLogLevel::Off {
        return Ok(None);
    }
    let logger = EbpfLogger::init_with_logger(ebpf, KernelLog).map_err(LoadError::KernelLog)?;
    // SAFETY: the logger owns its ring buffer's fd and returns that same fd from as_raw_fd
    // for as long as it lives, and the AsyncFd owns the logger.
    let fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|error| LoadError::KernelLogReader(error.into()))?;
    Ok(Some(Reader(fd)))
}

pub struct Reader(AsyncFd<EbpfLogger<KernelLog>>);

impl Reader {
    /// Logs records as the kernel writes them, until the runtime stops. Wakes only when there
    /// are records.
    pub async fn run(mut self) {
        loop {
            match self.0.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(error) => {
                    tracing::error!(%error, "kernel log reader stopped");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_is_zero_and_levels_are_aya_logs_numbers() {
        assert_eq!(KernelLogLevel::Off.global(), 0);
        assert_eq!(KernelLogLevel::Error.global(), 1);
        assert_eq!(KernelLogLevel::Debug.global(), 4);
        assert_eq!(KernelLogLevel::Trace.global(), 5);
    }
}
