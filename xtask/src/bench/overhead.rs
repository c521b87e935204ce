//! Overhead on TCP traffic that is not IMDS traffic: small round trips, bulk sends and
//! connection churn on 127.0.0.1, with no daemon vs with the daemon (sk_msg backend, plus
//! any other `--backends`), in interleaved rounds. With sk_msg only connection set-up runs
//! a program (sock_ops on the cgroup root); sends on these sockets never enter sk_msg. The
//! fentry/kprobe backends run on every tcp_sendmsg instead.

use std::{fs, path::Path, time::Duration};

use anyhow::{Result, bail};

use super::{
    Ctx,
    harness::{Daemon, Netns, Server, run_client, summary},
    procfs::process_cpu_ns,
    quiet_host,
    stats::{Summary, Table, num},
};

const ECHO_ADDR: &str = "127.0.0.1:7000";
const PINGPONG_CONNECTIONS: usize = 16;
const PINGPONG_SIZE: usize = 64;
const BULK_BYTES: u64 = 1 << 30;
const BULK_REPEATS: usize = 5;
const CONNECT_CONCURRENCY: usize = 4;

/// `None`: no daemon; `Some(backend)`: `imds-probe run --backend <backend>`.
type Condition<'a> = Option<&'a str>;

fn condition_name(condition: Condition<'_>) -> String {
    condition.map_or_else(|| "no probe".to_owned(), |b| b.replace('-', "_"))
}

#[derive(Clone, Copy, Default)]
struct Sample {
    pingpong_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    bulk_mib_per_sec: f64,
    connects_per_sec: f64,
    /// Daemon CPU over the round's workloads (with a daemon only).
    daemon_cpu_ms: f64,
}

struct Commands {
    pingpong: String,
    bulk: String,
    connect: String,
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let rounds = ctx.rounds(5);
    let seconds = ctx.seconds(3.0);
    println!("== overhead: non-IMDS loopback TCP");
    // A backend this kernel cannot run is reported and left out, not fatal.
    let mut conditions: Vec<Condition<'_>> = vec![None];
    for backend in &ctx.backends {
        quiet_host(&[])?;
        let args = ["--backend", backend.as_str(), "--no-stdout"];
        match Daemon::start(&ctx.bins.daemon, &args, &ctx.tmp, "overhead-probe") {
            Ok(mut daemon) => {
                daemon.stop()?;
                conditions.push(Some(backend.as_str()));
            }
            Err(e) => {
                let reason = format!("{e:#}");
                let reason = reason
                    .lines()
                    .find(|l| l.starts_with("Error:"))
                    .unwrap_or_else(|| reason.lines().next().unwrap_or_default());
                println!("  backend {backend} left out: it does not start here ({reason})");
            }
        }
    }
    if conditions.len() < 2 {
        bail!(
            "none of the backends {:?} starts on this machine",
            ctx.backends
        );
    }
    let names: Vec<String> = conditions.iter().map(|c| condition_name(*c)).collect();
    println!(
        "   {}, {rounds} rounds interleaved ({}, {}, ...)",
        names.join(" vs "),
        names.join(", "),
        names[0]
    );
    println!(
        "   the daemon is started before and stopped (SIGTERM) after its condition's workloads in every round"
    );
    let ns = Netns::new()?;
    let mut server = ns.command(&ctx.bins.load);
    server.args(["echo-server", "--listen", ECHO_ADDR]);
    let server = Server::start(server)?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); conditions.len()];
    let mut commands = None;
    let mut daemon_commands = Vec::new();
    for round in 1..=rounds {
        for (index, condition) in conditions.iter().enumerate() {
            let log = ctx.tmp.join(&format!("overhead-{round}-{index}.jsonl"));
            quiet_host(&[])?;
            let mut daemon = match condition {
                None => None,
                Some(backend) => Some(Daemon::start(
                    &ctx.bins.daemon,
                    &[
                        "--backend",
                        backend,
                        "--no-stdout",
                        "--log-file",
                        &log.to_string_lossy(),
                    ],
                    &ctx.tmp,
                    "overhead",
                )?),
            };
            let cpu_before = daemon.as_ref().map(|d| process_cpu_ns(d.pid));
            let (mut sample, used) = workloads(ctx, &ns, seconds)?;
            commands.get_or_insert(used);
            if let Some(daemon) = daemon.as_mut() {
                let cpu_ns = process_cpu_ns(daemon.pid).saturating_sub(cpu_before.unwrap_or(0));
                sample.daemon_cpu_ms = cpu_ns as f64 / 1e6;
                daemon.stop()?;
                let events = count_requests(&log)?;
                if events != 0 {
                    bail!(
                        "the daemon wrote {events} request events for non-IMDS traffic (see {})",
                        log.display()
                    );
                }
                let _ = fs::remove_file(&log);
                if round == 1 {
                    daemon_commands.push(daemon.command.clone());
                }
            }
            println!(
                "  round {round}/{rounds} {:<8}: ping-pong {}/s (p50 {} µs, p99 {} µs) | bulk {} MiB/s | connect {}/s{}",
                names[index],
                num(sample.pingpong_per_sec, 0),
                num(sample.p50_us, 1),
                num(sample.p99_us, 1),
                num(sample.bulk_mib_per_sec, 0),
                num(sample.connects_per_sec, 0),
                if condition.is_some() {
                    format!(" | daemon CPU {} ms", num(sample.daemon_cpu_ms, 1))
                } else {
                    String::new()
                }
            );
            samples[index].push(sample);
        }
    }
    drop(server);
    drop(ns);

    if let Some(c) = &commands {
        println!(
            "commands (inside namespace, server: imds-load echo-server --listen {ECHO_ADDR}):"
        );
        for daemon in &daemon_commands {
            println!("  daemon:    {daemon}");
        }
        println!("  ping-pong: {}", c.pingpong);
        println!(
            "  bulk:      {} (x{BULK_REPEATS} per round, median)",
            c.bulk
        );
        println!("  connect:   {}", c.connect);
    }
    let mut headers = vec!["metric".to_owned(), names[0].clone()];
    for name in &names[1..] {
        headers.push(name.clone());
        headers.push(format!("{name}/no probe: of medians"));
        headers.push("paired per round".to_owned());
    }
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut table = Table::new(
        &format!(
            "overhead on non-IMDS loopback TCP: median [min–max] over {rounds} rounds; ratios = with daemon / no probe"
        ),
        &headers,
    );
    type Field = fn(&Sample) -> f64;
    let metrics: [(&str, Field, usize); 6] = [
        (
            "ping-pong round trips/s (16 conns, 64 B)",
            |s| s.pingpong_per_sec,
            0,
        ),
        ("ping-pong RTT p50 µs", |s| s.p50_us, 1),
        ("ping-pong RTT p99 µs", |s| s.p99_us, 1),
        (
            "bulk MiB/s (1 GiB, 1 conn, median of 5)",
            |s| s.bulk_mib_per_sec,
            0,
        ),
        ("connect+64 B+close /s (4 loops)", |s| s.connects_per_sec, 0),
        (
            "daemon CPU ms during the workloads (schedstat)",
            |s| s.daemon_cpu_ms,
            1,
        ),
    ];
    for (name, field, decimals) in metrics {
        let is_daemon_only = name.starts_with("daemon");
        let none: Vec<f64> = samples[0].iter().map(field).collect();
        let none_s = Summary::of(&none);
        let mut row = vec![
            name.to_owned(),
            if is_daemon_only {
                "-".into()
            } else {
                none_s.show(decimals)
            },
        ];
        for with in &samples[1..] {
            let with: Vec<f64> = with.iter().map(field).collect();
            let with_s = Summary::of(&with);
            let paired: Vec<f64> = none.iter().zip(&with).map(|(a, b)| b / a).collect();
            row.push(with_s.show(decimals));
            if is_daemon_only {
                row.extend(["-".to_owned(), "-".to_owned()]);
            } else {
                row.push(num(with_s.median / none_s.median, 3));
                row.push(Summary::of(&paired).show(3));
            }
        }
        table.row(row);
    }
    table.print();
    println!(
        "(for throughput a ratio < 1 means slower with the probe; for RTT a ratio > 1 means slower)\n"
    );
    Ok(())
}

