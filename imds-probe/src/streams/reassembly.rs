//! Turns one connection's captured byte stream, delivered in chunks with their stream
//! offsets, into request heads. Bounded: at most `MAX_HEAD_BYTES` are held per connection,
//! and bodies are skipped, never stored.
//!
//! Once the stream can no longer be followed (bytes missing, not HTTP, a body we cannot
//! delimit) the connection is desynchronised: one `unknown` item says why, and the rest of
//! the connection is skipped rather than guessed at.

use serde::Serialize;

use crate::streams::http::{Body, Invalid, MAX_HEAD_BYTES, Parsed, RequestHead, parse_head};

/// Why a request could not be classified. Written as the event's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownReason {
    /// The bytes are not an HTTP/1.x request.
    NotHttp,
    /// More headers than we parse.
    TooManyHeaders,
    /// A header block larger than `MAX_HEAD_BYTES`.
    HeadTooLarge,
    /// Conflicting or malformed Content-Length.
    BadContentLength,
    /// The connection closed in the middle of a request head.
    IncompleteAtClose,
    /// Bytes of the connection were not captured (ring buffer full, a send too large, or
    /// one a send hook cannot read, such as sendfile's).
    CaptureGap,
    /// The previous request's body was not length-delimited, so where the next request
    /// starts is unknown.
    UndelimitedBody,
    /// The connection was dropped mid-request from a full connection table, or its socket
    /// from the kernel's socket hash (`capture::socket_budget`).
    Evicted,
    /// The daemon stopped in the middle of a request head.
    IncompleteAtShutdown,
    /// Partial heads held across all connections reached their cap (`MAX_HELD_HEAD_BYTES`):
    /// the connection that went over gave its up.
    HeadsShed,
}

