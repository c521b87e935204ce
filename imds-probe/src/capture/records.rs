//! Decoding ring buffer records into what the stages after capture take. Never panics: a
//! short or unknown record is an error the caller counts, not a crash.

use std::mem::size_of;

use imds_probe_common::{
    backend::{Backend, UnknownBackend},
    close::Close,
    process::{ExecRecord, ExitRecord, ForkRecord},
    record::{KIND_CLOSE, KIND_EXEC, KIND_EXIT, KIND_FORK, KIND_OPEN, KIND_SEND, RecordHeader},
    send::{SEND_CHUNK_HEADER_BYTES, SendChunk},
};

use crate::attribution::{
    c_string,
    process_table::{ExecInfo, ExitInfo, ForkInfo},
};

#[derive(Debug)]
pub enum Record<'a> {
    Send {
        chunk: SendChunk,
        backend: Backend,
        data: &'a [u8],
    },
    Close(Close),
    /// sock_ops enrolled a connection (the `Close` layout).
    Open(Close),
    // Boxed: an exec is several hundred bytes and the others are small.
    Exec(Box<ExecInfo>),
    Fork(ForkInfo),
    Exit(ExitInfo),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("send record from unknown backend {}", .0.0)]
    UnknownBackend(UnknownBackend),
    #[error("send record claims {claimed} payload bytes but carries {carried}")]
    Length { claimed: u32, carried: usize },
}

/// Copies a wire type out of the front of `bytes`.
fn read<T: aya::Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: the length is checked above, `read_unaligned` has no alignment requirement, and
    // `T: Pod` promises that any bit pattern is a valid value.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

impl<'a> TryFrom<&'a [u8]> for Record<'a> {
    type Error = DecodeError;

    fn try_from(bytes: &'a [u8]) -> Result<Self, Self::Error> {
        let header: RecordHeader = read(bytes)?;
        match header.kind {
            KIND_SEND => {
                let chunk: SendChunk = read(bytes)?;
                let backend =
                    Backend::try_from(chunk.header.backend).map_err(DecodeError::UnknownBackend)?;
                let payload = &bytes[SEND_CHUNK_HEADER_BYTES..];
                let data = payload
                    .get(..chunk.len as usize)
                    .ok_or(DecodeError::Length {
                        claimed: chunk.len,
                        carried: payload.len(),
                    })?;
                Ok(Record::Send {
                    chunk,
                    backend,
                    data,
                })
            }
            KIND_CLOSE => Ok(Record::Close(read(bytes)?)),
            KIND_OPEN => Ok(Record::Open(read(bytes)?)),
            KIND_EXEC => Ok(Record::Exec(Box::new(exec_info(&read(bytes)?)))),
            KIND_FORK => {
                let fork: ForkRecord = read(bytes)?;
                Ok(Record::Fork(ForkInfo {
                    parent_pid: fork.parent_pid,
                    child_pid: fork.child_pid,
                    child_ns_pid: fork.child_ns_pid,
                    start_time_ns: fork.start_boottime_ns,
                    ts_ns: fork.header.ts_ns,
                }))
            }
            KIND_EXIT => {
                let exit: ExitRecord = read(bytes)?;
                Ok(Record::Exit(ExitInfo {
                    pid: exit.pid,
                    ts_ns: exit.header.ts_ns,
                }))
            }
            kind => Err(DecodeError::UnknownKind(kind)),
        }
    }
}

/// The kernel's lengths are clamped to the arrays they describe: a bad length cuts, never
/// panics.
fn exec_info(exec: &ExecRecord) -> ExecInfo {
    let args = &exec.args[..(exec.args_len as usize).min(exec.args.len())];
    let filename = &exec.filename[..(exec.filename_len as usize).min(exec.filename.len())];
    ExecInfo {
        pid: exec.pid,
        ppid: exec.ppid,
        ns_pid: exec.ns_pid,
        uid: exec.uid,
        gid: exec.gid,
        comm: c_string(&exec.comm),
        exe: String::from_utf8_lossy(filename).into_owned(),
        argv_raw: args.to_vec(),
        argv_truncated: exec.args_truncated != 0,
        start_time_ns: exec.start_boottime_ns,
        ts_ns: exec.header.ts_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T>(value: &T) -> Vec<u8> {
        // SAFETY: test-only view of a plain-integer #[repr(C)] value as bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn chunk(len: u32) -> SendChunk {
        SendChunk {
            header: RecordHeader {
                kind: KIND_SEND,
                backend: 1,
                ts_ns: 7,
            },
            cookie: 42,
            pid_tgid: 0,
            uid_gid: 0,
            cgroup_id: 0,
            stream_offset: 0,
            comm: [0; 16],
            remote_addr: [0; 16],
            remote_port: 80,
            family: 2,
            send_size: len,
            len,
            _pad: 0,
        }
    }

    #[test]
    fn decodes_send_with_payload_and_ignores_record_padding() {
        let mut bytes = as_bytes(&chunk(3));
        bytes.extend_from_slice(b"GET");
        bytes.extend_from_slice(&[0; 509]);
        match Record::try_from(&bytes[..]).unwrap() {
            Record::Send { chunk, data, .. } => {
                assert_eq!(chunk.cookie, 42);
                assert_eq!(data, b"GET");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_short_unknown_and_overlong_records() {
        assert_eq!(
            Record::try_from(&[1u8, 0][..]).unwrap_err(),
            DecodeError::Short(2)
        );
        let mut unknown = as_bytes(&chunk(0));
        unknown[0] = 99;
        assert_eq!(
            Record::try_from(&unknown[..]).unwrap_err(),
            DecodeError::UnknownKind(99)
        );
        let overlong = as_bytes(&chunk(10));
        assert!(matches!(
            Record::try_from(&overlong[..]),
            Err(DecodeError::Length { claimed: 10, .. })
        ));
    }

    #[test]
    fn decodes_close_and_open() {
        let record = |kind| Close {
            header: RecordHeader {
                kind,
                backend: 1,
                ts_ns: 1,
            },
            cookie: 9,
        };
        assert!(matches!(
            Record::try_from(&as_bytes(&record(KIND_CLOSE))[..]),
            Ok(Record::Close(Close { cookie: 9, .. }))
        ));
        assert!(matches!(
            Record::try_from(&as_bytes(&record(KIND_OPEN))[..]),
            Ok(Record::Open(Close { cookie: 9, .. }))
        ));
    }
}
