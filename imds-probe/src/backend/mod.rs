//! Probe backends: how request bytes reach the ring buffer. Every backend feeds the same
//! records into the same pipeline; they differ only in which kernel hook sees the send.

pub mod process_events;
pub mod sk_msg;

use std::fmt;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
};
use imds_probe_common::{
    loss::{LOSS_COUNTERS, LOSS_MAP},
    process::OFFSETS_READY_GLOBAL,
    record::RING_BUFFER_MAP,
    send::BACKEND_SK_MSG,
};

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

/// Loaded and attached programs. Dropping `ebpf` detaches them; the ring buffer and the
/// loss counters outlive it so the last records can still be drained.
pub struct Probe {
    pub backend: Backend,
    pub ebpf: Ebpf,
    pub ring: RingBuf<MapData>,
    pub loss: PerCpuArray<MapData, u64>,
}

pub(crate) fn program_error(
    program: &'static str,
    step: &'static str,
) -> impl FnOnce(aya::programs::ProgramError) -> LoadError {
    move |source| LoadError::Program {
        program,
        step,
        source,
    }
}

/// Sums the kernel's per-CPU loss counters.
pub fn read_loss(loss: &PerCpuArray<MapData, u64>) -> [u64; LOSS_COUNTERS as usize] {
    let mut counts = [0; LOSS_COUNTERS as usize];
    for (index, count) in counts.iter_mut().enumerate() {
        if let Ok(values) = loss.get(&(index as u32), 0) {
            *count = values.iter().sum();
        }
    }
    counts
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingMap(name))
}

/// Loads the object and attaches the chosen backend. The ring buffer is taken out before
/// anything attaches, so no record can be produced that the reader will not see.
pub fn start(choice: BackendChoice) -> Result<Probe, LoadError> {
    crate::system::prepare()?;
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let offsets = process_events::kernel_offsets();
    let mut loader = EbpfLoader::new();
    if let Some(offsets) = &offsets {
        for (name, value) in offsets {
            loader.override_global(name, value, true);
        }
        loader.override_global(OFFSETS_READY_GLOBAL, &1u32, true);
    }
    let mut ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
    let ring = RingBuf::try_from(take_map(&mut ebpf, RING_BUFFER_MAP)?).map_err(|source| {
        LoadError::Map {
            name: RING_BUFFER_MAP,
            source,
        }
    })?;
    let loss =
        PerCpuArray::try_from(take_map(&mut ebpf, LOSS_MAP)?).map_err(|source| LoadError::Map {
            name: LOSS_MAP,
            source,
        })?;
    let backend = match choice {
        BackendChoice::Auto | BackendChoice::SkMsg => {
            sk_msg::attach(&mut ebpf)?;
            Backend::SkMsg
        }
    };
    if offsets.is_some() {
        process_events::attach(&mut ebpf)?;
    }
    tracing::info!(%backend, ?choice, process_events = offsets.is_some(), "programs attached");
    Ok(Probe {
        backend,
        ebpf,
        ring,
        loss,
    })
}
