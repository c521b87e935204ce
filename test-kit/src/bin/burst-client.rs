//! Connection churn from many processes at once: `burst-client HOST:PORT TAG PROCESSES
//! THREADS` starts PROCESSES copies of itself, each of which sends THREADS requests at once,
//! one per thread and one connection per request: `GET /burst/TAG/<pid>/<thread>`, read to
//! the server's close. Exits non-zero if any request failed.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Child, Command},
    sync::{Arc, Barrier},
    thread,
};

const USAGE: &str = "usage: burst-client HOST:PORT TAG PROCESSES THREADS";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [worker, addr, tag, threads] = &args[..]
        && worker == "--worker"
    {
        return worker_main(addr, tag, number(threads));
    }
    let [addr, tag, processes, threads] = &args[..] else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let me = std::env::current_exe().expect("own executable");
    let children: Vec<Child> = (0..number(processes))
        .map(|_| {
            Command::new(&me)
                .args(["--worker", addr, tag, threads])
                .spawn()
                .expect("start a worker")
        })
        .collect();
    let failed = children
        .into_iter()
        .map(|mut child| child.wait().expect("wait for a worker"))
        .filter(|status| !status.success())
        .count();
    if failed > 0 {
        eprintln!("{failed} worker(s) failed");
        std::process::exit(1);
    }
}

fn number(text: &str) -> usize {
    text.parse().unwrap_or_else(|_| {
        eprintln!("{USAGE}");
        std::process::exit(2)
    })
}

/// Every thread connects once the others are ready, so the connections overlap.
fn worker_main(addr: &str, tag: &str, threads: usize) {
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|index| {
            let (addr, start) = (addr.to_owned(), Arc::clone(&start));
            let path = format!("/burst/{tag}/{}/{index}", std::process::id());
            thread::spawn(move || {
                start.wait();
                request(&addr, &path)
            })
        })
        .collect();
    let mut ok = true;
    for handle in handles {
        if let Err(error) = handle.join().expect("request thread") {
            eprintln!("burst-client: {error}");
            ok = false;
        }
    }
    if !ok {
        std::process::exit(1);
    }
}

/// One request, ended as SDKs end theirs (`Connection: close`, no half-close: see the
/// README on what a half-closing client may get from a watched socket).
fn request(addr: &str, path: &str) -> Result<(), String> {
    let fail = |step: &'static str| move |error: std::io::Error| format!("{path}: {step}: {error}");
    let mut stream = TcpStream::connect(addr).map_err(fail("connect"))?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(fail("send"))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(fail("read"))?;
    if response.starts_with(b"HTTP/1.") {
        Ok(())
    } else {
        Err(format!("{path}: no HTTP response"))
    }
}
