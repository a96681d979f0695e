//! Sealed-bundle wire format: the preamble, the postcard header and the chunk layout of the
//! body (see `attest/SEALED_FORMAT.md` for the normative description).
//!
//! Trust: every byte parsed here is untrusted. Parsing only establishes that the header is
//! well formed and describes a body whose size can be computed without overflow; the header
//! is authenticated later, as the associated data of every body chunk, and a runtime
//! measures it (SHA-384 of [`SealedHeader::raw`]) before it has the key.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use crate::eventlog::Digest384;

/// First eight bytes of every sealed bundle.
pub const MAGIC: [u8; 8] = *b"CHRYSEAL";
/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Magic (8) + format version (u16 LE) + header length (u32 LE).
pub const PREAMBLE_LEN: usize = 14;
/// Largest postcard header accepted, so a hostile length cannot make a reader allocate much.
pub const MAX_HEADER_LEN: usize = 1 << 20;
/// Plaintext bytes per chunk unless the sealer picks another size: large enough that the
/// 16-byte tag and the per-call overhead vanish, small enough that a chunk stays in L2 while
/// it is copied and decrypted, and that a 1 GiB model spreads over 1024 parallel jobs.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest chunk size a header may declare.
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest chunk size a header may declare.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Length of the random per-bundle nonce prefix (STREAM: 12 − 4 − 1).
pub const NONCE_PREFIX_LEN: usize = 7;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Most files one bundle may hold.
pub const MAX_FILES: usize = 4096;
/// Longest file name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest model name, in bytes.
pub const MAX_MODEL_NAME_LEN: usize = 256;

/// The bundle header: what the bundle holds and how its body is chunked. Serialised with
/// postcard after the preamble; its SHA-384 (over preamble and header) is the AEAD's
/// associated data and the runtime's `BundleHeader` measurement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BundleHeader {
    /// Equal to the preamble's version ([`FORMAT_VERSION`]).
    pub format_version: u16,
    /// Human-readable model name (informational, authenticated).
    pub model_name: String,
    /// Plaintext bytes per chunk (the last chunk of each file may be shorter).
    pub chunk_size: u32,
    /// Random per bundle: first 7 bytes of every chunk nonce.
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// The files, in body order.
    pub files: Vec<FileEntry>,
}

/// One sealed file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Plain file name (no directories), e.g. `config.json`, `model-00001-of-00002.safetensors`.
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// SHA-256 of the plaintext (the identity Hugging Face shows for LFS files).
    pub sha256: [u8; 32],
}

/// Why a header was rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer bytes than the preamble or the declared header length need.
    #[error("header truncated: need {needed} bytes, got {got}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The first eight bytes are not [`MAGIC`].
    #[error("not a sealed bundle: bad magic")]
    BadMagic,
    /// A format version this build does not read.
    #[error("sealed format version {found} is not supported (expected {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u16,
    },
    /// Declared header length above [`MAX_HEADER_LEN`].
    #[error("header length {len} exceeds the {MAX_HEADER_LEN} byte limit")]
    TooLarge {
        /// The declared length.
        len: u64,
    },
    /// Not valid postcard for [`BundleHeader`].
    #[error("header is malformed: {0}")]
    Malformed(postcard::Error),
    /// Decodes, but is not the one canonical postcard encoding of what it decodes to (so
    /// that one header value has exactly one digest).
    #[error("header is not canonically encoded")]
    NonCanonical,
    /// Valid postcard, but shorter than the declared header length.
    #[error("header has {0} trailing bytes inside its declared length")]
    Trailing(usize),
    /// The postcard header's version differs from the preamble's.
    #[error("header version {inner} differs from preamble version {outer}")]
    VersionMismatch {
        /// Preamble version.
        outer: u16,
        /// Header version.
        inner: u16,
    },
    /// Chunk size outside [`MIN_CHUNK_SIZE`]..=[`MAX_CHUNK_SIZE`].
    #[error("chunk size {0} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    /// Model name empty, too long or holding control characters.
    #[error("model name is invalid: {0}")]
    ModelName(&'static str),
    /// A file name that is not a plain, printable name.
    #[error("file name {name:?} is invalid: {reason}")]
    FileName {
        /// The offending name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// Two entries with the same name.
    #[error("file {0:?} appears twice")]
    DuplicateFile(String),
    /// More than [`MAX_FILES`] entries.
    #[error("{0} files, limit {MAX_FILES}")]
    TooManyFiles(usize),
    /// No plaintext byte at all.
    #[error("bundle holds no data")]
    NoData,
    /// Sizes whose sum or chunk count does not fit (more than 2^32 chunks).
    #[error("file sizes overflow the format's limits")]
    SizeOverflow,
}

/// A parsed, validated header with its original bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    /// The decoded header.
    pub header: BundleHeader,
    /// Preamble and postcard header exactly as read: what is hashed and measured.
    pub raw: Vec<u8>,
    /// Where each file's chunks sit in the body.
    pub layout: Layout,
}

