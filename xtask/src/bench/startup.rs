//! Startup: exec of `imds-probe run --no-stdout` to READY=1 on its $NOTIFY_SOCKET, and what
//! the daemon spent to get there.

use std::time::Duration;

use anyhow::Result;

use super::{
    Ctx,
    harness::{self, sleep, start_daemon},
    procfs::{CpuTicks, process_cpu_ns, status_kib},
    quiet_host,
    stats::{Summary, Table, num},
};

const TARGET_MS: f64 = 100.0;

pub fn run(ctx: &Ctx) -> Result<()> {
    let rounds = ctx.rounds(10);
    println!(
        "== startup: exec -> READY=1, {rounds} repetitions, daemon stopped (SIGTERM) after each"
    );
    let mut table = Table::new(
        "startup (one row per repetition; the daemon has no IMDS traffic)",
        &[
            "rep",
            "exec->READY ms",
            "CPU to READY ms (stat ticks)",
            "CPU to READY ms (schedstat)",
            "VmRSS / VmHWM at READY MiB",
            "SIGTERM->exit ms",
        ],
    );
    let mut ready = Vec::new();
    let mut cpu_ticks = Vec::new();
    let mut cpu_exact = Vec::new();
    let mut rss = Vec::new();
    let mut stop = Vec::new();
    let mut hwm = Vec::new();
    let mut command = String::new();
    for rep in 1..=rounds {
        quiet_host(&[])?;
        let mut daemon = start_daemon(ctx, &["--no-stdout"], "startup")?;
        // Right after READY: nothing but startup has run yet.
        let ticks = CpuTicks::of(daemon.pid)?.total();
        let exact = Duration::from_nanos(process_cpu_ns(daemon.pid));
        let rss_kib = status_kib(daemon.pid, "VmRSS")?;
        let hwm_kib = status_kib(daemon.pid, "VmHWM")?;
        let stopped = harness::stop(&mut daemon)?;
        command.clone_from(&daemon.command);
        let row = [
            daemon.ready_after.as_secs_f64() * 1e3,
            ticks.as_secs_f64() * 1e3,
            exact.as_secs_f64() * 1e3,
            rss_kib as f64 / 1024.0,
            stopped.took.as_secs_f64() * 1e3,
        ];
        table.row(vec![
            rep.to_string(),
            num(row[0], 1),
            num(row[1], 0),
            num(row[2], 1),
            format!("{} / {}", num(row[3], 1), num(hwm_kib as f64 / 1024.0, 1)),
            num(row[4], 1),
        ]);
        hwm.push(hwm_kib as f64 / 1024.0);
        ready.push(row[0]);
        cpu_ticks.push(row[1]);
        cpu_exact.push(row[2]);
        rss.push(row[3]);
        stop.push(row[4]);
        // Let the previous instance's programs and maps go before the next one loads.
        sleep(Duration::from_millis(100))?;
    }
    table.rule();
    table.row(vec![
        "median [min–max]".into(),
        Summary::of(&ready).show(1),
        Summary::of(&cpu_ticks).show(0),
        Summary::of(&cpu_exact).show(1),
        format!(
            "{} / {}",
            Summary::of(&rss).show(1),
            Summary::of(&hwm).show(1)
        ),
        Summary::of(&stop).show(1),
    ]);
    println!("command: {command}");
    table.print();
    let median = Summary::of(&ready).median;
    println!(
        "target: exec->READY < {TARGET_MS} ms | measured median {} ms, max {} ms -> {}",
        num(median, 1),
        num(Summary::of(&ready).max, 1),
        if Summary::of(&ready).max < TARGET_MS {
            "met in every repetition"
        } else if median < TARGET_MS {
            "met at the median, not in every repetition"
        } else {
            "NOT met"
        }
    );
    println!(
        "(stat ticks are 1/{} s; schedstat is the exact on-CPU time of all the daemon's threads)\n",
        super::procfs::clock_ticks_per_second()
    );
    Ok(())
}
