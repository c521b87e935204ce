//! The kernel matrix and where its images come from: Debian's own cloud kernels (the ones in
//! Debian's EC2 images), fetched with apt from a private configuration so the machine's
//! sources.list, lists and package cache are never touched. The emulator comes the same way
//! (see [`fetch_qemu`]).

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd,
    files::{copy, remove_dir_if_present},
};

/// Lasting, so a CI machine that is handed back keeps its kernels; target/ is wiped too often.
pub const CACHE_DIR: &str = "/var/cache/imds-probe/vm";

const DEBIAN: &str = "http://deb.debian.org/debian";
const DEBIAN_SECURITY: &str = "http://deb.debian.org/debian-security";
/// Holds the keys of every suite below (bookworm's copy still carries bullseye's).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The meta package that always depends on a suite's newest concrete cloud kernel, so the
/// matrix follows security updates without anyone editing a version here.
const META_PACKAGE: &str = "linux-image-cloud-amd64";

pub struct KernelSpec {
    /// What `--kernel` takes and the report shows; also the concrete package's version prefix.
    pub name: &'static str,
    /// Why this kernel is in the matrix.
    pub why: &'static str,
    /// apt sources (archive, suite): the suite plus its security updates where they exist.
    sources: &'static [(&'static str, &'static str)],
    /// When false, a kernel the mirror does not serve is reported as skipped, not failed.
    pub required: bool,
}

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        name: "5.10",
        why: "bullseye's cloud kernel, the oldest supported: the generation of Amazon Linux 2, \
              and the floor of sk_msg (socket-local storage from sock_ops, no bpf_loop)",
        sources: &[(DEBIAN, "bullseye"), (DEBIAN_SECURITY, "bullseye-security")],
        required: false,
    },
    KernelSpec {
        name: "6.1",
        why: "bookworm's cloud kernel: what Debian 12 EC2 images boot",
        sources: &[(DEBIAN, "bookworm"), (DEBIAN_SECURITY, "bookworm-security")],
        required: true,
    },
    KernelSpec {
        name: "6.12",
        why: "bookworm-backports' cloud kernel: the newest LTS Debian ships for EC2",
        sources: &[(DEBIAN, "bookworm-backports")],
        required: true,
    },
];

pub fn spec(name: &str) -> Option<&'static KernelSpec> {
    KERNELS.iter().find(|spec| spec.name == name)
}

/// A kernel ready to boot.
pub struct Kernel {
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
    /// Set when apt could not be asked and an earlier download stands in.
    pub note: Option<String>,
}

/// Resolves `spec` to the newest concrete kernel its suites offer, downloading and extracting
/// it unless the cache already holds that exact version.
pub fn fetch(spec: &KernelSpec) -> Result<Kernel> {
    let apt = PrivateApt::new(spec.name, spec.sources)?;
    let kernel_dir = Path::new(CACHE_DIR).join("kernels").join(spec.name);
    let resolved = apt.update().and_then(|()| apt.newest_kernel(spec));
    let (package, version) = match resolved {
        Ok(found) => found,
        Err(err) => {
            // Offline or a mirror hiccup: an earlier download still tests the code.
            let Some(kernel) = cached(&kernel_dir)? else {
                return Err(err);
            };
            return Ok(Kernel {
                note: Some(format!(
                    "apt failed ({}); using cached {} {}",
                    first_line(&format!("{err:#}")),
                    kernel.package,
                    kernel.version
                )),
                ..kernel
            });
        }
    };
    let stem = format!("{package}_{version}");
    let extracted = kernel_dir.join(&stem);
    if !extracted.join("vmlinuz").is_file() {
        let deb = apt.download(&package, &version, &kernel_dir)?;
        extract(&deb, &extracted)?;
    }
    prune(&kernel_dir, &stem)?;
    Ok(Kernel {
        vmlinuz: extracted.join("vmlinuz"),
        package,
        version,
        note: None,
    })
}

