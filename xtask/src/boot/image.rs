//! The boot test's disk: a Debian root built by mmdebstrap from Debian's packages (cached
//! under /var/cache/imds-probe/boot, like the kernels), the `.rpm` installed into a scratch
//! copy and removed again with `rpm --root`, the `.deb` installed with dpkg inside it as an
//! image build would, the test's units and cloud-init's configuration added, and the whole
//! tree written to an ext4 image.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd, files,
    package::{self, Dist},
};

/// Lasting, so CI machines that are handed back keep the root (about 60 MiB of downloads).
const CACHE_DIR: &str = "/var/cache/imds-probe/boot";
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// systemd as PID 1 (udev, or the serial console waits 90 s for its device), ip and curl for
/// the fake IMDS and the early caller, and Debian's cloud-init (it brings python3, which
/// the check script uses).
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "iproute2",
    "curl",
    "cloud-init",
];
/// Room for the root (about 330 MiB) plus what the boots write; sparse on the host.
const IMAGE_SIZE: &str = "1G";

const GUEST_UNITS: &[(&str, &str)] = &[
    ("fake-imds.service", include_str!("guest/fake-imds.service")),
    (
        "early-imds-caller.service",
        include_str!("guest/early-imds-caller.service"),
    ),
    (
        "imds-boot-check.service",
        include_str!("guest/imds-boot-check.service"),
    ),
];
const CHECK_SCRIPT: &str = include_str!("guest/imds-boot-check.py");
const CLOUD_CFG: &str = include_str!("guest/cloud.cfg");

/// Builds target/boot/root.img and returns its path.
pub fn build(dist: &Dist, work: &Path) -> Result<PathBuf> {
    let tarball = base_root()?;
    let root = work.join("root");
    files::remove_dir_if_present(&root)?;
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    cmd::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("-C")
            .arg(&root),
    )?;

    check_rpm_install(&dist.rpm, &root)?;
    install_deb(&dist.deb, &root)?;
    add_test_files(dist, &root)?;

    let image = work.join("root.img");
    if image.exists() {
        fs::remove_file(&image).with_context(|| format!("removing {}", image.display()))?;
    }
    cmd::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&root)
            .arg(&image)
            .arg(IMAGE_SIZE),
    )?;
    files::remove_dir_if_present(&root)?;
    Ok(image)
}

/// The mmdebstrap tarball for PACKAGES, built once.
fn base_root() -> Result<PathBuf> {
    // FNV-1a of the package list: a new list gets a new tarball.
    let key = PACKAGES
        .iter()
        .flat_map(|package| package.bytes().chain([b' ']))
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
        });
    let tarball = Path::new(CACHE_DIR).join(format!("{SUITE}-{key:016x}.tar"));
    if tarball.is_file() {
        return Ok(tarball);
    }
    fs::create_dir_all(CACHE_DIR)
        .with_context(|| format!("creating {CACHE_DIR} (run the boot test as root)"))?;
    let partial = tarball.with_extension("tar.partial");
    cmd::run(
        Command::new("mmdebstrap")
            .args(["--mode=root", "--variant=minbase", "--format=tar"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&partial)
            .arg(MIRROR),
    )?;
    fs::rename(&partial, &tarball)
        .with_context(|| format!("renaming {} to {}", partial.display(), tarball.display()))?;
    Ok(tarball)
}

