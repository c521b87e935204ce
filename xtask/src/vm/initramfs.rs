//! The VM's whole root file system, written as a gzip'd newc cpio archive straight from the
//! host's files: the binaries under test, the host tools the tests call with every library
//! `ldd` names, busybox for everything else, and a shell `/init`.
//!
//! Host files keep their host paths, and every symlink met on the way to them is recreated, so
//! the dynamic loader and Python find things exactly where Debian put them.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufWriter, Write},
    os::unix::fs::PermissionsExt as _,
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{cmd, setup};

/// Where the binaries under test live in the VM; init exports it as IMDS_PROBE_BIN_DIR.
pub const BIN_DIR: &str = "opt/imds-probe/bin";
/// Every integration test executable here runs once per backend.
pub const TESTS_DIR: &str = "opt/imds-probe/tests";
/// These run once per kernel, with the first backend: what they check does not depend on it.
pub const ONCE_TESTS_DIR: &str = "opt/imds-probe/tests-once";

/// Host tools the tests call (by name, through PATH); `kill`, `env`, `sh` and the rest are
/// busybox. node runs the JavaScript SDK test; util-linux's setpriv the privilege tests
/// (busybox's cannot change uids or the bounding set).
const HOST_TOOLS: &[&str] = &[
    "/usr/bin/ip",
    "/usr/bin/curl",
    "/usr/bin/unshare",
    "/usr/bin/node",
    "/usr/bin/setpriv",
];

/// Directories under the toolchain prefix the tests read at their host paths: the AWS SDKs
/// that `cargo xtask setup` installs (tests/tests/sdks.rs).
const PREFIX_TREES: &[&str] = &["sdk"];

/// The python3 symlink says which interpreter (and so which stdlib directory) to take.
const PYTHON: &str = "/usr/bin/python3";

/// Parts of the stdlib no test imports; skipping them keeps the image (and the unpacking at
/// every boot, which is emulated) small. __pycache__ is rebuilt in the VM's writable root.
const PYTHON_SKIP_DIRS: &[&str] = &[
    "__pycache__",
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "distutils",
    "site-packages",
    "dist-packages",
];
/// lib-dynload modules that only CPython's own test suite loads.
const PYTHON_SKIP_FILE_PREFIXES: &[&str] = &["_test", "_ctypes_test", "_xxtestfuzz", "xxlimited"];

const INIT: &str = include_str!("init.sh");

const ETC_FILES: &[(&str, &str)] = &[
    ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
    ("etc/group", "root:x:0:\n"),
    (
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\n",
    ),
    ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
];

/// What goes into the image besides the fixed host tools.
pub struct Contents<'a> {
    /// (name in BIN_DIR, host path).
    pub bins: &'a [(String, PathBuf)],
    /// (name in TESTS_DIR, host path).
    pub tests: &'a [(String, PathBuf)],
    /// (name in ONCE_TESTS_DIR, host path).
    pub once_tests: &'a [(String, PathBuf)],
}

