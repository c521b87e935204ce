//! Reassembly, HTTP head parsing and classification fed any byte stream in any split: the
//! first eight bytes are the chunk sizes (used in turn), the rest is the stream. A size byte
//! with its high bit set also says that its low four bits' worth of bytes after the chunk were
//! lost (as a send hook reports an unreadable send).
#![no_main]

use imds_probe::streams::{
    classify::classify,
    reassembly::{Item, RequestStream, UnknownReason},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cuts, data) = data.split_at(data.len().min(8));
    if cuts.is_empty() {
        return;
    }
    let mut stream = RequestStream::default();
    let mut items = Vec::new();
    let mut offset = 0u64;
    let mut rest = data;
    for &cut in cuts.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at((usize::from(cut) + 1).min(rest.len()));
        let lost = if cut & 0x80 != 0 {
            u64::from(cut & 0x0f)
        } else {
            0
        };
        stream.feed(offset, chunk, lost, &mut items);
        offset += chunk.len() as u64 + lost;
        rest = tail;
    }
    stream.finish(UnknownReason::IncompleteAtClose, &mut items);
    for item in items {
        if let Item::Request(head) = item {
            let _ = classify(&head);
        }
    }
});
