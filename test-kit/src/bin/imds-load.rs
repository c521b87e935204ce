//! imds-load: the load patterns of `cargo xtask bench`, each a subcommand that prints one JSON
//! summary line on stdout (servers print `listening` once bound instead).
//!
//! - `echo-server --listen ADDR`: a tiny TCP server for traffic that is not IMDS traffic. The
//!   first byte a client sends picks the behaviour: `E` echoes every byte back, `S` swallows
//!   everything and answers the byte count (u64 LE) at EOF, `C` echoes 64 bytes and closes.
//! - `pingpong`, `bulk`, `connect`: clients of that server (round trips, one bulk transfer,
//!   connection churn).
//! - `imds`: paced keep-alive HTTP/1.1 load on an IMDS address with an IMDSv1/IMDSv2/token mix.
//! - `latency`: single requests with unique paths at a modest rate, printing each send time.
//!
//! HTTP is written by hand and responses are read by Content-Length: no HTTP crate, no
//! pipelining (one request in flight per connection).

use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    time::sleep_until,
};

#[derive(Parser)]
#[command(about = "Load generator for `cargo xtask bench`")]
struct Cli {
    /// Tokio worker threads (1: a current-thread runtime).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo/sink server for the non-IMDS loopback workloads; prints `listening` when bound.
    EchoServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// SIZE-byte request/response round trips over CONNECTIONS persistent connections.
    Pingpong {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Measured time, after the warm-up.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
    },
    /// BYTES through one connection in CHUNK-byte writes; the server acknowledges the count.
    Bulk {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1 << 30)]
        bytes: u64,
        #[arg(long, default_value_t = 64 * 1024)]
        chunk: usize,
    },
    /// Connect, one 64-byte round trip, close (the server closes first); CONCURRENCY loops.
    Connect {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Keep-alive HTTP/1.1 load on an IMDS address, open-loop paced per connection.
    Imds {
        #[arg(long, default_value = "169.254.169.254:80")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Target requests per second over all connections; 0 = as fast as possible.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Share of connections per role: `v1` GETs without a token, `v2` PUTs a token once
        /// and then GETs with it, `token` PUTs tokens only.
        #[arg(long, default_value = "v1=50,v2=40,token=10")]
        mix: String,
    },
    /// One request at a time on one keep-alive connection, path `/latest/meta-data/lat/<seq>`;
    /// prints `S <seq> <CLOCK_REALTIME ns just before the write>` per request, then a summary.
    Latency {
        #[arg(long, default_value = "169.254.169.254:80")]
        addr: SocketAddr,
        #[arg(long, default_value_t = 500)]
        rate: u64,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

fn main() -> Result {
    let cli = Cli::parse();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        match cli.command {
            Command::EchoServer { listen } => echo_server(listen).await,
            Command::Pingpong {
                addr,
                connections,
                size,
                seconds,
                warmup,
            } => pingpong(addr, connections, size, seconds, warmup).await,
            Command::Bulk { addr, bytes, chunk } => bulk(addr, bytes, chunk).await,
            Command::Connect {
                addr,
                concurrency,
                seconds,
            } => connect_churn(addr, concurrency, seconds).await,
            Command::Imds {
                addr,
                connections,
                rate,
                seconds,
                mix,
            } => imds(addr, connections, rate, seconds, &mix).await,
            Command::Latency {
                addr,
                rate,
                seconds,
            } => latency(addr, rate, seconds).await,
        }
    })
}

type Result<T = ()> = io::Result<T>;

/// An io::Error with a message, so the test package needs no anyhow.
fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

fn secs(seconds: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(seconds).map_err(|e| err(format!("bad duration {seconds}: {e}")))
}

fn print_summary(value: serde_json::Value) {
    println!("{value}");
}

// ---------------------------------------------------------------------------------------------
// Non-IMDS loopback workloads

async fn echo_server(listen: SocketAddr) -> Result {
    let listener = TcpListener::bind(listen).await?;
    println!("listening");
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let _ = serve_echo(stream).await;
        });
    }
}

async fn serve_echo(mut stream: TcpStream) -> Result {
    let mut buf = vec![0u8; 64 * 1024];
    let mut mode = [0u8; 1];
    stream.read_exact(&mut mode).await?;
    match mode[0] {
        b'E' => loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            stream.write_all(&buf[..n]).await?;
        },
        b'S' => {
            let mut total = 0u64;
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            stream.write_all(&total.to_le_bytes()).await?;
            Ok(())
        }
        b'C' => {
            // The client sent 64 bytes including the mode byte.
            stream.read_exact(&mut buf[..63]).await?;
            stream.write_all(&buf[..64]).await?;
            // Closing first leaves TIME_WAIT here, not on the client's ephemeral ports.
            Ok(())
        }
        other => Err(err(format!("unknown mode byte {other}"))),
    }
}

