//! Sealed-bundle wire format: the preamble, the clear header, the v2 encrypted manifest and
//! the chunk layout of the body (see `attest/proto/SEALED_FORMAT.md` for the normative
//! description).
//!
//! Two versions are read: v1 (read-only) lists every file's name, size and SHA-256 in the
//! clear header; v2 (written by [`crate::seal::seal`]) keeps only the body geometry in the
//! clear and moves the model name and the file list into a [`Manifest`] that is the first
//! plaintext of the encrypted stream.
//!
//! Trust: every byte parsed here is untrusted. Parsing only establishes that the header is
//! well formed and describes a body whose size can be computed without overflow; the header
//! is authenticated later, as the associated data of every body chunk, and a runtime
//! measures it (SHA-384 of [`SealedHeader::raw`]) before it has the key. A v2 manifest is
//! parsed only after the chunks holding it have authenticated, so only a key holder can make
//! it fail; it is checked as strictly as a header anyway.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

use crate::eventlog::Digest384;

/// First eight bytes of every sealed bundle.
pub const MAGIC: [u8; 8] = *b"CHRYSEAL";
/// Version 1: file names, sizes and SHA-256 in the clear header. Read, never written.
pub const FORMAT_V1: u16 = 1;
/// Version 2: only the geometry in the clear; the manifest is encrypted. What the sealer writes.
pub const FORMAT_V2: u16 = 2;
/// The version this build writes.
pub const FORMAT_VERSION: u16 = FORMAT_V2;
/// Magic (8) + format version (u16 LE) + header length (u32 LE).
pub const PREAMBLE_LEN: usize = 14;
/// Largest postcard header accepted, so a hostile length cannot make a reader allocate much.
pub const MAX_HEADER_LEN: usize = 1 << 20;
/// Largest v2 manifest accepted (the length prefix is read from the first decrypted chunk).
pub const MAX_MANIFEST_LEN: usize = 1 << 20;
/// Bytes of the little-endian u32 manifest length that opens a v2 plaintext stream.
pub const MANIFEST_LEN_PREFIX: usize = 4;
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

/// A version-1 header: everything in the clear. Serialised with postcard after the
/// preamble; its SHA-384 (over preamble and header) is the AEAD's associated data and the
/// runtime's `BundleHeader` measurement. Read only: the sealer writes [`HeaderV2`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HeaderV1 {
    /// [`FORMAT_V1`], equal to the preamble's version.
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

/// A version-2 header: only what a reader needs before it has the key (how to frame and
/// authenticate the body). The body is `chunk_count` chunks of exactly `chunk_size`
/// plaintext bytes; what they hold is in the encrypted [`Manifest`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HeaderV2 {
    /// [`FORMAT_V2`], equal to the preamble's version.
    pub format_version: u16,
    /// Plaintext bytes in every chunk (the stream is padded to whole chunks).
    pub chunk_size: u32,
    /// Random per bundle: first 7 bytes of every chunk nonce.
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// Number of chunks in the body (≥ 1).
    pub chunk_count: u32,
}

/// A parsed clear header of either version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BundleHeader {
    /// Version 1 (file list in the clear).
    V1(HeaderV1),
    /// Version 2 (file list in the encrypted manifest).
    V2(HeaderV2),
}

/// What a bundle holds: the model name and its files in stream order. In v2 this is the
/// encrypted manifest (postcard, at the start of the plaintext stream); in v1 the same
/// fields sit in the clear header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Human-readable model name.
    pub model_name: String,
    /// The files, in stream order.
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

