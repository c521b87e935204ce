//! Probe backends: how request bytes reach the ring buffer. Every backend feeds the same
//! records into the same pipeline; they differ only in which kernel hook sees the send.

pub mod btf_offsets;
pub mod kernel_log;
pub mod missed_runs;
pub mod open_connections;
pub mod process_events;
pub(crate) mod process_fd;
pub mod records;
pub mod send_hook;
pub mod sk_msg;
pub mod socket_budget;

use std::collections::HashSet;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
};
pub use imds_probe_common::backend::Backend;
use imds_probe_common::{
    loss::LOSS_MAP,
    process::{OFFSETS_READY_GLOBAL, SEND_HOOK_READY_GLOBAL},
    record::RING_BUFFER_MAP,
};

use crate::{
    capture::{btf_offsets::Btf, kernel_log::KernelLogLevel, open_connections::OpenConnection},
    causes::Causes,
    host::system::{self, SystemError},
    outputs::loss::KernelLoss,
};

/// The kernel object with every program, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-probe"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// The first of sk-msg, fentry, kprobe that loads and attaches here.
    Auto,
    /// Cgroup sock_ops + sk_msg: no cost on other traffic; connections open at start are
    /// enrolled from user space.
    SkMsg,
    /// fentry on tcp_sendmsg: sees every connection, also those open before start.
    Fentry,
    /// kprobe on tcp_sendmsg: as fentry, for kernels that refuse fentry.
    Kprobe,
}

/// `auto` tries these in order. sk_msg first: other TCP sends never run it, where a send
/// hook runs (briefly) on every one; the send hooks follow, fentry before kprobe because
/// trampolines cost less than breakpoints.
const AUTO_ORDER: [Backend; 3] = [Backend::SkMsg, Backend::Fentry, Backend::Kprobe];

/// Makes the backend watch connections that were open before it attached, where it does not
/// already.
pub fn watch_open(backend: Backend, ebpf: &mut Ebpf, connections: &[OpenConnection]) -> OpenWatch {
    match backend {
        Backend::SkMsg => sk_msg::enrol_open(ebpf, connections),
        // The send hooks see every send on every socket, and every close.
        Backend::Fentry | Backend::Kprobe => OpenWatch {
            inodes: connections.iter().map(|c| c.socket.inode).collect(),
            enrolled: Vec::new(),
        },
    }
}

fn attach(backend: Backend, ebpf: &mut Ebpf, send_hook_ready: bool) -> Result<(), LoadError> {
    match backend {
        Backend::SkMsg => sk_msg::attach(ebpf),
        Backend::Fentry | Backend::Kprobe if !send_hook_ready => Err(LoadError::NoSendHookOffsets),
        Backend::Fentry => send_hook::attach_fentry(ebpf),
        Backend::Kprobe => send_hook::attach_kprobe(ebpf),
    }
}