async fn pingpong(
    addr: SocketAddr,
    connections: usize,
    size: usize,
    seconds: f64,
    warmup: f64,
) -> Result {
    let size = size.max(1);
    let start = Instant::now();
    let measure_from = start + secs(warmup)?;
    let end = measure_from + secs(seconds)?;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(b"E").await?;
        tasks.push(tokio::spawn(async move {
            let msg = vec![b'x'; size];
            let mut back = vec![0u8; size];
            let mut rtts: Vec<u32> = Vec::with_capacity(1 << 16);
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                stream.write_all(&msg).await?;
                stream.read_exact(&mut back).await?;
                if sent >= measure_from {
                    let rtt = sent.elapsed().as_nanos();
                    rtts.push(u32::try_from(rtt).unwrap_or(u32::MAX));
                }
            }
            Ok::<_, io::Error>(rtts)
        }));
    }
    let mut rtts = Vec::new();
    for task in tasks {
        rtts.extend(task.await.map_err(|e| err(e.to_string()))??);
    }
    rtts.sort_unstable();
    let pct = |p: f64| -> f64 {
        if rtts.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * rtts.len() as f64).ceil() as usize;
        f64::from(rtts[rank.clamp(1, rtts.len()) - 1]) / 1000.0
    };
    print_summary(json!({
        "kind": "pingpong",
        "connections": connections,
        "size": size,
        "round_trips": rtts.len(),
        "seconds": seconds,
        "per_sec": rtts.len() as f64 / seconds,
        "p50_us": pct(50.0),
        "p99_us": pct(99.0),
    }));
    Ok(())
}

async fn bulk(addr: SocketAddr, bytes: u64, chunk: usize) -> Result {
    let chunk = vec![b'b'; chunk.max(1)];
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"S").await?;
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(chunk.len(), |left| left.min(chunk.len()));
        stream.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    stream.shutdown().await?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let received = u64::from_le_bytes(count);
    if received != bytes {
        return Err(err(format!("server received {received} of {bytes} bytes")));
    }
    print_summary(json!({
        "kind": "bulk",
        "bytes": bytes,
        "seconds": elapsed,
        "mib_per_sec": bytes as f64 / elapsed / (1024.0 * 1024.0),
    }));
    Ok(())
}

async fn connect_churn(addr: SocketAddr, concurrency: usize, seconds: f64) -> Result {
    let end = Instant::now() + secs(seconds)?;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        tasks.push(tokio::spawn(async move {
            let mut msg = [b'c'; 64];
            msg[0] = b'C';
            let mut back = [0u8; 64];
            let (mut done, mut errors) = (0u64, 0u64);
            while Instant::now() < end {
                let once = async {
                    let mut stream = TcpStream::connect(addr).await?;
                    stream.set_nodelay(true)?;
                    stream.write_all(&msg).await?;
                    stream.read_exact(&mut back).await?;
                    // Wait for the server's FIN so the close happens on its side first.
                    let mut rest = [0u8; 1];
                    if stream.read(&mut rest).await? != 0 {
                        return Err(err("the server sent more than 64 bytes"));
                    }
                    Ok::<_, io::Error>(())
                };
                match once.await {
                    Ok(()) => done += 1,
                    Err(_) => errors += 1,
                }
            }
            (done, errors)
        }));
    }
    let (mut done, mut errors) = (0u64, 0u64);
    for task in tasks {
        let (d, e) = task.await.map_err(|e| err(e.to_string()))?;
        done += d;
        errors += e;
    }
    print_summary(json!({
        "kind": "connect",
        "connections": done,
        "errors": errors,
        "seconds": seconds,
        "per_sec": done as f64 / seconds,
    }));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// HTTP to the (fake) IMDS

const GET_PATHS: &[&str] = &[
    "/latest/meta-data/instance-id",
    "/latest/meta-data/ami-id",
    "/latest/meta-data/instance-type",
    "/latest/meta-data/hostname",
];

fn host_header(addr: &SocketAddr) -> String {
    match addr {
        SocketAddr::V4(v4) if v4.port() == 80 => v4.ip().to_string(),
        SocketAddr::V6(v6) if v6.port() == 80 => format!("[{}]", v6.ip()),
        other => other.to_string(),
    }
}