/// Writes the image to `out` and returns its size in bytes.
pub fn build(contents: &Contents<'_>, out: &Path) -> Result<u64> {
    let mut tree = Tree::default();
    let mut elves: Vec<PathBuf> = Vec::new();

    tree.insert("init", Entry::Data(INIT.as_bytes().to_vec(), 0o755))?;
    for (path, text) in ETC_FILES {
        tree.insert(path, Entry::Data(text.as_bytes().to_vec(), 0o644))?;
    }
    for dir in ["proc", "sys", "dev", "run", "tmp", "root"] {
        tree.insert(dir, Entry::Dir)?;
    }
    // The merged-/usr links first, so /bin/sh and ldd's /lib64/... paths resolve as on Debian.
    for top in ["/bin", "/sbin", "/lib", "/lib64"] {
        tree.add_host_path(Path::new(top))?;
    }

    for (dir, files) in [
        (BIN_DIR, contents.bins),
        (TESTS_DIR, contents.tests),
        (ONCE_TESTS_DIR, contents.once_tests),
    ] {
        for (name, source) in files {
            tree.insert(&format!("{dir}/{name}"), Entry::File(source.clone(), 0o755))?;
            elves.push(source.clone());
        }
    }

    for tool in HOST_TOOLS {
        elves.push(tree.add_host_path(Path::new(tool)).with_context(|| {
            format!("{tool} is missing on the host: `cargo xtask setup` installs it")
        })?);
    }
    python(&mut tree, &mut elves)?;
    for sub in PREFIX_TREES {
        let dir = Path::new(setup::PREFIX).join(sub);
        if !dir.is_dir() {
            bail!(
                "{} is missing on the host: `cargo xtask setup` installs it",
                dir.display()
            );
        }
        tree.add_host_tree(&dir, &mut |path, is_dir| {
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or_default();
            if !is_dir && name.ends_with(".so") {
                elves.push(path.to_path_buf());
            }
            !(is_dir && name == "__pycache__")
        })?;
    }
    for lib in shared_libraries(&elves)? {
        tree.add_host_path(&lib)?;
    }
    busybox(&mut tree)?;

    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    // gzip, not an in-process encoder: it is on every Debian machine and adds no crate.
    let mut gzip = Command::new("gzip")
        .args(["-n", "-6", "-c"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("could not start gzip")?;
    let stdin = gzip.stdin.take().context("gzip has no stdin")?;
    let mut writer = BufWriter::with_capacity(1 << 20, stdin);
    let written = tree.write_newc(&mut writer);
    let flushed = writer.flush().context("writing to gzip");
    drop(writer);
    let status = gzip.wait().context("waiting for gzip")?;
    written?;
    flushed?;
    if !status.success() {
        bail!("gzip failed ({status}) writing {}", out.display());
    }
    Ok(fs::metadata(out)
        .with_context(|| format!("reading {}", out.display()))?
        .len())
}

/// The interpreter the python3 link names, its stdlib, and its compiled modules (whose
/// libraries join `elves`).
fn python(tree: &mut Tree, elves: &mut Vec<PathBuf>) -> Result<()> {
    let interpreter = tree.add_host_path(Path::new(PYTHON)).with_context(|| {
        format!("{PYTHON} is missing on the host: `cargo xtask setup` installs it")
    })?;
    elves.push(interpreter.clone());
    let version = interpreter
        .file_name()
        .and_then(|name| name.to_str())
        .filter(|name| name.starts_with("python3."))
        .with_context(|| {
            format!(
                "{PYTHON} resolves to {}, not python3.N",
                interpreter.display()
            )
        })?;
    let stdlib = Path::new("/usr/lib").join(version);
    tree.add_host_tree(&stdlib, &mut |path, is_dir| {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if is_dir {
            // config-3.N-<triplet> is for building extensions, not running them.
            return !(PYTHON_SKIP_DIRS.contains(&name) || name.starts_with("config-"));
        }
        let keep = !PYTHON_SKIP_FILE_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix));
        if keep && name.ends_with(".so") {
            elves.push(path.to_path_buf());
        }
        keep
    })
}

/// busybox-static, with one link per applet in /usr/bin unless a real tool already has the
/// name (the real `ip` understands everything the tests ask of it; busybox's might not).
fn busybox(tree: &mut Tree) -> Result<()> {
    let busybox = tree.add_host_path(Path::new("/usr/bin/busybox")).context(
        "/usr/bin/busybox is missing on the host: `cargo xtask setup` installs busybox-static",
    )?;
    let ldd = Command::new("ldd")
        .arg(&busybox)
        .output()
        .context("could not run ldd")?;
    if ldd.status.success() {
        bail!(
            "{} is dynamically linked: install busybox-static, the VM has no libraries for it",
            busybox.display()
        );
    }
    let applets = cmd::output(Command::new(&busybox).arg("--list"))?;
    for applet in applets
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        let path = format!("usr/bin/{applet}");
        if !tree.contains(&path) {
            tree.insert(&path, Entry::Symlink(PathBuf::from("busybox")))?;
        }
    }
    Ok(())
}

