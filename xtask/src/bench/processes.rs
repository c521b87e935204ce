//! Process churn: the cost of the exec/fork/exit tracking on a fork-heavy host. A loop of
//! short processes (fork + exec of /bin/true + exit + wait) timed with no daemon and with
//! the daemon running, interleaved. Every process runs the three process-event programs; the
//! daemon's share of the CPU on a 2-core host counts too.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{
    Ctx,
    harness::{sleep, start_daemon, stop},
    procfs::process_cpu_ns,
    quiet_host,
    stats::{Summary, Table, num},
};

const PROCESSES: usize = 2_000;

pub fn run(ctx: &Ctx) -> Result<()> {
    let rounds = ctx.rounds(5);
    println!(
        "== processes: {PROCESSES} short processes (fork, exec /bin/true, exit, wait) per round, \
         no daemon vs daemon, {rounds} rounds interleaved"
    );
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut ratios = Vec::new();
    let mut daemon_cpu = Vec::new();
    let mut command = String::new();
    for round in 1..=rounds {
        quiet_host(&[])?;
        let bare = spawn_loop()?;
        let mut daemon = start_daemon(ctx, &["--no-stdout"], "processes")?;
        let cpu_before = process_cpu_ns(daemon.pid);
        let probed = spawn_loop()?;
        // Let the daemon's 1 s tick drain the last records before the CPU is read: below
        // 256 KiB unread, process records do not wake it.
        sleep(Duration::from_millis(1_100))?;
        let cpu = Duration::from_nanos(process_cpu_ns(daemon.pid).saturating_sub(cpu_before));
        stop(&mut daemon)?;
        command.clone_from(&daemon.command);
        let per = |d: Duration| d.as_secs_f64() * 1e6 / PROCESSES as f64;
        println!(
            "  round {round}/{rounds}: no daemon {:.1} µs/process, daemon {:.1} µs/process, ratio {:.3}, daemon CPU {:.1} ms",
            per(bare),
            per(probed),
            probed.as_secs_f64() / bare.as_secs_f64(),
            cpu.as_secs_f64() * 1e3
        );
        without.push(per(bare));
        with.push(per(probed));
        ratios.push(probed.as_secs_f64() / bare.as_secs_f64());
        daemon_cpu.push(cpu.as_secs_f64() * 1e6 / PROCESSES as f64);
    }
    let mut table = Table::new(
        "process churn: median [min–max] over rounds; ratio = with daemon / no daemon, paired per round",
        &[
            "no daemon µs/process",
            "daemon µs/process",
            "ratio",
            "daemon CPU µs/process",
        ],
    );
    table.row(vec![
        Summary::of(&without).show(1),
        Summary::of(&with).show(1),
        Summary::of(&ratios).show(3),
        Summary::of(&daemon_cpu).show(2),
    ]);
    table.print();
    println!("daemon: {command}");
    println!("median ratio {}", num(Summary::of(&ratios).median, 3));
    Ok(())
}

fn spawn_loop() -> Result<Duration> {
    let start = Instant::now();
    for _ in 0..PROCESSES {
        short_process()?;
    }
    Ok(start.elapsed())
}

/// One short process: fork, exec /bin/true, exit, wait.
pub fn short_process() -> Result<()> {
    let status = Command::new("/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running /bin/true")?;
    anyhow::ensure!(status.success(), "/bin/true failed");
    Ok(())
}
