//! Fuzz the channel's record framing (`chrysalis_proto::channel::frame`), which a client
//! feeds with a runtime's response body: the whole-body splitter `split_length_prefixed` and
//! the incremental server-sent-events decoder `SseDecoder`, fed in fuzzer-chosen chunks.
//!
//! Input layout: `n = data[0] & 15`, then `n` chunk lengths (one byte each, used in turn;
//! all zero means one chunk), then the stream. Properties, besides "no panic":
//! - splitter: an accepted body re-encodes with `push_length_prefixed` to exactly itself
//!   (the framing is canonical); the pieces of the stream written with
//!   `push_length_prefixed` split back into exactly those pieces;
//! - SSE: decoding in chunks gives the same records, the same error-ness and the same
//!   `finish` verdict as one `push` of the whole stream; decoded records written again with
//!   `sse_event` decode back to themselves; the non-empty pieces of the stream written with
//!   `sse_event` decode back to themselves in any chunking (an empty record is not carried:
//!   `sse_event(b"")` is `data: \n\n`, which the decoder skips as an event without data;
//!   sealed records are never empty).
#![no_main]

use chrysalis_proto::channel::frame::{SseDecoder, push_length_prefixed, split_length_prefixed, sse_event};
use libfuzzer_sys::fuzz_target;

/// Cut `s` into consecutive chunks whose lengths are taken from `ctl` in turn.
fn chunks<'a>(ctl: &[u8], mut s: &'a [u8]) -> Vec<&'a [u8]> {
    if ctl.iter().all(|&c| c == 0) {
        return vec![s];
    }
    let mut out = Vec::new();
    for &c in ctl.iter().cycle() {
        if s.is_empty() {
            break;
        }
        let (a, b) = s.split_at(usize::from(c).min(s.len()));
        out.push(a);
        s = b;
    }
    out
}

/// Records decoded from `parts` pushed in order, and whether `finish` accepts the end; the
/// first error stops decoding (a decoder's state after an error is unspecified).
fn sse_decode(parts: &[&[u8]]) -> Result<(Vec<Vec<u8>>, bool), String> {
    let mut d = SseDecoder::new();
    let mut records = Vec::new();
    for p in parts {
        records.extend(d.push(p).map_err(|e| e.to_string())?);
    }
    Ok((records, d.finish().is_ok()))
}

fn length_prefixed(records: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for r in records {
        push_length_prefixed(&mut body, r).expect("a fuzz-sized record is within MAX_RECORD_LEN");
    }
    body
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let (ctl, stream) = rest.split_at(usize::from(first & 15).min(rest.len()));
    let parts = chunks(ctl, stream);
    assert_eq!(parts.concat(), stream);

    // Whole-body framing.
    match split_length_prefixed(stream) {
        Ok(records) => assert_eq!(length_prefixed(&records), stream, "length-prefixed framing is not canonical"),
        Err(e) => {
            assert!(!stream.is_empty());
            let _ = e.to_string();
        }
    }
    let written = length_prefixed(&parts);
    let split = split_length_prefixed(&written).expect("written records split");
    assert_eq!(split, parts, "length-prefixed round trip");

    // Event stream: chunking must not matter.
    let whole = sse_decode(&[stream]);
    let chunked = sse_decode(&parts);
    match (&whole, &chunked) {
        (Ok(w), Ok(c)) => assert_eq!(w, c, "SSE decoding depends on chunking"),
        (Err(_), Err(_)) => {}
        _ => panic!("SSE decoding depends on chunking: whole {whole:?}, chunked {chunked:?}"),
    }
    if let Ok((records, _)) = whole {
        let again: String = records.iter().map(|r| sse_event(r)).collect();
        let again_parts = chunks(ctl, again.as_bytes());
        assert_eq!(sse_decode(&again_parts), Ok((records, true)), "SSE re-encoding round trip");
    }

    // Writer to reader: the stream's pieces as records, in the same chunking.
    let pieces: Vec<Vec<u8>> = parts.iter().filter(|p| !p.is_empty()).map(|p| p.to_vec()).collect();
    let events: String = pieces.iter().map(|r| sse_event(r)).collect();
    assert_eq!(sse_decode(&chunks(ctl, events.as_bytes())), Ok((pieces, true)), "SSE writer round trip");
});