/// Every library the loader will map for `elves`, the loader itself included, as ldd resolves
/// them on this host.
fn shared_libraries(elves: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut libs = std::collections::BTreeSet::new();
    for elf in elves {
        let out = Command::new("ldd")
            .arg(elf)
            .output()
            .with_context(|| format!("could not run ldd {}", elf.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // ldd's way of saying "static": nothing to add.
            if stdout.contains("not a dynamic executable")
                || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            {
                continue;
            }
            bail!(
                "ldd {} failed: {}",
                elf.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        for line in stdout.lines() {
            let line = line.trim();
            if line.contains("=> not found") {
                bail!("ldd {}: {line}", elf.display());
            }
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or the loader's
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no path.
            let path = line.split_once("=> ").map_or(line, |(_, right)| right);
            let path = path.split(" (").next().unwrap_or_default().trim();
            if path.starts_with('/') {
                libs.insert(PathBuf::from(path));
            }
        }
    }
    Ok(libs.into_iter().collect())
}

enum Entry {
    Dir,
    /// Host file to copy, and its mode.
    File(PathBuf, u32),
    Data(Vec<u8>, u32),
    Symlink(PathBuf),
}

impl Entry {
    fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Dir, Self::Dir) => true,
            (Self::File(a, _), Self::File(b, _)) => a == b,
            (Self::Symlink(a), Self::Symlink(b)) => a == b,
            _ => false,
        }
    }
}

