//! Capacity: 64 keep-alive connections from imds-load hammer fake-imds inside the namespace
//! at several target rates with an IMDSv1/IMDSv2/token mix, while the daemon writes to a log
//! file. Every request sent must come out as one event of its class. Then the daemon's CPU
//! per 1,000 events, its peak RSS, and each BPF program's kernel time per run.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{BufRead as _, BufReader},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::Value;

use super::{
    Ctx,
    harness::{Netns, fake_imds, logging_daemon, run_client, sleep, stop, summary},
    procfs::{BpfStats, CpuTicks, ProgStats, bpf_programs, status_kib, thread_cpu_ns},
    quiet_host,
    stats::{Summary, Table, int, num},
};

const CONNECTIONS: usize = 64;
const MIX: &str = "v1=50,v2=40,token=10";
const LOAD_THREADS: usize = 2;
const TARGET_RATE: u64 = 20_000;
const TARGET_RSS_MIB: f64 = 20.0;
const CLASSES: [&str; 3] = ["imdsv1", "imdsv2", "token"];

/// One run at one rate.
struct Run {
    rate: u64,
    seconds: f64,
    sent: BTreeMap<String, u64>,
    load_errors: u64,
    written: BTreeMap<String, u64>,
    loss_events: u64,
    /// The last loss event's non-zero `total` counters.
    loss_total: BTreeMap<String, u64>,
    log_bytes: u64,
    /// Load end to the log file no longer growing.
    settle: Duration,
    daemon_cpu: CpuTicks,
    /// On-CPU time per daemon thread name (schedstat) over the run.
    threads_ms: BTreeMap<String, f64>,
    fake_imds_cpu: CpuTicks,
    hwm_kib: u64,
    rss_kib: u64,
    /// wait4 rusage: whole life including start-up and the drain after SIGTERM.
    life_cpu: Duration,
    max_rss_kib: u64,
    progs: Vec<ProgStats>,
}

impl Run {
    fn sent_total(&self) -> u64 {
        self.sent.values().sum()
    }

    fn events_total(&self) -> u64 {
        self.written.values().sum()
    }

    fn matches(&self) -> bool {
        CLASSES.iter().all(|c| {
            self.sent.get(*c).copied().unwrap_or(0) == self.written.get(*c).copied().unwrap_or(0)
        }) && self.events_total() == self.sent_total()
    }

    fn loss_sum(&self) -> u64 {
        self.loss_total.values().sum()
    }

    fn cpu_ms_per_1k(&self) -> f64 {
        if self.events_total() == 0 {
            return f64::NAN;
        }
        self.daemon_cpu.total().as_secs_f64() * 1e3 / (self.events_total() as f64 / 1000.0)
    }
}

fn rate_name(rate: u64) -> String {
    if rate == 0 { "max".into() } else { int(rate) }
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let rounds = ctx.rounds(3);
    let seconds = ctx.seconds(5.0);
    let rates = &ctx.rates;
    println!(
        "== capacity: {CONNECTIONS} keep-alive connections ({MIX} by connection), rates {} req/s, {seconds} s each, {rounds} rounds (rates interleaved within each round)",
        rates
            .iter()
            .map(|r| rate_name(*r))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "   a fresh daemon per run: started before the load, SIGTERM once its log stops growing"
    );
    let stats = BpfStats::enable()?;
    let ns = Netns::new()?;
    let imds = fake_imds(ctx, &ns)?;
    let imds_command = imds.command.clone();
    let mut runs: Vec<Run> = Vec::new();
    let mut commands: Vec<String> = Vec::new();
    for round in 1..=rounds {
        for &rate in rates {
            let run = one_run(ctx, &ns, imds.pid(), rate, seconds, round, &mut commands)?;
            println!(
                "  round {round}/{rounds} rate {:>6}: sent {} written {} ({}) | loss {} | {} events/s | daemon {} ms CPU/1k events | VmHWM {} MiB | settle {} ms",
                rate_name(rate),
                int(run.sent_total()),
                int(run.events_total()),
                if run.matches() { "match" } else { "MISMATCH" },
                int(run.loss_sum()),
                num(run.events_total() as f64 / run.seconds, 0),
                num(run.cpu_ms_per_1k(), 1),
                num(run.hwm_kib as f64 / 1024.0, 1),
                num(run.settle.as_secs_f64() * 1e3, 0),
            );
            runs.push(run);
        }
    }
    drop(imds);
    drop(ns);
    drop(stats);

    println!("commands:");
    println!("  fake IMDS: {imds_command}");
    for c in &commands {
        println!("  {c}");
    }
    print_capacity(&runs, rates, rounds);
    print_kernel_cost(&runs, rates);
    Ok(())
}

