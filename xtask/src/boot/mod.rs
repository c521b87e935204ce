//! `cargo xtask boot-test`: the packaged daemon in a real systemd boot. A Debian root built
//! from Debian's packages (with cloud-init) gets the `.deb` installed the way an image
//! build would; it boots under qemu (TCG, no network device) on Debian's cloud kernel with
//! systemd as PID 1. A fake IMDS serves the IMDS addresses on the VM's loopback from a unit
//! of its own, an early caller and cloud-init's Ec2 datasource call it during boot, and a
//! unit run at the end (`guest/imds-boot-check.py`) reports on the serial console what the
//! host asserts here. A few more boots, with the unit masked and not, time the boot.

mod console;
mod image;

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    package,
    vm::{self, kernels},
    workspace::Workspace,
};

/// The exposure `systemd-analyze security` may give the unit inside the booted VM.
const MAX_EXPOSURE: f64 = 3.0;

/// The full boot (restarts under load included) and each timing boot, under emulation.
const FULL_BOOT_TIMEOUT: Duration = Duration::from_secs(2400);
const TIMING_BOOT_TIMEOUT: Duration = Duration::from_secs(1200);

#[derive(clap::Args)]
pub struct Options {
    /// Kernel to boot (repeatable): 5.10, 6.1, 6.12. Default: 6.1.
    #[arg(long = "kernel", value_name = "NAME")]
    kernels: Vec<String>,
    /// Boots with imds-probe enabled and as many with it masked, for the boot-time ratio.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    boots: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kernels: Vec::new(),
            boots: 3,
        }
    }
}

pub fn run(ws: &Workspace, opts: &Options) -> Result<()> {
    let started = Instant::now();
    let dist = package::run(ws)?;
    let _lock = vm::lock()?;
    let work = ws.target_dir()?.join("boot");
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let image_started = Instant::now();
    let image = image::build(&dist, &work)?;
    println!(
        "boot-test: image {} in {:.1}s",
        image.display(),
        image_started.elapsed().as_secs_f64()
    );
    let emulator = kernels::fetch_qemu()?;
    let names: Vec<&str> = if opts.kernels.is_empty() {
        vec!["6.1"]
    } else {
        opts.kernels.iter().map(String::as_str).collect()
    };
    let mut failures = Vec::new();
    let mut report = String::new();
    for name in names {
        let spec =
            kernels::spec(name).with_context(|| format!("no kernel {name} in the matrix"))?;
        let kernel = kernels::fetch(spec)?;
        let boots = BootSet {
            emulator: &emulator,
            vmlinuz: &kernel.vmlinuz,
            image: &image,
            work: &work,
            name,
        };
        match boots.run(opts.boots) {
            Ok(text) => report.push_str(&text),
            Err(err) => {
                let _ = writeln!(report, "boot-test {name}: FAILED: {err:#}");
                failures.push(name);
            }
        }
    }
    print!("{report}");
    println!("boot-test: total {:.1}s", started.elapsed().as_secs_f64());
    if !failures.is_empty() {
        bail!("boot-test failed on {}", failures.join(", "));
    }
    Ok(())
}

struct BootSet<'a> {
    emulator: &'a kernels::Emulator,
    vmlinuz: &'a Path,
    image: &'a Path,
    work: &'a Path,
    name: &'a str,
}

impl BootSet<'_> {
    fn boot(&self, label: &str, args: &str, timeout: Duration) -> Result<console::Results> {
        let log = self.work.join(format!("{}-{label}.log", self.name));
        console::boot(
            &console::Boot {
                emulator: self.emulator,
                vmlinuz: self.vmlinuz,
                image: self.image,
                args,
                log: &log,
                timeout,
            },
            &format!("{}/{label}", self.name),
        )
    }

    /// The full boot with its checks, then the timing boots; the report's text.
    fn run(&self, boots: u16) -> Result<String> {
        let full = self.boot("full", "imds_boot.mode=full", FULL_BOOT_TIMEOUT)?;
        let mut text = format!("boot-test {}: {}\n", self.name, full.release);
        check_full(&full, &mut text)?;
        let mut with = vec![multi_user_us(&full)?];
        let mut without = Vec::new();
        for round in 0..boots {
            // Interleaved, so a slower stretch of the shared machine hits both sides.
            let plain = self.boot(
                &format!("without-{round}"),
                "imds_boot.mode=timing systemd.mask=imds-probe.service",
                TIMING_BOOT_TIMEOUT,
            )?;
            without.push(multi_user_us(&plain)?);
            if round + 1 < boots {
                let probed = self.boot(
                    &format!("with-{round}"),
                    "imds_boot.mode=timing",
                    TIMING_BOOT_TIMEOUT,
                )?;
                with.push(multi_user_us(&probed)?);
            }
        }
        let (with_median, without_median) = (median(&mut with), median(&mut without));
        let _ = writeln!(
            text,
            "  multi-user.target after kernel start: with imds-probe {} [{}], masked {} [{}]: ratio of medians {:.3}",
            seconds(with_median),
            with.iter()
                .map(|&us| seconds(us))
                .collect::<Vec<_>>()
                .join(" "),
            seconds(without_median),
            without
                .iter()
                .map(|&us| seconds(us))
                .collect::<Vec<_>>()
                .join(" "),
            with_median as f64 / without_median as f64
        );
        Ok(text)
    }
}

