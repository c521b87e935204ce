//! A client that sends its request through io_uring (IORING_OP_SEND), which no libc call
//! of the usual clients exercises: `uring-client HOST:PORT REQUEST`. Reads the response
//! until the peer closes.

use std::{
    io::Read,
    net::{Shutdown, TcpStream},
    os::fd::AsRawFd,
};

use io_uring::{IoUring, opcode, types};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(request)) = (args.next(), args.next()) else {
        eprintln!("usage: uring-client HOST:PORT REQUEST");
        std::process::exit(2);
    };
    let request = request.replace("\\r\\n", "\r\n");
    let mut stream = TcpStream::connect(addr)?;
    let mut ring = IoUring::new(8)?;
    let send = opcode::Send::new(
        types::Fd(stream.as_raw_fd()),
        request.as_ptr(),
        request.len() as u32,
    )
    .build();
    // SAFETY: `request` outlives the submission, which is waited for right here.
    unsafe { ring.submission().push(&send) }
        .map_err(|_| std::io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    let sent = ring.completion().next().map(|c| c.result()).unwrap_or(-1);
    if sent != request.len() as i32 {
        return Err(std::io::Error::other(format!(
            "io_uring send returned {sent}"
        )));
    }
    stream.shutdown(Shutdown::Write)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(())
}
