//! Runtime side: decrypt a sealed bundle straight into per-file memory buffers, in parallel
//! across cores, and check each file's SHA-256 against the manifest.
//!
//! Each file gets one zeroize-on-drop buffer of its exact size. A chunk whose plaintext lies
//! inside one file (every v1 chunk, most v2 chunks) is copied (or read) into its place in that
//! buffer and decrypted there, so that plaintext exists once and is never copied. A v2 chunk
//! that spans a file boundary or holds padding is decrypted in a zeroizing scratch buffer of
//! one chunk and its pieces copied out (at most one such chunk per file, plus the padding).
//! Workers take chunks in body order; the first failure stops them and the lowest failing
//! chunk index is reported. File hashes are computed by hasher threads that consume
//! decrypted pieces in order while decryption goes on. On any failure every buffer is
//! dropped, and so zeroized: nothing half-decrypted is returned.
//!
//! v1 names the files in the clear header, so the buffers are allocated up front. v2 keeps
//! them in the encrypted manifest at the start of the stream: its chunks are decrypted first,
//! on the calling thread, then the buffers are allocated and the rest runs as for v1.
//!
//! Trust: the bundle bytes are untrusted; the key came from an attested key release. The
//! header is parsed and its sizes checked against the input before any allocation that
//! depends on them (slices, files), and against [`UnsealOptions::max_plaintext`] (all
//! paths). For v2 that limit can only be applied to the padded stream length before the
//! manifest is read.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::cipher::ChunkCipher;
use super::format::{
    BundleHeader, FileSpan, HeaderError, Layout, MANIFEST_LEN_PREFIX, MAX_HEADER_LEN, Manifest, ManifestError, PREAMBLE_LEN,
    SealedHeader, TAG_LEN, parse_preamble, read_header,
};
use super::key::DataKey;
use crate::eventlog::Digest384;

/// Options for [`unseal_with`], [`unseal_reader`] and [`unseal_file`].
#[derive(Clone, Debug)]
pub struct UnsealOptions {
    /// Worker threads; `None` means one per available core. With one thread everything runs
    /// on the calling thread.
    pub threads: Option<NonZeroUsize>,
    /// Check each file's SHA-256 against the manifest (on by default). The AEAD already
    /// authenticates every byte under the owner's key; this check makes the manifest's file
    /// hashes a statement about what was actually loaded. It costs one sequential SHA-256
    /// pass per file, overlapped with decryption.
    pub verify_sha256: bool,
    /// Refuse bundles whose header declares more plaintext than this (the runtime sets its
    /// memory budget). Compared with [`Layout::stream_len`]: for v2 the padded stream, since
    /// the files' exact total is in the encrypted manifest.
    pub max_plaintext: u64,
    /// Zero bytes tolerated after the last chunk by [`unseal_file`]. A bundle attached as a
    /// disk is read from a block device whose size is rounded up to whole sectors; the
    /// runtime allows up to one 4 KiB block of zero padding. Any non-zero byte, or more
    /// padding than this, is still [`UnsealError::Trailing`]. Default 0 (exact length).
    pub allow_zero_padding: u64,
}

impl Default for UnsealOptions {
    fn default() -> Self {
        UnsealOptions { threads: None, verify_sha256: true, max_plaintext: u64::MAX, allow_zero_padding: 0 }
    }
}

/// Why a bundle could not be unsealed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnsealError {
    /// The header is malformed or invalid.
    #[error("sealed header: {0}")]
    Header(#[from] HeaderError),
    /// The v2 manifest, decrypted and authenticated, is invalid (only a key holder can
    /// write one: a sealer bug or a lying sealer).
    #[error("sealed manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The body ends early.
    #[error("bundle truncated: body is {got} of {expected} bytes, incomplete from chunk {chunk}")]
    Truncated {
        /// Body length the header implies.
        expected: u64,
        /// Body bytes present.
        got: u64,
        /// First chunk that is not complete.
        chunk: u32,
    },
    /// Bytes follow the last chunk.
    #[error("bundle has {extra} bytes after its last chunk")]
    Trailing {
        /// How many.
        extra: u64,
    },
    /// A chunk failed authentication: wrong key, edited header, altered, moved or foreign chunk.
    #[error("decryption failed at chunk {chunk}")]
    Decrypt {
        /// Index of the lowest failing chunk.
        chunk: u32,
    },
    /// A file decrypted but its SHA-256 differs from the manifest's (a sealer bug or a lying
    /// sealer: the AEAD proved the key holder produced it).
    #[error("{file}: plaintext does not match the SHA-256 in the manifest")]
    HashMismatch {
        /// The file's name.
        file: String,
    },
    /// More plaintext than [`UnsealOptions::max_plaintext`].
    #[error("bundle declares {bytes} plaintext bytes, limit {limit}")]
    TooLarge {
        /// Declared plaintext bytes ([`Layout::stream_len`]).
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Reading the bundle failed.
    #[error("reading the bundle: {0}")]
    Io(io::Error),
    /// The staged unseal's sink (the device the plaintext is copied to) failed.
    #[error("copying the plaintext to the model's memory: {0}")]
    Sink(String),
    /// A worker thread panicked or could not be started.
    #[error("an unseal worker thread failed")]
    Worker,
}

/// One decrypted file.
pub struct UnsealedFile {
    /// Its name in the bundle.
    pub name: String,
    /// The plaintext, zeroized when dropped.
    pub data: Zeroizing<Vec<u8>>,
}

/// Everything a bundle held, in manifest order (the same for v1 and v2).
pub struct UnsealedFiles {
    /// The model name (v1: from the clear header; v2: from the encrypted manifest).
    pub model_name: String,
    /// SHA-384 of the header (what the runtime measured).
    pub header_digest: Digest384,
    /// The files.
    pub files: Vec<UnsealedFile>,
}

impl UnsealedFiles {
    /// The plaintext of the file called `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.files.iter().find(|f| f.name == name).map(|f| f.data.as_slice())
    }

    /// Total plaintext bytes.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.data.len() as u64).sum()
    }
}

