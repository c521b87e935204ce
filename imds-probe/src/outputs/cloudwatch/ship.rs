//! Shipping the events file (and the metrics file) to CloudWatch Logs from the daemon itself,
//! for hosts without the CloudWatch agent. The file is the buffer: a thread of its own reads
//! each file from its persisted cursor, cuts PutLogEvents batches within the service's limits
//! (`batch`), and moves the cursor once CloudWatch accepted a batch. A network that comes up
//! late, throttling, an outage of any length (within what the file still holds) or a restart
//! lose nothing; errors back off. What CloudWatch refuses, or no event can hold, is counted
//! (`cloudwatch_unshipped` in `loss`) and logged.
//!
//! Credentials come from the AWS SDK's default chain (on EC2, the instance role through
//! IMDSv2, whose requests the pipeline marks as the daemon's own).

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudwatchlogs::{
    Client,
    error::{ProvideErrorMetadata as _, SdkError},
    operation::{create_log_stream::CreateLogStreamError, put_log_events::PutLogEventsError},
    types::{InputLogEvent, RejectedLogEventsInfo},
};
use aws_smithy_http_client::tls;
use tokio::sync::watch;

use super::{
    batch::{self, Batch},
    cursor::CursorFile,
    tail::Tail,
};
use crate::{
    causes::Causes,
    host::identity::{self, IdentityWatch},
};

/// How often a caught-up shipper looks for new lines.
const POLL: Duration = Duration::from_secs(1);
/// Backoff after a failed call: doubles up to the cap, back to the start after a success.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// At stop, how long the shipper may keep sending what is left (the rest goes next start).
const FINAL_PASS: Duration = Duration::from_secs(5);
/// One call's limit, retries included: a hung connection must not hold the cursor for ever.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct ShipOptions {
    /// The events file (`run --log-file`) and its log group.
    pub events_file: PathBuf,
    pub events_log_group: String,
    /// The metrics file (`run --metrics-file`), if any, and its log group.
    pub metrics_file: Option<PathBuf>,
    pub metrics_log_group: String,
    /// Instead of CloudWatch Logs' regional endpoint: tests, VPC endpoints.
    pub endpoint: Option<String>,
    /// Instead of the region from $AWS_REGION or the instance identity.
    pub region: Option<String>,
    /// Where the cursors are kept.
    pub state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("starting the CloudWatch shipping thread")]
    Thread(#[source] std::io::Error),
}

/// The running shipper; `stop` lets it send what is left for a moment, then waits for it.
pub struct Shipper {
    thread: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    unshipped: Arc<AtomicU64>,
}

impl Shipper {
    pub fn start(options: ShipOptions, identity: IdentityWatch) -> Result<Self, ShipError> {
        let (stop, stopping) = watch::channel(false);
        let unshipped = Arc::new(AtomicU64::new(0));
        let lost = Arc::clone(&unshipped);
        let thread = std::thread::Builder::new()
            .name("imds-probe-ship".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the CloudWatch shipping runtime: nothing is shipped");
                        return;
                    }
                };
                runtime.block_on(run(options, identity, stopping, &lost));
            })
            .map_err(ShipError::Thread)?;
        Ok(Self {
            thread: Some(thread),
            stop,
            unshipped,
        })
    }

    /// Lines CloudWatch refused or no event could hold, so far.
    pub fn unshipped(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.unshipped)
    }

    /// Call after the files were flushed: what they hold is sent for up to `FINAL_PASS`.
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One file and where it goes.
struct Stream {
    tail: Tail,
    cursor_file: CursorFile,
    group: String,
    name: String,
    /// EMF lines: CloudWatch extracts metrics from PutLogEvents only with this header.
    emf: bool,
    /// The stream (and group) are known to exist.
    ready: bool,
}

/// What a round of shipping a stream came to.
enum Round {
    /// Nothing new to send.
    CaughtUp,
    /// A batch went; there may be more.
    Sent,
    Failed,
}