/// Chunk geometry derived from a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Plaintext bytes per full chunk.
    pub chunk_size: u32,
    /// Sum of all file sizes.
    pub total_plaintext: u64,
    /// Number of chunks in the body (≥ 1).
    pub chunk_count: u32,
    /// Exact body length: plaintext plus one tag per chunk.
    pub body_len: u64,
    /// Where each file's chunks sit, in header order.
    pub files: Vec<FileSpan>,
}

/// One file's place in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSpan {
    /// Global index of the file's first chunk.
    pub first_chunk: u32,
    /// Number of chunks (0 for an empty file).
    pub chunks: u32,
    /// Plaintext size.
    pub size: u64,
}

impl Layout {
    fn of(h: &BundleHeader) -> Result<Self, HeaderError> {
        let cs = u64::from(h.chunk_size);
        let mut total: u64 = 0;
        let mut chunks: u32 = 0;
        let mut files = Vec::with_capacity(h.files.len());
        for f in &h.files {
            let n = u32::try_from(f.size.div_ceil(cs)).map_err(|_| HeaderError::SizeOverflow)?;
            files.push(FileSpan { first_chunk: chunks, chunks: n, size: f.size });
            chunks = chunks.checked_add(n).ok_or(HeaderError::SizeOverflow)?;
            total = total.checked_add(f.size).ok_or(HeaderError::SizeOverflow)?;
        }
        if total == 0 {
            return Err(HeaderError::NoData);
        }
        let tags = u64::from(chunks).checked_mul(TAG_LEN as u64).ok_or(HeaderError::SizeOverflow)?;
        let body_len = total.checked_add(tags).ok_or(HeaderError::SizeOverflow)?;
        Ok(Layout { chunk_size: h.chunk_size, total_plaintext: total, chunk_count: chunks, body_len, files })
    }

    /// Index of the chunk that holds body offset `body_offset` (`chunk_count` past the end):
    /// a truncated body is reported as "incomplete from chunk N".
    pub fn chunk_at(&self, body_offset: u64) -> u32 {
        // `Layout::of` checked that every file's span and their sum (`body_len`) fit a u64, so
        // the saturating forms below never saturate.
        let stride = u64::from(self.chunk_size).saturating_add(TAG_LEN as u64);
        let mut start = 0u64;
        for f in &self.files {
            let end = start.saturating_add(f.size).saturating_add(u64::from(f.chunks).saturating_mul(TAG_LEN as u64));
            if body_offset < end {
                // `stride` is at least TAG_LEN, so the division is defined.
                let within = body_offset.saturating_sub(start).checked_div(stride).unwrap_or(0);
                return f.first_chunk.saturating_add(u32::try_from(within).unwrap_or(u32::MAX));
            }
            start = end;
        }
        self.chunk_count
    }