impl std::fmt::Debug for UnsealedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(&str, usize)> = self.files.iter().map(|x| (x.name.as_str(), x.data.len())).collect();
        f.debug_struct("UnsealedFiles").field("model_name", &self.model_name).field("files (name, bytes)", &names).finish()
    }
}

impl std::fmt::Debug for UnsealedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UnsealedFile({:?}, {} bytes)", self.name, self.data.len())
    }
}

/// Unseal an in-memory bundle with default options (all cores, hashes checked).
pub fn unseal(bundle: &[u8], key: &DataKey) -> Result<UnsealedFiles, UnsealError> {
    unseal_with(bundle, key, &UnsealOptions::default())
}

/// Unseal an in-memory bundle.
pub fn unseal_with(bundle: &[u8], key: &DataKey, opts: &UnsealOptions) -> Result<UnsealedFiles, UnsealError> {
    let (header, body) = slice_body(bundle)?;
    let got = body.len() as u64;
    unseal_body(key, &header, opts, Body::Slice { rest: body, got })
}

/// An in-memory bundle's header and body, the body's length checked against the header.
pub(super) fn slice_body(bundle: &[u8]) -> Result<(SealedHeader, &[u8]), UnsealError> {
    let header = read_header(bundle)?;
    let layout = &header.layout;
    let body = bundle.get(header.len()..).unwrap_or_default();
    let got = body.len() as u64;
    if got < layout.body_len {
        return Err(UnsealError::Truncated { expected: layout.body_len, got, chunk: layout.chunk_at(got) });
    }
    if let Some(extra) = got.checked_sub(layout.body_len).filter(|&extra| extra > 0) {
        return Err(UnsealError::Trailing { extra });
    }
    Ok((header, body))
}

/// Unseal a bundle from a reader (a file, a disk): ciphertext is read directly into the
/// destination buffers and decrypted there while the next chunks are read.
pub fn unseal_reader<R: Read>(mut reader: R, key: &DataKey, opts: &UnsealOptions) -> Result<UnsealedFiles, UnsealError> {
    let header = read_header_from(&mut reader)?;
    let files = unseal_body(key, &header, opts, Body::Reader { r: &mut reader, got: 0 })?;
    let extra = io::copy(&mut reader, &mut io::sink()).map_err(UnsealError::Io)?;
    if extra > 0 {
        return Err(UnsealError::Trailing { extra });
    }
    Ok(files)
}

/// Unseal a bundle file: the workers read their own chunks with positioned reads, so copying
/// from the page cache and first-touch page faults spread over all cores. The file's length
/// is checked against the header before anything is allocated.
pub fn unseal_file(file: &File, key: &DataKey, opts: &UnsealOptions) -> Result<UnsealedFiles, UnsealError> {
    let header = file_header(file, opts)?;
    unseal_body(key, &header, opts, Body::File { file, off: header.len() as u64 })
}

/// A bundle file's header, the file's length checked against it (up to
/// [`UnsealOptions::allow_zero_padding`] zero bytes may follow the body).
pub(super) fn file_header(file: &File, opts: &UnsealOptions) -> Result<SealedHeader, UnsealError> {
    let header = read_header_from(&mut AtReader { file, pos: 0 })?;
    let layout = &header.layout;
    // Seek rather than stat: a block device's metadata length is 0.
    let len = { (&*file).seek(io::SeekFrom::End(0)).map_err(UnsealError::Io)? };
    let got = len.saturating_sub(header.len() as u64);
    if got < layout.body_len {
        return Err(UnsealError::Truncated { expected: layout.body_len, got, chunk: layout.chunk_at(got) });
    }
    if let Some(extra) = got.checked_sub(layout.body_len).filter(|&extra| extra > 0) {
        // `extra <= got <= len`.
        let at = len.saturating_sub(extra);
        if extra > opts.allow_zero_padding || !is_zero_padding(file, at, extra)? {
            return Err(UnsealError::Trailing { extra });
        }
    }
    Ok(header)
}

