//! Which kernel hook produced a record. On the wire it is a `u32` (`RecordHeader::backend`);
//! user space turns it into [`Backend`] with `TryFrom`, and an id it does not know is a
//! decode error, never a guess.

/// The cgroup `sock_ops` + `sk_msg` backend. `stream_offset` counts bytes from the first.
pub const BACKEND_SK_MSG: u32 = 1;
/// `fentry` on tcp_sendmsg. `stream_offset` is TCP's 32-bit write sequence, which also moves
/// for bytes sent another way (sendpage), so user space notices them as a gap.
pub const BACKEND_FENTRY: u32 = 2;
/// `kprobe` on tcp_sendmsg; offsets as for `BACKEND_FENTRY`.
pub const BACKEND_KPROBE: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
#[cfg_attr(feature = "user", serde(rename_all = "snake_case"))]
pub enum Backend {
    SkMsg,
    Fentry,
    Kprobe,
}

/// A backend id that no backend has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownBackend(pub u32);

impl TryFrom<u32> for Backend {
    type Error = UnknownBackend;

    fn try_from(id: u32) -> Result<Self, Self::Error> {
        match id {
            BACKEND_SK_MSG => Ok(Self::SkMsg),
            BACKEND_FENTRY => Ok(Self::Fentry),
            BACKEND_KPROBE => Ok(Self::Kprobe),
            other => Err(UnknownBackend(other)),
        }
    }
}

impl From<Backend> for u32 {
    fn from(backend: Backend) -> Self {
        match backend {
            Backend::SkMsg => BACKEND_SK_MSG,
            Backend::Fentry => BACKEND_FENTRY,
            Backend::Kprobe => BACKEND_KPROBE,
        }
    }
}

impl Backend {
    pub const ALL: [Self; 3] = [Self::SkMsg, Self::Fentry, Self::Kprobe];

    /// The name events and logs use.
    pub fn name(self) -> &'static str {
        match self {
            Self::SkMsg => "sk_msg",
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
        }
    }

    /// Whether the records' stream offsets are TCP's 32-bit write sequence (send hooks)
    /// rather than a byte count from the connection's first byte (sk_msg).
    pub fn offsets_are_tcp_sequence(self) -> bool {
        !matches!(self, Self::SkMsg)
    }
}

impl core::fmt::Display for Backend {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_refused() {
        for backend in Backend::ALL {
            assert_eq!(Backend::try_from(u32::from(backend)), Ok(backend));
        }
        assert_eq!(Backend::try_from(0), Err(UnknownBackend(0)));
        assert_eq!(Backend::try_from(4), Err(UnknownBackend(4)));
    }
}