    /// Whether chunk `index` is the final one (its nonce carries the last-chunk flag).
    pub fn is_last(&self, index: u32) -> bool {
        index.checked_add(1) == Some(self.chunk_count)
    }
}

/// Validate a file name: plain, printable, no path separators.
fn check_name(name: &str) -> Result<(), HeaderError> {
    let bad = |reason| Err(HeaderError::FileName { name: name.to_owned(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return bad("a directory reference");
    }
    if name.contains(['/', '\\']) {
        return bad("contains a path separator");
    }
    if name.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(())
}

impl BundleHeader {
    /// Check every field against the format's limits; returns the body layout.
    pub fn validate(&self) -> Result<Layout, HeaderError> {
        if self.format_version != FORMAT_VERSION {
            return Err(HeaderError::VersionMismatch { outer: FORMAT_VERSION, inner: self.format_version });
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(HeaderError::ChunkSize(self.chunk_size));
        }
        if self.model_name.is_empty() {
            return Err(HeaderError::ModelName("empty"));
        }
        if self.model_name.len() > MAX_MODEL_NAME_LEN {
            return Err(HeaderError::ModelName("longer than 256 bytes"));
        }
        if self.model_name.chars().any(char::is_control) {
            return Err(HeaderError::ModelName("contains a control character"));
        }
        if self.files.len() > MAX_FILES {
            return Err(HeaderError::TooManyFiles(self.files.len()));
        }
        let mut names: Vec<&str> = Vec::with_capacity(self.files.len());
        for f in &self.files {
            check_name(&f.name)?;
            names.push(&f.name);
        }
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w.first() == w.get(1)) {
            return Err(HeaderError::DuplicateFile(w.first().copied().unwrap_or_default().to_owned()));
        }
        Layout::of(self)
    }

    /// Encode preamble and header after validating; the bytes a [`SealedHeader`] keeps as `raw`.
    pub fn to_sealed(&self) -> Result<SealedHeader, HeaderError> {
        let layout = self.validate()?;
        let body = postcard::to_allocvec(self).map_err(HeaderError::Malformed)?;
        if body.len() > MAX_HEADER_LEN {
            return Err(HeaderError::TooLarge { len: body.len() as u64 });
        }
        let len = u32::try_from(body.len()).map_err(|_| HeaderError::TooLarge { len: body.len() as u64 })?;
        let mut raw = Vec::with_capacity(PREAMBLE_LEN.saturating_add(body.len()));
        raw.extend_from_slice(&MAGIC);
        raw.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        raw.extend_from_slice(&len.to_le_bytes());
        raw.extend_from_slice(&body);
        Ok(SealedHeader { header: self.clone(), raw, layout })
    }
}

/// Parse the preamble: returns the total header length (preamble included).
pub(crate) fn parse_preamble(p: &[u8]) -> Result<usize, HeaderError> {
    let Some((magic, rest)) = p.split_first_chunk::<8>() else {
        return Err(HeaderError::Truncated { needed: PREAMBLE_LEN, got: p.len() });
    };
    if magic != &MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let Some((ver, rest)) = rest.split_first_chunk::<2>() else {
        return Err(HeaderError::Truncated { needed: PREAMBLE_LEN, got: p.len() });
    };
    let version = u16::from_le_bytes(*ver);
    if version != FORMAT_VERSION {
        return Err(HeaderError::UnsupportedVersion { found: version });
    }
    let Some((len, _)) = rest.split_first_chunk::<4>() else {
        return Err(HeaderError::Truncated { needed: PREAMBLE_LEN, got: p.len() });
    };
    let len = u32::from_le_bytes(*len);
    usize::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_HEADER_LEN)
        .and_then(|n| PREAMBLE_LEN.checked_add(n))
        .ok_or(HeaderError::TooLarge { len: u64::from(len) })
}