/// Whether `len` bytes of `file` at `at` are all zero.
fn is_zero_padding(file: &File, at: u64, len: u64) -> Result<bool, UnsealError> {
    let mut buf = vec![0u8; usize::try_from(len).map_err(|_| UnsealError::Trailing { extra: len })?];
    file.read_exact_at(&mut buf, at).map_err(UnsealError::Io)?;
    Ok(buf.iter().all(|&b| b == 0))
}

/// `Read` over a file by positioned reads (leaves the file's cursor alone).
struct AtReader<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for AtReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        // A file offset: it fits a u64 (a saturated one only makes the next read fail).
        self.pos = self.pos.saturating_add(n as u64);
        Ok(n)
    }
}

/// Read and parse only the header from a reader, leaving it positioned at the body. Needs no
/// key, for either version: what the runtime measures at boot.
pub fn read_header_from<R: Read>(reader: &mut R) -> Result<SealedHeader, UnsealError> {
    let mut pre = [0u8; PREAMBLE_LEN];
    let n = read_full(reader, &mut pre).map_err(UnsealError::Io)?;
    let (_, total) = parse_preamble(pre.get(..n).unwrap_or_default())?;
    debug_assert!(total <= PREAMBLE_LEN + MAX_HEADER_LEN);
    let mut raw = vec![0u8; total];
    let (head, tail) =
        raw.split_at_mut_checked(PREAMBLE_LEN).ok_or(HeaderError::Truncated { needed: PREAMBLE_LEN, got: total })?;
    head.copy_from_slice(&pre);
    let m = read_full(reader, tail).map_err(UnsealError::Io)?;
    if m < tail.len() {
        return Err(HeaderError::Truncated { needed: total, got: PREAMBLE_LEN.saturating_add(m) }.into());
    }
    Ok(read_header(&raw)?)
}

pub(super) fn check_limit(layout: &Layout, opts: &UnsealOptions) -> Result<(), UnsealError> {
    if layout.stream_len > opts.max_plaintext {
        return Err(UnsealError::TooLarge { bytes: layout.stream_len, limit: opts.max_plaintext });
    }
    if usize::try_from(layout.stream_len).is_err() {
        return Err(UnsealError::TooLarge { bytes: layout.stream_len, limit: usize::MAX as u64 });
    }
    Ok(())
}

pub(super) fn threads(opts: &UnsealOptions) -> usize {
    opts.threads.or_else(|| std::thread::available_parallelism().ok()).map_or(1, NonZeroUsize::get)
}

/// One zeroed buffer per file (sizes already checked against the input or the limit).
fn allocate(spans: &[FileSpan]) -> Vec<Zeroizing<Vec<u8>>> {
    // `vec![0; n]` maps zero pages lazily: the workers touch them in parallel.
    spans.iter().map(|f| Zeroizing::new(vec![0u8; usize::try_from(f.size).unwrap_or(0)])).collect()
}

/// Where the body's chunks come from; hands out each chunk's ciphertext source in order.
pub(super) enum Body<'b> {
    /// In memory, length already checked: the part not yet handed out.
    Slice { rest: &'b [u8], got: u64 },
    /// A stream: each chunk is read when it is handed out; `got` counts body bytes read.
    Reader { r: &'b mut dyn Read, got: u64 },
    /// A file, length already checked: the offset of the next chunk.
    File { file: &'b File, off: u64 },
}

impl<'b> Body<'b> {
    /// The next chunk (`index`, `dst.len()` plaintext bytes): where its ciphertext is and its
    /// tag. A reader's ciphertext is read into `dst` here.
    fn next(&mut self, index: u32, layout: &Layout, dst: &mut [u8]) -> Result<(Src<'b>, [u8; TAG_LEN]), UnsealError> {
        let truncated = |got| UnsealError::Truncated { expected: layout.body_len, got, chunk: index };
        match self {
            Body::Slice { rest, got } => {
                // The body length was checked against the layout: these cannot fail.
                let (ct, after) = rest.split_at_checked(dst.len()).ok_or_else(|| truncated(*got))?;
                let (tag, after) = after.split_first_chunk::<TAG_LEN>().ok_or_else(|| truncated(*got))?;
                *rest = after;
                Ok((Src::Slice(ct), *tag))
            }
            Body::Reader { r, got } => {
                let mut tag = [0u8; TAG_LEN];
                for part in [&mut dst[..], &mut tag[..]] {
                    let n = read_full(*r, part).map_err(UnsealError::Io)?;
                    // Bounded by the body length the layout allows, which fits a u64.
                    *got = got.saturating_add(n as u64);
                    if n < part.len() {
                        return Err(truncated(*got));
                    }
                }
                Ok((Src::Filled, tag))
            }
            Body::File { file, off } => {
                let at = *off;
                // The file length was checked against the layout, so the offsets fit a u64; a
                // saturated offset would only make the positioned read fail.
                *off = off.saturating_add(dst.len() as u64).saturating_add(TAG_LEN as u64);
                Ok((Src::File(file, at), [0; TAG_LEN]))
            }
        }
    }
}

/// The next stream bytes as slots in the file buffers, files in stream order.
struct Carver<'a> {
    rest: std::iter::Enumerate<std::slice::IterMut<'a, Zeroizing<Vec<u8>>>>,
    cur: Option<(usize, &'a mut [u8])>,
}

impl<'a> Carver<'a> {
    fn new(bufs: &'a mut [Zeroizing<Vec<u8>>]) -> Self {
        Carver { rest: bufs.iter_mut().enumerate(), cur: None }
    }

    /// Up to `n` stream bytes as (file, slot) pieces; fewer once the files are used up (the
    /// rest of the stream is padding).
    fn take(&mut self, mut n: usize) -> Vec<(usize, &'a mut [u8])> {
        let mut out = Vec::new();
        while n > 0 {
            let (f, slot) = match self.cur.take() {
                Some(c) => c,
                None => match self.rest.next() {
                    Some((f, b)) => (f, b.as_mut_slice()),
                    None => break,
                },
            };
            let k = n.min(slot.len());
            let (head, tail) = slot.split_at_mut(k);
            if !head.is_empty() {
                out.push((f, head));
            }
            if !tail.is_empty() {
                self.cur = Some((f, tail));
            }
            n = n.saturating_sub(k);
        }
        out
    }
}

/// What the stream holds and where the file buffers are, once known (v1: from the header;
/// v2: after the manifest chunks were decrypted).
struct Plan<'a> {
    manifest: Manifest,
    spans: Vec<FileSpan>,
    /// Pieces already decrypted (v2: file bytes in the manifest's last chunk), for the hashers.
    ready: Vec<Piece<'a>>,
}

/// A decrypted piece of a file: (chunk index, file index, bytes in the file's buffer).
type Piece<'a> = (u32, usize, &'a [u8]);

