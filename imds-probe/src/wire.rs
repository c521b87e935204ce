//! Decoding ring buffer records. Never panics: a short or unknown record is an error the
//! caller counts, not a crash.

use std::mem::size_of;

use imds_probe_common::{
    close::Close,
    process::{ExecRecord, ExitRecord, ForkRecord},
    record::{KIND_CLOSE, KIND_EXEC, KIND_EXIT, KIND_FORK, KIND_SEND, RecordHeader},
    send::{SEND_CHUNK_HEADER_BYTES, SendChunk},
};

#[derive(Debug)]
pub enum Record<'a> {
    Send { chunk: SendChunk, data: &'a [u8] },
    Close(Close),
    // Boxed: an exec record is over a kilobyte and the others are small.
    Exec(Box<ExecRecord>),
    Fork(ForkRecord),
    Exit(ExitRecord),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("send record claims {claimed} payload bytes but carries {carried}")]
    Length { claimed: u32, carried: usize },
}

/// Copies a `#[repr(C)]` plain-integer type out of the front of `bytes`.
fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: the length is checked above, `read_unaligned` has no alignment requirement, and
    // every `T` used here is a `#[repr(C)]` struct of integers and byte arrays, for which any
    // bit pattern is a valid value.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

impl<'a> TryFrom<&'a [u8]> for Record<'a> {
    type Error = DecodeError;

    fn try_from(bytes: &'a [u8]) -> Result<Self, Self::Error> {
        let header: RecordHeader = read(bytes)?;
        match header.kind {
            KIND_SEND => {
                let chunk: SendChunk = read(bytes)?;
                let payload = &bytes[SEND_CHUNK_HEADER_BYTES..];
                let data = payload
                    .get(..chunk.len as usize)
                    .ok_or(DecodeError::Length {
                        claimed: chunk.len,
                        carried: payload.len(),
                    })?;
                Ok(Record::Send { chunk, data })
            }
            KIND_CLOSE => Ok(Record::Close(read(bytes)?)),
            KIND_EXEC => Ok(Record::Exec(Box::new(read(bytes)?))),
            KIND_FORK => Ok(Record::Fork(read(bytes)?)),
            KIND_EXIT => Ok(Record::Exit(read(bytes)?)),
            kind => Err(DecodeError::UnknownKind(kind)),
        }
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
            Record::Send { chunk, data } => {
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
    fn decodes_close() {
        let close = Close {
            header: RecordHeader {
                kind: KIND_CLOSE,
                backend: 1,
                ts_ns: 1,
            },
            cookie: 9,
        };
        assert!(matches!(
            Record::try_from(&as_bytes(&close)[..]),
            Ok(Record::Close(Close { cookie: 9, .. }))
        ));
    }
}
