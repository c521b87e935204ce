//! `cargo xtask setup`: installs what building and testing need, and only what is missing,
//! so every other task can call it first at the cost of a few quick checks.

use std::{
    env,
    ffi::OsString,
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// bpf-linker links against the nightly toolchain's own libLLVM through symlinks in
/// PREFIX/lib (its RUNPATH), so PREFIX must outlive any build: not /tmp, not target/.
/// `.cargo/config.toml` names the linker here too.
pub const PREFIX: &str = "/opt/imds-probe-toolchain";

/// Pinned so that a fresh machine gets the linker the project was verified with.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The toolchain aya-build compiles the kernel side with (`-Z build-std` needs nightly). We
/// only use the nightly the machine already has; rustup must never fetch another.
pub const NIGHTLY: &str = "nightly";

/// Debian packages the integration tests call out to, and what `vm-test` needs to boot them
/// in a VM: qemu, a static busybox for the VM's userland, the archive keys its private apt
/// sources are signed with. (The VM takes ip, curl, python3 and unshare from the host.)
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "curl",
    "python3",
    "util-linux",
    "procps",
    "strace",
    "qemu-system-x86",
    "busybox-static",
    "debian-archive-keyring",
    // `cargo xtask package` checks its .rpm with rpm; the boot test builds its Debian root
    // with mmdebstrap.
    "rpm",
    "mmdebstrap",
];

/// Cargo subcommands, pinned like bpf-linker: the packagers `cargo xtask package` builds the
/// packages with, and cargo-fuzz for `cargo xtask fuzz` (and the test's fuzz smoke stage).
const CARGO_TOOLS: &[(&str, &str)] = &[
    ("cargo-deb", "3.8.0"),
    ("cargo-generate-rpm", "0.21.1"),
    ("cargo-fuzz", "0.13.2"),
];

pub fn run() -> Result<()> {
    rust_src()?;
    musl_target()?;
    bpf_linker()?;
    cargo_tools()?;
    apt_packages()?;
    crate::sdk::install()
}

/// PATH for child processes that build: the toolchain prefix first, so aya-build and cargo
/// find bpf-linker without anyone exporting anything globally.
pub fn build_path() -> Result<OsString> {
    let bin = Path::new(PREFIX).join("bin");
    let current = env::var_os("PATH").unwrap_or_default();
    let rest = env::split_paths(&current).filter(|dir| *dir != bin);
    env::join_paths(std::iter::once(bin.clone()).chain(rest))
        .context("PATH holds an entry with ':'")
}

fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    // Recent rustup would otherwise quietly download a toolchain it cannot find.
    cmd.env("RUSTUP_AUTO_INSTALL", "0");
    cmd
}

fn rust_src() -> Result<()> {
    let installed = cmd::output(rustup().args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .context(
        "cannot list the nightly toolchain's components (setup uses the nightly already installed)",
    )?;
    if installed.lines().any(|line| line.trim() == "rust-src") {
        println!("ok: rust-src ({NIGHTLY})");
        return Ok(());
    }
    println!("installing: rust-src ({NIGHTLY})");
    cmd::run(rustup().args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))
}

/// The standard library for the packages' static build (`cargo xtask package`), for the
/// toolchain that builds the daemon.
fn musl_target() -> Result<()> {
    let target = crate::package::MUSL_TARGET;
    let installed = cmd::output(rustup().args(["target", "list", "--installed"]))?;
    if installed.lines().any(|line| line.trim() == target) {
        println!("ok: rust target {target}");
        return Ok(());
    }
    println!("installing: rust target {target}");
    cmd::run(rustup().args(["target", "add", target]))
}

/// The CARGO_TOOLS, found on the builds' PATH (PREFIX/bin first, then wherever cargo installs
/// by default) or else installed into PREFIX/bin.
fn cargo_tools() -> Result<()> {
    let path = build_path()?;
    for &(tool, version) in CARGO_TOOLS {
        let found = cmd::output(Command::new(tool).env("PATH", &path).arg("--version")).ok();
        // Each prints "NAME VERSION" (cargo-deb without the "cargo-" prefix).
        if found
            .as_deref()
            .is_some_and(|found| found.trim().ends_with(version))
        {
            println!("ok: {tool} {version}");
            continue;
        }
        println!("installing: {tool} {version} in {PREFIX}");
        cmd::run(
            Command::new(cmd::cargo())
                // Outside the workspace, so the project's .cargo/config.toml does not shape it.
                .current_dir(PREFIX)
                .args([
                    "install",
                    tool,
                    "--version",
                    version,
                    "--locked",
                    "--root",
                    PREFIX,
                ]),
        )?;
    }
    Ok(())
}

/// The nightly toolchain's shared libLLVM, which bpf-linker must share with rustc.
struct NightlyLlvm {
    major: String,
    lib_dir: PathBuf,
    lib_name: String,
}