fn unseal_body(
    key: &DataKey,
    header: &SealedHeader,
    opts: &UnsealOptions,
    mut body: Body<'_>,
) -> Result<UnsealedFiles, UnsealError> {
    let layout = &header.layout;
    check_limit(layout, opts)?;
    let cipher = ChunkCipher::new(key, header.header.nonce_prefix(), header.digest());
    let cs = layout.chunk_size as usize;
    match &header.header {
        BundleHeader::V1(h) => {
            let spans = layout.files.clone();
            let mut bufs = allocate(&spans);
            let plan = Plan { manifest: h.manifest(), spans, ready: Vec::new() };
            let slots = bufs
                .iter_mut()
                .enumerate()
                .flat_map(move |(f, b)| b.chunks_mut(cs).map(move |d| (f, d)))
                .zip(0u32..)
                .map(|((f, d), i)| (i, Dst::InPlace(f, d)));
            let jobs = jobs(slots, &mut body, layout);
            run(&cipher, &plan, threads(opts), opts.verify_sha256, jobs)?;
            Ok(finish(header, plan.manifest, bufs))
        }
        BundleHeader::V2(_) => {
            let ManifestChunks { stream, manifest, manifest_len, chunks: first } = read_manifest(&cipher, layout, &mut body)?;
            let spans = manifest.spans(layout, manifest_len)?;
            let mut bufs = allocate(&spans);
            let mut carver = Carver::new(&mut bufs);
            // The manifest's last chunk may already hold file bytes, then padding.
            let tail_at = MANIFEST_LEN_PREFIX.saturating_add(manifest_len);
            let tail = stream.get(tail_at..).unwrap_or_default();
            let last_manifest_chunk = first.saturating_sub(1);
            let mut ready = Vec::new();
            let mut used = 0usize;
            for (f, slot) in carver.take(tail.len()) {
                let end = used.saturating_add(slot.len());
                slot.copy_from_slice(tail.get(used..end).unwrap_or_default());
                used = end;
                ready.push((last_manifest_chunk, f, &*slot));
            }
            if tail.get(used..).unwrap_or_default().iter().any(|&b| b != 0) {
                return Err(ManifestError::Padding { chunk: last_manifest_chunk }.into());
            }
            drop(stream);
            let plan = Plan { manifest, spans, ready };
            let dsts = (first..layout.chunk_count).map(move |i| {
                let pieces = carver.take(cs);
                match <[_; 1]>::try_from(pieces) {
                    Ok([(f, slot)]) if slot.len() == cs => (i, Dst::InPlace(f, slot)),
                    Ok(one) => (i, Dst::Split(Zeroizing::new(vec![0u8; cs]), Vec::from(one))),
                    Err(pieces) => (i, Dst::Split(Zeroizing::new(vec![0u8; cs]), pieces)),
                }
            });
            let jobs = jobs(dsts, &mut body, layout);
            run(&cipher, &plan, threads(opts), opts.verify_sha256, jobs)?;
            Ok(finish(header, plan.manifest, bufs))
        }
    }
}

/// The decrypted start of a v2 stream: the chunks holding the length prefix and manifest.
pub(super) struct ManifestChunks {
    /// Those chunks' plaintext (the manifest, maybe file bytes and padding after it).
    pub(super) stream: Zeroizing<Vec<u8>>,
    pub(super) manifest: Manifest,
    /// `M`, the manifest's encoded length.
    pub(super) manifest_len: usize,
    /// How many chunks `stream` holds: the first chunk left to decrypt.
    pub(super) chunks: u32,
}

