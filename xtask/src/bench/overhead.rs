//! Overhead on TCP traffic that is not IMDS traffic: small round trips, bulk sends and
//! connection churn on 127.0.0.1, with no daemon vs with the daemon (sk_msg backend, plus
//! any other `--backends`), in interleaved rounds. With sk_msg only connection set-up runs
//! a program (sock_ops on the cgroup root); sends on these sockets never enter sk_msg. The
//! fentry/kprobe backends run on every tcp_sendmsg instead.

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    Ctx,
    harness::{Netns, Server, logging_daemon, run_client, start_daemon, stop, summary},
    procfs::{BpfStats, bpf_programs, process_cpu_ns},
    quiet_host,
    stats::{Summary, Table, num},
};

const ECHO_ADDR: &str = "127.0.0.1:7000";
const PINGPONG_CONNECTIONS: usize = 16;
const PINGPONG_SIZE: usize = 64;
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
        match start_daemon(ctx, &args, "overhead-probe") {
            Ok(mut daemon) => {
                stop(&mut daemon)?;
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
                Some(backend) => Some(logging_daemon(ctx, backend, &log, "overhead")?),
            };
            let cpu_before = daemon.as_ref().map(|d| process_cpu_ns(d.pid));
            let (mut sample, used) = workloads(ctx, &ns, seconds)?;
            commands.get_or_insert(used);
            if let Some(daemon) = daemon.as_mut() {
                let cpu_ns = process_cpu_ns(daemon.pid).saturating_sub(cpu_before.unwrap_or(0));
                sample.daemon_cpu_ms = cpu_ns as f64 / 1e6;
                stop(daemon)?;
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
            if ctx.ratios_only {
                println!("  round {round}/{rounds} {:<8}: done", names[index]);
            } else {
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
            }
            samples[index].push(sample);
        }
    }
    let shares = kernel_shares(ctx, &ns, &conditions[1..], seconds)?;
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
    // Absolute columns are left out with --ratios-only.
    let absolute = !ctx.ratios_only;
    let mut headers = vec!["metric".to_owned()];
    if absolute {
        headers.push(names[0].clone());
    }
    for name in &names[1..] {
        if absolute {
            headers.push(name.clone());
        }
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
    let bulk_name = format!(
        "bulk MiB/s ({} MiB, 1 conn, median of {BULK_REPEATS})",
        ctx.bulk_bytes >> 20
    );
    let metrics: [(&str, Field, usize); 6] = [
        (
            "ping-pong round trips/s (16 conns, 64 B)",
            |s| s.pingpong_per_sec,
            0,
        ),
        ("ping-pong RTT p50 µs", |s| s.p50_us, 1),
        ("ping-pong RTT p99 µs", |s| s.p99_us, 1),
        (&bulk_name, |s| s.bulk_mib_per_sec, 0),
        ("connect+64 B+close /s (4 loops)", |s| s.connects_per_sec, 0),
        (
            "daemon CPU ms during the workloads (schedstat)",
            |s| s.daemon_cpu_ms,
            1,
        ),
    ];
    for (name, field, decimals) in metrics {
        let is_daemon_only = name.starts_with("daemon");
        if is_daemon_only && !absolute {
            continue;
        }
        let none: Vec<f64> = samples[0].iter().map(field).collect();
        let none_s = Summary::of(&none);
        let mut row = vec![name.to_owned()];
        if absolute {
            row.push(if is_daemon_only {
                "-".into()
            } else {
                none_s.show(decimals)
            });
        }
        for with in &samples[1..] {
            let with: Vec<f64> = with.iter().map(field).collect();
            let with_s = Summary::of(&with);
            let paired: Vec<f64> = none.iter().zip(&with).map(|(a, b)| b / a).collect();
            if absolute {
                row.push(with_s.show(decimals));
            }
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
    print_kernel_shares(&shares, ctx.ratios_only);
    Ok(())
}

/// One BPF program's work during a ping-pong run with bpf_stats on.
struct KernelShare {
    backend: String,
    program: String,
    runs_per_round_trip: f64,
    ns_per_run: f64,
    /// Its run time over the CPU time the machine had during the run (elapsed x CPUs).
    cpu_share: f64,
}

/// The kernel's own account of what each backend's programs cost on this traffic, a ratio
/// that stays meaningful where throughput is noisy (under emulation, on a busy host): one
/// ping-pong run per backend with kernel.bpf_stats_enabled=1, which adds two clock reads per
/// program run, so it is measured apart from the timed rounds.
fn kernel_shares(
    ctx: &Ctx,
    ns: &Netns,
    backends: &[Condition<'_>],
    seconds: f64,
) -> Result<Vec<KernelShare>> {
    let stats = BpfStats::enable()?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let mut shares = Vec::new();
    for backend in backends.iter().flatten() {
        quiet_host(&[])?;
        let log = ctx.tmp.join("overhead-stats.jsonl");
        let mut daemon = logging_daemon(ctx, backend, &log, "overhead-stats")?;
        let before = bpf_programs(daemon.pid)?;
        let started = Instant::now();
        let out = summary(&run_client(
            // No warm-up: the program counters see every round trip, and so must the count.
            pingpong(ctx, ns, seconds, 0.0),
            Duration::from_secs_f64(seconds) + Duration::from_secs(60),
        )?)?;
        let elapsed_ns = started.elapsed().as_secs_f64() * 1e9;
        let after = bpf_programs(daemon.pid)?;
        stop(&mut daemon)?;
        let _ = fs::remove_file(&log);
        let round_trips = out["round_trips"].as_f64().unwrap_or(f64::NAN);
        for prog in &after {
            let (runs, run_ns) = before.iter().find(|p| p.id == prog.id).map_or(
                (prog.run_cnt, prog.run_time_ns),
                |b| {
                    (
                        prog.run_cnt.saturating_sub(b.run_cnt),
                        prog.run_time_ns.saturating_sub(b.run_time_ns),
                    )
                },
            );
            shares.push(KernelShare {
                backend: condition_name(Some(backend)),
                program: format!("{} ({})", prog.name, prog.prog_type),
                runs_per_round_trip: runs as f64 / round_trips,
                ns_per_run: if runs == 0 {
                    0.0
                } else {
                    run_ns as f64 / runs as f64
                },
                cpu_share: run_ns as f64 / (elapsed_ns * cpus),
            });
        }
    }
    drop(stats);
    Ok(shares)
}

fn print_kernel_shares(shares: &[KernelShare], ratios_only: bool) {
    let mut headers = vec!["backend", "program", "runs per round trip"];
    if !ratios_only {
        headers.push("ns per run");
    }
    headers.push("share of all CPU time");
    let mut table = Table::new(
        "kernel cost of each program during one ping-pong run (bpf_stats: run_time_ns, run_cnt from fdinfo)",
        &headers,
    );
    for share in shares {
        let mut row = vec![
            share.backend.clone(),
            share.program.clone(),
            num(share.runs_per_round_trip, 2),
        ];
        if !ratios_only {
            row.push(num(share.ns_per_run, 0));
        }
        row.push(format!("{} %", num(share.cpu_share * 100.0, 3)));
        table.row(row);
    }
    table.print();
    println!(
        "(a round trip is two sends, the client's and the echo server's; run counts are system-wide)\n"
    );
}

/// One pass of the three workloads.
fn workloads(ctx: &Ctx, ns: &Netns, seconds: f64) -> Result<(Sample, Commands)> {
    let deadline = Duration::from_secs_f64(seconds) + Duration::from_secs(60);
    let mut sample = Sample::default();

    let pingpong = pingpong(ctx, ns, seconds, 0.5);
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
            &ctx.bulk_bytes.to_string(),
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

/// The ping-pong client; `warmup` seconds of round trips are left out of its numbers.
fn pingpong(ctx: &Ctx, ns: &Netns, seconds: f64, warmup: f64) -> Command {
    let mut command = ns.command(&ctx.bins.load);
    command.args([
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
        &warmup.to_string(),
    ]);
    command
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
