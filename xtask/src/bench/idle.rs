//! Idle: what the daemon costs a host with no IMDS traffic, with nothing else going on and
//! during a fork/exec storm. Wake-ups are context switches (voluntary + involuntary, summed
//! over the daemon's threads): each time a thread is woken it runs and switches out again.
//! CPU is on-CPU time (schedstat). Both per minute of the measured window. With
//! `--baseline-dir`, another build's daemon is measured the same way in the same run,
//! interleaved, and shown beside this one.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    Ctx,
    harness::{sleep, start_daemon_from, stop},
    processes::short_process,
    procfs::{context_switches, process_cpu_ns},
    quiet_host,
    stats::{Summary, Table},
};

/// After READY=1 the daemon scans for open connections and settles; not part of idling.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Nothing,
    /// fork + exec of /bin/true + exit + wait, back to back, from this process.
    ForkExecStorm,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Self::Nothing => "no traffic",
            Self::ForkExecStorm => "fork/exec storm",
        }
    }
}

/// One window of one daemon under one load, per minute.
struct Sample {
    wakeups: f64,
    cpu_ms: f64,
    processes: f64,
}

pub fn run(ctx: &Ctx, baseline: Option<&Path>) -> Result<()> {
    let rounds = ctx.rounds(1);
    let window = Duration::from_secs_f64(ctx.seconds(60.0));
    let mut builds: Vec<(String, PathBuf)> = Vec::new();
    if let Some(dir) = baseline {
        let daemon = dir.join("imds-probe");
        anyhow::ensure!(daemon.is_file(), "{} is missing", daemon.display());
        println!(
            "baseline binary: {} ({})",
            daemon.display(),
            super::modified(&daemon)
        );
        builds.push((
            format!("baseline ({})", dir.display()),
            dir.join("imds-probe"),
        ));
    }
    builds.push(("this build".to_owned(), ctx.bins.daemon.clone()));
    println!(
        "== idle: daemon wake-ups (context switches, all threads) and CPU (schedstat) per minute, \
         {:.0} s windows after {} s to settle, {rounds} round(s), builds interleaved",
        window.as_secs_f64(),
        SETTLE.as_secs()
    );
    let loads = [Load::Nothing, Load::ForkExecStorm];
    // samples[build][load]
    let mut samples: Vec<Vec<Vec<Sample>>> = builds
        .iter()
        .map(|_| loads.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 1..=rounds {
        for (l, &load) in loads.iter().enumerate() {
            for (b, (name, daemon)) in builds.iter().enumerate() {
                let sample = measure(ctx, daemon, load, window)?;
                println!(
                    "  round {round}/{rounds}, {}, {name}: {:.0} wake-ups/min, {:.1} ms CPU/min, {:.0} processes/min",
                    load.name(),
                    sample.wakeups,
                    sample.cpu_ms,
                    sample.processes
                );
                samples[b][l].push(sample);
            }
        }
    }
    let mut table = Table::new(
        "daemon cost per minute with no IMDS traffic: median [min–max] over rounds",
        &[
            "load",
            "build",
            "wake-ups/min",
            "CPU ms/min",
            "processes/min made by the load",
        ],
    );
    for (l, &load) in loads.iter().enumerate() {
        for (b, (name, _)) in builds.iter().enumerate() {
            let column = |f: fn(&Sample) -> f64| {
                Summary::of(&samples[b][l].iter().map(f).collect::<Vec<_>>())
            };
            table.row(vec![
                load.name().to_owned(),
                name.clone(),
                column(|s| s.wakeups).show(0),
                column(|s| s.cpu_ms).show(1),
                column(|s| s.processes).show(0),
            ]);
        }
    }
    table.print();
    Ok(())
}

fn measure(ctx: &Ctx, daemon_bin: &Path, load: Load, window: Duration) -> Result<Sample> {
    quiet_host(&[])?;
    let log = ctx.tmp.join("idle.jsonl");
    let log = log.to_string_lossy();
    let mut daemon = start_daemon_from(
        ctx,
        daemon_bin,
        &["--no-stdout", "--log-file", &log],
        &[],
        "idle",
    )?;
    sleep(SETTLE)?;
    let storm = (load == Load::ForkExecStorm).then(Storm::start);
    let (switches, cpu_ns, started) = (
        context_switches(daemon.pid),
        process_cpu_ns(daemon.pid),
        Instant::now(),
    );
    sleep(window)?;
    let (switches, cpu_ns, took) = (
        context_switches(daemon.pid).saturating_sub(switches),
        process_cpu_ns(daemon.pid).saturating_sub(cpu_ns),
        started.elapsed(),
    );
    let processes = storm.map(Storm::stop).transpose()?.unwrap_or(0);
    stop(&mut daemon)?;
    let per_minute = 60.0 / took.as_secs_f64();
    Ok(Sample {
        wakeups: switches as f64 * per_minute,
        cpu_ms: cpu_ns as f64 / 1e6 * per_minute,
        processes: processes as f64 * per_minute,
    })
}

/// Short processes, one after another, on a thread of their own until stopped.
struct Storm {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    thread: thread::JoinHandle<Result<()>>,
}

impl Storm {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, made) = (Arc::clone(&stop), Arc::clone(&made));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    short_process()?;
                    made.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        };
        Self { stop, made, thread }
    }

    /// How many processes it made.
    fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the fork/exec storm thread panicked"))??;
        Ok(self.made.load(Ordering::Relaxed))
    }
}