/// v2: decrypt the chunks that hold the length prefix and the manifest, on this thread.
pub(super) fn read_manifest(cipher: &ChunkCipher, layout: &Layout, body: &mut Body<'_>) -> Result<ManifestChunks, UnsealError> {
    let cs = layout.chunk_size as usize;
    let mut open = |index: u32, dst: &mut [u8]| -> Result<(), UnsealError> {
        let (src, mut tag) = body.next(index, layout, dst)?;
        match fill(&src, dst, &mut tag) {
            Ok(()) => {}
            Err(JobError::Io(e)) => return Err(UnsealError::Io(e)),
            Err(_) => return Err(UnsealError::Decrypt { chunk: index }),
        }
        cipher.open(index, layout.is_last(index), dst, &tag).map_err(|_| UnsealError::Decrypt { chunk: index })
    };
    let mut first = Zeroizing::new(vec![0u8; cs]);
    open(0, &mut first)?;
    let manifest_len = Manifest::declared_len(&first, layout.stream_len)?;
    // `declared_len` checked that prefix and manifest fit the stream: at most chunk_count chunks.
    let chunks = MANIFEST_LEN_PREFIX.saturating_add(manifest_len).div_ceil(cs);
    let count = u32::try_from(chunks).map_err(|_| ManifestError::TooLarge(manifest_len as u64))?;
    // A fresh buffer rather than growing `first`: a reallocation would leave plaintext behind.
    let mut stream = Zeroizing::new(vec![0u8; chunks.saturating_mul(cs)]);
    let mut parts = stream.chunks_mut(cs);
    if let Some(p) = parts.next() {
        p.copy_from_slice(&first);
    }
    drop(first);
    for (index, p) in (1..count).zip(parts) {
        open(index, p)?;
    }
    let bytes = stream.get(MANIFEST_LEN_PREFIX..MANIFEST_LEN_PREFIX.saturating_add(manifest_len)).unwrap_or_default();
    let manifest = Manifest::decode(bytes)?;
    Ok(ManifestChunks { stream, manifest, manifest_len, chunks: count })
}

/// One job per chunk destination, with its ciphertext source from `body`.
fn jobs<'a, 'b: 'a>(
    dsts: impl Iterator<Item = (u32, Dst<'a>)> + 'a,
    body: &'a mut Body<'b>,
    layout: &'a Layout,
) -> impl Iterator<Item = Result<Job<'a>, UnsealError>> + 'a {
    dsts.map(move |(index, mut dst)| {
        let (src, tag) = body.next(index, layout, dst.buf())?;
        Ok(Job { index, last: layout.is_last(index), dst, src, tag })
    })
}

fn finish(header: &SealedHeader, manifest: Manifest, bufs: Vec<Zeroizing<Vec<u8>>>) -> UnsealedFiles {
    UnsealedFiles {
        model_name: manifest.model_name,
        header_digest: header.digest(),
        files: manifest.files.into_iter().zip(bufs).map(|(e, data)| UnsealedFile { name: e.name, data }).collect(),
    }
}

