//! Which capabilities the daemon has, checked before it touches anything else, so an operator
//! who starts it without them learns exactly which are missing (not a "Permission denied" from
//! whatever it happened to open first) and what each optional one would add.

use rustix::thread::{CapabilitySet, capabilities};

/// Needed to run at all.
const REQUIRED: [(CapabilitySet, &str); 3] = [
    (CapabilitySet::BPF, "CAP_BPF"),
    (CapabilitySet::PERFMON, "CAP_PERFMON"),
    (CapabilitySet::NET_ADMIN, "CAP_NET_ADMIN"),
];

/// Not needed to run, each with what its absence costs.
const USEFUL: [(CapabilitySet, &str, &str); 4] = [
    (
        CapabilitySet::SYS_RESOURCE,
        "CAP_SYS_RESOURCE",
        "RLIMIT_MEMLOCK cannot be raised, which kernels before 5.11 charge BPF maps against: loading may fail there",
    ),
    (
        CapabilitySet::SYS_ADMIN,
        "CAP_SYS_ADMIN",
        "bpffs, cgroup2 and tracefs cannot be mounted where nothing has mounted them yet",
    ),
    (
        CapabilitySet::SYS_PTRACE,
        "CAP_SYS_PTRACE",
        "other users' /proc entries may be unreadable, and connections open before start cannot be enrolled",
    ),
    (
        CapabilitySet::DAC_READ_SEARCH,
        "CAP_DAC_READ_SEARCH",
        "cgroup ids cannot be opened, so cgroup, systemd_unit and container stay null",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("reading this process's capabilities")]
    Read(#[source] rustix::io::Errno),
    #[error(
        "imds-probe needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN; missing: {}",
        .0.join(", ")
    )]
    Missing(Vec<&'static str>),
}

/// Fails naming every required capability the effective set lacks; logs the optional ones it
/// lacks with their cost.
pub fn check() -> Result<(), PrivilegeError> {
    let effective = capabilities(None).map_err(PrivilegeError::Read)?.effective;
    let missing = missing_required(effective);
    if !missing.is_empty() {
        return Err(PrivilegeError::Missing(missing));
    }
    // The unit sets LimitMEMLOCK=infinity, which makes raising the limit unnecessary.
    let memlock_unlimited =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
            .is_ok_and(|(soft, _)| soft == nix::sys::resource::RLIM_INFINITY);
    for (capability, name, cost) in USEFUL {
        let moot = capability == CapabilitySet::SYS_RESOURCE && memlock_unlimited;
        if !effective.contains(capability) && !moot {
            tracing::warn!("running without {name}: {cost}");
        }
    }
    Ok(())
}

/// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON, as it does in the kernel (and on
/// kernels before 5.8, which have neither).
fn missing_required(effective: CapabilitySet) -> Vec<&'static str> {
    let admin = effective.contains(CapabilitySet::SYS_ADMIN);
    REQUIRED
        .iter()
        .filter(|(capability, _)| {
            let covered = admin
                && (*capability == CapabilitySet::BPF || *capability == CapabilitySet::PERFMON);
            !covered && !effective.contains(*capability)
        })
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_each_missing_capability() {
        assert_eq!(
            missing_required(CapabilitySet::empty()),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        assert_eq!(
            missing_required(CapabilitySet::BPF | CapabilitySet::NET_ADMIN),
            ["CAP_PERFMON"]
        );
        let least = CapabilitySet::BPF | CapabilitySet::PERFMON | CapabilitySet::NET_ADMIN;
        assert!(missing_required(least).is_empty());
        assert!(missing_required(CapabilitySet::SYS_ADMIN | CapabilitySet::NET_ADMIN).is_empty());
    }

    #[test]
    fn the_message_names_what_is_missing() {
        let message = PrivilegeError::Missing(vec!["CAP_BPF", "CAP_NET_ADMIN"]).to_string();
        assert!(
            message.ends_with("missing: CAP_BPF, CAP_NET_ADMIN"),
            "{message}"
        );
    }
}
