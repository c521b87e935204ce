//! fake-imds: a small, fast stand-in for the EC2 Instance Metadata Service, so integration
//! tests and benchmarks can drive real IMDSv1 and IMDSv2 traffic inside a network namespace.

mod http;
mod metadata;
mod routes;
mod server;
mod tokens;

use std::{
    fs,
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use clap::Parser;
use tokio::{
    signal::unix::{SignalKind, signal},
    task::JoinSet,
};
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::{
    routes::{Imds, Mode},
    tokens::{DEFAULT_CAPACITY, Entropy, TokenStore},
};

/// Serves a fake EC2 instance metadata tree over HTTP/1.1 with IMDSv2 session tokens.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on; repeat for several.
    #[arg(long = "listen", value_name = "ADDR:PORT", default_values = ["169.254.169.254:80", "[fd00:ec2::254]:80"])]
    listen: Vec<SocketAddr>,

    /// Whether tokenless (IMDSv1) requests are served, as the instance's HttpTokens setting.
    #[arg(long, value_enum, default_value_t = Mode::Optional)]
    mode: Mode,

    /// Never answer token PUTs (hold the connection until the client gives up), so SDKs fall
    /// back to IMDSv1 as they do when the answer cannot reach them (hop limit).
    #[arg(long)]
    drop_token_puts: bool,

    /// Created (with the bound addresses, one per line) once every listener is bound.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

/// Two workers match the benchmark machine; more would only compete with the load generator.
const WORKERS: usize = 2;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Tests capture stderr into files and logs, where colour codes are noise.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let entropy = Entropy::open().context("opening /dev/urandom")?;
    let imds = Arc::new(Imds::new(
        cli.mode,
        TokenStore::new(DEFAULT_CAPACITY),
        entropy,
    ));
    let listeners = server::bind_all(&cli.listen).await?;
    let bound = listeners
        .iter()
        .map(tokio::net::TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()?;
    // Registered before announcing readiness so a test that stops us right away is handled.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    let mut tasks = JoinSet::new();
    for listener in listeners {
        tasks.spawn(server::accept_loop(
            listener,
            Arc::clone(&imds),
            cli.drop_token_puts,
        ));
    }
    announce(&bound, cli.ready_file.as_deref())?;
    info!(addrs = ?bound, mode = ?cli.mode, "serving");

    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM, exiting"),
        _ = sigint.recv() => info!("SIGINT, exiting"),
        _ = tasks.join_next() => anyhow::bail!("an accept loop stopped unexpectedly"),
    }
    if let Some(path) = &cli.ready_file {
        // A stale ready file would tell the next test run we are up before we are.
        let _ = fs::remove_file(path);
    }
    Ok(())
}

/// Tells whoever started us that every listener is bound: a `listening` line on stdout and,
/// if asked, a ready file. The file is written under a temporary name and renamed so a
/// watcher never sees it half-written.
fn announce(bound: &[SocketAddr], ready_file: Option<&Path>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening")
        .and_then(|()| stdout.flush())
        .context("writing to stdout")?;
    if let Some(path) = ready_file {
        let contents: String = bound.iter().map(|a| format!("{a}\n")).collect();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        fs::write(&tmp, contents)
            .with_context(|| format!("writing {}", Path::new(&tmp).display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("creating ready file {}", path.display()))?;
    }
    Ok(())
}
