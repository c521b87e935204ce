//! Cutting a file's new lines into PutLogEvents batches within the service's limits: at most
//! 10,000 events and 1,048,576 bytes (each event's UTF-8 bytes plus 26), no event over the
//! event size limit, no more than 24 hours between the first and last event, and in time order.
//! Pure: bytes in, batches and the file offset each ends at out.

use std::time::{Duration, SystemTime};

pub const MAX_BATCH_EVENTS: usize = 10_000;
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// What PutLogEvents counts on top of each message.
pub const EVENT_OVERHEAD: usize = 26;
/// The largest event CloudWatch Logs has accepted at every point of its history (256 KiB,
/// overhead included); ours are a few KiB, so only a damaged line comes near it.
pub const MAX_EVENT_BYTES: usize = 256 * 1024 - EVENT_OVERHEAD;
const MAX_SPAN_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub timestamp_ms: i64,
    pub message: String,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// In time order, as PutLogEvents requires.
    pub events: Vec<Event>,
    /// How many bytes of the input the batch took (whole lines, newlines included): the cursor
    /// moves by this once the batch is accepted.
    pub consumed: usize,
    /// Lines skipped because no event can hold them (too large, not UTF-8): counted as lost.
    pub skipped: u64,
}

/// The next batch from `input`, which starts at a line boundary. Only complete lines (ending in
/// a newline) are taken: a line being written is left for later. An empty batch with
/// `consumed == 0` means there is nothing complete to send yet.
pub fn next_batch(input: &[u8], now: SystemTime) -> Batch {
    let mut batch = Batch::default();
    let mut bytes = 0usize;
    let mut span: Option<(i64, i64)> = None;
    let mut fallback_ms = millis(now);
    for line in input.split_inclusive(|&b| b == b'\n') {
        let Some(content) = line.strip_suffix(b"\n") else {
            break;
        };
        let message = match std::str::from_utf8(content) {
            Ok(text) if text.len() <= MAX_EVENT_BYTES => text,
            _ => {
                batch.skipped += 1;
                batch.consumed += line.len();
                continue;
            }
        };
        if message.is_empty() {
            batch.consumed += line.len();
            continue;
        }
        // A line without a time of its own takes its predecessor's: the file is in time order.
        let timestamp_ms = timestamp_of(message).unwrap_or(fallback_ms);
        fallback_ms = timestamp_ms;
        let (low, high) = span.map_or((timestamp_ms, timestamp_ms), |(low, high)| {
            (low.min(timestamp_ms), high.max(timestamp_ms))
        });
        if batch.events.len() == MAX_BATCH_EVENTS
            || bytes + message.len() + EVENT_OVERHEAD > MAX_BATCH_BYTES
            || high - low > MAX_SPAN_MS
        {
            break;
        }
        span = Some((low, high));
        bytes += message.len() + EVENT_OVERHEAD;
        batch.consumed += line.len();
        batch.events.push(Event {
            timestamp_ms,
            message: message.to_owned(),
        });
    }
    // Stable: lines of the same millisecond keep their file order.
    batch.events.sort_by_key(|event| event.timestamp_ms);
    batch
}