fn check_full(full: &console::Results, text: &mut String) -> Result<()> {
    let timing = full.get("timing")?;
    let ready = timing["ready_us"]
        .as_u64()
        .context("imds-probe never sent READY=1")?;
    let first = timing["first_request_us"]
        .as_u64()
        .context("no IMDS request event at all")?;
    let _ = writeln!(
        text,
        "  kernel start -> imds-probe READY {}; -> first IMDS request {}",
        seconds(ready),
        seconds(first)
    );

    let early = full.get("early_caller")?;
    let caller_started = early["caller_started_us"]
        .as_u64()
        .context("the early caller never started")?;
    let events = early["events"]
        .as_array()
        .context("early caller: no events list")?;
    let [event] = events.as_slice() else {
        bail!("the early caller's request should have one event, found {events:?}");
    };
    if event["class"] != "imdsv1" || event["path"] != "/latest/meta-data/instance-id" {
        bail!("the early caller's event is not its IMDSv1 request: {event}");
    }
    if ready >= caller_started {
        bail!(
            "imds-probe was READY at {} but the early caller started at {}",
            seconds(ready),
            seconds(caller_started)
        );
    }
    let _ = writeln!(
        text,
        "  early caller: started {} after READY, its imdsv1 request seen at {} ({})",
        seconds(caller_started - ready),
        seconds(event["request_us"].as_u64().unwrap_or_default()),
        event["exe"]
    );

    let cloud = full.get("cloud_init")?;
    let attempts = cloud["attempts"]
        .as_array()
        .context("cloud_init: no attempts")?;
    if attempts.is_empty() {
        bail!("cloud-init made no IMDS request: {}", cloud["status"]);
    }
    if cloud["attempts"] != cloud["events"] {
        bail!(
            "cloud-init's requests (its log) and their events differ:\n  requests {}\n  events   {}",
            cloud["attempts"],
            cloud["events"]
        );
    }
    let _ = writeln!(
        text,
        "  cloud-init (Ec2 datasource): {} requests, each with its event; classes {}, units {}, exe {}",
        attempts.len(),
        cloud["classes"],
        cloud["units"],
        cloud["exes"]
    );

    let exposure = full.get("exposure")?;
    let overall = exposure
        .as_array()
        .and_then(|lines| {
            lines
                .iter()
                .find_map(|line| line.as_str()?.split("imds-probe.service: ").nth(1))
        })
        .context("no exposure line from systemd-analyze security")?;
    let figure: f64 = overall
        .split_whitespace()
        .next()
        .and_then(|figure| figure.parse().ok())
        .with_context(|| format!("exposure line without a figure: {overall}"))?;
    let _ = writeln!(text, "  systemd-analyze security (in the VM): {overall}");
    if figure > MAX_EXPOSURE {
        bail!("exposure {figure} > {MAX_EXPOSURE}: {exposure}");
    }

    check_restarts(full.get("restarts")?, text)
}

/// The daemon must come back after each action; requests sent while it was away are counted
/// (the gap), and none may be missing outside those windows.
fn check_restarts(restarts: &Value, text: &mut String) -> Result<()> {
    let actions = restarts["actions"]
        .as_array()
        .context("restarts: no actions")?;
    let mut explained = 0;
    for action in actions {
        let name = action["action"].as_str().unwrap_or("?");
        let Some(took) = action["took_ms"].as_u64() else {
            bail!(
                "after `{name}` imds-probe was not READY again within five minutes: {}",
                action["output"]
            );
        };
        let missing = action["missing"].as_array().map_or(0, Vec::len);
        explained += missing;
        let _ = writeln!(
            text,
            "  {name}: READY again after {took} ms; {missing} of {} requests sent meanwhile have no event",
            action["sent_meanwhile"]
        );
    }
    let sent = restarts["sent"].as_u64().unwrap_or_default();
    let missing = restarts["missing"].as_array().map_or(0, Vec::len);
    let failed = restarts["failed"].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        text,
        "  steady stream: {sent} IMDSv1 requests (one per connection), {missing} without an event, {failed} failed"
    );
    if sent == 0 || failed > 0 {
        bail!("the request stream did not run cleanly: {restarts}");
    }
    if missing > explained {
        bail!(
            "{} requests have no event outside any restart window: {restarts}",
            missing - explained
        );
    }
    Ok(())
}

fn multi_user_us(results: &console::Results) -> Result<u64> {
    results.get("timing")?["multi_user_us"]
        .as_u64()
        .context("multi-user.target was never reached")
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn seconds(us: u64) -> String {
    format!("{:.2}s", us as f64 / 1e6)
}