/// Parse and validate the header at the start of `bytes`; anything after it (the body) is
/// ignored, so the first [`SealedHeader::raw`]`.len()` bytes of a bundle are enough.
pub fn read_header(bytes: &[u8]) -> Result<SealedHeader, HeaderError> {
    let total = parse_preamble(bytes)?;
    let Some(raw) = bytes.get(..total) else {
        return Err(HeaderError::Truncated { needed: total, got: bytes.len() });
    };
    let body = raw.get(PREAMBLE_LEN..).unwrap_or_default();
    let (header, rest): (BundleHeader, &[u8]) = postcard::take_from_bytes(body).map_err(HeaderError::Malformed)?;
    if !rest.is_empty() {
        return Err(HeaderError::Trailing(rest.len()));
    }
    let layout = header.validate()?;
    if postcard::to_allocvec(&header).ok().as_deref() != Some(body) {
        return Err(HeaderError::NonCanonical);
    }
    Ok(SealedHeader { header, raw: raw.to_vec(), layout })
}

impl SealedHeader {
    /// SHA-384 of the header bytes: the AEAD associated data and the `BundleHeader` event.
    pub fn digest(&self) -> Digest384 {
        Sha384::digest(&self.raw).into()
    }

    /// Number of bytes before the body.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Always false: a header has at least a preamble.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> BundleHeader {
        BundleHeader {
            format_version: FORMAT_VERSION,
            model_name: "tiny".into(),
            chunk_size: MIN_CHUNK_SIZE,
            nonce_prefix: [9; 7],
            files: vec![
                FileEntry { name: "config.json".into(), size: 10, sha256: [1; 32] },
                FileEntry { name: "empty.json".into(), size: 0, sha256: [2; 32] },
                FileEntry { name: "model.safetensors".into(), size: 2 * 4096 + 1, sha256: [3; 32] },
            ],
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let s = header().to_sealed().expect("valid");
        let mut bytes = s.raw.clone();
        bytes.extend_from_slice(b"body is ignored");
        let p = read_header(&bytes).expect("parses");
        assert_eq!(p, s);
        let spans: Vec<(u32, u32)> = p.layout.files.iter().map(|f| (f.first_chunk, f.chunks)).collect();
        assert_eq!(spans, vec![(0, 1), (1, 0), (1, 3)]);
        assert_eq!(p.layout.chunk_count, 4);
        assert_eq!(p.layout.body_len, 10 + 8193 + 4 * 16);
        assert_eq!(p.layout.chunk_at(0), 0);
        assert_eq!(p.layout.chunk_at(25), 0);
        assert_eq!(p.layout.chunk_at(26), 1);
        assert_eq!(p.layout.chunk_at(26 + 4112), 2);
        assert_eq!(p.layout.chunk_at(26 + 2 * 4112), 3);
        assert_eq!(p.layout.chunk_at(p.layout.body_len), 4);
        assert!(p.layout.is_last(3) && !p.layout.is_last(2));
    }

    #[test]
    fn rejects_each_invalid_field() {
        type Edit = fn(&mut BundleHeader);
        let cases: Vec<(Edit, HeaderError)> = vec![
            (|h| h.chunk_size = 100, HeaderError::ChunkSize(100)),
            (|h| h.model_name.clear(), HeaderError::ModelName("empty")),
            (|h| h.model_name = "a\nb".into(), HeaderError::ModelName("contains a control character")),
            (|h| h.files.iter_mut().for_each(|f| f.size = 0), HeaderError::NoData),
            (
                |h| h.files[0].name = "../x".into(),
                HeaderError::FileName { name: "../x".into(), reason: "contains a path separator" },
            ),
            (|h| h.files[0].name = "..".into(), HeaderError::FileName { name: "..".into(), reason: "a directory reference" }),
            (|h| h.files[1].name = "config.json".into(), HeaderError::DuplicateFile("config.json".into())),
            (|h| h.files[0].size = u64::MAX, HeaderError::SizeOverflow),
            (|h| h.format_version = 2, HeaderError::VersionMismatch { outer: 1, inner: 2 }),
        ];
        for (edit, want) in cases {
            let mut h = header();
            edit(&mut h);
            assert_eq!(h.to_sealed().err(), Some(want.clone()));
            // The same header smuggled past the encoder is rejected by the parser too.
            let body = postcard::to_allocvec(&h).expect("encodes");
            let mut raw = MAGIC.to_vec();
            raw.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            raw.extend_from_slice(&(body.len() as u32).to_le_bytes());
            raw.extend_from_slice(&body);
            assert_eq!(read_header(&raw).err(), Some(want));
        }
    }