/// An event line's `ts` (it is the first key), or an EMF line's `_aws.Timestamp`.
fn timestamp_of(line: &str) -> Option<i64> {
    if let Some(rest) = line.strip_prefix("{\"ts\":\"") {
        let text = &rest[..rest.find('"')?];
        return humantime::parse_rfc3339(text).ok().map(millis);
    }
    let at = line.find("\"Timestamp\":")? + "\"Timestamp\":".len();
    let digits: String = line[at..]
        .chars()
        .skip_while(|c| *c == ' ')
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn event_line(ts: &str, pad: usize) -> String {
        format!(
            "{{\"ts\":\"{ts}\",\"event\":\"imds_request\",\"x\":\"{}\"}}\n",
            "a".repeat(pad)
        )
    }

    #[test]
    fn takes_complete_lines_with_their_times() {
        let mut input = event_line("2026-11-24T19:50:13.745032Z", 0);
        input.push_str("{\"_aws\":{\"Timestamp\":1795549860000,\"CloudWatchMetrics\":[]},\"RequestsIMDSv1\":3}\n");
        input.push_str("{\"ts\":\"2026-11-24T19:5"); // being written
        let batch = next_batch(input.as_bytes(), now());
        assert_eq!(batch.events.len(), 2);
        assert_eq!(batch.events[0].timestamp_ms, 1_795_549_813_745);
        assert_eq!(batch.events[1].timestamp_ms, 1_795_549_860_000);
        assert_eq!(batch.consumed, input.rfind('\n').unwrap() + 1);
        assert!(!batch.events[0].message.ends_with('\n'));
    }

    #[test]
    fn nothing_complete_is_an_empty_batch() {
        let batch = next_batch(b"{\"ts\":\"2026", now());
        assert_eq!(batch, Batch::default());
    }

    #[test]
    fn stops_at_the_size_limit() {
        // 100 KiB lines: ten fit in 1 MiB with the overhead, the eleventh does not.
        let line = event_line("2026-11-24T19:50:13.000000Z", 100 * 1024);
        let input = line.repeat(12);
        let batch = next_batch(input.as_bytes(), now());
        assert_eq!(batch.events.len(), 10);
        assert_eq!(batch.consumed, line.len() * 10);
        let bytes: usize = batch
            .events
            .iter()
            .map(|e| e.message.len() + EVENT_OVERHEAD)
            .sum();
        assert!(bytes <= MAX_BATCH_BYTES);
    }

    #[test]
    fn stops_at_the_event_count_limit() {
        let input = "{\"_aws\":{\"Timestamp\":1}}\n".repeat(MAX_BATCH_EVENTS + 5);
        let batch = next_batch(input.as_bytes(), now());
        assert_eq!(batch.events.len(), MAX_BATCH_EVENTS);
    }

    #[test]
    fn stops_before_a_span_over_a_day() {
        let mut input = event_line("2026-11-24T00:00:00.000000Z", 0);
        input.push_str(&event_line("2026-11-24T23:00:00.000000Z", 0));
        input.push_str(&event_line("2026-11-25T01:00:00.000000Z", 0));
        let batch = next_batch(input.as_bytes(), now());
        assert_eq!(batch.events.len(), 2);
    }

    #[test]
    fn skips_and_counts_what_no_event_can_hold() {
        let huge = event_line("2026-11-24T00:00:00.000000Z", MAX_EVENT_BYTES);
        let mut input = huge.clone();
        input.push_str(&event_line("2026-11-24T00:00:01.000000Z", 0));
        let mut bytes = input.into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        let batch = next_batch(&bytes, now());
        assert_eq!(batch.skipped, 2);
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.consumed, bytes.len());
    }

    #[test]
    fn orders_events_in_time() {
        let mut input = event_line("2026-11-24T00:00:02.000000Z", 0);
        input.push_str(&event_line("2026-11-24T00:00:01.000000Z", 0));
        input.push_str("{\"event\":\"no time\"}\n");
        let batch = next_batch(input.as_bytes(), now());
        let times: Vec<_> = batch.events.iter().map(|e| e.timestamp_ms).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        // The line without a time took its predecessor's.
        assert_eq!(
            times,
            [1_795_478_401_000, 1_795_478_401_000, 1_795_478_402_000]
        );
    }

    proptest! {
        // Each case writes up to a few MiB of lines.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the lines, every batch is within the limits, and batches taken one after
        /// another account for every complete line exactly once.
        #[test]
        fn batches_respect_limits_and_lose_nothing(
            lens in prop::collection::vec(0usize..300_000, 1..40),
            offsets in prop::collection::vec(0u64..200_000_000, 40),
        ) {
            let mut input = String::new();
            for (i, len) in lens.iter().enumerate() {
                let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + offsets[i]);
                let ts = humantime::format_rfc3339_micros(at).to_string();
                input.push_str(&event_line(&ts, *len));
            }
            let mut rest = input.as_bytes();
            let (mut sent, mut skipped) = (0u64, 0u64);
            while !rest.is_empty() {
                let batch = next_batch(rest, now());
                prop_assert!(batch.consumed > 0);
                prop_assert!(batch.events.len() <= MAX_BATCH_EVENTS);
                let bytes: usize = batch.events.iter().map(|e| e.message.len() + EVENT_OVERHEAD).sum();
                prop_assert!(bytes <= MAX_BATCH_BYTES);
                if let (Some(first), Some(last)) = (batch.events.first(), batch.events.last()) {
                    prop_assert!(last.timestamp_ms - first.timestamp_ms <= MAX_SPAN_MS);
                }
                prop_assert!(batch.events.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
                sent += batch.events.len() as u64;
                skipped += batch.skipped;
                rest = &rest[batch.consumed..];
            }
            prop_assert_eq!(sent + skipped, lens.len() as u64);
        }
    }
}
