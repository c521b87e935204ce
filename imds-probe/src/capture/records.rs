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

/// Records as the kernel side writes them, for tests that start from bytes.
#[cfg(test)]
pub(crate) mod encode {
    use imds_probe_common::{
        imds::{AF_INET, IMDS_IPV4_MAPPED, IMDS_PORT},
        process::{EXEC_ARGS_BYTES, EXEC_FILENAME_BYTES},
    };

    use super::*;

    /// A wire value's bytes.
    pub fn bytes<T: aya::Pod>(value: &T) -> Vec<u8> {
        // SAFETY: `T: Pod` is a plain-integer #[repr(C)] type without implicit padding, so
        // each of its bytes is initialised.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(kind: u32, backend: Backend, ts_ns: u64) -> RecordHeader {
        RecordHeader {
            kind,
            backend: backend.into(),
            ts_ns,
        }
    }

    /// Who sends, as the kernel reports it with each send.
    #[derive(Clone, Copy)]
    pub struct From {
        pub pid: u32,
        pub tid: u32,
        pub uid: u32,
        pub gid: u32,
        pub cgroup_id: u64,
        pub comm: &'static str,
    }

    /// `data` sent at `stream_offset` of connection `cookie` to 169.254.169.254:80, as a
    /// record of the size the kernel side would pick.
    pub fn send(
        backend: Backend,
        ts_ns: u64,
        cookie: u64,
        from: From,
        stream_offset: u64,
        data: &[u8],
    ) -> Vec<u8> {
        send_then_lost(backend, ts_ns, cookie, from, stream_offset, data, 0)
    }

    /// `lost` bytes sent at `stream_offset` that the kernel side could not capture.
    pub fn lost(
        backend: Backend,
        ts_ns: u64,
        cookie: u64,
        from: From,
        stream_offset: u64,
        lost: u32,
    ) -> Vec<u8> {
        send_then_lost(backend, ts_ns, cookie, from, stream_offset, &[], lost)
    }

    fn send_then_lost(
        backend: Backend,
        ts_ns: u64,
        cookie: u64,
        from: From,
        stream_offset: u64,
        data: &[u8],
        lost: u32,
    ) -> Vec<u8> {
        let mut comm = [0; 16];
        comm[..from.comm.len()].copy_from_slice(from.comm.as_bytes());
        let chunk = SendChunk {
            header: header(KIND_SEND, backend, ts_ns),
            cookie,
            pid_tgid: u64::from(from.pid) << 32 | u64::from(from.tid),
            uid_gid: u64::from(from.gid) << 32 | u64::from(from.uid),
            cgroup_id: from.cgroup_id,
            stream_offset,
            comm,
            remote_addr: IMDS_IPV4_MAPPED,
            remote_port: IMDS_PORT,
            family: AF_INET,
            send_size: data.len() as u32 + lost,
            len: data.len() as u32,
            lost,
        };
        let mut record = bytes(&chunk);
        record.extend_from_slice(data);
        let capacity = if data.len() <= 512 { 512 } else { 4096 };
        record.resize(SEND_CHUNK_HEADER_BYTES + capacity.max(data.len()), 0);
        record
    }

    pub fn close(backend: Backend, ts_ns: u64, cookie: u64) -> Vec<u8> {
        connection(KIND_CLOSE, backend, ts_ns, cookie)
    }

    /// sock_ops enrolled `cookie`.
    pub fn open(ts_ns: u64, cookie: u64) -> Vec<u8> {
        connection(KIND_OPEN, Backend::SkMsg, ts_ns, cookie)
    }

    fn connection(kind: u32, backend: Backend, ts_ns: u64, cookie: u64) -> Vec<u8> {
        bytes(&Close {
            header: header(kind, backend, ts_ns),
            cookie,
        })
    }

    /// An exec of `exe` with `argv` (NUL-terminated arguments, cut at the kernel's limit).
    pub fn exec(ts_ns: u64, pid: u32, ppid: u32, uid: u32, exe: &str, argv: &[&str]) -> Vec<u8> {
        let mut record = ExecRecord {
            header: RecordHeader {
                kind: KIND_EXEC,
                backend: 0,
                ts_ns,
            },
            start_boottime_ns: ts_ns,
            pid,
            tid: pid,
            ppid,
            uid,
            gid: uid,
            ns_pid: pid,
            filename_len: 0,
            args_len: 0,
            args_truncated: 0,
            _pad: 0,
            comm: [0; 16],
            filename: [0; EXEC_FILENAME_BYTES],
            args: [0; EXEC_ARGS_BYTES],
        };
        let name = exe.rsplit('/').next().unwrap_or(exe).as_bytes();
        let comm_len = name.len().min(15);
        record.comm[..comm_len].copy_from_slice(&name[..comm_len]);
        record.filename[..exe.len()].copy_from_slice(exe.as_bytes());
        record.filename_len = exe.len() as u32;
        let args: Vec<u8> = argv
            .iter()
            .flat_map(|a| [a.as_bytes(), b"\0"].concat())
            .collect();
        let kept = args.len().min(EXEC_ARGS_BYTES);
        record.args[..kept].copy_from_slice(&args[..kept]);
        record.args_len = kept as u32;
        record.args_truncated = u32::from(kept < args.len());
        bytes(&record)
    }

    pub fn fork(ts_ns: u64, parent_pid: u32, child_pid: u32) -> Vec<u8> {
        bytes(&ForkRecord {
            header: RecordHeader {
                kind: KIND_FORK,
                backend: 0,
                ts_ns,
            },
            start_boottime_ns: ts_ns,
            parent_pid,
            child_pid,
            child_ns_pid: child_pid,
            _pad: 0,
        })
    }

    pub fn exit(ts_ns: u64, pid: u32) -> Vec<u8> {
        bytes(&ExitRecord {
            header: RecordHeader {
                kind: KIND_EXIT,
                backend: 0,
                ts_ns,
            },
            pid,
            _pad: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{encode::bytes as as_bytes, *};

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
            lost: 0,
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

    proptest! {
        #[test]
        fn decoding_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..5_000)) {
            let _ = Record::try_from(&bytes[..]);
        }

        /// Past the kind check: every kind, with any header and any length after it.
        #[test]
        fn decoding_never_panics_on_any_record_of_a_known_kind(
            kind in 0u32..=6,
            backend in 0u32..=4,
            rest in proptest::collection::vec(any::<u8>(), 0..5_000),
        ) {
            let mut bytes = kind.to_ne_bytes().to_vec();
            bytes.extend_from_slice(&backend.to_ne_bytes());
            bytes.extend_from_slice(&rest);
            let _ = Record::try_from(&bytes[..]);
        }
    }
}