    #[test]
    fn rejects_preamble_problems() {
        let raw = header().to_sealed().expect("valid").raw;
        assert_eq!(read_header(&raw[..5]).err(), Some(HeaderError::Truncated { needed: 14, got: 5 }));
        assert_eq!(
            read_header(&raw[..raw.len() - 1]).err(),
            Some(HeaderError::Truncated { needed: raw.len(), got: raw.len() - 1 })
        );
        let mut b = raw.clone();
        b[0] ^= 1;
        assert_eq!(read_header(&b).err(), Some(HeaderError::BadMagic));
        let mut b = raw.clone();
        b[8] = 7;
        assert_eq!(read_header(&b).err(), Some(HeaderError::UnsupportedVersion { found: 7 }));
        let mut b = raw.clone();
        b[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read_header(&b).err(), Some(HeaderError::TooLarge { len: u64::from(u32::MAX) }));
        // Declared length one byte longer than the postcard header: trailing byte inside.
        let mut b = raw.clone();
        let len = u32::from_le_bytes(b[10..14].try_into().expect("4 bytes")) + 1;
        b[10..14].copy_from_slice(&len.to_le_bytes());
        b.push(0);
        assert_eq!(read_header(&b).err(), Some(HeaderError::Trailing(1)));
        // Declared length one byte shorter: postcard runs out.
        let mut b = raw.clone();
        let len = u32::from_le_bytes(b[10..14].try_into().expect("4 bytes")) - 1;
        b[10..14].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(read_header(&b), Err(HeaderError::Malformed(_))));
    }

    #[test]
    fn non_canonical_encoding_is_rejected() {
        let raw = header().to_sealed().expect("valid").raw;
        // format_version 1 is the varint 0x01; 0x81 0x00 is an overlong encoding of 1.
        assert_eq!(raw[PREAMBLE_LEN], 1);
        let mut b = raw[..PREAMBLE_LEN].to_vec();
        b.extend_from_slice(&[0x81, 0x00]);
        b.extend_from_slice(&raw[PREAMBLE_LEN + 1..]);
        let len = (b.len() - PREAMBLE_LEN) as u32;
        b[10..14].copy_from_slice(&len.to_le_bytes());
        assert!(matches!(read_header(&b), Err(HeaderError::NonCanonical | HeaderError::Malformed(_))));
    }

    #[test]
    fn every_error_formats() {
        let errs = [
            HeaderError::Truncated { needed: 14, got: 3 },
            HeaderError::BadMagic,
            HeaderError::UnsupportedVersion { found: 3 },
            HeaderError::TooLarge { len: 9 },
            HeaderError::Malformed(postcard::Error::DeserializeUnexpectedEnd),
            HeaderError::Trailing(2),
            HeaderError::NonCanonical,
            HeaderError::VersionMismatch { outer: 1, inner: 2 },
            HeaderError::ChunkSize(1),
            HeaderError::ModelName("empty"),
            HeaderError::FileName { name: "a/b".into(), reason: "contains a path separator" },
            HeaderError::DuplicateFile("a".into()),
            HeaderError::TooManyFiles(5000),
            HeaderError::NoData,
            HeaderError::SizeOverflow,
        ];
        for e in errs {
            let s = e.to_string();
            assert!(!s.is_empty() && s.chars().next().is_some_and(|c| !c.is_uppercase()), "{s}");
        }
    }
}
