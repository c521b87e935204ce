//! What a watched client sees: errors from its own socket calls, with no probe and with each
//! backend, side by side. A socket in a socket hash (the sk_msg backend) receives through the
//! kernel's tcp_bpf_recvmsg, which returns EAGAIN to a blocking recv woken without data (a
//! write-space wakeup after a send that filled the send buffer, for one); this counts how
//! often that reaches a client, by request size and by how the client ends its request. A
//! Python client, as the AWS CLI is: one connection per request, the request in one sendall,
//! then recv until the server closes.

use std::{path::Path, time::Duration};

use anyhow::{Result, bail};

use super::{
    Ctx,
    harness::{Netns, fake_imds, logging_daemon, run_client, stop},
    stats::Table,
};

/// Request body sizes: an IMDS request (a few hundred bytes of head, no body), then sizes no
/// IMDS client sends, where the send buffer fills.
const SIZES: [usize; 5] = [0, 4 << 10, 20 << 10, 64 << 10, 1 << 20];
const REQUESTS_PER_SIZE: usize = 100;

/// How a client ends its request, and so who closes first.
const STYLES: [(&str, &str); 2] = [
    ("close", "Connection: close, read to EOF"),
    ("half-close", "shutdown(SHUT_WR), read to EOF"),
];

const CLIENT: &str = r#"
import socket, sys, json
body = b'x' * int(sys.argv[1])
half_close = sys.argv[3] == 'half-close'
head = b'PUT /latest/clients HTTP/1.1\r\nHost: x\r\n'
if not half_close:
    head += b'Connection: close\r\n'
counts = {'ok': 0, 'EAGAIN': 0, 'other': 0}
for _ in range(int(sys.argv[2])):
    s = socket.create_connection(('169.254.169.254', 80))
    try:
        s.sendall(head + b'Content-Length: %d\r\n\r\n' % len(body) + body)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        while s.recv(65536):
            pass
        counts['ok'] += 1
    except BlockingIOError:
        counts['EAGAIN'] += 1
    except OSError:
        counts['other'] += 1
    s.close()
print(json.dumps(counts))
"#;

pub fn run(ctx: &Ctx) -> Result<()> {
    let requests = REQUESTS_PER_SIZE * ctx.rounds(1);
    println!(
        "\n== clients: {requests} blocking requests per body size through a Python client, no probe vs {}; errors its recv/send calls returned",
        ctx.backends.join(", ")
    );
    let ns = Netns::new()?;
    let _imds = fake_imds(ctx, &ns)?;
    let setups: Vec<Option<&str>> = std::iter::once(None)
        .chain(ctx.backends.iter().map(|b| Some(b.as_str())))
        .collect();
    let mut table = Table::new(
        "clients: outcome of each request (ok / EAGAIN / other error)",
        &[
            "client",
            "body bytes",
            &setups
                .iter()
                .map(|s| s.unwrap_or("no probe"))
                .collect::<Vec<_>>()
                .join(" | "),
        ],
    );
    let cases: Vec<(usize, &str)> = STYLES
        .iter()
        .flat_map(|&(style, _)| SIZES.iter().map(move |&size| (size, style)))
        .collect();
    let mut results = vec![Vec::new(); cases.len()];
    for setup in &setups {
        let daemon = match setup {
            Some(backend) => Some(logging_daemon(
                ctx,
                backend,
                &ctx.tmp.join(&format!("clients-{backend}.jsonl")),
                &format!("clients-{backend}"),
            )?),
            None => None,
        };
        for (outcomes, &(size, style)) in results.iter_mut().zip(&cases) {
            outcomes.push(client(&ns, size, style, requests)?);
        }
        if let Some(mut daemon) = daemon {
            stop(&mut daemon)?;
        }
    }
    for (&(size, style), outcomes) in cases.iter().zip(&results) {
        table.row(vec![
            style.to_owned(),
            size.to_string(),
            outcomes.join(" | "),
        ]);
    }
    table.print();
    for (style, what) in STYLES {
        println!("  {style}: {what}");
    }
    println!(
        "(EAGAIN on a blocking socket is the kernel's tcp_bpf_recvmsg on a wakeup without data; plain TCP loops instead)"
    );
    Ok(())
}

/// Runs `requests` requests with a body of `size` bytes, ended the `style` way;
/// "ok/EAGAIN/other".
fn client(ns: &Netns, size: usize, style: &str, requests: usize) -> Result<String> {
    let mut command = ns.command(Path::new("python3"));
    command.args([
        "-c",
        CLIENT,
        &size.to_string(),
        &requests.to_string(),
        style,
    ]);
    let out = run_client(command, Duration::from_secs(120))?;
    let Some(counts) = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    else {
        bail!("the client printed no counts: {out}");
    };
    Ok(format!(
        "{}/{}/{}",
        counts["ok"], counts["EAGAIN"], counts["other"]
    ))
}
