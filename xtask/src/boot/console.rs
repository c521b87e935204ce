//! One boot of the test image: qemu with the root on an emulated NVMe drive (built into the
//! cloud kernels, so no initramfs) in snapshot mode, so every boot starts from the same
//! image; the serial console is logged and its `imds-boot: KEY JSON` lines collected.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    path::Path,
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    cmd,
    vm::{kernels::Emulator, qemu},
};

const MARKER: &str = "imds-boot: ";

/// After the check says it is done, poweroff should end qemu within this.
const EXIT_GRACE: Duration = Duration::from_secs(120);

/// SMBIOS like an EC2 instance's (uuid and serial starting with "ec2"): what cloud-init's
/// platform check looks for before it lets the Ec2 datasource read the IMDS.
const SMBIOS: &str = "type=1,manufacturer=Amazon EC2,uuid=ec2e1b2c-0000-4000-8000-000000000001,serial=ec2e1b2c-0000-4000-8000-000000000001";

pub struct Boot<'a> {
    pub emulator: &'a Emulator,
    pub vmlinuz: &'a Path,
    pub image: &'a Path,
    /// Appended to the kernel command line.
    pub args: &'a str,
    pub log: &'a Path,
    pub timeout: Duration,
}

/// What the check printed, by key, and the kernel's release.
pub struct Results {
    pub values: BTreeMap<String, Value>,
    pub release: String,
}

impl Results {
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.values
            .get(key)
            .with_context(|| format!("the VM's check printed no `{key}`"))
    }
}

pub fn boot(boot: &Boot<'_>, label: &str) -> Result<Results> {
    let mut qemu = qemu::command(boot.emulator);
    // no_timer_check: on a busy host the emulated CPU is too slow for the kernel's check that
    // the timer interrupt arrives through the IO-APIC, and it panics ("IO-APIC + timer
    // doesn't work"), as it does in other slow VMs.
    qemu.arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-append")
        .arg(format!(
            "{} no_timer_check root=/dev/nvme0n1 rw {}",
            qemu::KERNEL_ARGS,
            boot.args
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=root,snapshot=on",
            boot.image.display()
        ))
        .args(["-device", "nvme,drive=root,serial=root", "-smbios", SMBIOS]);
    eprintln!("+ {}", cmd::display(&qemu));
    let started = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("could not start qemu")?;
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let (lines, console) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            buf.clear();
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = BufWriter::new(
        File::create(boot.log).with_context(|| format!("creating {}", boot.log.display()))?,
    );
    let mut values = BTreeMap::new();
    let mut release = String::new();
    let mut deadline = started + boot.timeout;
    let mut problem = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match console.recv_timeout(left) {
            Ok(line) => {
                writeln!(log, "{line}").context("writing the console log")?;
                if release.is_empty()
                    && let Some(at) = line.find("Linux version ")
                {
                    release = line[at..]
                        .split_whitespace()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ");
                }
                let Some(at) = line.find(MARKER) else {
                    continue;
                };
                println!("[{label}] {}", &line[at..]);
                let (key, json) = line[at + MARKER.len()..]
                    .split_once(' ')
                    .unwrap_or((&line[at + MARKER.len()..], "null"));
                let value = serde_json::from_str(json).unwrap_or(Value::String(json.to_owned()));
                if key == "done" || key == "error" {
                    deadline = Instant::now() + EXIT_GRACE;
                }
                values.insert(key.to_owned(), value);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                problem = Some(format!(
                    "no poweroff within {}s; qemu killed (console: {})",
                    boot.timeout.as_secs(),
                    boot.log.display()
                ));
                // Only our own child, by its handle.
                let _ = child.kill();
                break;
            }
        }
    }
    log.flush().context("writing the console log")?;
    child.wait().context("waiting for qemu")?;
    println!(
        "[{label}] boot ended after {:.1}s; console in {}",
        started.elapsed().as_secs_f64(),
        boot.log.display()
    );
    if let Some(error) = values.get("error") {
        bail!(
            "the VM's check failed: {error} (console: {})",
            boot.log.display()
        );
    }
    if !values.contains_key("done") {
        bail!(
            "{}",
            problem.unwrap_or_else(|| format!(
                "the VM stopped before its check was done (console: {})",
                boot.log.display()
            ))
        );
    }
    Ok(Results { values, release })
}
