//! How sealed response records travel over HTTP.
//!
//! - Whole body (`application/vnd.chrysalis.sealed-response`): `u32_be(len) || record`,
//!   repeated; nothing after the last record.
//! - Event stream (`text/event-stream`): one server-sent event per record,
//!   `data: <base64 (standard alphabet, padded) of the record>\n\n`. Lines beginning with `:`
//!   are comments and ignored, as SSE requires; other fields are refused.
//!
//! Trust: the bytes are untrusted; both decoders are total and bounded by [`MAX_RECORD_LEN`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::ChannelError;

/// Largest record accepted (a whole response body, padded, plus overhead).
pub const MAX_RECORD_LEN: usize = 16 << 20;
/// Largest data one record carries: its padded record stays within [`MAX_RECORD_LEN`]
/// (Padmé adds at most 12 %).
pub const MAX_DATA_LEN: usize = 14 << 20;

/// Append `record` to a whole-body response.
pub fn push_length_prefixed(out: &mut Vec<u8>, record: &[u8]) -> Result<(), ChannelError> {
    if record.len() > MAX_RECORD_LEN {
        return Err(ChannelError::Framing(format!("record of {} bytes exceeds {MAX_RECORD_LEN}", record.len())));
    }
    let len = u32::try_from(record.len()).map_err(|_| ChannelError::Framing("record too large".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(record);
    Ok(())
}

/// Split a whole-body response into its records.
pub fn split_length_prefixed(mut body: &[u8]) -> Result<Vec<&[u8]>, ChannelError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let (len, rest) = body
            .split_first_chunk::<4>()
            .ok_or_else(|| ChannelError::Framing(format!("{} stray bytes after record {}", body.len(), out.len())))?;
        let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
        if len > MAX_RECORD_LEN {
            return Err(ChannelError::Framing(format!("record of {len} bytes exceeds {MAX_RECORD_LEN}")));
        }
        let record = rest.get(..len).ok_or_else(|| {
            ChannelError::Framing(format!("record {} truncated: {len} bytes announced, {} present", out.len(), rest.len()))
        })?;
        out.push(record);
        body = rest.get(len..).unwrap_or_default();
    }
    Ok(out)
}

/// One server-sent event carrying `record`.
pub fn sse_event(record: &[u8]) -> String {
    // Padded base64 takes 4 characters per started 3 bytes; "data: " and "\n\n" add 8.
    let mut s = String::with_capacity(record.len().div_ceil(3).saturating_mul(4).saturating_add(8));
    s.push_str("data: ");
    STANDARD.encode_string(record, &mut s);
    s.push_str("\n\n");
    s
}

/// Incremental decoder of an event stream of records.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: String,
}