fn get_request(host: &str, path: &str, token: Option<&str>) -> Vec<u8> {
    let token = token
        .map(|t| format!("X-aws-ec2-metadata-token: {t}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: imds-load/1\r\nAccept: */*\r\n{token}\r\n"
    )
    .into_bytes()
}

fn token_request(host: &str) -> Vec<u8> {
    format!(
        "PUT /latest/api/token HTTP/1.1\r\nHost: {host}\r\nUser-Agent: imds-load/1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

struct Response {
    status: u16,
    body: Vec<u8>,
    close: bool,
}

/// A keep-alive connection that reads responses by Content-Length.
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    async fn send(&mut self, request: &[u8]) -> Result {
        self.stream.write_all(request).await
    }

    async fn fill(&mut self) -> Result {
        self.buf.reserve(4096);
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        Ok(())
    }

    async fn response(&mut self) -> Result<Response> {
        let head_len = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_len])
            .map_err(|_| err("response head is not UTF-8"))?;
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| err(format!("bad status line: {head:?}")))?;
        let mut length = 0usize;
        let mut close = false;
        for line in head.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| err(format!("bad Content-Length: {value:?}")))?;
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.trim().eq_ignore_ascii_case("close");
            }
        }
        while self.buf.len() < head_len + length {
            self.fill().await?;
        }
        let body = self.buf[head_len..head_len + length].to_vec();
        self.buf.drain(..head_len + length);
        Ok(Response {
            status,
            body,
            close,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    V1,
    V2,
    Token,
}

/// Splits `connections` over the roles by the percentages in `mix` (largest remainder).
fn roles(mix: &str, connections: usize) -> Result<Vec<Role>> {
    let mut weights = Vec::new();
    for part in mix.split(',').filter(|p| !p.is_empty()) {
        let (name, weight) = part
            .split_once('=')
            .ok_or_else(|| err(format!("mix part {part:?} is not NAME=WEIGHT")))?;
        let role = match name.trim() {
            "v1" => Role::V1,
            "v2" => Role::V2,
            "token" => Role::Token,
            other => return Err(err(format!("unknown mix class {other:?} (v1, v2, token)"))),
        };
        let weight: f64 = weight
            .trim()
            .parse()
            .map_err(|_| err(format!("bad weight in {part:?}")))?;
        weights.push((role, weight));
    }
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    if total <= 0.0 {
        return Err(err("mix weights sum to zero"));
    }
    let mut counts: Vec<(Role, usize, f64)> = weights
        .iter()
        .map(|&(role, w)| {
            let exact = w / total * connections as f64;
            (role, exact.floor() as usize, exact - exact.floor())
        })
        .collect();
    let mut left = connections - counts.iter().map(|c| c.1).sum::<usize>();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by(|&a, &b| counts[b].2.total_cmp(&counts[a].2));
    for i in order.into_iter().cycle().take(counts.len() * 2) {
        if left == 0 {
            break;
        }
        counts[i].1 += 1;
        left -= 1;
    }
    // Interleaved, so every role is spread over the start-time offsets.
    let mut roles = Vec::with_capacity(connections);
    let mut remaining: Vec<(Role, usize)> = counts.iter().map(|c| (c.0, c.1)).collect();
    while roles.len() < connections {
        for (role, n) in remaining.iter_mut() {
            if *n > 0 {
                roles.push(*role);
                *n -= 1;
            }
        }
    }
    Ok(roles)
}

#[derive(Default)]
struct Counts {
    sent: BTreeMap<&'static str, u64>,
    status: BTreeMap<u16, u64>,
    errors: u64,
    reconnects: u64,
    first_error: Option<String>,
    /// Largest delay of a send behind its schedule.
    max_lag: Duration,
}

impl Counts {
    fn merge(&mut self, other: Self) {
        for (k, v) in other.sent {
            *self.sent.entry(k).or_default() += v;
        }
        for (k, v) in other.status {
            *self.status.entry(k).or_default() += v;
        }
        self.errors += other.errors;
        self.reconnects += other.reconnects;
        self.first_error = self.first_error.take().or(other.first_error);
        self.max_lag = self.max_lag.max(other.max_lag);
    }
}

async fn imds(addr: SocketAddr, connections: usize, rate: u64, seconds: f64, mix: &str) -> Result {
    require_local(&addr)?;
    let roles = roles(mix, connections.max(1))?;
    let n = roles.len();
    let start = Instant::now() + Duration::from_millis(20);
    let end = start + secs(seconds)?;
    // Each connection sends every `interval`, its schedule offset by its index.
    let interval = (rate > 0).then(|| Duration::from_secs_f64(n as f64 / rate as f64));
    let host = host_header(&addr);
    let mut tasks = Vec::new();
    for (index, role) in roles.iter().copied().enumerate() {
        let host = host.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts = Counts::default();
            let offset = interval.map_or(Duration::ZERO, |i| i.mul_f64(index as f64 / n as f64));
            let mut conn: Option<HttpConn> = None;
            let mut token: Option<String> = None;
            let mut seq: u64 = 0;
            loop {
                let due = match interval {
                    Some(interval) => start + offset + interval.mul_f64(seq as f64),
                    None => Instant::now().max(start),
                };
                if due >= end {
                    break;
                }
                sleep_until(due.into()).await;
                counts.max_lag = counts.max_lag.max(due.elapsed());
                seq += 1;
                let result = async {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => {
                            counts.reconnects += u64::from(seq > 1);
                            token = None;
                            conn.insert(HttpConn::connect(addr).await?)
                        }
                    };
                    let path = GET_PATHS[(seq as usize + index) % GET_PATHS.len()];
                    let (class, request) = match (role, &token) {
                        (Role::V1, _) => ("imdsv1", get_request(&host, path, None)),
                        (Role::V2, Some(t)) => ("imdsv2", get_request(&host, path, Some(t))),
                        (Role::V2, None) | (Role::Token, _) => ("token", token_request(&host)),
                    };
                    c.send(&request).await?;
                    *counts.sent.entry(class).or_default() += 1;
                    let response = c.response().await?;
                    *counts.status.entry(response.status).or_default() += 1;
                    if class == "token" && role == Role::V2 && response.status == 200 {
                        token = Some(String::from_utf8_lossy(&response.body).into_owned());
                    }
                    Ok::<_, io::Error>(response.close)
                }
                .await;
                match result {
                    Ok(false) => {}
                    Ok(true) => conn = None,
                    Err(e) => {
                        counts.errors += 1;
                        counts.first_error.get_or_insert_with(|| e.to_string());
                        conn = None;
                    }
                }
            }
            counts
        }));
    }
    let mut counts = Counts::default();
    for task in tasks {
        counts.merge(task.await.map_err(|e| err(e.to_string()))?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total: u64 = counts.sent.values().sum();
    let role_counts: BTreeMap<String, usize> = [Role::V1, Role::V2, Role::Token]
        .iter()
        .map(|r| {
            (
                format!("{r:?}").to_lowercase(),
                roles.iter().filter(|x| *x == r).count(),
            )
        })
        .collect();
    print_summary(json!({
        "kind": "imds",
        "target_rate": rate,
        "connections": n,
        "roles": role_counts,
        "sent": counts.sent,
        "sent_total": total,
        "status": counts.status.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "errors": counts.errors,
        "first_error": counts.first_error,
        "reconnects": counts.reconnects,
        "seconds": elapsed,
        "achieved_rate": total as f64 / seconds,
        "max_lag_ms": counts.max_lag.as_secs_f64() * 1000.0,
    }));
    Ok(())
}

/// The IMDS load must never reach a real instance metadata service: refuse unless the target
/// address is assigned to this network namespace (as in the benchmark's own namespace).
/// Binding a UDP socket to an address succeeds only for a local one.
fn require_local(addr: &SocketAddr) -> Result {
    std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0))
        .map(drop)
        .map_err(|e| {
            err(format!(
                "refusing to send to {addr}: {} is not an address of this network namespace ({e}); \
             run inside a namespace that owns it, as `cargo xtask bench` does",
                addr.ip()
            ))
        })
}

