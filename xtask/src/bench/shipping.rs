//! Shipping: what sending the events to CloudWatch Logs from the daemon itself costs it. The
//! same load (imds-load, IMDSv1 GETs at a fixed rate) with and without
//! `--cloudwatch-log-group`, interleaved; moto's server on this host's loopback stands in for
//! CloudWatch Logs. The daemon gets credentials and region from its environment and flags, so
//! neither it nor the SDK ever asks a real IMDS. Measured: daemon CPU per 1,000 events
//! (until everything is written, and with shipping until everything is accepted), RSS after,
//! peak RSS.

use std::{
    fs,
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Ctx,
    harness::{Netns, fake_imds, run_client, sleep, start_daemon_with_env, stop, summary},
    procfs::{process_cpu_ns, status_kib},
    quiet_host,
    stats::{Summary, Table},
};

/// moto and its dependencies, installed by `cargo xtask setup` (xtask/src/sdk.rs).
const TOOLS: &str = "/opt/imds-probe-toolchain/cloudwatch/python";
const MOTO: &str = "127.0.0.1:45766";
const RATE: u64 = 2_000;
const CONNECTIONS: usize = 8;

pub fn run(ctx: &Ctx) -> Result<()> {
    let rounds = ctx.rounds(3);
    let seconds = ctx.seconds(5.0);
    println!(
        "== shipping: IMDSv1 GETs at {RATE}/s for {seconds} s, daemon without and with \
         --cloudwatch-log-group (moto on {MOTO}), {rounds} rounds interleaved"
    );
    let _moto = Moto::start()?;
    let ns = Netns::new()?;
    let _imds = fake_imds(ctx, &ns)?;
    let (mut plain, mut shipping) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for ship in [false, true] {
            let run = one_run(ctx, &ns, ship, round, seconds)?;
            println!(
                "  round {round}/{rounds} {}: {} events, CPU {:.1} ms per 1,000, RSS {} KiB, peak {} KiB{}",
                if ship { "shipping" } else { "plain   " },
                run.events,
                run.cpu_per_1000_ms,
                run.rss_kib,
                run.hwm_kib,
                run.shipped_after
                    .map(|d| format!(", all accepted {:.2} s after the load", d.as_secs_f64()))
                    .unwrap_or_default()
            );
            if ship {
                shipping.push(run);
            } else {
                plain.push(run);
            }
        }
    }
    let mut table = Table::new(
        "shipping: median [min–max] over rounds",
        &[
            "daemon",
            "CPU ms per 1,000 events",
            "RSS KiB",
            "peak RSS KiB",
        ],
    );
    for (name, runs) in [("plain", &plain), ("shipping", &shipping)] {
        let of = |f: fn(&Run) -> f64| Summary::of(&runs.iter().map(f).collect::<Vec<_>>());
        table.row(vec![
            name.to_owned(),
            of(|r| r.cpu_per_1000_ms).show(2),
            of(|r| r.rss_kib as f64).show(0),
            of(|r| r.hwm_kib as f64).show(0),
        ]);
    }
    table.print();
    Ok(())
}

struct Run {
    events: u64,
    cpu_per_1000_ms: f64,
    rss_kib: u64,
    hwm_kib: u64,
    shipped_after: Option<Duration>,
}

fn one_run(ctx: &Ctx, ns: &Netns, ship: bool, round: usize, seconds: f64) -> Result<Run> {
    let tag = if ship { "shipping" } else { "plain" };
    let log = ctx.tmp.join(&format!("shipping-{round}-{tag}.jsonl"));
    let state = ctx.tmp.join(&format!("shipping-state-{round}"));
    let group = format!("/imds-probe/bench-{round}");
    let (log_arg, state_arg) = (log.to_string_lossy(), state.to_string_lossy());
    let endpoint = format!("http://{MOTO}");
    let mut args = vec!["--backend", "sk-msg", "--no-stdout", "--log-file", &log_arg];
    if ship {
        args.extend([
            "--cloudwatch-log-group",
            &group,
            "--cloudwatch-endpoint",
            &endpoint,
            "--cloudwatch-region",
            "us-east-1",
            "--state-dir",
            &state_arg,
        ]);
    }
    // Credentials from the environment: the SDK's chain stops there and never asks an IMDS.
    let env = [
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    quiet_host(&[])?;
    let mut daemon = start_daemon_with_env(ctx, &args, &env, tag)?;
    let cpu_before = process_cpu_ns(daemon.pid);
    let mut load = ns.command(&ctx.bins.load);
    load.args([
        "imds",
        "--connections",
        &CONNECTIONS.to_string(),
        "--rate",
        &RATE.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--mix",
        "v1=100",
    ]);
    summary(&run_client(
        load,
        Duration::from_secs_f64(seconds) + Duration::from_secs(60),
    )?)?;
    let load_done = Instant::now();
    let shipped_after = if ship {
        Some(wait_accepted(&log, &state.join("cloudwatch-events.cursor"))? - load_done)
    } else {
        sleep(Duration::from_millis(500))?;
        None
    };
    let cpu = process_cpu_ns(daemon.pid).saturating_sub(cpu_before);
    let rss_kib = status_kib(daemon.pid, "VmRSS")?;
    let hwm_kib = status_kib(daemon.pid, "VmHWM")?;
    stop(&mut daemon)?;
    let events = fs::read_to_string(&log)?.lines().count() as u64;
    Ok(Run {
        events,
        cpu_per_1000_ms: cpu as f64 / 1e6 / (events.max(1) as f64 / 1000.0),
        rss_kib,
        hwm_kib,
        shipped_after,
    })
}

/// Waits until the cursor stands at the end of the log, which has stopped growing: all
/// accepted. Returns when.
fn wait_accepted(log: &Path, cursor: &Path) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let size = fs::metadata(log).map_or(0, |m| m.len());
        let offset = fs::read(cursor)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|cursor| cursor["offset"].as_u64());
        if offset == Some(size) && size > 0 {
            return Ok(Instant::now());
        }
        sleep(Duration::from_millis(20))?;
    }
    bail!(
        "the shipper had not caught up with {} after 120 s",
        log.display()
    )
}

/// moto's server on this host's loopback.
struct Moto(Child);

impl Moto {
    fn start() -> Result<Self> {
        anyhow::ensure!(
            Path::new(TOOLS).join("moto").is_dir(),
            "{TOOLS} is missing: run `cargo xtask setup`"
        );
        let (host, port) = MOTO.split_once(':').context("MOTO is host:port")?;
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", host, "-p", port])
            .env("PYTHONPATH", TOOLS)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto")?;
        let moto = Self(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(MOTO).is_err() {
            if Instant::now() > deadline {
                bail!("moto did not listen on {MOTO} within 30 s");
            }
            sleep(Duration::from_millis(100))?;
        }
        Ok(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