impl NightlyLlvm {
    fn probe() -> Result<Self> {
        let verbose =
            cmd::output(rustup().args(["run", NIGHTLY, "rustc", "--version", "--verbose"]))?;
        let major = verbose
            .lines()
            .find_map(|line| line.strip_prefix("LLVM version:"))
            .and_then(|version| version.trim().split('.').next())
            .filter(|major| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()))
            .with_context(|| {
                format!("no \"LLVM version: N.x\" line in rustc's output:\n{verbose}")
            })?
            .to_owned();
        let sysroot = cmd::output(rustup().args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))?;
        let lib_dir = Path::new(sysroot.trim()).join("lib");
        let mut libs = Vec::new();
        for entry in
            fs::read_dir(&lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?
        {
            let name = entry
                .with_context(|| format!("reading {}", lib_dir.display()))?
                .file_name();
            if let Some(name) = name.to_str().filter(|name| name.starts_with("libLLVM.so.")) {
                libs.push(name.to_owned());
            }
        }
        let lib_name = match <[String; 1]>::try_from(libs) {
            Ok([name]) => name,
            Err(libs) => bail!(
                "expected one libLLVM.so.* in {}, found {libs:?}",
                lib_dir.display()
            ),
        };
        Ok(Self {
            major,
            lib_dir,
            lib_name,
        })
    }

    fn lib(&self) -> PathBuf {
        self.lib_dir.join(&self.lib_name)
    }

    /// The names bpf-linker's build (`libLLVM.so`) and its loader (the versioned name) look for.
    fn link_names(&self) -> [&str; 2] {
        ["libLLVM.so", &self.lib_name]
    }
}

fn bpf_linker() -> Result<()> {
    let llvm = NightlyLlvm::probe()?;
    let item = format!(
        "bpf-linker {BPF_LINKER_VERSION} (LLVM {} of {NIGHTLY}) in {PREFIX}",
        llvm.major
    );
    let Some(problem) = linker_problem(&llvm) else {
        println!("ok: {item}");
        return Ok(());
    };
    println!("installing: {item} ({problem})");
    install_linker(&llvm)?;
    if let Some(problem) = linker_problem(&llvm) {
        bail!("bpf-linker still unusable after installing it: {problem}");
    }
    Ok(())
}

/// Why the installed linker cannot be used as is, if it cannot. A nightly update renames or
/// removes the libLLVM it was linked against, which leaves a binary that no longer starts.
fn linker_problem(llvm: &NightlyLlvm) -> Option<String> {
    let linker = Path::new(PREFIX).join("bin/bpf-linker");
    if !linker.exists() {
        return Some("not installed".into());
    }
    let lib_dir = Path::new(PREFIX).join("lib");
    for name in llvm.link_names() {
        let link = lib_dir.join(name);
        if fs::read_link(&link).ok().as_deref() != Some(llvm.lib().as_path()) {
            return Some(format!(
                "{} does not point to {}",
                link.display(),
                llvm.lib().display()
            ));
        }
    }
    match cmd::output(Command::new(&linker).arg("--version")) {
        Ok(version) if version.trim() == format!("bpf-linker {BPF_LINKER_VERSION}") => None,
        Ok(version) => Some(format!("found {}", version.trim())),
        Err(err) => Some(format!("it does not run: {err:#}")),
    }
}

fn install_linker(llvm: &NightlyLlvm) -> Result<()> {
    let lib_dir = Path::new(PREFIX).join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| {
        format!(
            "creating {} (setup installs there: run it as root)",
            lib_dir.display()
        )
    })?;
    remove_stale_links(&lib_dir, llvm)?;
    for name in llvm.link_names() {
        let link = lib_dir.join(name);
        remove_if_present(&link)?;
        symlink(llvm.lib(), &link)
            .with_context(|| format!("linking {} to {}", link.display(), llvm.lib().display()))?;
    }
    let mut install = Command::new(cmd::cargo());
    install
        // Outside the workspace, so the project's .cargo/config.toml does not shape the tool.
        .current_dir(PREFIX)
        // bpf-linker's build.rs finds lib/libLLVM.so here instead of a system llvm-config.
        .env("LLVM_PREFIX", PREFIX)
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{}", llvm.major),
        ])
        // A stale install has the same version, which cargo would otherwise skip.
        .args(["--force", "--root", PREFIX]);
    cmd::run(&mut install)
}

/// Links to the libLLVM of an earlier nightly only mislead whoever reads the prefix.
fn remove_stale_links(lib_dir: &Path, llvm: &NightlyLlvm) -> Result<()> {
    for entry in fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", lib_dir.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if name.starts_with("libLLVM.so.") && name != llvm.lib_name && path.is_symlink() {
            remove_if_present(&path)?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

fn apt_packages() -> Result<()> {
    let mut missing = Vec::new();
    for &package in APT_PACKAGES {
        if dpkg_installed(package)? {
            println!("ok: {package} (apt)");
        } else {
            println!("installing: {package} (apt)");
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !cmd::is_root() {
        bail!(
            "installing Debian packages needs root: run `cargo xtask setup` as root, or install {missing:?}"
        );
    }
    let apt_get = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    cmd::run(apt_get().arg("update"))?;
    cmd::run(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

fn dpkg_installed(package: &str) -> Result<bool> {
    // dpkg-query fails for packages it has never heard of: that just means "missing".
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .context("cannot run dpkg-query (setup expects Debian)")?;
    Ok(out.status.success() && out.stdout == b"install ok installed")
}
