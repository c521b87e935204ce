//! Latency: from a client's send to its event being in the log file. imds-load sends one
//! request at a time with a unique path and prints the CLOCK_REALTIME just before each write;
//! a tailer thread here watches the log file (inotify, so it wakes on each write(2) of the
//! daemon) and stamps every line with the wall time it found it at. The event's own `ts` (the
//! kernel's send time) splits the total into "send -> kernel ts" and "kernel ts -> on disk".

use std::{
    collections::HashMap,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Ctx,
    harness::{Netns, fake_imds, logging_daemon, run_client, sleep, stop, summary},
    quiet_host,
    stats::{Summary, Table, num, percentile},
};

const RATE: u64 = 500;
const TARGET_P99_MS: f64 = 10.0;
const PATH_PREFIX: &str = "\"path\":\"/latest/meta-data/lat/";

/// What the tailer saw for one request.
#[derive(Clone, Copy)]
struct Seen {
    /// Wall clock (ns) when the line was found in the file.
    arrival_ns: i128,
    /// The event's `ts` (ns), the kernel's send time.
    event_ns: Option<i128>,
}

struct Tailer {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Result<(HashMap<u64, Seen>, &'static str)>>,
}

impl Tailer {
    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || tail(&path, &flag));
        Self { stop, handle }
    }

    fn finish(self) -> Result<(HashMap<u64, Seen>, &'static str)> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("tailer thread panicked"))?
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Follows `path` until `stop`; returns what it saw by sequence number and how it waited.
fn tail(path: &Path, stop: &AtomicBool) -> Result<(HashMap<u64, Seen>, &'static str)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    file.seek(SeekFrom::End(0))?;
    // SAFETY: plain syscalls; the returned fd is owned right away.
    let inotify = unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC);
        (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
    };
    let watching = inotify.as_ref().is_some_and(|fd| {
        let c_path =
            std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: valid fd and NUL-terminated path.
        unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c_path.as_ptr(), libc::IN_MODIFY) >= 0 }
    });
    let how = if watching {
        "inotify IN_MODIFY wake-ups"
    } else {
        "polling every 1 ms"
    };
    let mut seen = HashMap::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut events = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match inotify.as_ref().filter(|_| watching) {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let ready = unsafe { libc::poll(&mut pfd, 1, 20) };
                if ready <= 0 {
                    continue;
                }
                // Drain the notifications; their content does not matter.
                // SAFETY: reading into a buffer of the given length.
                while unsafe {
                    libc::read(fd.as_raw_fd(), events.as_mut_ptr().cast(), events.len())
                } > 0
                {}
            }
            None => thread::sleep(Duration::from_millis(1)),
        }
        let arrival_ns = now_ns();
        loop {
            let n = file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&chunk[..n]);
        }
        let complete = match pending.iter().rposition(|&b| b == b'\n') {
            Some(last) => last + 1,
            None => continue,
        };
        for line in pending[..complete].split(|&b| b == b'\n') {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let Some(at) = line.find(PATH_PREFIX) else {
                continue;
            };
            let digits: String = line[at + PATH_PREFIX.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(seq) = digits.parse::<u64>() {
                seen.entry(seq).or_insert(Seen {
                    arrival_ns,
                    event_ns: event_ts_ns(line),
                });
            }
        }
        pending.drain(..complete);
    }
    Ok((seen, how))
}

/// The event's `ts` (`{"ts":"2026-11-24T19:50:13.745032Z",...`) as ns since the epoch.
fn event_ts_ns(line: &str) -> Option<i128> {
    let ts = line.strip_prefix("{\"ts\":\"")?.split('"').next()?;
    parse_rfc3339_utc(ts)
}

fn parse_rfc3339_utc(ts: &str) -> Option<i128> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (h, min, s) = (t.next()??, t.next()??, t.next()??);
    let frac_ns: i64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(frac_ns))
}

struct Round {
    sent: usize,
    /// /bin/true runs of the churn thread during the round.
    execs: u64,
    /// The slowest request: (ms, sequence number).
    slowest: (f64, u64),
    /// Non-zero counters of the daemon's last `loss` event.
    loss: String,
    missing: usize,
    total_ms: Vec<f64>,
    kernel_ms: Vec<f64>,
    pipeline_ms: Vec<f64>,
}

/// Background process churn: a fork+exec+exit of /bin/true every `CHURN_INTERVAL` from a
/// thread of xtask, which makes the kernel side emit process records next to the sends.
const CHURN_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, PartialEq)]
enum Condition {
    Quiet,
    ExecChurn,
}

