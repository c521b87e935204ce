//! The report for a person at a terminal: the verdict in one line, why, then the callers by
//! IMDSv1 requests with what each must do, then other clouds' probes.

use std::fmt::Write as _;

use crate::{
    outputs::event::Timestamp,
    report::{CallerReport, Report, Verdict, human},
};

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let verdict = match report.verdict {
        Verdict::Safe => "SAFE to require IMDSv2",
        Verdict::NotSafe => "NOT SAFE to require IMDSv2",
        Verdict::Undetermined => "UNDETERMINED whether IMDSv2 can be required",
    };
    let _ = writeln!(out, "{verdict}");
    for reason in &report.reasons {
        let _ = writeln!(out, "  - {reason}");
    }
    let _ = match &report.host {
        Some(host) => writeln!(
            out,
            "Host {} (account {}, {}, {})",
            host.instance_id, host.account_id, host.region, host.image_id
        ),
        None => writeln!(
            out,
            "Host: identity unknown (not asked, or no answer from the IMDS: not on EC2?)"
        ),
    };
    let o = &report.observed;
    let _ = writeln!(
        out,
        "Watched {} over {} run{} ({} .. {}), {} gap{}, {} lost, {} unknown",
        human(o.seconds),
        o.runs,
        if o.runs == 1 { "" } else { "s" },
        o.since.map_or("-".to_owned(), time),
        o.until.map_or("-".to_owned(), time),
        o.gaps.len(),
        if o.gaps.len() == 1 { "" } else { "s" },
        o.lost,
        o.unknown
    );
    if !report.callers.is_empty() {
        out.push('\n');
        table(&mut out, &report.callers);
    }
    if !report.probes.is_empty() {
        let _ = writeln!(
            out,
            "\nOther clouds' metadata probes (they fail on EC2 whatever the setting; nothing to do):"
        );
        for probe in &report.probes {
            let _ = writeln!(
                out,
                "  {:<12} {}  {} request{}, last {}",
                probe
                    .probe_of
                    .map_or("-".to_owned(), |cloud| format!("{cloud:?}").to_lowercase()),
                who(probe),
                probe.requests.total(),
                if probe.requests.total() == 1 { "" } else { "s" },
                time(probe.last_seen)
            );
        }
    }
    out
}

fn table(out: &mut String, callers: &[CallerReport]) {
    let header = [
        "IMDSV1",
        "IMDSV2",
        "TOKEN",
        "UNKNOWN",
        "CALLER",
        "UNIT / CONTAINER",
        "SDK",
        "LAST SEEN",
        "WHAT TO DO",
    ];
    let rows: Vec<[String; 9]> = callers
        .iter()
        .map(|c| {
            [
                c.requests.imdsv1.to_string(),
                c.requests.imdsv2.to_string(),
                c.requests.token.to_string(),
                c.requests.unknown.to_string(),
                who(c),
                place(c),
                sdk(c),
                time(c.last_seen),
                c.remediation.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i == cells.len() - 1 {
                text.push_str(cell);
            } else if i < 4 {
                let _ = write!(text, "{cell:>width$}  ", width = widths[i]);
            } else {
                let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
}

/// The executable, and the script an interpreter runs.
fn who(c: &CallerReport) -> String {
    let exe = c.exe.as_deref().unwrap_or("?");
    match &c.script {
        Some(script) => format!("{exe} {script}"),
        None => exe.to_owned(),
    }
}

fn place(c: &CallerReport) -> String {
    match (&c.systemd_unit, &c.container) {
        (unit, Some(container)) => format!(
            "{}{} {}",
            unit.as_deref().map_or(String::new(), |u| format!("{u} ")),
            container.runtime.as_str(),
            &container.id[..container.id.len().min(12)]
        ),
        (Some(unit), None) => unit.clone(),
        (None, None) => "-".to_owned(),
    }
}

fn sdk(c: &CallerReport) -> String {
    let Some(sdk) = &c.sdk else {
        return "-".to_owned();
    };
    let name = serde_json::to_value(sdk.name)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    match &sdk.version {
        Some(version) => format!("{name} {version}"),
        None => format!("{name}? ({:?})", sdk.confidence).to_lowercase(),
    }
}

fn time(t: Timestamp) -> String {
    humantime::format_rfc3339_seconds(t.0).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        outputs::ledger::{
            Ledger, LedgerData,
            tests::{V1, request, who as sender},
        },
        report::{Options, build},
    };

    #[test]
    fn the_verdict_comes_first_then_the_callers() {
        let mut ledger = Ledger::new(LedgerData::default(), 10);
        // Two IMDSv1 requests: listed before curl's one, however recent.
        for ts in [100, 99] {
            ledger.record(
                &request(
                    "GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\nUser-Agent: Botocore/1.12.253 Python/3.7\r\n\r\n",
                    sender(1, "/usr/bin/python3"),
                    ts,
                ),
                ts,
            );
        }
        ledger.record(&request(V1, sender(2, "/usr/bin/curl"), 101), 2);
        let report = build(
            Some(ledger.data()),
            &Options {
                since: None,
                min_observed: Duration::ZERO,
                now: SystemTime::UNIX_EPOCH + Duration::from_secs(200),
            },
        );
        let text = render(&report);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines[0], "NOT SAFE to require IMDSv2");
        let header = lines.iter().position(|l| l.starts_with("IMDSV1")).unwrap();
        assert!(lines[header + 1].contains("botocore 1.12.253"), "{text}");
        assert!(
            lines[header + 1].ends_with("upgrade botocore to >= 1.13.25"),
            "{text}"
        );
        assert!(lines[header + 2].contains("/usr/bin/curl"), "{text}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("Host: identity unknown")),
            "{text}"
        );
    }

    #[test]
    fn the_host_is_named() {
        let mut data = LedgerData::default();
        let mut window = crate::outputs::ledger::window::Window::start(
            SystemTime::UNIX_EPOCH + Duration::from_secs(100),
            "sk_msg",
        );
        window.identity = Some(crate::host::identity::Identity {
            instance_id: "i-0123456789abcdef0".into(),
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            image_id: "ami-0abcdef1234567890".into(),
        });
        data.windows.push(window);
        let report = build(
            Some(&data),
            &Options {
                since: None,
                min_observed: Duration::ZERO,
                now: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
            },
        );
        let text = render(&report);
        assert!(
            text.contains(
                "Host i-0123456789abcdef0 (account 123456789012, us-east-1, ami-0abcdef1234567890)"
            ),
            "{text}"
        );
    }
}