fn one_run(
    ctx: &Ctx,
    ns: &Netns,
    imds_pid: u32,
    rate: u64,
    seconds: f64,
    round: usize,
    commands: &mut Vec<String>,
) -> Result<Run> {
    let log = ctx.tmp.join(&format!("capacity-{round}-{rate}.jsonl"));
    quiet_host(&[])?;
    let mut daemon = logging_daemon(ctx, "sk-msg", &log, "capacity")?;
    let cpu_before = CpuTicks::of(daemon.pid)?;
    let threads_before = thread_cpu_ns(daemon.pid);
    let imds_before = CpuTicks::of(imds_pid)?;
    let mut load = ns.command(&ctx.bins.load);
    load.args([
        "--threads",
        &LOAD_THREADS.to_string(),
        "imds",
        "--addr",
        "169.254.169.254:80",
        "--connections",
        &CONNECTIONS.to_string(),
        "--rate",
        &rate.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--mix",
        MIX,
    ]);
    if commands.is_empty() {
        commands.push(format!("daemon: {}", daemon.command));
        commands.push(format!(
            "load:   {} (--rate 0 = as fast as it goes)",
            crate::cmd::display(&load)
        ));
    }
    let out = summary(&run_client(
        load,
        Duration::from_secs_f64(seconds) + Duration::from_secs(60),
    )?)?;
    let load_done = Instant::now();
    let sent: BTreeMap<String, u64> = out["sent"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let load_seconds = out["seconds"].as_f64().unwrap_or(seconds);
    if let Some(e) = out["first_error"].as_str() {
        println!(
            "  note: load generator errors: {} (first: {e})",
            out["errors"]
        );
    }
    settle(&log)?;
    let settle_time = load_done.elapsed();
    let daemon_cpu = CpuTicks::of(daemon.pid)?.since(&cpu_before);
    let mut threads_ms: BTreeMap<String, f64> = BTreeMap::new();
    for ((name, tid), ns_after) in thread_cpu_ns(daemon.pid) {
        let before = threads_before
            .get(&(name.clone(), tid))
            .copied()
            .unwrap_or(0);
        *threads_ms.entry(name).or_default() += ns_after.saturating_sub(before) as f64 / 1e6;
    }
    let fake_imds_cpu = CpuTicks::of(imds_pid)?.since(&imds_before);
    let hwm_kib = status_kib(daemon.pid, "VmHWM")?;
    let rss_kib = status_kib(daemon.pid, "VmRSS")?;
    let progs = bpf_programs(daemon.pid)?;
    let stopped = stop(&mut daemon)?;
    let (written, loss_events, loss_total) = read_log(&log)?;
    let log_bytes = fs::metadata(&log).map_or(0, |m| m.len());
    let _ = fs::remove_file(&log);
    Ok(Run {
        rate,
        seconds: load_seconds,
        sent,
        load_errors: out["errors"].as_u64().unwrap_or(0),
        written,
        loss_events,
        loss_total,
        log_bytes,
        settle: settle_time,
        daemon_cpu,
        threads_ms,
        fake_imds_cpu,
        hwm_kib,
        rss_kib,
        life_cpu: stopped.cpu,
        max_rss_kib: stopped.max_rss_kib,
        progs,
    })
}

/// Waits until the log file has not grown for 500 ms (the daemon caught up), at most 60 s.
fn settle(log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (u64::MAX, Instant::now());
    while Instant::now() < deadline {
        let size = fs::metadata(log).map_or(0, |m| m.len());
        if size != last.0 {
            last = (size, Instant::now());
        } else if last.1.elapsed() >= Duration::from_millis(500) {
            return Ok(());
        }
        sleep(Duration::from_millis(10))?;
    }
    println!("  note: the log file was still growing 60 s after the load ended");
    Ok(())
}

type LogCounts = (BTreeMap<String, u64>, u64, BTreeMap<String, u64>);

/// Request events by class (`unknown/<reason>` for unknown), the number of loss events and
/// the last loss event's non-zero totals.
fn read_log(log: &Path) -> Result<LogCounts> {
    let mut written = BTreeMap::new();
    let mut loss_events = 0;
    let mut loss_total = BTreeMap::new();
    let file = match File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((written, loss_events, loss_total));
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", log.display())),
    };
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line?;
        // `ts`, `event` and `class` lead every line: a look at the head is enough for the
        // request events, which are nearly all of them.
        let head = &line[..line.len().min(160)];
        if head.contains("\"event\":\"imds_request\"") && !head.contains("\"class\":\"unknown\"") {
            let class = field_in(head, "\"class\":\"").unwrap_or("?");
            *written.entry(class.to_owned()).or_insert(0u64) += 1;
            continue;
        }
        let value: Value = serde_json::from_str(&line)
            .with_context(|| format!("a line of {} is not JSON", log.display()))?;
        match value["event"].as_str() {
            Some("imds_request") => {
                let key = format!(
                    "{}/{}",
                    value["class"].as_str().unwrap_or("?"),
                    value["reason"].as_str().unwrap_or("-")
                );
                *written.entry(key).or_insert(0) += 1;
            }
            Some("loss") => {
                loss_events += 1;
                if let Some(total) = value["total"].as_object() {
                    loss_total = total
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                        .filter(|(_, v)| *v > 0)
                        .collect();
                }
            }
            _ => *written.entry("other".to_owned()).or_insert(0) += 1,
        }
    }
    Ok((written, loss_events, loss_total))
}