/// Fill `buf` from `r` until full or end of input; returns the bytes read.
pub(super) fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            // `k <= rest.len()`, so `n` stays at most `buf.len()`.
            Ok(k) => n = n.saturating_add(k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Where a chunk's ciphertext is.
enum Src<'a> {
    /// Already in the destination (read by the producer), tag in the job.
    Filled,
    /// In memory: ciphertext to copy into the destination, tag in the job.
    Slice(&'a [u8]),
    /// In a file at this offset: ciphertext then tag, read by the worker itself.
    File(&'a File, u64),
}

/// Where a chunk's plaintext goes.
enum Dst<'a> {
    /// The chunk is exactly this slot of one file: decrypted in place.
    InPlace(usize, &'a mut [u8]),
    /// v2: the chunk holds the end of one file and the start of the next, or padding:
    /// decrypted in its own zeroizing buffer, then these pieces (stream order, from the
    /// buffer's start) are copied out; the bytes after them must be zero.
    Split(Zeroizing<Vec<u8>>, Vec<(usize, &'a mut [u8])>),
}

impl<'a> Dst<'a> {
    /// The buffer the chunk is decrypted in.
    fn buf(&mut self) -> &mut [u8] {
        match self {
            Dst::InPlace(_, slot) => slot,
            Dst::Split(buf, _) => buf,
        }
    }

    /// After decryption: the plaintext pieces in the file buffers.
    fn deliver(self, index: u32) -> Result<Vec<Piece<'a>>, JobError> {
        match self {
            Dst::InPlace(f, slot) => Ok(vec![(index, f, &*slot)]),
            Dst::Split(buf, pieces) => {
                let mut out = Vec::with_capacity(pieces.len());
                let mut used = 0usize;
                for (f, slot) in pieces {
                    let end = used.saturating_add(slot.len());
                    slot.copy_from_slice(buf.get(used..end).ok_or(JobError::Padding)?);
                    used = end;
                    out.push((index, f, &*slot));
                }
                if buf.get(used..).unwrap_or_default().iter().any(|&b| b != 0) {
                    return Err(JobError::Padding);
                }
                Ok(out)
            }
        }
    }
}

/// One chunk to decrypt: where its plaintext goes and where its ciphertext is.
struct Job<'a> {
    index: u32,
    last: bool,
    dst: Dst<'a>,
    src: Src<'a>,
    tag: [u8; TAG_LEN],
}

enum JobError {
    Auth,
    Io(io::Error),
    /// Non-zero bytes after the last file (authenticated: a key holder wrote them).
    Padding,
}

/// Bring a chunk's ciphertext and tag into `dst` and `tag`.
fn fill(src: &Src<'_>, dst: &mut [u8], tag: &mut [u8; TAG_LEN]) -> Result<(), JobError> {
    match *src {
        Src::Filled => {}
        Src::Slice(ct) => {
            if ct.len() != dst.len() {
                return Err(JobError::Auth);
            }
            dst.copy_from_slice(ct);
        }
        Src::File(f, off) => {
            f.read_exact_at(dst, off).map_err(JobError::Io)?;
            let tag_at = off
                .checked_add(dst.len() as u64)
                .ok_or_else(|| JobError::Io(io::Error::other("chunk tag offset overflows u64")))?;
            f.read_exact_at(tag, tag_at).map_err(JobError::Io)?;
        }
    }
    Ok(())
}

fn open_job<'a>(cipher: &ChunkCipher, mut job: Job<'a>) -> Result<Vec<Piece<'a>>, JobError> {
    let buf = job.dst.buf();
    fill(&job.src, buf, &mut job.tag)?;
    cipher.open(job.index, job.last, buf, &job.tag).map_err(|_| JobError::Auth)?;
    job.dst.deliver(job.index)
}