/// Why a model name or file list (a v1 header's, a v2 manifest's) was rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
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
    /// Sizes whose sum or chunk count does not fit (v1: more than 2^32 chunks).
    #[error("file sizes overflow the format's limits")]
    SizeOverflow,
    /// v2: declared manifest length above [`MAX_MANIFEST_LEN`].
    #[error("manifest length {0} exceeds the {MAX_MANIFEST_LEN} byte limit")]
    TooLarge(u64),
    /// v2: not valid postcard for [`Manifest`].
    #[error("manifest is malformed: {0}")]
    Malformed(postcard::Error),
    /// v2: valid postcard, but shorter than the declared manifest length.
    #[error("manifest has {0} trailing bytes inside its declared length")]
    Trailing(usize),
    /// v2: decodes, but is not the canonical postcard encoding of what it decodes to.
    #[error("manifest is not canonically encoded")]
    NonCanonical,
    /// v2: manifest and files need more plaintext than the body's chunks hold.
    #[error("manifest and files need {needed} bytes, the body holds {capacity}")]
    ExceedsBody {
        /// Length prefix, manifest and files together.
        needed: u64,
        /// `chunk_count · chunk_size`.
        capacity: u64,
    },
    /// v2: a byte after the last file is not zero.
    #[error("padding after the last file is not zero (chunk {chunk})")]
    Padding {
        /// The chunk holding the first non-zero padding byte found.
        chunk: u32,
    },
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
    #[error("sealed format version {found} is not supported (this build reads versions {FORMAT_V1} and {FORMAT_V2})")]
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
    /// Not valid postcard for the version's header.
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
    /// v2: a body of zero chunks.
    #[error("header declares no chunks")]
    NoChunks,
    /// v1: the clear model name or file list is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// A parsed, validated header with its original bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    /// The decoded header.
    pub header: BundleHeader,
    /// Preamble and postcard header exactly as read: what is hashed and measured.
    pub raw: Vec<u8>,
    /// The body's chunk geometry.
    pub layout: Layout,
}

/// Chunk geometry derived from a clear header (no key needed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Plaintext bytes per full chunk.
    pub chunk_size: u32,
    /// Plaintext bytes the body decrypts to, which a reader must be prepared to hold: v1 the
    /// sum of the file sizes; v2 `chunk_count · chunk_size` (length prefix, manifest, files
    /// and zero padding), an upper bound on the files' total.
    pub stream_len: u64,
    /// Number of chunks in the body (≥ 1).
    pub chunk_count: u32,
    /// Exact body length: plaintext plus one tag per chunk.
    pub body_len: u64,
    /// v1: where each file's chunks sit, in header order. v2: empty (the files' places are
    /// in the encrypted manifest; see [`Manifest::spans`]).
    pub files: Vec<FileSpan>,
}

/// One file's place in the plaintext stream and in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSpan {
    /// Offset of the file's first byte in the plaintext stream.
    pub offset: u64,
    /// Global index of the chunk holding the file's first byte.
    pub first_chunk: u32,
    /// Number of chunks holding bytes of the file (0 for an empty file). In v2 a chunk may
    /// hold the end of one file and the start of the next.
    pub chunks: u32,
    /// Plaintext size.
    pub size: u64,
}

impl Layout {
    fn v1(h: &HeaderV1) -> Result<Self, HeaderError> {
        check_contents(&h.model_name, &h.files)?;
        let cs = u64::from(h.chunk_size);
        let mut total: u64 = 0;
        let mut chunks: u32 = 0;
        let mut files = Vec::with_capacity(h.files.len());
        for f in &h.files {
            let n = u32::try_from(f.size.div_ceil(cs)).map_err(|_| ManifestError::SizeOverflow)?;
            files.push(FileSpan { offset: total, first_chunk: chunks, chunks: n, size: f.size });
            chunks = chunks.checked_add(n).ok_or(ManifestError::SizeOverflow)?;
            total = total.checked_add(f.size).ok_or(ManifestError::SizeOverflow)?;
        }
        let tags = u64::from(chunks).checked_mul(TAG_LEN as u64).ok_or(ManifestError::SizeOverflow)?;
        let body_len = total.checked_add(tags).ok_or(ManifestError::SizeOverflow)?;
        Ok(Layout { chunk_size: h.chunk_size, stream_len: total, chunk_count: chunks, body_len, files })
    }

    fn v2(h: &HeaderV2) -> Result<Self, HeaderError> {
        if h.chunk_count == 0 {
            return Err(HeaderError::NoChunks);
        }
        // chunk_count < 2^32 and chunk_size + 16 < 2^27: neither product reaches 2^64.
        let n = u64::from(h.chunk_count);
        let stream_len = n.saturating_mul(u64::from(h.chunk_size));
        let body_len = n.saturating_mul(u64::from(h.chunk_size).saturating_add(TAG_LEN as u64));
        Ok(Layout { chunk_size: h.chunk_size, stream_len, chunk_count: h.chunk_count, body_len, files: Vec::new() })
    }

    /// Plaintext bytes in chunk `index`: `chunk_size`, except the last chunk of each v1 file.
    pub fn chunk_len(&self, index: u32) -> u32 {
        let cs = u64::from(self.chunk_size);
        for f in &self.files {
            if let Some(k) = index.checked_sub(f.first_chunk).filter(|&k| k < f.chunks) {
                let before = u64::from(k).saturating_mul(cs);
                return u32::try_from(f.size.saturating_sub(before).min(cs)).unwrap_or(self.chunk_size);
            }
        }
        self.chunk_size
    }