/// One pass of the three workloads.
fn workloads(ctx: &Ctx, ns: &Netns, seconds: f64) -> Result<(Sample, Commands)> {
    let deadline = Duration::from_secs_f64(seconds) + Duration::from_secs(60);
    let mut sample = Sample::default();

    let mut pingpong = ns.command(&ctx.bins.load);
    pingpong.args([
        "pingpong",
        "--addr",
        ECHO_ADDR,
        "--connections",
        &PINGPONG_CONNECTIONS.to_string(),
        "--size",
        &PINGPONG_SIZE.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--warmup",
        "0.5",
    ]);
    let pingpong_shown = crate::cmd::display(&pingpong);
    let out = summary(&run_client(pingpong, deadline)?)?;
    sample.pingpong_per_sec = out["per_sec"].as_f64().unwrap_or(f64::NAN);
    sample.p50_us = out["p50_us"].as_f64().unwrap_or(f64::NAN);
    sample.p99_us = out["p99_us"].as_f64().unwrap_or(f64::NAN);

    let mut bulk_shown = String::new();
    let mut bulk = Vec::new();
    for _ in 0..BULK_REPEATS {
        let mut command = ns.command(&ctx.bins.load);
        command.args([
            "bulk",
            "--addr",
            ECHO_ADDR,
            "--bytes",
            &BULK_BYTES.to_string(),
        ]);
        bulk_shown = crate::cmd::display(&command);
        let out = summary(&run_client(command, deadline)?)?;
        bulk.push(out["mib_per_sec"].as_f64().unwrap_or(f64::NAN));
    }
    sample.bulk_mib_per_sec = Summary::of(&bulk).median;

    let mut connect = ns.command(&ctx.bins.load);
    connect.args([
        "connect",
        "--addr",
        ECHO_ADDR,
        "--concurrency",
        &CONNECT_CONCURRENCY.to_string(),
        "--seconds",
        &seconds.to_string(),
    ]);
    let connect_shown = crate::cmd::display(&connect);
    let out = summary(&run_client(connect, deadline)?)?;
    if out["errors"].as_u64().unwrap_or(0) > 0 {
        println!("  note: {} connect errors", out["errors"]);
    }
    sample.connects_per_sec = out["per_sec"].as_f64().unwrap_or(f64::NAN);

    Ok((
        sample,
        Commands {
            pingpong: pingpong_shown,
            bulk: bulk_shown,
            connect: connect_shown,
        },
    ))
}

/// `imds_request` lines in a log file (0 if it does not exist).
fn count_requests(log: &Path) -> Result<usize> {
    match fs::read_to_string(log) {
        Ok(text) => Ok(text
            .lines()
            .filter(|l| l.contains("\"event\":\"imds_request\""))
            .count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}
