//! Probe backends: how request bytes reach the ring buffer. Every backend feeds the same
//! records into the same pipeline; they differ only in which kernel hook sees the send.

pub mod sk_msg;

use std::fmt;

use aya::{Ebpf, EbpfLoader, maps::{MapData, RingBuf}};
use imds_probe_common::{record::RING_BUFFER_MAP, send::BACKEND_SK_MSG};

use crate::system::SystemError;

/// The kernel object with every program, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-probe"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The first backend that loads and attaches here.
    Auto,
    /// Cgroup sock_ops + sk_msg: sees sockets connected after start-up.
    SkMsg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    SkMsg,
}

impl Backend {
    pub fn from_wire(id: u32) -> Option<Self> {
        match id {
            BACKEND_SK_MSG => Some(Self::SkMsg),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::SkMsg => "sk_msg",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this binary was built without its eBPF object (bpf-linker was missing or AYA_BUILD_SKIP \
         was set); run `cargo xtask setup` and rebuild"
    )]
    NoObject,
    #[error(transparent)]
    System(#[from] SystemError),
    #[error("loading the eBPF object failed: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("program {program} failed to {step}: {source}")]
    Program {
        program: &'static str,
        step: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Loaded and attached programs. Dropping it detaches them.
pub struct Probe {
    pub backend: Backend,
    pub ebpf: Ebpf,
}

impl Probe {
    /// Takes the ring buffer out; called once, before anything can fill it past its size.
    pub fn ring_buffer(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self.ebpf.take_map(RING_BUFFER_MAP).ok_or(LoadError::MissingMap(RING_BUFFER_MAP))?;
        RingBuf::try_from(map).map_err(|source| LoadError::Map { name: RING_BUFFER_MAP, source })
    }
}

fn load_object() -> Result<Ebpf, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    EbpfLoader::new().load(OBJECT).map_err(LoadError::Object)
}

/// Loads the object and attaches the chosen backend. `Auto` tries each backend in order of
/// preference and keeps the first that attaches, logging why the others did not.
pub fn start(choice: BackendChoice) -> Result<Probe, LoadError> {
    crate::system::prepare()?;
    let mut ebpf = load_object()?;
    match choice {
        BackendChoice::Auto | BackendChoice::SkMsg => {
            sk_msg::attach(&mut ebpf)?;
            tracing::info!(backend = "sk_msg", "attached cgroup sock_ops + sk_msg programs");
            Ok(Probe { backend: Backend::SkMsg, ebpf })
        }
    }
}