/// Decrypt every job, with `threads` workers, and check file hashes if asked.
fn run<'a>(
    cipher: &ChunkCipher,
    plan: &Plan<'a>,
    threads: usize,
    verify: bool,
    jobs: impl Iterator<Item = Result<Job<'a>, UnsealError>>,
) -> Result<(), UnsealError> {
    let files = &plan.manifest.files;
    let expected: Vec<[u8; 32]> = files.iter().map(|f| f.sha256).collect();
    if verify {
        let empty: [u8; 32] = Sha256::digest([]).into();
        for (e, span) in files.iter().zip(&plan.spans) {
            if span.chunks == 0 && e.sha256 != empty {
                return Err(UnsealError::HashMismatch { file: e.name.clone() });
            }
        }
    }
    let mismatch = |f: usize| UnsealError::HashMismatch { file: files.get(f).map(|e| e.name.clone()).unwrap_or_default() };
    let job_error = |index: u32, e: JobError| match e {
        JobError::Auth => UnsealError::Decrypt { chunk: index },
        JobError::Io(e) => UnsealError::Io(e),
        JobError::Padding => ManifestError::Padding { chunk: index }.into(),
    };
    if threads <= 1 {
        // Sequential: hash each piece right after decrypting it, while it is in cache.
        // Pieces arrive in stream order, so each file's pieces are consecutive.
        let mut cur: Option<(usize, Sha256)> = None;
        let done = |cur: Option<(usize, Sha256)>| match cur {
            Some((f, h)) => {
                if Some(&<[u8; 32]>::from(h.finalize())) == expected.get(f) {
                    Ok(())
                } else {
                    Err(mismatch(f))
                }
            }
            None => Ok(()),
        };
        let mut feed = |pieces: &[Piece<'_>]| -> Result<(), UnsealError> {
            if !verify {
                return Ok(());
            }
            for &(_, f, data) in pieces {
                match &mut cur {
                    Some((g, h)) if *g == f => h.update(data),
                    _ => {
                        done(cur.take())?;
                        let mut h = Sha256::new();
                        h.update(data);
                        cur = Some((f, h));
                    }
                }
            }
            Ok(())
        };
        feed(&plan.ready)?;
        for job in jobs {
            let job = job?;
            let index = job.index;
            let pieces = open_job(cipher, job).map_err(|e| job_error(index, e))?;
            feed(&pieces)?;
        }
        return done(cur);
    }

    let abort = AtomicBool::new(false);
    let failed: Mutex<Option<u32>> = Mutex::new(None);
    let other_failed: Mutex<Option<UnsealError>> = Mutex::new(None);

    // Hashers: files with data, dealt round-robin; each consumes its files' pieces in order.
    let nonempty: Vec<usize> = plan.spans.iter().enumerate().filter(|(_, s)| s.chunks > 0).map(|(i, _)| i).collect();
    let hashers = if verify { nonempty.len().min(threads).max(1) } else { 0 };
    let mut hasher_of = vec![0usize; plan.spans.len()];
    let mut plans: Vec<Vec<usize>> = vec![Vec::new(); hashers];
    for (&f, h) in nonempty.iter().zip((0..hashers).cycle()) {
        if let (Some(slot), Some(p)) = (hasher_of.get_mut(f), plans.get_mut(h)) {
            *slot = h;
            p.push(f);
        }
    }

    let send = |txs: &[mpsc::Sender<Piece<'a>>], piece: Piece<'a>| {
        if let Some(tx) = hasher_of.get(piece.1).and_then(|&h| txs.get(h)) {
            // A closed hasher already reported its verdict.
            let _ = tx.send(piece);
        }
    };
    let mut producer_err = None;
    let outcome = std::thread::scope(|scope| {
        let mut hash_txs = Vec::with_capacity(hashers);
        let mut hash_handles = Vec::with_capacity(hashers);
        for p in plans {
            let (tx, rx) = mpsc::channel::<Piece<'a>>();
            hash_txs.push(tx);
            let (spans, expected) = (&plan.spans, &expected);
            hash_handles.push(scope.spawn(move || hash_files(&rx, &p, spans, expected)));
        }
        if verify {
            for &p in &plan.ready {
                send(&hash_txs, p);
            }
        }
        // Bounded: a split chunk owns a chunk-sized buffer, so the queue bounds the memory
        // that jobs waiting for a worker hold. The receiver is shared by the workers only, so
        // once they have all stopped a blocked send fails instead of waiting forever.
        let (job_tx, job_rx) = mpsc::sync_channel::<Job<'a>>(threads.saturating_mul(2));
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let txs = if verify { hash_txs.clone() } else { Vec::new() };
            let job_rx = Arc::clone(&job_rx);
            let (abort, failed, other_failed, send, job_error) = (&abort, &failed, &other_failed, &send, &job_error);
            workers.push(scope.spawn(move || {
                loop {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let next = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok(job) = next else { break };
                    let index = job.index;
                    match open_job(cipher, job) {
                        Ok(pieces) => {
                            for p in pieces {
                                send(&txs, p);
                            }
                        }
                        Err(JobError::Auth) => {
                            abort.store(true, Ordering::Relaxed);
                            if let Ok(mut f) = failed.lock() {
                                *f = Some(f.map_or(index, |x| x.min(index)));
                            }
                            break;
                        }
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = other_failed.lock() {
                                slot.get_or_insert(job_error(index, e));
                            }
                            break;
                        }
                    }
                }
            }));
        }
        drop(job_rx);
        drop(hash_txs);
        for job in jobs {
            if abort.load(Ordering::Relaxed) {
                break;
            }
            match job {
                Ok(j) => {
                    if job_tx.send(j).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    // Let the workers finish the chunks already queued (all earlier in the
                    // body): a decryption failure among them is reported first, so the
                    // outcome does not depend on scheduling.
                    producer_err = Some(e);
                    break;
                }
            }
        }
        drop(job_tx);
        let mut worker_panicked = false;
        for w in workers {
            worker_panicked |= w.join().is_err();
        }
        let mut bad_file: Option<usize> = None;
        for h in hash_handles {
            match h.join() {
                Ok(HashOutcome::Mismatch(f)) => bad_file = Some(bad_file.map_or(f, |b| b.min(f))),
                Ok(HashOutcome::Ok | HashOutcome::Incomplete) => {}
                Err(_) => worker_panicked = true,
            }
        }
        (worker_panicked, bad_file)
    });
    let (worker_panicked, bad_file) = outcome;
    if let Some(chunk) = failed.lock().ok().and_then(|f| *f) {
        return Err(UnsealError::Decrypt { chunk });
    }
    if let Some(e) = other_failed.into_inner().ok().flatten() {
        return Err(e);
    }
    if let Some(e) = producer_err {
        return Err(e);
    }
    if worker_panicked {
        return Err(UnsealError::Worker);
    }
    if let Some(f) = bad_file {
        return Err(mismatch(f));
    }
    Ok(())
}

enum HashOutcome {
    Ok,
    Mismatch(usize),
    /// Decryption stopped before all pieces arrived.
    Incomplete,
}

