//! The owner's key file: the data key of one bundle, with the header digest and model name
//! it belongs to, so that `attest release` can check that a runtime loaded *this* bundle
//! before giving it the key.
//!
//! ```text
//! chrysalis-sealed-key v1
//! model: <model name>
//! header-sha384: <96 hex digits>
//! data-key: <64 hex digits>
//! ```
//!
//! Trust: the file is the owner's secret (written mode 0600); parsing is total anyway.

use zeroize::Zeroizing;

use super::key::{DATA_KEY_LEN, DataKey};
use crate::eventlog::{DIGEST_LEN, Digest384};

const FIRST_LINE: &str = "chrysalis-sealed-key v1";

/// A parsed key file.
#[derive(Debug)]
pub struct KeyFile {
    /// Model name from the bundle header.
    pub model_name: String,
    /// SHA-384 of the bundle header this key seals.
    pub header_digest: Digest384,
    /// The data key.
    pub key: DataKey,
}

/// Why a key file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The first line is not `chrysalis-sealed-key v1`.
    #[error("not a chrysalis key file (first line must be {FIRST_LINE:?})")]
    NotAKeyFile,
    /// A required line is missing or out of order.
    #[error("key file: expected a line starting with {0:?}")]
    MissingField(&'static str),
    /// A hex field has the wrong length or bad digits.
    #[error("key file: {0} is not {1} hex digits")]
    BadHex(&'static str, usize),
    /// Extra non-empty lines.
    #[error("key file: unexpected content after the data key")]
    Trailing,
}

impl KeyFile {
    /// The file's text (zeroized when dropped: it holds the key).
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(256));
        s.push_str(FIRST_LINE);
        s.push_str("\nmodel: ");
        s.push_str(&self.model_name);
        s.push_str("\nheader-sha384: ");
        s.push_str(&hex::encode(self.header_digest));
        s.push_str("\ndata-key: ");
        let k = Zeroizing::new(hex::encode(self.key.as_bytes()));
        s.push_str(&k);
        s.push('\n');
        s
    }

    /// Parse a key file's text.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut lines = text.lines();
        if lines.next().map(str::trim_end) != Some(FIRST_LINE) {
            return Err(KeyFileError::NotAKeyFile);
        }
        let mut field = |name: &'static str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(": "))
                .map(str::trim_end)
                .ok_or(KeyFileError::MissingField(name))
        };
        let model_name = field("model")?.to_owned();
        let mut header_digest = [0u8; DIGEST_LEN];
        hex::decode_to_slice(field("header-sha384")?, &mut header_digest)
            .map_err(|_| KeyFileError::BadHex("header-sha384", 2 * DIGEST_LEN))?;
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        hex::decode_to_slice(field("data-key")?, key.as_mut()).map_err(|_| KeyFileError::BadHex("data-key", 2 * DATA_KEY_LEN))?;
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(KeyFileError::Trailing);
        }
        Ok(KeyFile { model_name, header_digest, key: DataKey::from_zeroizing(key) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_errors() {
        let kf = KeyFile { model_name: "SmolLM2 135M".into(), header_digest: [7; 48], key: DataKey::from_bytes([9; 32]) };
        let text = kf.to_text();
        let back = KeyFile::parse(&text).expect("parses");
        assert_eq!(back.model_name, kf.model_name);
        assert_eq!(back.header_digest, kf.header_digest);
        assert_eq!(back.key, kf.key);
        assert_eq!(KeyFile::parse("hello").err(), Some(KeyFileError::NotAKeyFile));
        let short = text.replace(&hex::encode([9u8; 32]), "abcd");
        assert_eq!(KeyFile::parse(&short).err(), Some(KeyFileError::BadHex("data-key", 64)));
        let no_key = text.lines().take(3).collect::<Vec<_>>().join("\n");
        assert_eq!(KeyFile::parse(&no_key).err(), Some(KeyFileError::MissingField("data-key")));
        let extra = format!("{}more\n", &*text);
        assert_eq!(KeyFile::parse(&extra).err(), Some(KeyFileError::Trailing));
        assert!(!format!("{back:?}").contains(&hex::encode([9u8; 32])));
    }

    proptest! {
        #[test]
        fn parse_is_total(s in ".{0,400}") {
            let _ = KeyFile::parse(&s);
        }
    }
}
