//! Sockets: binding, accepting, and pumping bytes between a connection and `http::Conn`.

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, warn};

use crate::{http, routes::Imds};

/// Room for a burst of pipelined requests per read(2) while keeping idle connections small.
const READ_CHUNK: usize = 16 * 1024;
/// How long a closing connection keeps draining input so the kernel does not answer unread
/// data with a RST, which can destroy the final response before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Binds every address before anything is served, so readiness means all of them.
pub async fn bind_all(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (is the address assigned to an interface in this namespace?)")
        })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// `drop_token_puts`: a connection whose first request is a token PUT is never answered (it
/// is read and held until the client gives up), as when the PUT's answer cannot reach the
/// caller (hop limit); SDKs then fall back to IMDSv1.
pub async fn accept_loop(listener: TcpListener, imds: Arc<Imds>, drop_token_puts: bool) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Each batch of responses goes out in one write; Nagle would only hold back
                // the tail of a pipelined batch waiting for the client's delayed ACK.
                if let Err(e) = stream.set_nodelay(true) {
                    debug!(error = %e, "TCP_NODELAY failed");
                }
                let imds = Arc::clone(&imds);
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, &imds, drop_token_puts).await {
                        debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Err(e) => {
                // Usually EMFILE; backing off keeps a full descriptor table from becoming a
                // busy loop of log lines.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, imds: &Imds, drop_token_puts: bool) -> io::Result<()> {
    let mut conn = http::Conn::default();
    let mut input = Vec::with_capacity(READ_CHUNK);
    let mut output = Vec::with_capacity(READ_CHUNK);
    loop {
        input.reserve(READ_CHUNK);
        if stream.read_buf(&mut input).await? == 0 {
            return Ok(());
        }
        if drop_token_puts && input.starts_with(b"PUT /latest/api/token") {
            // Read and discard until the client closes: it waits for an answer in vain.
            while stream.read_buf(&mut input).await? != 0 {
                input.clear();
            }
            return Ok(());
        }
        let progress = conn.serve(&input, &mut output, &mut |req| imds.handle(req));
        input.drain(..progress.consumed);
        stream.write_all(&output).await?;
        output.clear();
        if progress.close {
            linger_close(stream).await;
            return Ok(());
        }
    }
}

async fn linger_close(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let drain = async { while let Ok(1..) = stream.read(&mut sink).await {} };
    // Timing out is the expected end for a client that keeps its side open.
    let _ = tokio::time::timeout(LINGER, drain).await;
}