impl Condition {
    fn name(self) -> &'static str {
        match self {
            Self::Quiet => "quiet host",
            Self::ExecChurn => "exec churn 100/s",
        }
    }
}

/// Runs `/bin/true` every CHURN_INTERVAL until dropped.
struct Churn {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<u64>>,
}

impl Churn {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let start = Instant::now();
            let mut spawned = 0u64;
            while !flag.load(Ordering::SeqCst) {
                let _ = std::process::Command::new("/bin/true").status();
                spawned += 1;
                let due = start + CHURN_INTERVAL * u32::try_from(spawned).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
            }
            spawned
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or(0)
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let rounds = ctx.rounds(3);
    let seconds = ctx.seconds(5.0);
    let conditions = [Condition::Quiet, Condition::ExecChurn];
    println!(
        "== latency: send -> event in the log file, {RATE} req/s on one keep-alive connection, {seconds} s x {rounds} rounds x 2 conditions, interleaved"
    );
    println!(
        "   conditions: quiet host | exec churn (xtask runs /bin/true every {} ms, so process records flow too)",
        CHURN_INTERVAL.as_millis()
    );
    println!("   a fresh daemon per round and condition (started before, SIGTERM after)");
    let ns = Netns::new()?;
    let imds = fake_imds(ctx, &ns)?;
    let mut results: Vec<(Condition, Round)> = Vec::new();
    let mut commands = Vec::new();
    let mut how = "";
    for round in 1..=rounds {
        for condition in conditions {
            let r = one_round(ctx, &ns, seconds, condition, round, &mut commands, &mut how)?;
            println!(
                "  round {round}/{rounds} {:<16}: {} sent, {} on disk, p50 {} ms, p99 {} ms, max {} ms (request #{}){}",
                condition.name(),
                r.sent,
                r.sent - r.missing,
                num(percentile(&r.total_ms, 50.0), 3),
                num(percentile(&r.total_ms, 99.0), 3),
                num(r.slowest.0, 3),
                r.slowest.1,
                if r.loss.is_empty() {
                    String::new()
                } else {
                    format!(" | daemon reported loss: {}", r.loss)
                }
            );
            results.push((condition, r));
        }
    }
    drop(imds);
    drop(ns);
    if results.iter().all(|(_, r)| r.sent == 0) {
        bail!("the latency client sent nothing");
    }

    println!("commands:");
    println!("  daemon: {}", commands.first().map_or("", String::as_str));
    println!("  client: {}", commands.get(1).map_or("", String::as_str));
    println!("  log tail: {how}, stamped with CLOCK_REALTIME when the line is found");
    let mut table = Table::new(
        "latency in ms (client send -> line in the log file); per round and all rounds pooled",
        &[
            "condition",
            "round",
            "sent",
            "missing",
            "p50",
            "p99",
            "max",
            "send->kernel ts p50",
            "kernel ts->on disk p50 / p99",
            "execs",
        ],
    );
    let row = |condition: Condition, name: String, r: &Round| {
        vec![
            condition.name().to_owned(),
            name,
            r.sent.to_string(),
            r.missing.to_string(),
            num(percentile(&r.total_ms, 50.0), 3),
            num(percentile(&r.total_ms, 99.0), 3),
            num(r.total_ms.last().copied().unwrap_or(f64::NAN), 3),
            num(percentile(&r.kernel_ms, 50.0), 3),
            format!(
                "{} / {}",
                num(percentile(&r.pipeline_ms, 50.0), 3),
                num(percentile(&r.pipeline_ms, 99.0), 3)
            ),
            r.execs.to_string(),
        ]
    };
    let mut verdicts = Vec::new();
    for condition in conditions {
        let of: Vec<&Round> = results
            .iter()
            .filter(|(c, _)| *c == condition)
            .map(|(_, r)| r)
            .collect();
        for (i, r) in of.iter().enumerate() {
            table.row(row(condition, (i + 1).to_string(), r));
        }
        let mut pooled = Round {
            sent: of.iter().map(|r| r.sent).sum(),
            execs: of.iter().map(|r| r.execs).sum(),
            slowest: (f64::NAN, 0),
            loss: String::new(),
            missing: of.iter().map(|r| r.missing).sum(),
            total_ms: of.iter().flat_map(|r| r.total_ms.clone()).collect(),
            kernel_ms: of.iter().flat_map(|r| r.kernel_ms.clone()).collect(),
            pipeline_ms: of.iter().flat_map(|r| r.pipeline_ms.clone()).collect(),
        };
        for v in [
            &mut pooled.total_ms,
            &mut pooled.kernel_ms,
            &mut pooled.pipeline_ms,
        ] {
            v.sort_by(f64::total_cmp);
        }
        table.row(row(condition, "pooled".into(), &pooled));
        let p99s: Vec<f64> = of.iter().map(|r| percentile(&r.total_ms, 99.0)).collect();
        table.row(vec![
            condition.name().to_owned(),
            "p99 over rounds".into(),
            String::new(),
            String::new(),
            String::new(),
            Summary::of(&p99s).show(3),
        ]);
        table.rule();
        let p99 = percentile(&pooled.total_ms, 99.0);
        verdicts.push(format!(
            "{}: pooled p99 {} ms, {} of {} never reached the file -> {}",
            condition.name(),
            num(p99, 3),
            pooled.missing,
            pooled.sent,
            if p99 < TARGET_P99_MS && pooled.missing == 0 {
                "met"
            } else {
                "NOT met"
            }
        ));
    }
    table.print();
    println!(
        "target: p99 < {TARGET_P99_MS} ms | {}\n",
        verdicts.join(" | ")
    );
    Ok(())
}