impl SseDecoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed bytes; returns the records completed by them, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, ChannelError> {
        self.buf.extend_from_slice(bytes);
        if !bytes.contains(&b'\n') {
            // No line completed: the buffered bytes were scanned before and are not scanned
            // again, so a long line fed in small pieces costs linear, not quadratic, time.
            return self.check_pending().map(|()| Vec::new());
        }
        let mut out = Vec::new();
        // Bytes of complete lines handled so far; at most `self.buf.len()`.
        let mut consumed: usize = 0;
        for chunk in self.buf.split_inclusive(|&c| c == b'\n') {
            // The last chunk lacks its newline when the line is not complete yet.
            let Some(line) = chunk.strip_suffix(b"\n") else { break };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            consumed = consumed.saturating_add(chunk.len());
            if line.is_empty() {
                if !self.data.is_empty() {
                    let record = STANDARD
                        .decode(self.data.as_bytes())
                        .map_err(|e| ChannelError::Framing(format!("event data is not base64: {e}")))?;
                    self.data.clear();
                    out.push(record);
                }
            } else if line.starts_with(b":") {
                // A comment.
            } else if let Some(v) = line.strip_prefix(b"data:") {
                let v = v.strip_prefix(b" ").unwrap_or(v);
                let v = std::str::from_utf8(v).map_err(|_| ChannelError::Framing("event data is not UTF-8".into()))?;
                self.data.push_str(v);
                if self.data.len() > MAX_RECORD_LEN * 4 / 3 + 4 {
                    return Err(ChannelError::Framing(format!("event exceeds {MAX_RECORD_LEN} bytes")));
                }
            } else {
                let shown = String::from_utf8_lossy(line.get(..line.len().min(32)).unwrap_or_default()).into_owned();
                return Err(ChannelError::Framing(format!("unexpected event-stream line {shown:?}")));
            }
        }
        self.buf.drain(..consumed.min(self.buf.len()));
        self.check_pending()?;
        Ok(out)
    }

    /// The incomplete line buffered so far must still fit a record.
    fn check_pending(&self) -> Result<(), ChannelError> {
        if self.buf.len() > MAX_RECORD_LEN * 4 / 3 + 16 {
            return Err(ChannelError::Framing(format!("event-stream line exceeds {MAX_RECORD_LEN} bytes")));
        }
        Ok(())
    }

    /// `Ok` when nothing but whitespace is left over (the stream ended between events).
    pub fn finish(&self) -> Result<(), ChannelError> {
        if self.data.is_empty() && self.buf.iter().all(u8::is_ascii_whitespace) {
            Ok(())
        } else {
            Err(ChannelError::Framing("event stream ended inside an event".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn length_prefixed_round_trip_and_errors() {
        let mut body = Vec::new();
        push_length_prefixed(&mut body, b"abc").unwrap();
        push_length_prefixed(&mut body, b"").unwrap();
        assert_eq!(split_length_prefixed(&body).unwrap(), vec![&b"abc"[..], &b""[..]]);
        assert!(split_length_prefixed(&[]).unwrap().is_empty());
        for cut in 1..body.len() {
            if cut == 7 {
                continue; // a record boundary
            }
            assert!(split_length_prefixed(&body[..cut]).is_err(), "cut {cut}");
        }
        assert!(split_length_prefixed(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn sse_round_trip_in_any_split() {
        let records: Vec<Vec<u8>> = vec![b"one".to_vec(), vec![0, 1, 2, 255], vec![7; 1000]];
        let stream: String = records.iter().map(|r| sse_event(r)).collect::<String>() + ": a comment\n\n";
        for step in [1usize, 2, 3, 7, 64, stream.len()] {
            let mut d = SseDecoder::new();
            let mut got = Vec::new();
            for chunk in stream.as_bytes().chunks(step) {
                got.extend(d.push(chunk).unwrap());
            }
            assert_eq!(got, records, "step {step}");
            assert!(d.finish().is_ok());
        }
        // CRLF line endings are accepted.
        let mut d = SseDecoder::new();
        assert_eq!(d.push(b"data: b25l\r\n\r\n").unwrap(), vec![b"one".to_vec()]);
    }

    #[test]
    fn sse_errors() {
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: !!!\n\n").is_err());
        let mut d = SseDecoder::new();
        assert!(d.push(b"event: x\n").is_err());
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: b25l").unwrap().is_empty());
        assert!(d.finish().is_err(), "ended inside an event");
        let mut d = SseDecoder::new();
        assert!(d.push(b"data: b25l\n").unwrap().is_empty());
        assert!(d.finish().is_err(), "event without its blank line");
    }

    /// A record arriving a few bytes at a time decodes to the same record, and a line that
    /// grows past the limit piece by piece is refused.
    #[test]
    fn sse_in_small_pieces() {
        let record: Vec<u8> = (0..20_000u32).map(|i| i.to_le_bytes()[0]).collect();
        let stream = sse_event(&record);
        let mut d = SseDecoder::new();
        let mut got = Vec::new();
        for piece in stream.as_bytes().chunks(7) {
            got.extend(d.push(piece).unwrap());
        }
        assert_eq!(got, vec![record]);
        assert!(d.finish().is_ok());
        let mut d = SseDecoder::new();
        let piece = vec![b'A'; 64 * 1024];
        let mut fed = 0usize;
        let err = loop {
            match d.push(&piece) {
                Ok(r) => assert!(r.is_empty()),
                Err(e) => break e,
            }
            fed += piece.len();
            assert!(fed <= MAX_RECORD_LEN * 2, "an endless line was never refused");
        };
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn the_largest_data_fits_a_record() {
        assert!(crate::channel::crypto::record_len(MAX_DATA_LEN) <= MAX_RECORD_LEN);
    }

    proptest! {
        #[test]
        fn decoders_are_total(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = split_length_prefixed(&bytes);
            let mut d = SseDecoder::new();
            let _ = d.push(&bytes);
            let _ = d.finish();
        }
    }
}