/// Which connections open before start a backend watches.
#[derive(Debug, Default)]
pub struct OpenWatch {
    /// Inodes of the sockets whose later sends the backend sees.
    pub inodes: HashSet<u64>,
    /// Cookies of the sockets the daemon enrolled itself: no program reports their close, so
    /// the daemon looks for it (`sk_msg::closed`).
    pub enrolled: Vec<u64>,
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
    #[error("loading the eBPF object failed")]
    Object(#[source] aya::EbpfError),
    #[error("program {program} failed to {step}")]
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
    #[error("reading the kernel's BTF for fentry")]
    KernelBtf(#[source] aya::BtfError),
    #[error("the kernel's BTF lacks what the send hooks need (see the log)")]
    NoSendHookOffsets,
    #[error("no backend could attach: {}", .0.iter().map(|(b, e)| format!("{b}: {}", Causes(e))).collect::<Vec<_>>().join("; "))]
    NoBackend(Vec<(Backend, LoadError)>),
    #[error("opening the kernel programs' log")]
    KernelLog(#[source] aya_log::Error),
    #[error("registering the kernel programs' log with the reactor")]
    KernelLogReader(#[source] std::io::Error),
    #[error("map {name}")]
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
    /// The programs' diagnostics, unless `--kernel-log off`.
    pub kernel_log: Option<kernel_log::Reader>,
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

/// A program of the object, as its type.
pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?;
    program.try_into().map_err(program_error(name, "find"))
}

/// The kernel's loss counters, summed over CPUs, and with `programs` the runs the kernel
/// skipped, into `counts`. A counter whose read fails keeps its last value (and the failure
/// is logged): reading it as 0 would make the next report see the count jump back up by its
/// whole total. Without `programs` (they are detached at shutdown) the last skip count stays.
pub fn read_loss(
    loss: &PerCpuArray<MapData, u64>,
    programs: Option<&Ebpf>,
    counts: &mut KernelLoss,
) {
    if let Some(missed) = programs.and_then(missed_runs::program_runs_missed) {
        counts.program_runs_missed = missed;
    }
    update_counters(&mut counts.counters, |index| {
        loss.get(&index, 0).map(|values| values.iter().sum())
    });
}

/// Sets each counter to what `read` says for its index; one whose read fails keeps its value.
fn update_counters<E: std::error::Error + 'static>(
    counts: &mut [u64],
    read: impl Fn(u32) -> Result<u64, E>,
) {
    for (index, count) in counts.iter_mut().enumerate() {
        match read(index as u32) {
            Ok(value) => *count = value,
            Err(error) => {
                tracing::warn!(index, error = %Causes(&error), "reading a kernel loss counter failed")
            }
        }
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, LoadError> {
    ebpf.take_map(name).ok_or(LoadError::MissingMap(name))
}

/// Loads the object and attaches the chosen backend. The ring buffer is taken out before
/// anything attaches, so no record can be produced that the reader will not see.
pub fn start(choice: BackendChoice, log_level: KernelLogLevel) -> Result<Probe, LoadError> {
    system::prepare()?;
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let btf = Btf::from_sys_fs()
        .inspect_err(|e| {
            tracing::warn!(
                "no kernel BTF ({}): no process tracking, no send hooks",
                Causes(e)
            )
        })
        .ok();
    let process_offsets = btf.as_ref().and_then(process_events::kernel_offsets);
    let hook_offsets = btf.as_ref().and_then(send_hook::kernel_offsets);
    drop(btf);
    let mut loader = EbpfLoader::new();
    // The programs carry no CO-RE relocations (offsets come in globals), so aya need not
    // parse the kernel's BTF again: that would double the daemon's start-up peak memory.
    loader.btf(None);
    for (offsets, ready) in [
        (&process_offsets, OFFSETS_READY_GLOBAL),
        (&hook_offsets, SEND_HOOK_READY_GLOBAL),
    ] {
        if let Some(offsets) = offsets {
            for (name, value) in offsets {
                loader.override_global(name, value, true);
            }
            loader.override_global(ready, &1u32, true);
        }
    }
    let log_global = log_level.global();
    loader.override_global(aya_log::LEVEL, &log_global, true);
    let mut ebpf = loader.load(OBJECT).map_err(LoadError::Object)?;
    let kernel_log = kernel_log::open(&mut ebpf, log_level)?;
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
    let backend = attach_first(&mut ebpf, choice, hook_offsets.is_some())?;
    if process_offsets.is_some() {
        process_events::attach(&mut ebpf)?;
    }
    tracing::info!(%backend, ?choice, process_events = process_offsets.is_some(), "programs attached");
    Ok(Probe {
        backend,
        ebpf,
        ring,
        loss,
        kernel_log,
    })
}

/// The chosen backend, or with `auto` the first in `AUTO_ORDER` that attaches; each refusal is
/// logged with its reason, which is how an operator learns why `auto` chose what it did.
fn attach_first(
    ebpf: &mut Ebpf,
    choice: BackendChoice,
    send_hook_ready: bool,
) -> Result<Backend, LoadError> {
    let candidates: &[Backend] = match choice {
        BackendChoice::Auto => &AUTO_ORDER,
        BackendChoice::SkMsg => &[Backend::SkMsg],
        BackendChoice::Fentry => &[Backend::Fentry],
        BackendChoice::Kprobe => &[Backend::Kprobe],
    };
    let mut refusals = Vec::new();
    for &backend in candidates {
        match attach(backend, ebpf, send_hook_ready) {
            Ok(()) => return Ok(backend),
            Err(e) => {
                tracing::warn!(%backend, "backend unavailable here: {}", Causes(&e));
                refusals.push((backend, e));
            }
        }
    }
    match (choice, refusals.pop()) {
        (BackendChoice::Auto, Some(last)) => {
            refusals.push(last);
            Err(LoadError::NoBackend(refusals))
        }
        (_, Some((_, only))) => Err(only),
        (_, None) => Err(LoadError::NoBackend(refusals)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_whose_read_fails_keeps_its_last_value() {
        let mut counts = [7, 8, 9];
        update_counters(&mut counts, |index| match index {
            1 => Err(std::io::Error::other("per-CPU read failed")),
            _ => Ok(u64::from(index) + 10),
        });
        assert_eq!(counts, [10, 8, 12]);
    }
}
