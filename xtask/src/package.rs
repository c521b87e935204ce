//! `cargo xtask package`: static (musl) binaries, and from them a `.deb` (cargo-deb) and an
//! `.rpm` (cargo-generate-rpm) for x86_64, in one folder with their SHA-256 checksums. A
//! static binary runs on any distribution's kernel and libc, so one build serves both
//! packages and the bare binary for everything else.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, files::copy, workspace::Workspace};

/// Rust's musl target links the C runtime in: no libc version to match on the host.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The package the daemon and its packaging metadata live in.
const PACKAGE: &str = "imds-probe";

/// What the packages and the bare download hold.
const DAEMON: &str = "imds-probe";
/// Built static too, for the boot test's VM.
const TEST_KIT: &str = "imds-probe-test-kit";
pub const FAKE_IMDS: &str = "fake-imds";

const UNIT: &str = "systemd/imds-probe.service";

/// Files the `.rpm` installs (the `.deb` the same, with the unit under /lib on Debian).
pub const INSTALLED_FILES: &[&str] = &[
    "/usr/sbin/imds-probe",
    "/usr/lib/systemd/system/imds-probe.service",
    "/usr/share/doc/imds-probe/README.md",
];

/// Everything `cargo xtask package` produced.
pub struct Dist {
    pub deb: PathBuf,
    pub rpm: PathBuf,
    /// Static binaries by name (the daemon, fake-imds).
    pub bin_dir: PathBuf,
}

pub fn run(ws: &Workspace) -> Result<Dist> {
    cmd::run(ws.cargo().args([
        "build",
        "--release",
        "--target",
        MUSL_TARGET,
        "-p",
        PACKAGE,
        "--bin",
        DAEMON,
        "-p",
        TEST_KIT,
        "--bin",
        FAKE_IMDS,
    ]))?;
    let target = ws.target_dir()?;
    let bin_dir = target.join(MUSL_TARGET).join("release");
    for name in [DAEMON, FAKE_IMDS] {
        let path = bin_dir.join(name);
        if let Some(interpreter) = elf_interpreter(&path)? {
            bail!(
                "{} is not static: it asks for the loader {interpreter}",
                path.display()
            );
        }
    }

    let dir = target.join("dist");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    cmd::run(
        ws.cargo()
            .args(["deb", "-p", PACKAGE, "--no-build", "--target", MUSL_TARGET])
            .arg("--output")
            .arg(&dir),
    )?;
    cmd::run(
        ws.cargo()
            .args(["generate-rpm", "-p", PACKAGE, "--target", MUSL_TARGET])
            .arg("--output")
            .arg(&dir),
    )?;
    let version = env!("CARGO_PKG_VERSION");
    let bare = dir.join(format!("{DAEMON}-{version}-{MUSL_TARGET}"));
    copy(&bin_dir.join(DAEMON), &bare)?;
    copy(&ws.root().join(UNIT), &dir.join("imds-probe.service"))?;

    let deb = only_file_ending(&dir, ".deb")?;
    let rpm = only_file_ending(&dir, ".rpm")?;
    let mut names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    let sums = cmd::output(Command::new("sha256sum").current_dir(&dir).args(&names))?;
    fs::write(dir.join("SHA256SUMS"), sums).context("writing SHA256SUMS")?;
    cmd::run(Command::new("sha256sum").current_dir(&dir).args([
        "--check",
        "--quiet",
        "SHA256SUMS",
    ]))?;
    println!("package: {}", dir.display());
    for name in names
        .iter()
        .chain(std::iter::once(&"SHA256SUMS".to_owned()))
    {
        let size = fs::metadata(dir.join(name))?.len();
        println!("  {name} ({:.1} MiB)", size as f64 / f64::from(1 << 20));
    }
    Ok(Dist { deb, rpm, bin_dir })
}

/// The ELF's PT_INTERP (its dynamic loader), or None for a static executable.
fn elf_interpreter(path: &Path) -> Result<Option<String>> {
    const PT_INTERP: u32 = 3;
    let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let field = |at: usize, len: usize| -> Result<u64> {
        let bytes = elf
            .get(at..at + len)
            .with_context(|| format!("{} is cut short", path.display()))?;
        Ok(bytes
            .iter()
            .rev()
            .fold(0, |acc, &byte| (acc << 8) | u64::from(byte)))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) || elf.get(5) != Some(&1) {
        bail!("{} is not a little-endian 64-bit ELF", path.display());
    }
    let (phoff, phentsize, phnum) = (field(0x20, 8)?, field(0x36, 2)?, field(0x38, 2)?);
    for index in 0..phnum {
        let header = usize::try_from(phoff + index * phentsize)?;
        if field(header, 4)? == u64::from(PT_INTERP) {
            let (offset, size) = (field(header + 8, 8)?, field(header + 32, 8)?);
            let at = usize::try_from(offset)?;
            let bytes = elf
                .get(at..at + usize::try_from(size)?)
                .with_context(|| format!("{}: PT_INTERP out of the file", path.display()))?;
            return Ok(Some(
                String::from_utf8_lossy(bytes)
                    .trim_end_matches('\0')
                    .to_owned(),
            ));
        }
    }
    Ok(None)
}

fn only_file_ending(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(found) {
        Ok([path]) => Ok(path),
        Err(found) => bail!(
            "expected one *{suffix} in {}, found {found:?}",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_executables() {
        // Debian's sh is dynamic; busybox-static (a setup package) is static.
        let sh = elf_interpreter(Path::new("/bin/sh")).expect("readable");
        assert!(sh.is_some_and(|loader| loader.contains("ld-linux")));
        assert_eq!(
            elf_interpreter(Path::new("/bin/busybox")).expect("readable"),
            None
        );
        assert!(elf_interpreter(Path::new("/etc/hostname")).is_err());
    }
}