async fn run(
    options: ShipOptions,
    mut identity: IdentityWatch,
    mut stopping: watch::Receiver<bool>,
    lost: &AtomicU64,
) {
    let region = match options
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
    {
        Some(region) => Some(region),
        None => identity::wait(&mut identity)
            .await
            .map(|who| who.region.clone()),
    };
    let Some(region) = region else {
        tracing::error!(
            "cannot ship to CloudWatch: no region (no instance identity; pass --cloudwatch-region or set AWS_REGION). The files keep everything for a later start"
        );
        return;
    };
    // One stream per host, named like the agent names it: the instance id.
    let stream_name = match identity::wait(&mut identity).await {
        Some(who) => who.instance_id.clone(),
        None => {
            let host = hostname();
            tracing::warn!(stream = %host, "no instance id: CloudWatch log streams are named after the host name");
            host
        }
    };
    let client = client(&region, options.endpoint.as_deref()).await;
    let mut streams = vec![stream(
        &options,
        options.events_file.clone(),
        &options.events_log_group,
        &stream_name,
        "events",
        false,
    )];
    if let Some(metrics_file) = &options.metrics_file {
        streams.push(stream(
            &options,
            metrics_file.clone(),
            &options.metrics_log_group,
            &stream_name,
            "metrics",
            true,
        ));
    }
    tracing::info!(region, stream = %stream_name, events_log_group = %options.events_log_group, endpoint = ?options.endpoint, "shipping to CloudWatch Logs");

    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    let mut final_deadline = None;
    loop {
        let mut busy = false;
        let mut failed = false;
        for stream in &mut streams {
            match ship_once(&client, stream, lost, failures == 0).await {
                Round::CaughtUp => {}
                Round::Sent => busy = true,
                Round::Failed => failed = true,
            }
        }
        if failed {
            failures += 1;
        } else if failures > 0 {
            tracing::info!(failures, "shipping to CloudWatch Logs works again");
            failures = 0;
            backoff = FIRST_BACKOFF;
        }
        if *stopping.borrow() {
            let deadline =
                *final_deadline.get_or_insert_with(|| tokio::time::Instant::now() + FINAL_PASS);
            if !busy || failed || tokio::time::Instant::now() >= deadline {
                break;
            }
            continue;
        }
        let pause = if failed {
            let pause = backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            pause
        } else if busy {
            continue;
        } else {
            POLL
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopping.changed() => {}
        }
    }
    let unsent: Vec<_> = streams
        .iter()
        .map(|s| (s.group.as_str(), s.tail.cursor().offset))
        .collect();
    tracing::info!(?unsent, "CloudWatch shipping stopped; cursors saved");
}

fn stream(
    options: &ShipOptions,
    file: PathBuf,
    group: &str,
    name: &str,
    kind: &str,
    emf: bool,
) -> Stream {
    let cursor_file = CursorFile::new(options.state_dir.join(format!("cloudwatch-{kind}.cursor")));
    let cursor = cursor_file.load();
    Stream {
        tail: Tail::new(file, cursor),
        cursor_file,
        group: group.to_owned(),
        name: name.to_owned(),
        emf,
        ready: false,
    }
}

async fn client(region: &str, endpoint: Option<&str>) -> Client {
    // rustls with ring: no C crypto library to build (see the workspace's Cargo.toml).
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .http_client(http)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(CALL_TIMEOUT)
                .build(),
        )
        .load()
        .await;
    let mut config = aws_sdk_cloudwatchlogs::config::Builder::from(&shared);
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

/// Sends the next batch of one stream, if there is one.
async fn ship_once(client: &Client, stream: &mut Stream, lost: &AtomicU64, first: bool) -> Round {
    let chunk = match stream.tail.read() {
        Ok(chunk) => chunk,
        Err(e) => {
            tracing::warn!(file = ?stream.tail.cursor(), error = %e, "reading a file to ship failed");
            return Round::Failed;
        }
    };
    count_lost(
        lost,
        chunk.skipped,
        "a line too long for any event was skipped",
    );
    let Batch {
        events,
        consumed,
        skipped,
    } = batch::next_batch(&chunk.bytes, SystemTime::now());
    count_lost(lost, skipped, "lines no event can hold were skipped");
    if consumed == 0 {
        return Round::CaughtUp;
    }
    if !events.is_empty() {
        if !stream.ready {
            if let Err(error) = create_stream(client, stream).await {
                log_failure(first, "creating the CloudWatch log stream failed", &error);
                return Round::Failed;
            }
            stream.ready = true;
        }
        let count = events.len();
        let input: Vec<InputLogEvent> = events
            .into_iter()
            .filter_map(|event| {
                InputLogEvent::builder()
                    .timestamp(event.timestamp_ms)
                    .message(event.message)
                    .build()
                    .ok()
            })
            .collect();
        let mut call = client
            .put_log_events()
            .log_group_name(&stream.group)
            .log_stream_name(&stream.name)
            .set_log_events(Some(input))
            .customize();
        if stream.emf {
            call = call.mutate_request(|request| {
                request
                    .headers_mut()
                    .insert("x-amzn-logs-format", "json/emf");
            });
        }
        match call.send().await {
            Ok(output) => {
                if let Some(rejected) = output.rejected_log_events_info() {
                    count_lost(
                        lost,
                        rejected_count(rejected, count),
                        "CloudWatch refused events (too old, too new or past retention)",
                    );
                }
            }
            Err(SdkError::ServiceError(error))
                if matches!(error.err(), PutLogEventsError::ResourceNotFoundException(_)) =>
            {
                // Deleted under us: created again next round.
                stream.ready = false;
                log_failure(
                    first,
                    "the CloudWatch log stream is gone",
                    &SdkError::ServiceError(error),
                );
                return Round::Failed;
            }
            Err(error) => {
                log_failure(first, "PutLogEvents failed", &error);
                return Round::Failed;
            }
        }
    }
    stream.tail.advance(consumed);
    if let Err(e) = stream.cursor_file.store(&stream.tail.cursor()) {
        // Shipping goes on; a restart would send the batches since the last stored cursor again.
        tracing::warn!(path = %stream.cursor_file.path().display(), error = %e, "storing the CloudWatch cursor failed");
    }
    Round::Sent
}

