//! Turns generated token ids into text deltas safe to send: never splits a UTF-8 character
//! or a multi-token grapheme the tokenizer has not finished, and holds back text that could
//! be the start of a stop string so a stop string is never sent.
//! Trusts: token ids come from the model; stop strings from the client (bounded by the API).

use tokenizers::Tokenizer;
use zeroize::Zeroizing;

/// What the detokenizer says after each token.
#[derive(Debug, PartialEq, Eq)]
pub enum Delta {
    /// New text to send (possibly empty).
    Text(String),
    /// A stop string was found: send this last text, then finish with reason `stop`.
    Stopped(String),
}

/// Incremental detokenizer with stop-string matching.
pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    // Generated ids and text are zeroized when the stream ends.
    tokens: Zeroizing<Vec<u32>>,
    prefix_offset: usize,
    read_offset: usize,
    text: Zeroizing<String>,
    sent: usize,
    stops: Vec<String>,
}

impl<'a> TextStream<'a> {
    /// A stream decoding with `tokenizer` and watching for `stops` (empty strings ignored).
    pub fn new(tokenizer: &'a Tokenizer, stops: Vec<String>) -> Self {
        Self {
            tokenizer,
            tokens: Zeroizing::default(),
            prefix_offset: 0,
            read_offset: 0,
            text: Zeroizing::default(),
            sent: 0,
            stops,
        }
    }

    fn decode(&self, from: usize, to: usize) -> String {
        let ids = self.tokens.get(from..to).unwrap_or_default();
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    /// Adds one generated token.
    pub fn push(&mut self, token: u32) -> Delta {
        self.tokens.push(token);
        let prefix = self.decode(self.prefix_offset, self.read_offset);
        let full = self.decode(self.prefix_offset, self.tokens.len());
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            // If the decoder rewrote earlier text (no common prefix), drop the delta rather
            // than send text twice; offsets resync below.
            if let Some(new) = full.get(prefix.len()..) {
                self.text.push_str(new);
            }
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
        }
        self.release(false)
    }

    /// Flushes everything still held back (end of generation without a stop string).
    pub fn finish(&mut self) -> String {
        if self.read_offset < self.tokens.len() {
            let prefix = self.decode(self.prefix_offset, self.read_offset);
            let full = self.decode(self.prefix_offset, self.tokens.len());
            if let Some(new) = full.get(prefix.len()..) {
                self.text.push_str(new);
            }
            self.read_offset = self.tokens.len();
        }
        match self.release(true) {
            Delta::Text(t) | Delta::Stopped(t) => t,
        }
    }

    fn release(&mut self, at_end: bool) -> Delta {
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        // A stop string can only start in the unsent tail (earlier text was checked).
        let mut from = self.sent.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let tail = self.text.get(from..).unwrap_or_default();
        let hit = self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| tail.find(s.as_str())).min().map(|i| from + i);
        if let Some(at) = hit {
            let out = self.text.get(self.sent.min(at)..at).unwrap_or_default().to_owned();
            self.sent = self.text.len();
            return Delta::Stopped(out);
        }
        let mut safe = self.text.len();
        if !at_end {
            // Hold back the longest suffix that is a prefix of some stop string.
            for s in self.stops.iter().filter(|s| !s.is_empty()) {
                for (i, _) in s.char_indices().skip(1) {
                    if let Some(p) = s.get(..i)
                        && self.text.ends_with(p)
                    {
                        safe = safe.min(self.text.len() - p.len());
                    }
                }
            }
        }
        let safe = safe.max(self.sent);
        let out = self.text.get(self.sent..safe).unwrap_or_default().to_owned();
        self.sent = safe;
        Delta::Text(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A byte-level tokenizer where every byte is its own token, so multi-byte characters
    /// span several tokens.
    fn bytes_tokenizer() -> Tokenizer {
        let byte_chars: Vec<String> = (0u8..=255)
            .map(|b| {
                // GPT-2's bytes_to_unicode mapping.
                let c = match b {
                    b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF => char::from(b),
                    _ => {
                        let extra = (0u8..=255)
                            .filter(|x| !matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
                            .position(|x| x == b)
                            .unwrap_or(0);
                        char::from_u32(256 + extra as u32).unwrap_or('?')
                    }
                };
                c.to_string()
            })
            .collect();
        let vocab: serde_json::Map<String, serde_json::Value> =
            byte_chars.iter().enumerate().map(|(i, c)| (c.clone(), json!(i))).collect();
        let doc = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": []}
        });
        Tokenizer::from_bytes(serde_json::to_vec(&doc).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn run(text: &str, stops: &[String]) -> (Vec<String>, bool) {
        let tok = bytes_tokenizer();
        let mut s = TextStream::new(&tok, stops.to_vec());
        let mut out = Vec::new();
        for b in text.bytes() {
            match s.push(u32::from(b)) {
                Delta::Text(t) => out.push(t),
                Delta::Stopped(t) => {
                    out.push(t);
                    return (out, true);
                }
            }
        }
        out.push(s.finish());
        (out, false)
    }

    #[test]
    fn never_splits_characters() {
        let (out, stopped) = run("naïve café ✓", &[]);
        assert!(!stopped);
        assert_eq!(out.concat(), "naïve café ✓");
        assert!(out.iter().all(|d| !d.contains('\u{FFFD}')));
    }

    #[test]
    fn stop_strings_are_cut_and_never_sent() {
        let stops = vec!["END".to_owned(), "\n\n".to_owned()];
        let (out, stopped) = run("abc EN def END ghi", &stops);
        assert!(stopped);
        assert_eq!(out.concat(), "abc EN def ");
        let (out, stopped) = run("one\n\ntwo", &stops);
        assert!(stopped);
        assert_eq!(out.concat(), "one");
        // A held-back partial match is released at the end.
        let (out, stopped) = run("xyz EN", &stops);
        assert!(!stopped);
        assert_eq!(out.concat(), "xyz EN");
    }
}