fn hash_files(rx: &mpsc::Receiver<Piece<'_>>, plan: &[usize], spans: &[FileSpan], expected: &[[u8; 32]]) -> HashOutcome {
    // Keyed by (file, chunk): in v2 one chunk may hold pieces of several files of this hasher.
    let mut pending = std::collections::BTreeMap::new();
    for &f in plan {
        let Some(span) = spans.get(f) else { return HashOutcome::Mismatch(f) };
        let mut h = Sha256::new();
        for idx in span.first_chunk..span.first_chunk.saturating_add(span.chunks) {
            let piece = loop {
                if let Some(p) = pending.remove(&(f, idx)) {
                    break p;
                }
                match rx.recv() {
                    Ok((i, g, p)) => {
                        pending.insert((g, i), p);
                    }
                    Err(_) => return HashOutcome::Incomplete,
                }
            };
            h.update(piece);
        }
        if Some(&<[u8; 32]>::from(h.finalize())) != expected.get(f) {
            return HashOutcome::Mismatch(f);
        }
    }
    HashOutcome::Ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::sealer::{SealOptions, seal_to_vec};

    fn opts(threads: usize) -> UnsealOptions {
        UnsealOptions { threads: NonZeroUsize::new(threads), ..UnsealOptions::default() }
    }

    #[test]
    fn round_trip_sequential_parallel_and_reader() {
        let key = DataKey::generate().expect("rng");
        let a: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
        let b = b"{\"x\":1}".to_vec();
        let bundle = seal_to_vec(
            "m",
            &[("a.safetensors", &a), ("empty", b""), ("config.json", &b)],
            &key,
            &SealOptions { chunk_size: 4096, ..SealOptions::default() },
        )
        .expect("seals");
        for t in [1, 2, 5] {
            let u = unseal_with(&bundle, &key, &opts(t)).expect("unseals");
            assert_eq!(u.get("a.safetensors"), Some(&a[..]));
            assert_eq!(u.get("empty"), Some(&[][..]));
            assert_eq!(u.get("config.json"), Some(&b[..]));
            let r = unseal_reader(&bundle[..], &key, &opts(t)).expect("unseals");
            assert_eq!(r.get("a.safetensors"), Some(&a[..]));
            assert_eq!(r.total_bytes(), u.total_bytes());
            let mut tmp = tempfile::tempfile().expect("tempfile");
            std::io::Write::write_all(&mut tmp, &bundle).expect("write");
            let f = unseal_file(&tmp, &key, &opts(t)).expect("unseals");
            assert_eq!(f.get("a.safetensors"), Some(&a[..]));
            tmp.set_len(bundle.len() as u64 - 1).expect("truncate");
            assert!(matches!(unseal_file(&tmp, &key, &opts(t)), Err(UnsealError::Truncated { .. })));
        }
    }

    #[test]
    fn lying_header_hash_is_caught_after_decryption() {
        // A key holder can write a v1 header whose hashes lie; the AEAD accepts it, the hash
        // check does not. (The v2 case is in tests/seal_tamper.rs.)
        use crate::seal::cipher::ChunkCipher;
        use crate::seal::format::{BundleHeader, FORMAT_V1, FileEntry, HeaderV1};
        let key = DataKey::generate().expect("rng");
        let data = vec![5u8; 5000];
        let header = BundleHeader::V1(HeaderV1 {
            format_version: FORMAT_V1,
            model_name: "m".into(),
            chunk_size: 4096,
            nonce_prefix: [1; 7],
            files: vec![FileEntry { name: "w.gguf".into(), size: 5000, sha256: [0; 32] }],
        })
        .to_sealed()
        .expect("valid");
        let c = ChunkCipher::new(&key, [1; 7], header.digest());
        let mut bundle = header.raw.clone();
        for (i, part) in data.chunks(4096).enumerate() {
            let mut p = part.to_vec();
            let tag = c.seal(i as u32, i == 1, &mut p).expect("seals");
            bundle.extend_from_slice(&p);
            bundle.extend_from_slice(&tag);
        }
        for t in [1, 3] {
            let err = unseal_with(&bundle, &key, &opts(t)).err();
            assert!(matches!(err, Some(UnsealError::HashMismatch { ref file }) if file == "w.gguf"), "{err:?}");
        }
        let off = UnsealOptions { verify_sha256: false, ..opts(2) };
        assert!(unseal_with(&bundle, &key, &off).is_ok());
    }

    #[test]
    fn limit_is_enforced_before_allocation() {
        let key = DataKey::generate().expect("rng");
        let bundle = seal_to_vec("m", &[("a", &[1u8; 100])], &key, &SealOptions::default()).expect("seals");
        // v2: the limit applies to the padded stream (one chunk here), checked before the
        // manifest is decrypted: a wrong key still reports the limit, not a decryption failure.
        let cs = u64::from(SealOptions::default().chunk_size);
        let o = UnsealOptions { max_plaintext: cs - 1, ..UnsealOptions::default() };
        let wrong = DataKey::generate().expect("rng");
        for k in [&key, &wrong] {
            let e = unseal_reader(&bundle[..], k, &o).err();
            assert!(matches!(e, Some(UnsealError::TooLarge { bytes, limit }) if bytes == cs && limit == cs - 1), "{e:?}");
            assert!(matches!(unseal_with(&bundle, k, &o), Err(UnsealError::TooLarge { .. })));
            // The runtime's path (a bundle on a disk, positioned reads per worker): same
            // refusal, before any chunk is read for decryption.
            let mut tmp = tempfile::tempfile().expect("tempfile");
            std::io::Write::write_all(&mut tmp, &bundle).expect("write");
            let e = unseal_file(&tmp, k, &o).err();
            assert!(matches!(e, Some(UnsealError::TooLarge { bytes, limit }) if bytes == cs && limit == cs - 1), "{e:?}");
        }
        let o = UnsealOptions { max_plaintext: cs, ..UnsealOptions::default() };
        assert_eq!(unseal_with(&bundle, &key, &o).expect("fits").total_bytes(), 100);
    }
}