    /// Index of the chunk that holds body offset `body_offset` (`chunk_count` past the end):
    /// a truncated body is reported as "incomplete from chunk N".
    pub fn chunk_at(&self, body_offset: u64) -> u32 {
        let stride = u64::from(self.chunk_size).saturating_add(TAG_LEN as u64);
        if self.files.is_empty() {
            // v2: every chunk is full. `stride` is at least TAG_LEN, so the division is defined.
            let i = body_offset.checked_div(stride).unwrap_or(0);
            return u32::try_from(i).unwrap_or(u32::MAX).min(self.chunk_count);
        }
        // `Layout::v1` checked that every file's span and their sum (`body_len`) fit a u64, so
        // the saturating forms below never saturate.
        let mut start = 0u64;
        for f in &self.files {
            let end = start.saturating_add(f.size).saturating_add(u64::from(f.chunks).saturating_mul(TAG_LEN as u64));
            if body_offset < end {
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
fn check_name(name: &str) -> Result<(), ManifestError> {
    let bad = |reason| Err(ManifestError::FileName { name: name.to_owned(), reason });
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

/// Check a model name and file list against the format's limits; returns the files' total.
fn check_contents(model_name: &str, files: &[FileEntry]) -> Result<u64, ManifestError> {
    if model_name.is_empty() {
        return Err(ManifestError::ModelName("empty"));
    }
    if model_name.len() > MAX_MODEL_NAME_LEN {
        return Err(ManifestError::ModelName("longer than 256 bytes"));
    }
    if model_name.chars().any(char::is_control) {
        return Err(ManifestError::ModelName("contains a control character"));
    }
    if files.len() > MAX_FILES {
        return Err(ManifestError::TooManyFiles(files.len()));
    }
    let mut names: Vec<&str> = Vec::with_capacity(files.len());
    let mut total = 0u64;
    for f in files {
        check_name(&f.name)?;
        names.push(&f.name);
        total = total.checked_add(f.size).ok_or(ManifestError::SizeOverflow)?;
    }
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w.first() == w.get(1)) {
        return Err(ManifestError::DuplicateFile(w.first().copied().unwrap_or_default().to_owned()));
    }
    if total == 0 {
        return Err(ManifestError::NoData);
    }
    Ok(total)
}

impl Manifest {
    /// Check the model name and every file against the format's limits; returns the files'
    /// total size.
    pub fn validate(&self) -> Result<u64, ManifestError> {
        check_contents(&self.model_name, &self.files)
    }

    /// The v2 stream prefix: `u32_le(M) || postcard(manifest)`, after validating.
    pub fn encode(&self) -> Result<Vec<u8>, ManifestError> {
        self.validate()?;
        let body = postcard::to_allocvec(self).map_err(ManifestError::Malformed)?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&n| n as usize <= MAX_MANIFEST_LEN)
            .ok_or(ManifestError::TooLarge(body.len() as u64))?;
        let mut out = Vec::with_capacity(MANIFEST_LEN_PREFIX.saturating_add(body.len()));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The manifest length `M` declared by the first bytes of a v2 stream (at least
    /// [`MANIFEST_LEN_PREFIX`] of them: a chunk is never shorter), checked against
    /// [`MAX_MANIFEST_LEN`] and the stream's capacity.
    pub fn declared_len(stream_start: &[u8], capacity: u64) -> Result<usize, ManifestError> {
        let Some((len, _)) = stream_start.split_first_chunk::<MANIFEST_LEN_PREFIX>() else {
            return Err(ManifestError::Malformed(postcard::Error::DeserializeUnexpectedEnd));
        };
        let len = u32::from_le_bytes(*len);
        let m = usize::try_from(len).ok().filter(|&m| m <= MAX_MANIFEST_LEN).ok_or(ManifestError::TooLarge(u64::from(len)))?;
        let needed = u64::from(len).saturating_add(MANIFEST_LEN_PREFIX as u64);
        if needed > capacity {
            return Err(ManifestError::ExceedsBody { needed, capacity });
        }
        Ok(m)
    }

    /// Decode and validate the manifest bytes (`M` bytes after the length prefix); the
    /// encoding must be canonical.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let (m, rest): (Manifest, &[u8]) = postcard::take_from_bytes(bytes).map_err(ManifestError::Malformed)?;
        if !rest.is_empty() {
            return Err(ManifestError::Trailing(rest.len()));
        }
        m.validate()?;
        if postcard::to_allocvec(&m).ok().as_deref() != Some(bytes) {
            return Err(ManifestError::NonCanonical);
        }
        Ok(m)
    }

    /// Where each file sits in a v2 stream of `layout` whose manifest is `manifest_len`
    /// bytes: files follow the length prefix and the manifest back to back, and must fit
    /// the body's `stream_len`.
    pub fn spans(&self, layout: &Layout, manifest_len: usize) -> Result<Vec<FileSpan>, ManifestError> {
        let cs = u64::from(layout.chunk_size);
        let mut at = (manifest_len as u64).saturating_add(MANIFEST_LEN_PREFIX as u64);
        let mut spans = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let end = at.checked_add(f.size).ok_or(ManifestError::SizeOverflow)?;
            if end > layout.stream_len {
                return Err(ManifestError::ExceedsBody {
                    needed: self.needed(manifest_len).unwrap_or(u64::MAX),
                    capacity: layout.stream_len,
                });
            }
            // Offsets are below stream_len < 2^32 · chunk_size: the chunk indices fit a u32.
            let first = u32::try_from(at.checked_div(cs).unwrap_or(0)).map_err(|_| ManifestError::SizeOverflow)?;
            let chunks = if f.size == 0 {
                0
            } else {
                let last =
                    u32::try_from(end.saturating_sub(1).checked_div(cs).unwrap_or(0)).map_err(|_| ManifestError::SizeOverflow)?;
                last.saturating_sub(first).saturating_add(1)
            };
            spans.push(FileSpan { offset: at, first_chunk: first, chunks, size: f.size });
            at = end;
        }
        Ok(spans)
    }

    /// Stream bytes the length prefix, the manifest and the files take (before padding).
    pub fn needed(&self, manifest_len: usize) -> Option<u64> {
        self.files.iter().try_fold((manifest_len as u64).checked_add(MANIFEST_LEN_PREFIX as u64)?, |a, f| a.checked_add(f.size))
    }
}

/// How far a v2 sealer pads the chunk count beyond the chunks the content needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Padding {
    /// To whole chunks only: the clear header reveals the content's size rounded up to one
    /// chunk (1 MiB by default). Costs less than one chunk.
    #[default]
    Chunk,
    /// The chunk count rounded up by Padmé (Nikitin et al., "Reducing Metadata Leakage from
    /// Encrypted Files and Communication with PURBs", PETS 2019): a count `n` keeps only
    /// its top `floor(log2 floor(log2 n)) + 1` bits, so the header reveals O(log log n)
    /// bits of the size. Costs less than 12.5 % more chunks than [`Padding::Chunk`] (less
    /// than `2^-s` of the count, `s` the bits kept: < 6.25 % from 256 chunks).
    Padme,
}

impl Padding {
    /// The number of chunks to write for content that needs `needed` chunks.
    pub fn chunk_count(self, needed: u64) -> Option<u32> {
        let n = match self {
            Padding::Chunk => needed,
            Padding::Padme => padme(needed)?,
        };
        u32::try_from(n).ok()
    }
}

/// Padmé: round `n` up so that only its top `floor(log2 floor(log2 n)) + 1` bits may be
/// non-zero. `None` on overflow.
pub fn padme(n: u64) -> Option<u64> {
    if n < 2 {
        return Some(n);
    }
    let e = n.ilog2(); // ≥ 1
    let s = e.ilog2().saturating_add(1); // ≤ e, so the shift below is by 0..=62
    let mask = (1u64 << e.saturating_sub(s)).saturating_sub(1);
    n.checked_add(mask).map(|x| x & !mask)
}

impl HeaderV1 {
    fn validate(&self) -> Result<Layout, HeaderError> {
        if self.format_version != FORMAT_V1 {
            return Err(HeaderError::VersionMismatch { outer: FORMAT_V1, inner: self.format_version });
        }
        check_chunk_size(self.chunk_size)?;
        Layout::v1(self)
    }

    /// The v1 file list as a [`Manifest`].
    pub fn manifest(&self) -> Manifest {
        Manifest { model_name: self.model_name.clone(), files: self.files.clone() }
    }
}

impl HeaderV2 {
    fn validate(&self) -> Result<Layout, HeaderError> {
        if self.format_version != FORMAT_V2 {
            return Err(HeaderError::VersionMismatch { outer: FORMAT_V2, inner: self.format_version });
        }
        check_chunk_size(self.chunk_size)?;
        Layout::v2(self)
    }
}

fn check_chunk_size(cs: u32) -> Result<(), HeaderError> {
    if (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) { Ok(()) } else { Err(HeaderError::ChunkSize(cs)) }
}

impl BundleHeader {
    /// The format version (preamble and header agree).
    pub fn format_version(&self) -> u16 {
        match self {
            BundleHeader::V1(h) => h.format_version,
            BundleHeader::V2(h) => h.format_version,
        }
    }

    /// Plaintext bytes per chunk.
    pub fn chunk_size(&self) -> u32 {
        match self {
            BundleHeader::V1(h) => h.chunk_size,
            BundleHeader::V2(h) => h.chunk_size,
        }
    }

    /// The random nonce prefix.
    pub fn nonce_prefix(&self) -> [u8; NONCE_PREFIX_LEN] {
        match self {
            BundleHeader::V1(h) => h.nonce_prefix,
            BundleHeader::V2(h) => h.nonce_prefix,
        }
    }

    /// The model name and file list, if the header carries them in the clear (v1 only).
    pub fn clear_manifest(&self) -> Option<Manifest> {
        match self {
            BundleHeader::V1(h) => Some(h.manifest()),
            BundleHeader::V2(_) => None,
        }
    }

    /// Check every field against the format's limits; returns the body layout.
    pub fn validate(&self) -> Result<Layout, HeaderError> {
        match self {
            BundleHeader::V1(h) => h.validate(),
            BundleHeader::V2(h) => h.validate(),
        }
    }

    /// Encode preamble and header after validating; the bytes a [`SealedHeader`] keeps as `raw`.
    pub fn to_sealed(&self) -> Result<SealedHeader, HeaderError> {
        let layout = self.validate()?;
        let body = match self {
            BundleHeader::V1(h) => postcard::to_allocvec(h),
            BundleHeader::V2(h) => postcard::to_allocvec(h),
        }
        .map_err(HeaderError::Malformed)?;
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&n| n as usize <= MAX_HEADER_LEN)
            .ok_or(HeaderError::TooLarge { len: body.len() as u64 })?;
        let mut raw = Vec::with_capacity(PREAMBLE_LEN.saturating_add(body.len()));
        raw.extend_from_slice(&MAGIC);
        raw.extend_from_slice(&self.format_version().to_le_bytes());
        raw.extend_from_slice(&len.to_le_bytes());
        raw.extend_from_slice(&body);
        Ok(SealedHeader { header: self.clone(), raw, layout })
    }
}

/// Parse the preamble: returns the version and the total header length (preamble included).
pub(crate) fn parse_preamble(p: &[u8]) -> Result<(u16, usize), HeaderError> {
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
    if version != FORMAT_V1 && version != FORMAT_V2 {
        return Err(HeaderError::UnsupportedVersion { found: version });
    }
    let Some((len, _)) = rest.split_first_chunk::<4>() else {
        return Err(HeaderError::Truncated { needed: PREAMBLE_LEN, got: p.len() });
    };
    let len = u32::from_le_bytes(*len);
    let total = usize::try_from(len)
        .ok()
        .filter(|&n| n <= MAX_HEADER_LEN)
        .and_then(|n| PREAMBLE_LEN.checked_add(n))
        .ok_or(HeaderError::TooLarge { len: u64::from(len) })?;
    Ok((version, total))
}

/// Decode one version's postcard header: no bytes left over, canonical encoding.
fn decode_canonical<T: Serialize + serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, HeaderError> {
    let (h, rest): (T, &[u8]) = postcard::take_from_bytes(body).map_err(HeaderError::Malformed)?;
    if !rest.is_empty() {
        return Err(HeaderError::Trailing(rest.len()));
    }
    if postcard::to_allocvec(&h).ok().as_deref() != Some(body) {
        return Err(HeaderError::NonCanonical);
    }
    Ok(h)
}

/// Parse and validate the header at the start of `bytes`; anything after it (the body) is
/// ignored, so the first [`SealedHeader::raw`]`.len()` bytes of a bundle are enough. Needs
/// no key, for either version.
pub fn read_header(bytes: &[u8]) -> Result<SealedHeader, HeaderError> {
    let (version, total) = parse_preamble(bytes)?;
    let Some(raw) = bytes.get(..total) else {
        return Err(HeaderError::Truncated { needed: total, got: bytes.len() });
    };
    let body = raw.get(PREAMBLE_LEN..).unwrap_or_default();
    let header =
        if version == FORMAT_V1 { BundleHeader::V1(decode_canonical(body)?) } else { BundleHeader::V2(decode_canonical(body)?) };
    let layout = header.validate()?;
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

    /// One line for logs, from the clear header only: v1 names the model and counts the
    /// files; v2 can say only how large the padded body is.
    pub fn describe(&self) -> String {
        match &self.header {
            BundleHeader::V1(h) => format!("format v1, model {:?}, {} files in the clear", h.model_name, h.files.len()),
            BundleHeader::V2(h) => {
                format!("format v2, {} chunks of {} bytes, model and files sealed", h.chunk_count, h.chunk_size)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> HeaderV1 {
        HeaderV1 {
            format_version: FORMAT_V1,
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

    fn v2() -> HeaderV2 {
        HeaderV2 { format_version: FORMAT_V2, chunk_size: MIN_CHUNK_SIZE, nonce_prefix: [9; 7], chunk_count: 3 }
    }

    fn manifest() -> Manifest {
        v1().manifest()
    }

    /// Preamble + postcard body, bypassing the encoder's checks.
    fn smuggle<T: Serialize>(version: u16, h: &T) -> Vec<u8> {
        let body = postcard::to_allocvec(h).expect("encodes");
        let mut raw = MAGIC.to_vec();
        raw.extend_from_slice(&version.to_le_bytes());
        raw.extend_from_slice(&(body.len() as u32).to_le_bytes());
        raw.extend_from_slice(&body);
        raw
    }

    #[test]
    fn v1_round_trip_and_layout() {
        let s = BundleHeader::V1(v1()).to_sealed().expect("valid");
        let mut bytes = s.raw.clone();
        bytes.extend_from_slice(b"body is ignored");
        let p = read_header(&bytes).expect("parses");
        assert_eq!(p, s);
        let spans: Vec<(u64, u32, u32)> = p.layout.files.iter().map(|f| (f.offset, f.first_chunk, f.chunks)).collect();
        assert_eq!(spans, vec![(0, 0, 1), (10, 1, 0), (10, 1, 3)]);
        assert_eq!(p.layout.chunk_count, 4);
        assert_eq!(p.layout.stream_len, 10 + 8193);
        assert_eq!(p.layout.body_len, 10 + 8193 + 4 * 16);
        assert_eq!(p.layout.chunk_at(0), 0);
        assert_eq!(p.layout.chunk_at(25), 0);
        assert_eq!(p.layout.chunk_at(26), 1);
        assert_eq!(p.layout.chunk_at(26 + 4112), 2);
        assert_eq!(p.layout.chunk_at(26 + 2 * 4112), 3);
        assert_eq!(p.layout.chunk_at(p.layout.body_len), 4);
        assert_eq!((p.layout.chunk_len(0), p.layout.chunk_len(1), p.layout.chunk_len(3)), (10, 4096, 1));
        assert!(p.layout.is_last(3) && !p.layout.is_last(2));
        assert_eq!(p.header.clear_manifest(), Some(manifest()));
    }

    #[test]
    fn v2_round_trip_layout_and_no_contents() {
        let s = BundleHeader::V2(v2()).to_sealed().expect("valid");
        let p = read_header(&s.raw).expect("parses");
        assert_eq!(p, s);
        assert_eq!(p.layout.stream_len, 3 * 4096);
        assert_eq!(p.layout.body_len, 3 * 4112);
        assert!(p.layout.files.is_empty());
        assert_eq!((p.layout.chunk_at(4111), p.layout.chunk_at(4112), p.layout.chunk_at(u64::MAX)), (0, 1, 3));
        assert_eq!(p.layout.chunk_len(2), 4096);
        assert_eq!(p.header.clear_manifest(), None);
        // Preamble, then varints for version (1 byte), chunk size 4096 (2), the prefix (7)
        // and chunk count 3 (1): nothing else.
        assert_eq!(p.raw.len(), PREAMBLE_LEN + 11);
    }

    #[test]
    fn rejects_each_invalid_v1_field() {
        type Edit = fn(&mut HeaderV1);
        let cases: Vec<(Edit, HeaderError)> = vec![
            (|h| h.chunk_size = 100, HeaderError::ChunkSize(100)),
            (|h| h.model_name.clear(), ManifestError::ModelName("empty").into()),
            (|h| h.model_name = "a\nb".into(), ManifestError::ModelName("contains a control character").into()),
            (|h| h.files.iter_mut().for_each(|f| f.size = 0), ManifestError::NoData.into()),
            (
                |h| h.files[0].name = "../x".into(),
                ManifestError::FileName { name: "../x".into(), reason: "contains a path separator" }.into(),
            ),
            (
                |h| h.files[0].name = "..".into(),
                ManifestError::FileName { name: "..".into(), reason: "a directory reference" }.into(),
            ),
            (|h| h.files[1].name = "config.json".into(), ManifestError::DuplicateFile("config.json".into()).into()),
            (|h| h.files[0].size = u64::MAX, ManifestError::SizeOverflow.into()),
            (|h| h.format_version = 2, HeaderError::VersionMismatch { outer: 1, inner: 2 }),
        ];
        for (edit, want) in cases {
            let mut h = v1();
            edit(&mut h);
            assert_eq!(BundleHeader::V1(h.clone()).to_sealed().err(), Some(want.clone()));
            // The same header smuggled past the encoder is rejected by the parser too.
            assert_eq!(read_header(&smuggle(FORMAT_V1, &h)).err(), Some(want));
        }
    }

    #[test]
    fn rejects_each_invalid_v2_field() {
        type Edit = fn(&mut HeaderV2);
        let cases: Vec<(Edit, HeaderError)> = vec![
            (|h| h.chunk_size = MAX_CHUNK_SIZE + 1, HeaderError::ChunkSize(MAX_CHUNK_SIZE + 1)),
            (|h| h.chunk_count = 0, HeaderError::NoChunks),
            (|h| h.format_version = 1, HeaderError::VersionMismatch { outer: 2, inner: 1 }),
        ];
        for (edit, want) in cases {
            let mut h = v2();
            edit(&mut h);
            assert_eq!(BundleHeader::V2(h.clone()).to_sealed().err(), Some(want.clone()));
            assert_eq!(read_header(&smuggle(FORMAT_V2, &h)).err(), Some(want));
        }
        // A v1 header under a v2 preamble (and the reverse) does not parse as the other.
        assert!(read_header(&smuggle(FORMAT_V2, &v1())).is_err());
        assert!(read_header(&smuggle(FORMAT_V1, &v2())).is_err());
    }

    #[test]
    fn rejects_preamble_problems() {
        for raw in
            [BundleHeader::V1(v1()).to_sealed().expect("valid").raw, BundleHeader::V2(v2()).to_sealed().expect("valid").raw]
        {
            assert_eq!(read_header(&raw[..5]).err(), Some(HeaderError::Truncated { needed: 14, got: 5 }));
            assert_eq!(
                read_header(&raw[..raw.len() - 1]).err(),
                Some(HeaderError::Truncated { needed: raw.len(), got: raw.len() - 1 })
            );
            let mut b = raw.clone();
            b[0] ^= 1;
            assert_eq!(read_header(&b).err(), Some(HeaderError::BadMagic));
            for v in [0u16, 3, 7, u16::MAX] {
                let mut b = raw.clone();
                b[8..10].copy_from_slice(&v.to_le_bytes());
                assert_eq!(read_header(&b).err(), Some(HeaderError::UnsupportedVersion { found: v }));
            }
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
        assert_eq!(
            HeaderError::UnsupportedVersion { found: 3 }.to_string(),
            "sealed format version 3 is not supported (this build reads versions 1 and 2)"
        );
    }

    #[test]
    fn non_canonical_encoding_is_rejected() {
        for raw in
            [BundleHeader::V1(v1()).to_sealed().expect("valid").raw, BundleHeader::V2(v2()).to_sealed().expect("valid").raw]
        {
            // format_version is the varint 0x01 or 0x02; 0x8v 0x00 is an overlong encoding.
            let v = raw[PREAMBLE_LEN];
            assert!(v == 1 || v == 2);
            let mut b = raw[..PREAMBLE_LEN].to_vec();
            b.extend_from_slice(&[0x80 | v, 0x00]);
            b.extend_from_slice(&raw[PREAMBLE_LEN + 1..]);
            let len = (b.len() - PREAMBLE_LEN) as u32;
            b[10..14].copy_from_slice(&len.to_le_bytes());
            assert!(matches!(read_header(&b), Err(HeaderError::NonCanonical | HeaderError::Malformed(_))));
        }
    }

    #[test]
    fn manifest_encoding_and_spans() {
        let m = manifest();
        let enc = m.encode().expect("valid");
        let len = Manifest::declared_len(&enc, 1 << 20).expect("fits");
        assert_eq!(len + MANIFEST_LEN_PREFIX, enc.len());
        assert_eq!(Manifest::decode(&enc[MANIFEST_LEN_PREFIX..]).expect("decodes"), m);
        // Trailing byte inside the declared length, overlong varint, length above the limit
        // or above the body.
        let mut t = enc[MANIFEST_LEN_PREFIX..].to_vec();
        t.push(0);
        assert_eq!(Manifest::decode(&t).err(), Some(ManifestError::Trailing(1)));
        let mut o = vec![0x84, 0x00];
        o.extend_from_slice(&enc[MANIFEST_LEN_PREFIX + 1..]);
        assert!(matches!(Manifest::decode(&o), Err(ManifestError::NonCanonical | ManifestError::Malformed(_))));
        assert_eq!(
            Manifest::declared_len(&u32::MAX.to_le_bytes(), u64::MAX).err(),
            Some(ManifestError::TooLarge(u64::from(u32::MAX)))
        );
        assert_eq!(
            Manifest::declared_len(&100u32.to_le_bytes(), 50).err(),
            Some(ManifestError::ExceedsBody { needed: 104, capacity: 50 })
        );
        let bad = Manifest { model_name: String::new(), files: m.files.clone() };
        assert_eq!(bad.encode().err(), Some(ManifestError::ModelName("empty")));
        assert_eq!(
            Manifest::decode(&postcard::to_allocvec(&bad).expect("encodes")).err(),
            Some(ManifestError::ModelName("empty"))
        );

        // Three chunks of 4096: the files follow the manifest back to back, spanning chunks.
        let layout = Layout::v2(&v2()).expect("valid");
        let spans = m.spans(&layout, 4000).expect("fits");
        let got: Vec<(u64, u32, u32)> = spans.iter().map(|s| (s.offset, s.first_chunk, s.chunks)).collect();
        assert_eq!(got, vec![(4004, 0, 1), (4014, 0, 0), (4014, 0, 3)]);
        assert_eq!(m.needed(4000), Some(4014 + 8193));
        assert_eq!(m.spans(&layout, 4100).err(), Some(ManifestError::ExceedsBody { needed: 4104 + 8203, capacity: 3 * 4096 }));
    }

    #[test]
    fn padme_keeps_few_significant_bits() {
        let cases = [(0, 0), (1, 1), (2, 2), (3, 3), (5, 5), (9, 10), (17, 18), (1000, 1024), (1025, 1088), (8193, 8704)];
        for (n, want) in cases {
            assert_eq!(padme(n), Some(want), "padme({n})");
        }
        for n in 1..5000u64 {
            let p = padme(n).expect("fits");
            assert!(p >= n && (p - n) * 100 <= n * 12 + 100, "padme({n}) = {p}");
            assert_eq!(padme(p), Some(p), "padme is idempotent at {n}");
        }
        assert_eq!(Padding::Chunk.chunk_count(1000), Some(1000));
        assert_eq!(Padding::Padme.chunk_count(1000), Some(1024));
        assert_eq!(Padding::Padme.chunk_count(u64::from(u32::MAX)), None);
        assert_eq!(padme(u64::MAX), None);
    }

    #[test]
    fn every_error_formats() {
        let errs: Vec<HeaderError> = vec![
            HeaderError::Truncated { needed: 14, got: 3 },
            HeaderError::BadMagic,
            HeaderError::UnsupportedVersion { found: 3 },
            HeaderError::TooLarge { len: 9 },
            HeaderError::Malformed(postcard::Error::DeserializeUnexpectedEnd),
            HeaderError::Trailing(2),
            HeaderError::NonCanonical,
            HeaderError::VersionMismatch { outer: 1, inner: 2 },
            HeaderError::ChunkSize(1),
            HeaderError::NoChunks,
            ManifestError::ModelName("empty").into(),
            ManifestError::FileName { name: "a/b".into(), reason: "contains a path separator" }.into(),
            ManifestError::DuplicateFile("a".into()).into(),
            ManifestError::TooManyFiles(5000).into(),
            ManifestError::NoData.into(),
            ManifestError::SizeOverflow.into(),
            ManifestError::TooLarge(1 << 30).into(),
            ManifestError::Malformed(postcard::Error::DeserializeUnexpectedEnd).into(),
            ManifestError::Trailing(1).into(),
            ManifestError::NonCanonical.into(),
            ManifestError::ExceedsBody { needed: 2, capacity: 1 }.into(),
            ManifestError::Padding { chunk: 3 }.into(),
        ];
        for e in errs {
            let s = e.to_string();
            assert!(!s.is_empty() && s.chars().next().is_some_and(|c| !c.is_uppercase()), "{s}");
        }
    }
}