fn one_round(
    ctx: &Ctx,
    ns: &Netns,
    seconds: f64,
    condition: Condition,
    round: usize,
    commands: &mut Vec<String>,
    how: &mut &'static str,
) -> Result<Round> {
    let log = ctx
        .tmp
        .join(&format!("latency-{round}-{}.jsonl", condition as u8));
    quiet_host(&[])?;
    let mut daemon = logging_daemon(ctx, "sk-msg", &log, "latency")?;
    let tailer = Tailer::start(log.clone());
    let churn = (condition == Condition::ExecChurn).then(Churn::start);
    let mut load = ns.command(&ctx.bins.load);
    load.args([
        "latency",
        "--addr",
        "169.254.169.254:80",
        "--rate",
        &RATE.to_string(),
        "--seconds",
        &seconds.to_string(),
    ]);
    if commands.is_empty() {
        commands.push(daemon.command.clone());
        commands.push(crate::cmd::display(&load));
    }
    let out = run_client(
        load,
        Duration::from_secs_f64(seconds) + Duration::from_secs(60),
    );
    let execs = churn.map_or(0, Churn::finish);
    let out = out?;
    let _ = summary(&out)?;
    let sends: HashMap<u64, i128> = out
        .lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("S ")?.split_whitespace();
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect();
    // Give the last events time to land, but no longer than needed.
    let wait_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < wait_until {
        let lines = std::fs::read(&log)
            .map(|b| bytecount_lines(&b))
            .unwrap_or(0);
        if lines >= sends.len() {
            break;
        }
        sleep(Duration::from_millis(20))?;
    }
    sleep(Duration::from_millis(100))?;
    let (seen, tail_how) = tailer.finish()?;
    *how = tail_how;
    stop(&mut daemon)?;
    let loss = loss_totals(&log);
    let _ = std::fs::remove_file(&log);
    let mut r = Round {
        sent: sends.len(),
        execs,
        slowest: (f64::NAN, 0),
        loss,
        missing: 0,
        total_ms: Vec::new(),
        kernel_ms: Vec::new(),
        pipeline_ms: Vec::new(),
    };
    for (seq, sent_ns) in &sends {
        match seen.get(seq) {
            None => r.missing += 1,
            Some(s) => {
                let ms = (s.arrival_ns - sent_ns) as f64 / 1e6;
                r.total_ms.push(ms);
                if r.slowest.0.is_nan() || ms > r.slowest.0 {
                    r.slowest = (ms, *seq);
                }
                if let Some(event_ns) = s.event_ns {
                    r.kernel_ms.push((event_ns - sent_ns) as f64 / 1e6);
                    r.pipeline_ms.push((s.arrival_ns - event_ns) as f64 / 1e6);
                }
            }
        }
    }
    for v in [&mut r.total_ms, &mut r.kernel_ms, &mut r.pipeline_ms] {
        v.sort_by(f64::total_cmp);
    }
    Ok(r)
}

/// The non-zero `total` counters of the last `loss` event in `log`, as `name=n, ...`.
fn loss_totals(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Some(last) = text
        .lines()
        .rev()
        .filter(|l| l.contains("\"event\":\"loss\""))
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    else {
        return String::new();
    };
    last["total"]
        .as_object()
        .map(|total| {
            total
                .iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn bytecount_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_timestamps() {
        assert_eq!(
            parse_rfc3339_utc("1970-01-01T00:00:01.000002Z"),
            Some(1_000_002_000)
        );
        // date -u -d 2026-11-24T19:50:13Z +%s = 1795549813
        assert_eq!(
            parse_rfc3339_utc("2026-11-24T19:50:13.745032Z"),
            Some(1_795_549_813_745_032_000)
        );
    }
}