fn field_in<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let start = text.find(prefix)? + prefix.len();
    text[start..].split('"').next()
}

fn print_capacity(runs: &[Run], rates: &[u64], rounds: usize) {
    let mut table = Table::new(
        &format!(
            "capacity: per target rate, counts summed over {rounds} rounds, rates/CPU/RSS as median [min–max] over rounds"
        ),
        &[
            "target req/s",
            "achieved req/s",
            "sent v1/v2/token",
            "written v1/v2/token",
            "other events",
            "sent==written",
            "loss events (totals)",
            "events/s",
            "daemon CPU ms/1k events",
            "daemon CPU % (load+settle)",
            "VmHWM MiB",
            "B/event",
        ],
    );
    for &rate in rates {
        let of_rate: Vec<&Run> = runs.iter().filter(|r| r.rate == rate).collect();
        let sum = |class: &str, f: fn(&Run) -> &BTreeMap<String, u64>| -> u64 {
            of_rate
                .iter()
                .map(|r| f(r).get(class).copied().unwrap_or(0))
                .sum()
        };
        let triple = |f: fn(&Run) -> &BTreeMap<String, u64>| {
            CLASSES
                .iter()
                .map(|c| int(sum(c, f)))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        let mut others: BTreeMap<String, u64> = BTreeMap::new();
        for r in &of_rate {
            for (k, v) in r
                .written
                .iter()
                .filter(|(k, _)| !CLASSES.contains(&k.as_str()))
            {
                *others.entry(k.clone()).or_default() += v;
            }
        }
        let matched = of_rate.iter().filter(|r| r.matches()).count();
        let mut loss: BTreeMap<String, u64> = BTreeMap::new();
        for r in &of_rate {
            for (k, v) in &r.loss_total {
                *loss.entry(k.clone()).or_default() += v;
            }
        }
        let loss_events: u64 = of_rate.iter().map(|r| r.loss_events).sum();
        let per = |f: &dyn Fn(&Run) -> f64| -> Summary {
            Summary::of(&of_rate.iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        let mismatch: i64 = of_rate
            .iter()
            .map(|r| r.events_total() as i64 - r.sent_total() as i64)
            .sum();
        let load_errors: u64 = of_rate.iter().map(|r| r.load_errors).sum();
        table.row(vec![
            rate_name(rate),
            per(&|r| r.sent_total() as f64 / r.seconds).show(0),
            triple(|r| &r.sent),
            triple(|r| &r.written),
            if others.is_empty() {
                "0".into()
            } else {
                others
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", int(*v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if matched == of_rate.len() {
                format!("YES ({matched}/{})", of_rate.len())
            } else {
                format!("NO ({matched}/{} rounds, {mismatch:+})", of_rate.len())
            } + &if load_errors > 0 {
                format!(", {load_errors} client errors")
            } else {
                String::new()
            },
            if loss.is_empty() {
                format!("{loss_events} (none)")
            } else {
                format!(
                    "{loss_events} ({})",
                    loss.iter()
                        .map(|(k, v)| format!("{k}={}", int(*v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            per(&|r| r.events_total() as f64 / r.seconds).show(0),
            per(&|r| r.cpu_ms_per_1k()).show(1),
            per(&|r| {
                r.daemon_cpu.total().as_secs_f64() / (r.seconds + r.settle.as_secs_f64().max(0.0))
                    * 100.0
            })
            .show(0),
            per(&|r| r.hwm_kib as f64 / 1024.0).show(1),
            per(&|r| r.log_bytes as f64 / r.events_total().max(1) as f64).show(0),
        ]);
    }
    table.print();

    // Where the daemon's CPU goes: user vs system, per thread, next to fake-imds's.
    let mut split = Table::new(
        "capacity, CPU split (median over rounds): daemon user/system (stat ticks), per daemon thread (schedstat), and fake-imds for scale",
        &[
            "target req/s",
            "daemon user ms",
            "daemon system ms",
            "per thread ms",
            "fake-imds CPU ms",
            "VmRSS at end MiB",
            "settle ms",
            "whole-life CPU ms / ru_maxrss MiB (wait4)",
        ],
    );
    for &rate in rates {
        let of_rate: Vec<&Run> = runs.iter().filter(|r| r.rate == rate).collect();
        let per = |f: &dyn Fn(&Run) -> f64| -> Summary {
            Summary::of(&of_rate.iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        let mut names: Vec<String> = of_rate
            .iter()
            .flat_map(|r| r.threads_ms.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        let threads = names
            .iter()
            .map(|n| {
                format!(
                    "{n} {}",
                    num(
                        per(&|r| r.threads_ms.get(n).copied().unwrap_or(0.0)).median,
                        0
                    )
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        split.row(vec![
            rate_name(rate),
            num(
                per(&|r| r.daemon_cpu.user_time().as_secs_f64() * 1e3).median,
                0,
            ),
            num(
                per(&|r| r.daemon_cpu.system_time().as_secs_f64() * 1e3).median,
                0,
            ),
            threads,
            num(
                per(&|r| r.fake_imds_cpu.total().as_secs_f64() * 1e3).median,
                0,
            ),
            num(per(&|r| r.rss_kib as f64 / 1024.0).median, 1),
            num(per(&|r| r.settle.as_secs_f64() * 1e3).median, 0),
            format!(
                "{} / {}",
                num(per(&|r| r.life_cpu.as_secs_f64() * 1e3).median, 0),
                num(per(&|r| r.max_rss_kib as f64 / 1024.0).median, 1)
            ),
        ]);
    }
    split.print();

    let at_target: Vec<&Run> = runs.iter().filter(|r| r.rate == TARGET_RATE).collect();
    if !at_target.is_empty() {
        let achieved = Summary::of(
            &at_target
                .iter()
                .map(|r| r.sent_total() as f64 / r.seconds)
                .collect::<Vec<_>>(),
        );
        let lossless = at_target.iter().all(|r| r.matches() && r.loss_sum() == 0);
        println!(
            "target: {} req/s with zero loss | achieved {} req/s (median), sent==written and no loss in {}/{} rounds -> {}",
            int(TARGET_RATE),
            num(achieved.median, 0),
            at_target
                .iter()
                .filter(|r| r.matches() && r.loss_sum() == 0)
                .count(),
            at_target.len(),
            if lossless && achieved.min >= TARGET_RATE as f64 * 0.98 {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    let hwm = Summary::of(
        &runs
            .iter()
            .map(|r| r.hwm_kib as f64 / 1024.0)
            .collect::<Vec<_>>(),
    );
    println!(
        "target: RSS < {TARGET_RSS_MIB} MiB | peak VmHWM over all runs {} MiB (median {}) -> {}\n",
        num(hwm.max, 1),
        num(hwm.median, 1),
        if hwm.max < TARGET_RSS_MIB {
            "met"
        } else {
            "NOT met"
        }
    );
}

/// Measurement 5: kernel time per BPF program run, read from the daemon's fdinfo at the end
/// of each capacity run (kernel.bpf_stats_enabled=1).
fn print_kernel_cost(runs: &[Run], rates: &[u64]) {
    let mut table = Table::new(
        "kernel cost per BPF program (run_time_ns / run_cnt from /proc/<daemon>/fdinfo at the end of each capacity run; median [min–max] over rounds)",
        &[
            "target req/s",
            "program",
            "type",
            "run_cnt (median)",
            "ns per run",
            "kernel ns per request sent",
        ],
    );
    for &rate in rates {
        let of_rate: Vec<&Run> = runs.iter().filter(|r| r.rate == rate).collect();
        let mut names: Vec<(String, String)> = of_rate
            .iter()
            .flat_map(|r| {
                r.progs
                    .iter()
                    .map(|p| (p.name.clone(), p.prog_type.clone()))
            })
            .collect();
        names.sort();
        names.dedup();
        for (name, prog_type) in &names {
            let pick = |r: &Run| {
                r.progs
                    .iter()
                    .find(|p| &p.name == name && &p.prog_type == prog_type)
                    .cloned()
            };
            let counts: Vec<f64> = of_rate
                .iter()
                .filter_map(|r| pick(r))
                .map(|p| p.run_cnt as f64)
                .collect();
            let per_run: Vec<f64> = of_rate
                .iter()
                .filter_map(|r| pick(r))
                .filter(|p| p.run_cnt > 0)
                .map(|p| p.run_time_ns as f64 / p.run_cnt as f64)
                .collect();
            let per_request: Vec<f64> = of_rate
                .iter()
                .filter_map(|r| Some((pick(r)?, r.sent_total())))
                .filter(|(_, sent)| *sent > 0)
                .map(|(p, sent)| p.run_time_ns as f64 / sent as f64)
                .collect();
            table.row(vec![
                rate_name(rate),
                name.clone(),
                prog_type.clone(),
                num(Summary::of(&counts).median, 0),
                Summary::of(&per_run).show(0),
                Summary::of(&per_request).show(0),
            ]);
        }
        table.rule();
    }
    table.print();
    println!(
        "(run_cnt counts every run system-wide, not only the benchmark's: sock_ops runs on every TCP connection's set-up; process-event programs, if any, on every fork/exec/exit)\n"
    );
}
