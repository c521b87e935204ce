//! `bench log-volume`: bytes of event log written per IMDS request, for one caller polling
//! 10 times a second, for 100 distinct callers doing the same, and for one caller with
//! `--every-request` (one event per request, as before summaries). Each caller is a Python
//! program of its own (a distinct script is a distinct caller in the ledger's key) making
//! token-less GETs over one keep-alive connection.

use std::{fs, process::Stdio, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    Ctx,
    harness::{Netns, fake_imds, sleep, start_daemon, stop},
    quiet_host,
    stats::{Table, num},
};

const RATE_PER_CALLER: f64 = 10.0;

/// Polls `RATE_PER_CALLER` times a second for argv[1] seconds; prints how many it sent.
const CLIENT: &str = r#"
import http.client, sys, time
seconds, rate = float(sys.argv[1]), float(sys.argv[2])
c = http.client.HTTPConnection('169.254.169.254', 80, timeout=5)
start, sent = time.monotonic(), 0
while time.monotonic() - start < seconds:
    c.request('GET', '/latest/meta-data/instance-id')
    c.getresponse().read()
    sent += 1
    time.sleep(max(0.0, start + sent / rate - time.monotonic()))
print(sent)
"#;

pub fn run(ctx: &Ctx) -> Result<()> {
    let seconds = ctx.seconds(120.0);
    println!(
        "== log volume: bytes of events per request, {RATE_PER_CALLER} req/s per caller for {seconds} s (summaries: first 10 per caller, class and minute in full)"
    );
    let mut table = Table::new(
        "log volume",
        &[
            "callers",
            "mode",
            "requests",
            "log bytes",
            "bytes/request",
            "imds_request events",
            "request_summary events",
        ],
    );
    for (callers, every_request, secs) in [
        (1, false, seconds),
        (100, false, seconds),
        // One event per request is the same per request however long: a shorter run suffices.
        (1, true, seconds.min(30.0)),
    ] {
        let row = measure(ctx, callers, every_request, secs)?;
        table.row(row);
    }
    table.print();
    Ok(())
}

fn measure(ctx: &Ctx, callers: usize, every_request: bool, seconds: f64) -> Result<Vec<String>> {
    let tag = format!("volume-{callers}-{every_request}");
    let log = ctx.tmp.join(&format!("{tag}.jsonl"));
    let ns = Netns::new()?;
    let _imds = fake_imds(ctx, &ns)?;
    quiet_host(&[])?;
    let log_arg = log.to_string_lossy();
    let mut args = vec!["--backend", "sk-msg", "--no-stdout", "--log-file", &log_arg];
    if every_request {
        args.push("--every-request");
    }
    let mut daemon = start_daemon(ctx, &args, &tag)?;
    let children = (0..callers)
        .map(|i| {
            let script = ctx.tmp.join(&format!("{tag}-caller-{i}.py"));
            fs::write(&script, CLIENT)?;
            ns.command("/usr/bin/python3")
                .arg(&script)
                .args([seconds.to_string(), RATE_PER_CALLER.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting a polling client")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut requests = 0u64;
    for child in children {
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "a polling client failed");
        requests += String::from_utf8_lossy(&out.stdout).trim().parse::<u64>()?;
    }
    // The daemon sees the last sends within milliseconds; its stop drains and summarises.
    sleep(Duration::from_millis(200))?;
    stop(&mut daemon)?;
    let text = fs::read_to_string(&log)?;
    let count = |name: &str| {
        text.lines()
            .filter(|l| l.contains(&format!("\"event\":\"{name}\"")))
            .count()
    };
    let bytes = text.len() as u64;
    Ok(vec![
        callers.to_string(),
        if every_request {
            "--every-request".to_owned()
        } else {
            "summaries".to_owned()
        },
        requests.to_string(),
        bytes.to_string(),
        num(bytes as f64 / requests.max(1) as f64, 1),
        count("imds_request").to_string(),
        count("request_summary").to_string(),
    ])
}