/// apt with its own sources, lists, package cache and an empty dpkg status: the host's
/// installed packages and pins cannot change which kernel is picked, and the host's apt never
/// sees these suites.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(name: &str, sources: &[(&str, &str)]) -> Result<Self> {
        let dir = Path::new(CACHE_DIR).join("apt").join(name);
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| {
                format!(
                    "creating {} (vm-test caches downloads there: run it as root)",
                    path.display()
                )
            })?;
        }
        let sources: String = sources
            .iter()
            .map(|(archive, suite)| format!("deb [signed-by={KEYRING}] {archive} {suite} main\n"))
            .collect();
        write_if_changed(&dir.join("sources.list"), sources.as_bytes())?;
        write_if_changed(&dir.join("status"), b"")?;
        Ok(Self { dir })
    }

    fn options(&self) -> Vec<String> {
        let dir = self.dir.display();
        [
            format!("Dir::Etc::SourceList={dir}/sources.list"),
            format!("Dir::Etc::SourceParts={dir}/sources.list.d"),
            format!("Dir::Etc::Preferences={dir}/preferences"),
            format!("Dir::Etc::PreferencesParts={dir}/preferences.d"),
            format!("Dir::State::Lists={dir}/lists"),
            format!("Dir::State::status={dir}/status"),
            format!("Dir::Cache={dir}/cache"),
            "Acquire::Languages=none".to_owned(),
            // These directories belong to root; apt's _apt user could not write into them.
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|option| ["-o".to_owned(), option])
        .collect()
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C")
            .args(self.options());
        cmd
    }

    fn update(&self) -> Result<()> {
        let out = cmd::output(self.command("apt-get").args(["-q", "update"]))?;
        // apt-get update exits 0 when a source could not be fetched; only its W:/E: lines say so.
        if let Some(problem) = out
            .lines()
            .find(|line| line.starts_with("E:") || line.starts_with("Err:"))
        {
            bail!("apt-get update: {problem}");
        }
        Ok(())
    }

    /// The concrete kernel package the meta package points at, and its version.
    fn newest_kernel(&self, spec: &KernelSpec) -> Result<(String, String)> {
        let depends = cmd::output(self.command("apt-cache").args(["depends", META_PACKAGE]))?;
        let prefix = format!("linux-image-{}.", spec.name);
        let package = depends
            .lines()
            .filter_map(|line| line.trim().strip_prefix("Depends:"))
            .map(str::trim)
            .find(|dep| dep.starts_with(&prefix))
            .with_context(|| {
                format!(
                    "{META_PACKAGE} in {:?} depends on no {prefix}* package:\n{depends}",
                    spec.sources
                )
            })?
            .to_owned();
        let version = self.candidate(&package)?;
        Ok((package, version))
    }

    /// The version `apt-get download package` would fetch.
    fn candidate(&self, package: &str) -> Result<String> {
        let policy = cmd::output(self.command("apt-cache").args(["policy", package]))?;
        Ok(policy
            .lines()
            .find_map(|line| line.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .filter(|version| *version != "(none)")
            .with_context(|| format!("apt has no candidate for {package}:\n{policy}"))?
            .to_owned())
    }

    /// Downloads `package=version` into `dir` and returns the .deb.
    fn download(&self, package: &str, version: &str, dir: &Path) -> Result<PathBuf> {
        // A fresh directory, so the one file in it is the download whatever apt names it.
        let staging = dir.join(".download");
        remove_dir_if_present(&staging)?;
        fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
        cmd::run(self.command("apt-get").current_dir(&staging).args([
            "-q",
            "download",
            &format!("{package}={version}"),
        ]))?;
        let mut debs = Vec::new();
        for entry in
            fs::read_dir(&staging).with_context(|| format!("reading {}", staging.display()))?
        {
            let path = entry
                .with_context(|| format!("reading {}", staging.display()))?
                .path();
            if path.extension().is_some_and(|ext| ext == "deb") {
                debs.push(path);
            }
        }
        let [deb] = <[PathBuf; 1]>::try_from(debs).map_err(|debs| {
            anyhow::anyhow!("apt-get download left {debs:?} in {}", staging.display())
        })?;
        let kept = dir.join(format!("{package}_{version}.deb"));
        fs::rename(&deb, &kept)
            .with_context(|| format!("moving {} to {}", deb.display(), kept.display()))?;
        fs::remove_dir(&staging).with_context(|| format!("removing {}", staging.display()))?;
        Ok(kept)
    }
}