fn realtime_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn latency(addr: SocketAddr, rate: u64, seconds: f64) -> Result {
    require_local(&addr)?;
    let host = host_header(&addr);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut conn = HttpConn::connect(addr).await?;
    let start = Instant::now() + Duration::from_millis(10);
    let end = start + secs(seconds)?;
    let mut out = String::with_capacity(1 << 20);
    let mut seq: u64 = 0;
    let mut errors = 0u64;
    loop {
        let due = start + interval.mul_f64(seq as f64);
        if due >= end {
            break;
        }
        sleep_until(due.into()).await;
        let request = get_request(&host, &format!("/latest/meta-data/lat/{seq}"), None);
        let sent_ns = realtime_ns();
        let result = async {
            conn.send(&request).await?;
            conn.response().await
        }
        .await;
        match result {
            Ok(response) => {
                out.push_str(&format!("S {seq} {sent_ns}\n"));
                if response.close {
                    conn = HttpConn::connect(addr).await?;
                }
            }
            Err(_) => {
                errors += 1;
                conn = HttpConn::connect(addr).await?;
            }
        }
        seq += 1;
    }
    print!("{out}");
    print_summary(json!({
        "kind": "latency",
        "sent": seq - errors,
        "errors": errors,
        "seconds": seconds,
    }));
    Ok(())
}