/// Creates the stream, and its group where that is missing too (the CloudFormation template
/// creates the groups with their retention; without it the group keeps logs forever).
async fn create_stream(
    client: &Client,
    stream: &Stream,
) -> Result<(), aws_sdk_cloudwatchlogs::Error> {
    loop {
        let created = client
            .create_log_stream()
            .log_group_name(&stream.group)
            .log_stream_name(&stream.name)
            .send()
            .await;
        match created {
            Ok(_) => return Ok(()),
            Err(SdkError::ServiceError(error))
                if matches!(
                    error.err(),
                    CreateLogStreamError::ResourceAlreadyExistsException(_)
                ) =>
            {
                return Ok(());
            }
            Err(SdkError::ServiceError(error))
                if matches!(
                    error.err(),
                    CreateLogStreamError::ResourceNotFoundException(_)
                ) =>
            {
                tracing::info!(group = %stream.group, "the CloudWatch log group does not exist: creating it");
                if let Err(e) = client
                    .create_log_group()
                    .log_group_name(&stream.group)
                    .send()
                    .await
                    && e.as_service_error()
                        .is_none_or(|s| s.code() != Some("ResourceAlreadyExistsException"))
                {
                    return Err(e.into());
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// How many of a batch's `count` events CloudWatch refused.
fn rejected_count(rejected: &RejectedLogEventsInfo, count: usize) -> u64 {
    let index = |i: Option<i32>| i.and_then(|i| usize::try_from(i).ok());
    let too_old = index(rejected.too_old_log_event_end_index())
        .max(index(rejected.expired_log_event_end_index()))
        .map_or(0, |end| (end + 1).min(count));
    let too_new = index(rejected.too_new_log_event_start_index())
        .map_or(0, |start| count.saturating_sub(start));
    (too_old + too_new).min(count) as u64
}

fn count_lost(lost: &AtomicU64, count: u64, what: &str) {
    if count > 0 {
        lost.fetch_add(count, Ordering::Relaxed);
        tracing::warn!(count, "{what}: counted in loss as cloudwatch_unshipped");
    }
}

/// The first failure of a run is a warning; repeats while it lasts are debug, so an outage
/// logs once, not once a backoff.
fn log_failure(first: bool, what: &str, error: &(dyn std::error::Error + 'static)) {
    if first {
        tracing::warn!(error = %Causes(error), "{what}: retrying with backoff; nothing is lost while the file holds it");
    } else {
        tracing::debug!(error = %Causes(error), "{what}");
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_cloudwatch_refused() {
        let info = |old: Option<i32>, expired: Option<i32>, new: Option<i32>| {
            let mut b = RejectedLogEventsInfo::builder();
            if let Some(i) = old {
                b = b.too_old_log_event_end_index(i);
            }
            if let Some(i) = expired {
                b = b.expired_log_event_end_index(i);
            }
            if let Some(i) = new {
                b = b.too_new_log_event_start_index(i);
            }
            b.build()
        };
        assert_eq!(rejected_count(&info(None, None, None), 10), 0);
        assert_eq!(rejected_count(&info(Some(2), None, None), 10), 3);
        assert_eq!(rejected_count(&info(Some(2), Some(4), None), 10), 5);
        assert_eq!(rejected_count(&info(None, None, Some(7)), 10), 3);
        assert_eq!(rejected_count(&info(Some(9), None, Some(0)), 10), 10);
    }
}