/// Bookworm's QEMU 7.2 mis-emulates RFLAGS under TCG: its reserved upper bits come back as
/// garbage (visible in every register dump), and 6.12 then oopses or panics in most boots
/// (measured here: 5 of 6 boots faulted, with `-cpu max`, with AVX off, and as Nehalem), while
/// 6.1 and 5.10 happened to survive. QEMU 10 from bookworm-backports booted 6.12 cleanly every
/// time, and faster. It runs from the cache, so the machine's own QEMU and apt sources stay.
const QEMU_SOURCES: &[(&str, &str)] = &[(DEBIAN, "bookworm-backports")];
/// The emulator (TCG is built in), the option ROMs a -kernel boot loads, and the BIOS.
const QEMU_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-data", "seabios"];
const QEMU_BINARY: &str = "usr/bin/qemu-system-x86_64";

/// Which QEMU boots the VMs and where its files are.
pub struct Emulator {
    pub program: PathBuf,
    /// `-L` directories (firmware, option ROMs), searched before QEMU's built-in ones.
    pub data_dirs: Vec<PathBuf>,
    /// QEMU_MODULE_DIR, so a cached QEMU never loads the system QEMU's modules.
    pub module_dir: Option<PathBuf>,
    /// `qemu --version`'s first line.
    pub version: String,
    pub note: Option<String>,
}

impl Emulator {
    /// The machine's own qemu-system-x86_64 (installed by `cargo xtask setup`).
    pub fn system(note: Option<String>) -> Self {
        let program = PathBuf::from("qemu-system-x86_64");
        Self {
            version: qemu_version(&program).unwrap_or_else(|err| format!("{err:#}")),
            program,
            data_dirs: Vec::new(),
            module_dir: None,
            note,
        }
    }
}

/// QEMU from bookworm-backports, downloaded and unpacked into the cache unless that version is
/// there already.
pub fn fetch_qemu() -> Result<Emulator> {
    let qemu_dir = Path::new(CACHE_DIR).join("qemu");
    let apt = PrivateApt::new("qemu", QEMU_SOURCES)?;
    let wanted = apt.update().and_then(|()| {
        QEMU_PACKAGES
            .iter()
            .map(|package| Ok(((*package).to_owned(), apt.candidate(package)?)))
            .collect::<Result<Vec<_>>>()
    });
    let (root, note) = match wanted {
        Ok(packages) => {
            let stem = format!("{}_{}", packages[0].0, packages[0].1);
            let root = qemu_dir.join(&stem);
            if !root.join(QEMU_BINARY).is_file() {
                unpack_qemu(&apt, &packages, &qemu_dir, &root)?;
            }
            prune(&qemu_dir, &stem)?;
            (root, None)
        }
        Err(err) => {
            let Some(root) = newest_dir_with(&qemu_dir, QEMU_BINARY)? else {
                return Err(err);
            };
            let note = format!(
                "apt failed ({}); using cached {}",
                first_line(&format!("{err:#}")),
                root.display()
            );
            (root, Some(note))
        }
    };
    let program = root.join(QEMU_BINARY);
    // Built for trixie's libraries and backported: it runs only if this host has them all.
    let ldd = cmd::output(Command::new("ldd").arg(&program))?;
    if let Some(missing) = ldd.lines().find(|line| line.contains("not found")) {
        bail!("{} cannot run here: {}", program.display(), missing.trim());
    }
    Ok(Emulator {
        version: qemu_version(&program)?,
        data_dirs: vec![root.join("usr/share/seabios"), root.join("usr/share/qemu")],
        module_dir: Some(root.join("usr/lib/x86_64-linux-gnu/qemu")),
        program,
        note,
    })
}

