//! A connection to the IMDS closed (`KIND_CLOSE`): user space frees its state. Also the layout
//! of `KIND_OPEN`, a connection sock_ops enrolled.

use crate::record::RecordHeader;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Close {
    pub header: RecordHeader,
    pub cookie: u64,
}

const _: () = assert!(core::mem::size_of::<Close>() == 24);

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]`, integers and byte arrays only, no padding the compiler may leave
// uninitialised (explicit `_pad` fields): every bit pattern is a valid value.
unsafe impl aya::Pod for Close {}