/// The `.rpm` into the root with rpm's own root switch: its scripts run chrooted there with
/// the root's real systemctl (offline, as in an image build), so they must enable the unit;
/// removing it must disable it and leave no file behind. The rpm database goes afterwards.
fn check_rpm_install(rpm: &Path, root: &Path) -> Result<()> {
    let scripts = cmd::output(Command::new("rpm").args(["-qp", "--scripts"]).arg(rpm))?;
    for expected in [
        "systemctl enable --now imds-probe.service",
        "systemctl try-restart imds-probe.service",
        "systemctl disable --now imds-probe.service",
    ] {
        if !scripts.contains(expected) {
            bail!("the rpm's scripts lack `{expected}`:\n{scripts}");
        }
    }
    let listed = cmd::output(Command::new("rpm").arg("-qlp").arg(rpm))?;
    for expected in package::INSTALLED_FILES {
        if !listed.lines().any(|line| line == *expected) {
            bail!("the rpm lacks {expected}:\n{listed}");
        }
    }
    let rpm_root = |args: &[&str]| {
        let mut command = Command::new("rpm");
        command.arg("--root").arg(root).args(args);
        command
    };
    cmd::run(rpm_root(&["-i", "--nodeps", "--nosignature"]).arg(rpm))?;
    let wants = root.join("etc/systemd/system/sysinit.target.wants/imds-probe.service");
    for path in package::INSTALLED_FILES
        .iter()
        .map(|file| root.join(file.trim_start_matches('/')))
        .chain([wants.clone()])
    {
        if path.symlink_metadata().is_err() {
            bail!(
                "after `rpm --root {} -i`, {} is missing",
                root.display(),
                path.display()
            );
        }
    }
    cmd::run(&mut rpm_root(&["-e", "imds-probe"]))?;
    for path in package::INSTALLED_FILES
        .iter()
        .map(|file| root.join(file.trim_start_matches('/')))
        .chain([wants])
    {
        if path.symlink_metadata().is_ok() {
            bail!(
                "after `rpm --root {} -e`, {} is still there",
                root.display(),
                path.display()
            );
        }
    }
    for database in ["var/lib/rpm", "usr/lib/sysimage/rpm"] {
        files::remove_dir_if_present(&root.join(database))?;
    }
    println!("boot-test: rpm scripts, file list, rpm --root install and removal: ok");
    Ok(())
}

/// dpkg inside the root, as an image build installs a package: its postinst enables the unit
/// (and would start it where systemd runs). The package stays in /root for the upgrade step.
fn install_deb(deb: &Path, root: &Path) -> Result<()> {
    files::copy(deb, &root.join("root/imds-probe.deb"))?;
    cmd::run(
        Command::new("chroot")
            .arg(root)
            .args(["dpkg", "-i", "/root/imds-probe.deb"]),
    )?;
    let wants = root.join("etc/systemd/system/sysinit.target.wants/imds-probe.service");
    if wants.symlink_metadata().is_err() {
        bail!("the .deb's postinst did not enable imds-probe.service");
    }
    Ok(())
}

fn add_test_files(dist: &Dist, root: &Path) -> Result<()> {
    let write = |path: &str, contents: &str, mode: u32| -> Result<()> {
        let path = root.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))
    };
    for (name, unit) in GUEST_UNITS {
        write(&format!("etc/systemd/system/{name}"), unit, 0o644)?;
    }
    write("usr/local/libexec/imds-boot-check", CHECK_SCRIPT, 0o755)?;
    write("etc/cloud/cloud.cfg.d/99-imds-boot.cfg", CLOUD_CFG, 0o644)?;
    // A machine id of its own, so systemd does not treat each boot as a first boot.
    write(
        "etc/machine-id",
        "1e1b2c0000004000800000000000a001\n",
        0o444,
    )?;
    write("etc/hostname", "imds-boot\n", 0o644)?;
    files::copy(
        &dist.bin_dir.join(package::FAKE_IMDS),
        &root.join("usr/local/bin/fake-imds"),
    )?;
    // A login prompt on the console would only interleave with the check's lines.
    symlink(
        "/dev/null",
        root.join("etc/systemd/system/serial-getty@ttyS0.service"),
    )
    .context("masking serial-getty@ttyS0")?;
    cmd::run(
        Command::new("chroot")
            .arg(root)
            .args(["systemctl", "enable"])
            .args(GUEST_UNITS.iter().map(|(name, _)| name)),
    )
}