fn unpack_qemu(
    apt: &PrivateApt,
    packages: &[(String, String)],
    qemu_dir: &Path,
    root: &Path,
) -> Result<()> {
    let debs_dir = qemu_dir.join(".debs");
    remove_dir_if_present(&debs_dir)?;
    let partial = qemu_dir.join(".partial");
    remove_dir_if_present(&partial)?;
    for (package, version) in packages {
        let deb = apt.download(package, version, &debs_dir)?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    }
    // Manuals and changelogs are most of what is left besides the binary.
    for unused in ["usr/share/doc", "usr/share/man"] {
        remove_dir_if_present(&partial.join(unused))?;
    }
    remove_dir_if_present(root)?;
    fs::rename(&partial, root)
        .with_context(|| format!("moving {} to {}", partial.display(), root.display()))?;
    remove_dir_if_present(&debs_dir)
}

fn qemu_version(program: &Path) -> Result<String> {
    let out = cmd::output(Command::new(program).arg("--version"))?;
    Ok(first_line(&out).to_owned())
}

/// The most recently made directory under `dir` that holds `file`.
fn newest_dir_with(dir: &Path, file: &str) -> Result<Option<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let Ok(modified) = fs::metadata(path.join(file)).and_then(|meta| meta.modified()) else {
            continue;
        };
        if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
            newest = Some((modified, path));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

/// Keeps only vmlinuz and the config (the config is there to answer "is feature X built
/// in?" later); the modules are not needed because everything the tests use is built in.
fn extract(deb: &Path, into: &Path) -> Result<()> {
    let parent = into.parent().context("kernel directory has no parent")?;
    let scratch = parent.join(".extract");
    remove_dir_if_present(&scratch)?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&scratch))?;
    let boot = scratch.join("boot");
    let mut vmlinuz = None;
    let mut config = None;
    for entry in fs::read_dir(&boot).with_context(|| format!("{} has no boot/", deb.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", boot.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if name.starts_with("vmlinuz-") {
            vmlinuz = Some(path);
        } else if name.starts_with("config-") {
            config = Some(path);
        }
    }
    let vmlinuz = vmlinuz.with_context(|| format!("no boot/vmlinuz-* in {}", deb.display()))?;
    // Into a temporary name first, so an interrupted run never leaves a half-made kernel that
    // a later run would take for a cached one.
    let partial = parent.join(".partial");
    remove_dir_if_present(&partial)?;
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    copy(&vmlinuz, &partial.join("vmlinuz"))?;
    if let Some(config) = config {
        copy(&config, &partial.join("config"))?;
    }
    remove_dir_if_present(into)?;
    fs::rename(&partial, into)
        .with_context(|| format!("moving {} to {}", partial.display(), into.display()))?;
    remove_dir_if_present(&scratch)
}

/// The newest kernel an earlier run left in `kernel_dir`, if any.
fn cached(kernel_dir: &Path) -> Result<Option<Kernel>> {
    Ok(newest_dir_with(kernel_dir, "vmlinuz")?.and_then(|dir| {
        let stem = dir.file_name()?.to_str()?.to_owned();
        let (package, version) = stem.split_once('_')?;
        Some(Kernel {
            package: package.to_owned(),
            version: version.to_owned(),
            vmlinuz: dir.join("vmlinuz"),
            note: None,
        })
    }))
}

/// Drops what older versions of this kernel left behind, so the cache stays one kernel per
/// matrix entry however many security updates pass.
fn prune(kernel_dir: &Path, keep_stem: &str) -> Result<()> {
    for entry in
        fs::read_dir(kernel_dir).with_context(|| format!("reading {}", kernel_dir.display()))?
    {
        let path = entry
            .with_context(|| format!("reading {}", kernel_dir.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if name == keep_stem || name == format!("{keep_stem}.deb") {
            continue;
        }
        if path.is_dir() {
            remove_dir_if_present(&path)?;
        } else {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn write_if_changed(path: &Path, contents: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|current| current == contents) {
        return Ok(());
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}