impl From<Invalid> for UnknownReason {
    fn from(invalid: Invalid) -> Self {
        match invalid {
            Invalid::NotHttp => Self::NotHttp,
            Invalid::TooManyHeaders => Self::TooManyHeaders,
            Invalid::BadContentLength => Self::BadContentLength,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Request(RequestHead),
    Unknown(UnknownReason),
}

#[derive(Debug)]
enum State {
    /// Expecting (the rest of) a request head, held in `pending`.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Not following the stream any more.
    Desynchronised,
}

#[derive(Debug)]
pub struct RequestStream {
    pending: Vec<u8>,
    state: State,
    /// Stream offset the next chunk must start at to be contiguous.
    next_offset: u64,
}

impl Default for RequestStream {
    fn default() -> Self {
        Self {
            pending: Vec::new(),
            state: State::Head,
            next_offset: 0,
        }
    }
}

impl RequestStream {
    /// Feeds the chunk that starts at `offset` in the connection's byte stream, followed by
    /// `lost` bytes that were sent but not captured.
    pub fn feed(&mut self, offset: u64, data: &[u8], lost: u64, out: &mut Vec<Item>) {
        let lost_end = offset
            .saturating_add(data.len() as u64)
            .saturating_add(lost);
        if offset > self.next_offset {
            // A hole: records that never arrived.
            self.missing_until(offset, out);
        }
        // Bytes seen before: a send hook captures a whole send at entry, and a sender whose
        // send was only partly queued sends the rest again. Keep what is new.
        let seen = self
            .next_offset
            .saturating_sub(offset)
            .min(data.len() as u64) as usize;
        let new = &data[seen..];
        if !new.is_empty() {
            self.next_offset += new.len() as u64;
            if self.pending.is_empty() {
                self.process(new, out);
            } else {
                let mut joined = std::mem::take(&mut self.pending);
                joined.extend_from_slice(new);
                self.process(&joined, out);
            }
        }
        if lost_end > self.next_offset {
            self.missing_until(lost_end, out);
        }
    }

    /// The bytes from `next_offset` to `end` were not captured: whatever was in flight, and
    /// whatever the missing bytes held, cannot be told apart any more.
    fn missing_until(&mut self, end: u64, out: &mut Vec<Item>) {
        self.next_offset = end;
        self.desynchronise(UnknownReason::CaptureGap, out);
    }

    fn process(&mut self, mut data: &[u8], out: &mut Vec<Item>) {
        while !data.is_empty() {
            match self.state {
                State::Desynchronised => return,
                State::Body(remaining) => {
                    let skip = remaining.min(data.len() as u64);
                    data = &data[skip as usize..];
                    let left = remaining - skip;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::Head => {
                    let consumed = self.parse(data, out);
                    data = &data[consumed..];
                    if matches!(self.state, State::Head) && !data.is_empty() {
                        // A partial head: hold it for the next chunk, within bounds.
                        if data.len() > MAX_HEAD_BYTES {
                            self.desynchronise(UnknownReason::HeadTooLarge, out);
                        } else {
                            self.pending.extend_from_slice(data);
                        }
                        return;
                    }
                }
            }
        }
    }

    /// Parses as many complete heads as `bytes` holds; returns the bytes consumed. Stops at a
    /// partial head (state stays `Head`) or when the state changes to body skipping or
    /// desynchronised.
    fn parse(&mut self, bytes: &[u8], out: &mut Vec<Item>) -> usize {
        let mut consumed = 0;
        while consumed < bytes.len() {
            match parse_head(&bytes[consumed..]) {
                Parsed::Partial => return consumed,
                Parsed::Invalid(invalid) => {
                    self.desynchronise(invalid.into(), out);
                    return bytes.len();
                }
                Parsed::Complete(head) => {
                    consumed += head.head_len;
                    let body = head.body;
                    out.push(Item::Request(head));
                    match body {
                        Body::None => {}
                        Body::Length(len) => {
                            self.state = State::Body(len);
                            return consumed;
                        }
                        Body::Undelimited => {
                            self.state = State::Desynchronised;
                            return bytes.len();
                        }
                    }
                }
            }
        }
        consumed
    }

    fn desynchronise(&mut self, reason: UnknownReason, out: &mut Vec<Item>) {
        if !matches!(self.state, State::Desynchronised) {
            out.push(Item::Unknown(reason));
        }
        self.pending = Vec::new();
        self.state = State::Desynchronised;
    }

    /// The connection ended (closed, evicted, or the daemon is stopping): a head in flight
    /// becomes `unknown` with `reason`.
    pub fn finish(&mut self, reason: UnknownReason, out: &mut Vec<Item>) {
        if matches!(self.state, State::Head) && !self.pending.is_empty() {
            out.push(Item::Unknown(reason));
        }
        self.pending = Vec::new();
        self.state = State::Desynchronised;
    }

    /// Bytes held for a partial head.
    pub fn held_bytes(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<Item> {
        let mut stream = RequestStream::default();
        let mut out = Vec::new();
        let mut offset = 0;
        for chunk in chunks {
            stream.feed(offset, chunk, 0, &mut out);
            offset += chunk.len() as u64;
        }
        stream.finish(UnknownReason::IncompleteAtClose, &mut out);
        out
    }

    fn summary(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|item| match item {
                Item::Request(head) => {
                    format!("{} {} token={}", head.method, head.path, head.has_token)
                }
                Item::Unknown(reason) => format!("unknown {reason:?}"),
            })
            .collect()
    }

    const V1: &[u8] =
        b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";
    const V2: &[u8] =
        b"GET /latest/meta-data/ HTTP/1.1\r\nx-aws-ec2-metadata-token: SECRET\r\n\r\n";
    const PUT: &[u8] =
        b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn pipelined_requests_in_one_chunk() {
        let all = [PUT, V2, V1].concat();
        assert_eq!(
            summary(&run(&[&all])),
            [
                "PUT /latest/api/token token=false",
                "GET /latest/meta-data/ token=true",
                "GET /latest/meta-data/instance-id token=false"
            ]
        );
    }

    #[test]
    fn head_cut_by_close_is_unknown_not_v1() {
        assert_eq!(summary(&run(&[&V1[..20]])), ["unknown IncompleteAtClose"]);
    }

    #[test]
    fn bytes_seen_again_are_skipped() {
        let mut stream = RequestStream::default();
        let mut out = Vec::new();
        stream.feed(0, &V1[..30], 0, &mut out);
        stream.feed(10, &V1[10..], 0, &mut out);
        stream.feed(5, &V1[5..20], 0, &mut out);
        stream.finish(UnknownReason::IncompleteAtClose, &mut out);
        assert_eq!(
            summary(&out),
            ["GET /latest/meta-data/instance-id token=false"]
        );
    }

    /// Feeds `(offset, bytes, lost)` records, then closes.
    fn run_records(records: &[(u64, &[u8], u64)]) -> Vec<String> {
        let mut stream = RequestStream::default();
        let mut out = Vec::new();
        for &(offset, data, lost) in records {
            stream.feed(offset, data, lost, &mut out);
        }
        stream.finish(UnknownReason::IncompleteAtClose, &mut out);
        summary(&out)
    }

    #[test]
    fn lost_bytes_are_one_unknown_whatever_came_before_them() {
        let v1 = V1.len() as u64;
        // Nothing before: the first record of the connection says its bytes were lost.
        assert_eq!(run_records(&[(0, &[], 60)]), ["unknown CaptureGap"]);
        // A complete request before.
        assert_eq!(
            run_records(&[(0, V1, 0), (v1, &[], 60)]),
            [
                "GET /latest/meta-data/instance-id token=false",
                "unknown CaptureGap"
            ]
        );
        // Half a request before: it and the lost bytes are one request, one unknown.
        assert_eq!(
            run_records(&[(0, &V1[..20], 0), (20, &[], 60)]),
            ["unknown CaptureGap"]
        );
        // Captured bytes followed by a lost tail, in one record.
        assert_eq!(
            run_records(&[(0, V1, 4000)]),
            [
                "GET /latest/meta-data/instance-id token=false",
                "unknown CaptureGap"
            ]
        );
    }

    #[test]
    fn the_connection_is_not_followed_after_lost_bytes() {
        // One unreadable send reaching TCP in pieces (tcp_sendpage per page), and a resent
        // part of it: one unknown.
        assert_eq!(
            run_records(&[(0, &[], 100), (100, &[], 50), (120, &[], 30)]),
            ["unknown CaptureGap"]
        );
        // Where a request would start after them cannot be known: one unknown stands for the
        // rest of the connection.
        assert_eq!(
            run_records(&[
                (0, &[], 100),
                (100, V1, 0),
                (100 + V1.len() as u64, &[], 10)
            ]),
            ["unknown CaptureGap"]
        );
        // Lost bytes already covered by captured ones are not lost.
        assert_eq!(
            run_records(&[(0, V1, 0), (0, &[], 10)]),
            ["GET /latest/meta-data/instance-id token=false"]
        );
    }

    #[test]
    fn gap_desynchronises() {
        assert_eq!(
            run_records(&[(0, &V1[..10], 0), (500, V1, 0)]),
            ["unknown CaptureGap"]
        );
        // A hole and the marker of a lost tail right after it are one run.
        assert_eq!(
            run_records(&[(0, &V1[..10], 0), (500, &[], 100)]),
            ["unknown CaptureGap"]
        );
    }

    #[test]
    fn garbage_and_undelimited_bodies() {
        assert_eq!(
            summary(&run(&[b"\x00\x01garbage\r\n\r\n", V1])),
            ["unknown NotHttp"]
        );
        let chunked =
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(summary(&run(&[chunked, V1])), ["POST /x token=false"]);
    }

    #[test]
    fn large_head_is_parsed_and_oversized_head_is_unknown() {
        let filler = format!("X-Filler: {}\r\n", "a".repeat(100)).repeat(160); // ~17 KiB
        let big = format!(
            "GET /latest/meta-data/ HTTP/1.1\r\n{filler}x-aws-ec2-metadata-token: t\r\n\r\n"
        );
        let chunks: Vec<&[u8]> = big.as_bytes().chunks(4096).collect();
        assert_eq!(
            summary(&run(&chunks)),
            ["GET /latest/meta-data/ token=true"]
        );

        let huge = format!(
            "GET / HTTP/1.1\r\n{}",
            format!("X-Filler: {}\r\n", "a".repeat(1000)).repeat(100)
        );
        let chunks: Vec<&[u8]> = huge.as_bytes().chunks(4096).collect();
        assert_eq!(summary(&run(&chunks)), ["unknown HeadTooLarge"]);
    }

    fn stream_strategy() -> impl Strategy<Value = Vec<u8>> {
        let request = prop_oneof![
            Just(V1.to_vec()),
            Just(V2.to_vec()),
            Just(PUT.to_vec()),
            Just(b"GET /a HTTP/1.0\r\nUSER-AGENT: x\r\n\r\n".to_vec()),
        ];
        (
            prop::collection::vec(request, 0..6),
            prop::option::of(prop::collection::vec(any::<u8>(), 1..40)),
        )
            .prop_map(|(requests, tail)| {
                let mut bytes = requests.concat();
                bytes.extend(tail.unwrap_or_default());
                bytes
            })
    }

    proptest! {
        /// However the kernel happened to cut the stream into chunks, the items are the same.
        #[test]
        fn any_split_gives_the_same_items(bytes in stream_strategy(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
            let whole = run(&[&bytes]);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            points.dedup();
            let mut chunks = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[last..p]);
                last = p;
            }
            prop_assert_eq!(run(&chunks), whole);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..5000), 0..30)) {
            let mut stream = RequestStream::default();
            let mut out = Vec::new();
            let mut offset = 0;
            for chunk in &chunks {
                stream.feed(offset, chunk, 0, &mut out);
                offset += chunk.len() as u64;
                prop_assert!(stream.held_bytes() <= MAX_HEAD_BYTES);
            }
        }
    }
}