/// Archive paths (relative, no leading '/') in an order where every directory precedes what
/// it holds, which the kernel's unpacker needs.
#[derive(Default)]
struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Tree {
    fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(Path::new(path))
    }

    fn insert(&mut self, path: &str, entry: Entry) -> Result<()> {
        self.insert_path(Path::new(path), entry)
    }

    fn insert_path(&mut self, path: &Path, entry: Entry) -> Result<()> {
        let path = path.strip_prefix("/").unwrap_or(path);
        for ancestor in path.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            match self.entries.get(ancestor) {
                None => {
                    self.entries.insert(ancestor.to_path_buf(), Entry::Dir);
                }
                Some(Entry::Dir) => {}
                Some(_) => bail!(
                    "initramfs: {} would sit under {}, which is not a directory",
                    path.display(),
                    ancestor.display()
                ),
            }
        }
        match self.entries.get(path) {
            Some(existing) if existing.same_as(&entry) => Ok(()),
            Some(_) => bail!("initramfs: two different entries for {}", path.display()),
            None => {
                self.entries.insert(path.to_path_buf(), entry);
                Ok(())
            }
        }
    }

    /// Adds host file or directory `path` at the same place, recreating each symlink on the
    /// way (so `/lib64/ld-linux-x86-64.so.2` brings `lib64 -> usr/lib64` and the loader's own
    /// link along). Returns the real path it ended at.
    fn add_host_path(&mut self, path: &Path) -> Result<PathBuf> {
        self.add_host_path_at_depth(path, 0)
    }

    fn add_host_path_at_depth(&mut self, path: &Path, depth: u32) -> Result<PathBuf> {
        if depth > 40 {
            bail!("too many levels of symlinks resolving {}", path.display());
        }
        let mut real = PathBuf::from("/");
        for component in path.components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Prefix(_) => bail!("unexpected path prefix in {}", path.display()),
                Component::ParentDir => {
                    real.pop();
                }
                Component::Normal(name) => {
                    let next = real.join(name);
                    let meta = fs::symlink_metadata(&next)
                        .with_context(|| format!("reading {}", next.display()))?;
                    if meta.file_type().is_symlink() {
                        let target = fs::read_link(&next)
                            .with_context(|| format!("reading link {}", next.display()))?;
                        self.insert_path(&next, Entry::Symlink(target.clone()))?;
                        real = self.add_host_path_at_depth(&real.join(target), depth + 1)?;
                    } else {
                        real = next;
                    }
                }
            }
        }
        let meta = fs::metadata(&real).with_context(|| format!("reading {}", real.display()))?;
        if meta.is_dir() {
            self.insert_path(&real, Entry::Dir)?;
        } else if meta.is_file() {
            let mode = meta.permissions().mode() & 0o7777;
            self.insert_path(&real, Entry::File(real.clone(), mode))?;
        } else {
            bail!("{} is neither a file nor a directory", real.display());
        }
        Ok(real)
    }

    /// Adds the host directory `dir` and whatever `keep(path, is_dir)` accepts under it.
    fn add_host_tree(
        &mut self,
        dir: &Path,
        keep: &mut dyn FnMut(&Path, bool) -> bool,
    ) -> Result<()> {
        self.add_host_path(dir)?;
        let mut entries: Vec<_> = fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .collect::<io::Result<_>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for entry in entries {
            let path = entry.path();
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {}", path.display()))?;
            if kind.is_dir() {
                if keep(&path, true) {
                    self.add_host_tree(&path, keep)?;
                }
            } else if keep(&path, false) {
                if kind.is_symlink() && fs::metadata(&path).is_err() {
                    // A dangling link (into a package that is not installed) helps no one.
                    continue;
                }
                self.add_host_path(&path)?;
            }
        }
        Ok(())
    }

    /// The "new ASCII" cpio format the kernel unpacks (Documentation/driver-api/
    /// early-userspace/buffer-format.rst): a 110-byte header of hex fields, the NUL-terminated
    /// name, the data, each padded to 4 bytes. Owner root, mtime 0, so images are reproducible.
    fn write_newc(&self, out: &mut impl Write) -> Result<()> {
        for (inode, (path, entry)) in (1u32..).zip(&self.entries) {
            let name = path
                .to_str()
                .with_context(|| format!("non-UTF-8 path {}", path.display()))?;
            let (mode, nlink, data): (u32, u32, Data<'_>) = match entry {
                Entry::Dir => (0o040_755, 2, Data::Bytes(&[])),
                Entry::File(source, mode) => (0o100_000 | mode, 1, Data::File(source)),
                Entry::Data(bytes, mode) => (0o100_000 | mode, 1, Data::Bytes(bytes)),
                Entry::Symlink(target) => (
                    0o120_777,
                    1,
                    Data::Bytes(target.as_os_str().as_encoded_bytes()),
                ),
            };
            let size = match &data {
                Data::Bytes(bytes) => bytes.len() as u64,
                Data::File(source) => fs::metadata(source)
                    .with_context(|| format!("reading {}", source.display()))?
                    .len(),
            };
            let size32 = u32::try_from(size)
                .with_context(|| format!("{} is too large for cpio", path.display()))?;
            write_header(out, inode, mode, nlink, size32, name)?;
            match data {
                Data::Bytes(bytes) => out.write_all(bytes)?,
                Data::File(source) => {
                    let mut file = File::open(source)
                        .with_context(|| format!("opening {}", source.display()))?;
                    let copied = io::copy(&mut file, out)
                        .with_context(|| format!("copying {}", source.display()))?;
                    if copied != size {
                        bail!("{} changed size while being archived", source.display());
                    }
                }
            }
            pad(out, size)?;
        }
        write_header(out, 0, 0, 1, 0, "TRAILER!!!")?;
        Ok(())
    }
}

enum Data<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

const NEWC_HEADER_LEN: u64 = 110;

fn write_header(
    out: &mut impl Write,
    inode: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    name: &str,
) -> Result<()> {
    let name_len = u32::try_from(name.len() + 1).context("cpio name too long")?;
    // inode, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
    // namesize, check.
    write!(
        out,
        "070701{inode:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_len:08x}{:08x}",
        0, 0, 0, 0, 0, 0, 0, 0
    )?;
    out.write_all(name.as_bytes())?;
    out.write_all(b"\0")?;
    pad(out, NEWC_HEADER_LEN + u64::from(name_len))
}

fn pad(out: &mut impl Write, len: u64) -> Result<()> {
    let padding = ((4 - len % 4) % 4) as usize;
    out.write_all(&[0; 3][..padding])?;
    Ok(())
}
