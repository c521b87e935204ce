use anyhow::Result;

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let mut probe = imds_probe::backend::start(imds_probe::backend::BackendChoice::Auto)?;
    let mut rb = probe.ring_buffer()?;
    loop {
        while let Some(item) = rb.next() {
            println!("record {} bytes: {:?}", item.len(), &item[..item.len().min(200)]);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
