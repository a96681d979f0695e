//! Runtime side, for a model that lives in device memory (a GPU): decrypt a sealed bundle
//! chunk by chunk through a small pool of staging buffers and hand each authenticated chunk
//! to a [`StagedSink`], which copies it to its place while the next chunks are decrypted.
//! The plaintext never exists in full in this process: at most [`staging_slots`] chunks of it
//! do, in the staging buffers, which are zeroed before they are freed.
//!
//! Why: in confidential-computing mode a GPU cannot read the guest's private memory, so every
//! host-to-device copy goes through a bounce buffer that the driver encrypts on the CPU.
//! Unsealing the whole bundle into guest memory first and then copying it costs a second
//! full copy of the weights in guest memory and serializes decryption, re-encryption and the
//! transfer. Here the three overlap: the workers decrypt chunk `i + k` while the driver
//! copies chunk `i` out of its staging buffer, and a buffer is reused only once its copy is
//! done ([`Staging::host`] waits for that).
//!
//! The order of work:
//! 1. the header is checked against the input as in [`super::unseal_file()`] (length, limit);
//! 2. v2: the manifest's chunks are decrypted on the calling thread; the sink learns where
//!    each file lies in the plaintext stream ([`StagedSink::begin`]);
//! 3. workers (one per core by default) each take a free staging buffer, then the next chunk
//!    index, read its ciphertext into the buffer and decrypt it in place. Taking the buffer
//!    before the index means every claimed chunk has a buffer, so the pool cannot deadlock;
//! 4. decrypted chunks go in stream order to a checking thread (padding, each file's
//!    SHA-256), then back to the calling thread, which calls [`StagedSink::put`] and returns
//!    the buffer to the pool: the hash of one chunk overlaps the copy of the one before.
//!
//! Streaming has one consequence a whole-bundle unseal does not: chunks before a failing one
//! have already been handed to the sink when the failure is found (each of them
//! authenticated, at its authenticated position). The sink must treat everything it was
//! given as void unless the call returns `Ok`. The error is the one at the lowest chunk
//! index, independent of scheduling: chunks are claimed in order and every claimed chunk is
//! finished, and checks and puts continue in order up to the lowest failure. A chunk whose
//! check fails is not put.
//!
//! Trust: as [`mod@super::unseal`]: the bundle bytes are untrusted, the key came from an attested
//! key release; the sink is the runtime's own code.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, mpsc};

use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::cipher::ChunkCipher;
use super::format::{BundleHeader, FileSpan, Layout, MANIFEST_LEN_PREFIX, ManifestError, SealedHeader, TAG_LEN};
use super::key::DataKey;
use super::unseal::{
    Body, ManifestChunks, UnsealError, UnsealOptions, check_limit, file_header, read_manifest, slice_body, threads,
};
use crate::eventlog::Digest384;

/// A staging buffer: host memory of one chunk that the sink's device can copy from (for a
/// GPU, page-locked memory).
pub trait Staging: Send {
    /// The buffer's bytes, once every copy that [`StagedSink::put`] started from it has
    /// finished (so that the caller may overwrite them).
    fn host(&mut self) -> Result<&mut [u8], SinkError>;
}

impl Staging for Zeroizing<Vec<u8>> {
    fn host(&mut self) -> Result<&mut [u8], SinkError> {
        Ok(self.as_mut_slice())
    }
}

/// Why the sink failed (a device error, out of device memory); carried into
/// [`UnsealError::Sink`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where a file lies in the plaintext stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedFile {
    /// Its name in the bundle.
    pub name: String,
    /// Offset of its first byte in the plaintext stream.
    pub offset: u64,
    /// Its size.
    pub size: u64,
}

/// Where the plaintext goes: the model's memory.
pub trait StagedSink {
    /// The staging buffers this sink's device copies from.
    type Slot: Staging;
    /// A new staging buffer of exactly `len` bytes (one chunk).
    fn staging(&mut self, len: usize) -> Result<Self::Slot, SinkError>;
    /// Called once, before any chunk and any [`StagedSink::staging`]: the stream's length, the
    /// chunk size (every staging buffer's length) and where each file lies in the stream.
    fn begin(&mut self, stream_len: u64, chunk_size: usize, files: &[StagedFile]) -> Result<(), SinkError>;
    /// Chunk `index` (stream bytes `offset .. offset + len`) is decrypted and authenticated
    /// in the first `len` bytes of `slot`; the rest of the slot is zero, and so are the
    /// stream's bytes that belong to no file (the manifest, padding). Start copying; the
    /// copy may still run when this returns: [`Staging::host`] waits for it. Chunks come in
    /// stream order.
    fn put(&mut self, index: u32, offset: u64, len: usize, slot: &mut Self::Slot) -> Result<(), SinkError>;
    /// Every chunk was delivered and every file's SHA-256 matched: wait for the copies.
    fn finish(&mut self) -> Result<(), SinkError>;
}

/// What [`unseal_staged`] and [`unseal_staged_file`] found, the bytes being in the sink.
#[derive(Debug, Clone)]
pub struct StagedUnsealed {
    /// The model's name (from the manifest for v2, the header for v1).
    pub model_name: String,
    /// SHA-384 of the header bytes the chunks were authenticated under.
    pub header_digest: Digest384,
    /// The stream's length: what the sink's memory holds.
    pub stream_len: u64,
    /// Each file, in stream order.
    pub files: Vec<StagedFile>,
}

/// Staging buffers for `threads` workers: one each while it decrypts, one each waiting to be
/// put in order, and two more for the chunk being copied. This is all the plaintext that
/// exists in the process at once: `slots · chunk_size` bytes (34 MiB for 16 workers and the
/// default 1 MiB chunks).
pub fn staging_slots(threads: usize) -> usize {
    threads.saturating_mul(2).saturating_add(2)
}

/// Unseal an in-memory bundle into `sink`.
pub fn unseal_staged<S: StagedSink>(
    bundle: &[u8],
    key: &DataKey,
    opts: &UnsealOptions,
    sink: &mut S,
) -> Result<StagedUnsealed, UnsealError> {
    let (header, body) = slice_body(bundle)?;
    let got = body.len() as u64;
    staged(key, &header, opts, Body::Slice { rest: body, got }, Source::Slice(body), sink)
}

/// Unseal a bundle file (a disk) into `sink`; the workers read their chunks with positioned
/// reads. The file's length is checked against the header first, as by [`super::unseal_file`].
pub fn unseal_staged_file<S: StagedSink>(
    file: &File,
    key: &DataKey,
    opts: &UnsealOptions,
    sink: &mut S,
) -> Result<StagedUnsealed, UnsealError> {
    let header = file_header(file, opts)?;
    let off = header.len() as u64;
    staged(key, &header, opts, Body::File { file, off }, Source::File(file, off), sink)
}

/// Where the body's chunks are, for positioned reads by the workers.
#[derive(Clone, Copy)]
enum Source<'a> {
    Slice(&'a [u8]),
    /// The file and the body's offset in it.
    File(&'a File, u64),
}

impl Source<'_> {
    /// Read `dst.len()` ciphertext bytes and the tag at body offset `at`.
    fn read(self, at: u64, dst: &mut [u8], tag: &mut [u8; TAG_LEN]) -> Result<(), UnsealError> {
        let tag_at = at.saturating_add(dst.len() as u64);
        match self {
            Source::Slice(body) => {
                // The body's length was checked against the layout: these cannot fail.
                let ct = usize::try_from(at).ok().and_then(|a| body.get(a..a.saturating_add(dst.len())));
                let t = usize::try_from(tag_at).ok().and_then(|a| body.get(a..a.saturating_add(TAG_LEN)));
                match (ct, t) {
                    (Some(ct), Some(t)) => {
                        dst.copy_from_slice(ct);
                        tag.copy_from_slice(t);
                        Ok(())
                    }
                    _ => Err(UnsealError::Io(std::io::Error::other("chunk outside the checked body"))),
                }
            }
            Source::File(f, base) => {
                f.read_exact_at(dst, base.saturating_add(at)).map_err(UnsealError::Io)?;
                f.read_exact_at(tag, base.saturating_add(tag_at)).map_err(UnsealError::Io)
            }
        }
    }
}

/// Where chunk `index` is: (stream offset, plaintext length, body offset).
fn chunk_place(layout: &Layout, spans: &[FileSpan], v1: bool, index: u32) -> (u64, usize, u64) {
    let cs = u64::from(layout.chunk_size);
    let tags = u64::from(index).saturating_mul(TAG_LEN as u64);
    if !v1 {
        let off = u64::from(index).saturating_mul(cs);
        return (off, layout.chunk_size as usize, off.saturating_add(tags));
    }
    // v1: a file's chunks are consecutive and only its last may be short. `Layout::v1`
    // checked every offset and size against u64, so nothing below saturates.
    // `first_chunk` never decreases along the files (an empty file has the next one's).
    let end = spans.partition_point(|s| s.first_chunk <= index);
    let Some(s) = spans.get(..end).unwrap_or_default().iter().rev().find(|s| s.chunks > 0) else {
        return (0, 0, tags);
    };
    let k = u64::from(index.saturating_sub(s.first_chunk));
    let off = s.offset.saturating_add(k.saturating_mul(cs));
    let len = s.size.saturating_sub(k.saturating_mul(cs)).min(cs);
    // At most `chunk_size`, a u32.
    (off, usize::try_from(len).unwrap_or(0), off.saturating_add(tags))
}

/// A staging buffer that is zeroed when dropped: it held plaintext.
struct Slot<S: Staging>(S);

impl<S: Staging> Drop for Slot<S> {
    fn drop(&mut self) {
        // A buffer whose copy failed cannot be waited for; the device error is reported.
        if let Ok(b) = self.0.host() {
            b.zeroize();
        }
    }
}

/// What the calling thread needs to check and deliver chunks in order.
struct Deliver<'a> {
    spans: &'a [FileSpan],
    expected: Vec<[u8; 32]>,
    names: Vec<String>,
    verify: bool,
    /// Stream bytes from here on belong to no file and must be zero.
    data_end: u64,
    /// The file being hashed and its hash so far.
    cur: usize,
    hash: Sha256,
}

impl Deliver<'_> {
    /// Hash the file bytes of stream range `off .. off + bytes.len()` and check that the
    /// bytes past the last file are zero.
    fn check(&mut self, index: u32, off: u64, bytes: &[u8]) -> Result<(), UnsealError> {
        let end = off.saturating_add(bytes.len() as u64);
        if end > self.data_end {
            let from = usize::try_from(self.data_end.saturating_sub(off)).unwrap_or(usize::MAX);
            if bytes.get(from..).unwrap_or_default().iter().any(|&b| b != 0) {
                return Err(ManifestError::Padding { chunk: index }.into());
            }
        }
        if !self.verify {
            return Ok(());
        }
        while let Some(s) = self.spans.get(self.cur) {
            let (start, stop) = (s.offset.max(off), s.offset.saturating_add(s.size).min(end));
            if start < stop {
                // Both within `bytes`, so they fit a usize.
                let at = |x: u64| usize::try_from(x.saturating_sub(off)).unwrap_or(usize::MAX);
                self.hash.update(bytes.get(at(start)..at(stop)).unwrap_or_default());
            }
            if s.offset.saturating_add(s.size) > end {
                break;
            }
            // This file is complete.
            let got: [u8; 32] = std::mem::take(&mut self.hash).finalize().into();
            if Some(&got) != self.expected.get(self.cur) {
                let file = self.names.get(self.cur).cloned().unwrap_or_default();
                return Err(UnsealError::HashMismatch { file });
            }
            self.cur = self.cur.saturating_add(1);
        }
        Ok(())
    }
}

fn staged<S: StagedSink>(
    key: &DataKey,
    header: &SealedHeader,
    opts: &UnsealOptions,
    mut body: Body<'_>,
    source: Source<'_>,
    sink: &mut S,
) -> Result<StagedUnsealed, UnsealError> {
    let layout = &header.layout;
    check_limit(layout, opts)?;
    let cipher = ChunkCipher::new(key, header.header.nonce_prefix(), header.digest());
    let cs = layout.chunk_size as usize;
    // v1: files from the clear header, every chunk to decrypt. v2: the manifest's chunks
    // first, here; the last of them may hold the first file bytes.
    let (manifest, spans, first, tail) = match &header.header {
        BundleHeader::V1(h) => (h.manifest(), layout.files.clone(), 0, None),
        BundleHeader::V2(_) => {
            let ManifestChunks { stream, manifest, manifest_len, chunks } = read_manifest(&cipher, layout, &mut body)?;
            let spans = manifest.spans(layout, manifest_len)?;
            let last = chunks.saturating_sub(1);
            let at = (last as usize).saturating_mul(cs);
            let data_start = MANIFEST_LEN_PREFIX.saturating_add(manifest_len);
            let mut chunk = Zeroizing::new(stream.get(at..).unwrap_or_default().to_vec());
            // The manifest's bytes are not the model's: the sink gets zeros in their place.
            if let Some(m) = chunk.get_mut(..data_start.saturating_sub(at)) {
                m.zeroize();
            }
            (manifest, spans, chunks, Some((last, chunk)))
        }
    };
    let v1 = matches!(header.header, BundleHeader::V1(_));
    let files: Vec<StagedFile> = manifest
        .files
        .iter()
        .zip(&spans)
        .map(|(e, s)| StagedFile { name: e.name.clone(), offset: s.offset, size: s.size })
        .collect();
    let verify = opts.verify_sha256;
    if verify {
        let empty: [u8; 32] = Sha256::digest([]).into();
        if let Some(e) = manifest.files.iter().zip(&spans).find(|(e, s)| s.size == 0 && e.sha256 != empty) {
            return Err(UnsealError::HashMismatch { file: e.0.name.clone() });
        }
    }
    let sink_err = |e: SinkError| UnsealError::Sink(e.0);
    sink.begin(layout.stream_len, cs, &files).map_err(sink_err)?;
    let data_end = spans.last().map_or(0, |s| s.offset.saturating_add(s.size));
    let mut deliver = Deliver {
        spans: &spans,
        expected: manifest.files.iter().map(|f| f.sha256).collect(),
        names: manifest.files.iter().map(|f| f.name.clone()).collect(),
        verify,
        data_end,
        // Empty files were checked above; hashing starts at the first file with bytes.
        cur: spans.iter().position(|s| s.size > 0).unwrap_or(spans.len()),
        hash: Sha256::new(),
    };
    let threads = threads(opts);
    let count = layout.chunk_count;
    // Every staging buffer is made before the first chunk is put.
    let tail = match tail {
        Some((last, chunk)) => {
            let mut slot = Slot(sink.staging(cs).map_err(sink_err)?);
            slot.0.host().map_err(sink_err)?.copy_from_slice(chunk.get(..cs).unwrap_or_default());
            Some((last, slot))
        }
        None => None,
    };
    let pool = if first < count {
        (0..staging_slots(threads)).map(|_| sink.staging(cs).map(Slot)).collect::<Result<Vec<_>, _>>().map_err(sink_err)?
    } else {
        Vec::new()
    };
    // Two stages in stream order: the checks (padding, each file's SHA-256) on a thread of
    // their own, then the sink's copy on this one, so the hash of one chunk overlaps the copy
    // of the one before.
    let mut check = |index: u32, slot: &mut Slot<S::Slot>| -> Result<(), UnsealError> {
        let (off, len, _) = chunk_place(layout, &spans, v1, index);
        let bytes = slot.0.host().map_err(sink_err)?;
        // v1 chunks at a file's end are short: the sink gets zeros after them.
        if let Some(rest) = bytes.get_mut(len..) {
            rest.zeroize();
        }
        deliver.check(index, off, bytes.get(..len).unwrap_or_default())
    };
    let mut put = |index: u32, slot: &mut Slot<S::Slot>| -> Result<(), UnsealError> {
        let (off, len, _) = chunk_place(layout, &spans, v1, index);
        sink.put(index, off, len, &mut slot.0).map_err(sink_err)
    };
    if let Some((last, mut slot)) = tail {
        check(last, &mut slot)?;
        put(last, &mut slot)?;
    }
    if first < count {
        let stages = Stages { check: &mut check, put: &mut put };
        run(&cipher, layout, &spans, v1, source, first, threads, pool, stages)?;
    }
    if verify && deliver.cur < spans.len() {
        // Only reachable if the stream ended before a file did, which the layout excludes.
        return Err(UnsealError::HashMismatch { file: deliver.names.get(deliver.cur).cloned().unwrap_or_default() });
    }
    sink.finish().map_err(sink_err)?;
    Ok(StagedUnsealed { model_name: manifest.model_name, header_digest: header.digest(), stream_len: layout.stream_len, files })
}

/// What the threads tell the calling thread: a worker decrypted a chunk (or failed to), or
/// the checking thread checked one.
enum Msg<S: Staging> {
    Decrypted(u32, Result<(), UnsealError>, Slot<S>),
    Checked(u32, Result<(), UnsealError>, Slot<S>),
}

/// One in-order stage's work on chunk `index` in its buffer, on the calling thread.
type Stage<'a, S> = dyn FnMut(u32, &mut Slot<S>) -> Result<(), UnsealError> + 'a;

/// The same, run on a thread of its own.
type SendStage<'a, S> = dyn FnMut(u32, &mut Slot<S>) -> Result<(), UnsealError> + Send + 'a;

/// The two in-order stages of a decrypted chunk.
struct Stages<'c, 'p, S: Staging> {
    /// Padding and SHA-256 (on the checking thread).
    check: &'c mut SendStage<'c, S>,
    /// The sink's copy (on the calling thread).
    put: &'p mut Stage<'p, S>,
}

/// The lowest failing chunk and its error.
#[derive(Default)]
struct Failure(Option<(u32, UnsealError)>);

impl Failure {
    fn record(&mut self, index: u32, e: UnsealError) {
        if self.0.as_ref().is_none_or(|(i, _)| index < *i) {
            self.0 = Some((index, e));
        }
    }

    /// Whether chunk `index` comes before every failure so far (and so goes on).
    fn before(&self, index: u32) -> bool {
        self.0.as_ref().is_none_or(|(i, _)| index < *i)
    }
}

/// Decrypt chunks `first..` with `threads` workers and `pool`; check and put them in order.
#[allow(clippy::too_many_arguments)]
fn run<S: Staging>(
    cipher: &ChunkCipher,
    layout: &Layout,
    spans: &[FileSpan],
    v1: bool,
    source: Source<'_>,
    first: u32,
    threads: usize,
    pool: Vec<Slot<S>>,
    stages: Stages<'_, '_, S>,
) -> Result<(), UnsealError> {
    let Stages { check, put } = stages;
    let count = layout.chunk_count;
    let next = AtomicU32::new(first);
    let abort = AtomicBool::new(false);
    let (free_tx, free_rx) = mpsc::channel::<Slot<S>>();
    for s in pool {
        // The receiver is alive: it is ours.
        let _ = free_tx.send(s);
    }
    let free_rx = Mutex::new(free_rx);
    let (msg_tx, msg_rx) = mpsc::channel::<Msg<S>>();
    let (check_tx, check_rx) = mpsc::channel::<(u32, Slot<S>)>();
    let mut failure = Failure::default();
    let mut panicked = false;
    std::thread::scope(|scope| {
        let mut threads_ = Vec::with_capacity(threads.saturating_add(1));
        for _ in 0..threads {
            let msg_tx = msg_tx.clone();
            let (next, abort, free_rx) = (&next, &abort, &free_rx);
            threads_.push(scope.spawn(move || {
                loop {
                    // The buffer first, then the index: every claimed chunk has a buffer.
                    let got = match free_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok(mut slot) = got else { break };
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        break;
                    }
                    let (_, len, at) = chunk_place(layout, spans, v1, index);
                    let result = slot.0.host().map_err(|e| UnsealError::Sink(e.0)).and_then(|buf| {
                        let buf = buf.get_mut(..len).unwrap_or_default();
                        let mut tag = [0u8; TAG_LEN];
                        source.read(at, buf, &mut tag)?;
                        cipher.open(index, layout.is_last(index), buf, &tag).map_err(|_| UnsealError::Decrypt { chunk: index })
                    });
                    if result.is_err() {
                        abort.store(true, Ordering::Relaxed);
                    }
                    if msg_tx.send(Msg::Decrypted(index, result, slot)).is_err() {
                        break;
                    }
                }
            }));
        }
        {
            // The checking thread: chunks arrive in order; it stops at the first failure.
            let msg_tx = msg_tx.clone();
            threads_.push(scope.spawn(move || {
                for (index, mut slot) in check_rx.iter() {
                    let result = check(index, &mut slot);
                    let failed = result.is_err();
                    if msg_tx.send(Msg::Checked(index, result, slot)).is_err() || failed {
                        break;
                    }
                }
            }));
        }
        drop(msg_tx);
        let mut free_tx = Some(free_tx);
        let mut check_tx = Some(check_tx);
        let mut pending: BTreeMap<u32, Slot<S>> = BTreeMap::new();
        // The next chunk to check and the next to put.
        let (mut to_check, mut to_put) = (first, first);
        for msg in msg_rx.iter() {
            match msg {
                Msg::Decrypted(index, Ok(()), slot) => {
                    pending.insert(index, slot);
                }
                Msg::Decrypted(index, Err(e), _) | Msg::Checked(index, Err(e), _) => {
                    failure.record(index, e);
                    abort.store(true, Ordering::Relaxed);
                    // No new chunks: the workers finish the ones they hold and stop.
                    free_tx = None;
                }
                Msg::Checked(index, Ok(()), mut slot) => {
                    // Checked chunks come back in order: `index == to_put`.
                    if failure.before(index)
                        && let Err(e) = put(index, &mut slot)
                    {
                        failure.record(index, e);
                        abort.store(true, Ordering::Relaxed);
                        free_tx = None;
                    }
                    if let Some(tx) = &free_tx {
                        let _ = tx.send(slot);
                    }
                    to_put = index.saturating_add(1);
                }
            }
            // Hand decrypted chunks to the checks in order, up to the lowest failure.
            while failure.before(to_check) {
                let Some(slot) = pending.remove(&to_check) else { break };
                if let Some(tx) = &check_tx {
                    // A checking thread that stopped has reported why.
                    let _ = tx.send((to_check, slot));
                }
                to_check = to_check.saturating_add(1);
            }
            if to_check >= count || !failure.before(to_check) {
                // Nothing more to check: the checking thread ends once it has the rest.
                check_tx = None;
            }
            if to_put >= count {
                // All put: the workers waiting for a buffer stop.
                free_tx = None;
            }
        }
        for t in threads_ {
            panicked |= t.join().is_err();
        }
    });
    if let Some((_, e)) = failure.0 {
        return Err(e);
    }
    if panicked || next.load(Ordering::Relaxed) < count {
        return Err(UnsealError::Worker);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::sealer::{SealOptions, seal_to_vec};
    use crate::seal::unseal::unseal_with;
    use std::num::NonZeroUsize;

    /// A sink that assembles the stream in host memory and records what it was given.
    #[derive(Default)]
    struct Host {
        stream: Vec<u8>,
        files: Vec<StagedFile>,
        order: Vec<u32>,
        finished: bool,
        made: usize,
        fail_at: Option<u32>,
    }

    impl StagedSink for Host {
        type Slot = Zeroizing<Vec<u8>>;
        fn staging(&mut self, len: usize) -> Result<Self::Slot, SinkError> {
            self.made += 1;
            Ok(Zeroizing::new(vec![0; len]))
        }
        fn begin(&mut self, stream_len: u64, _: usize, files: &[StagedFile]) -> Result<(), SinkError> {
            self.stream = vec![0xAA; stream_len as usize];
            self.files = files.to_vec();
            Ok(())
        }
        fn put(&mut self, index: u32, offset: u64, len: usize, slot: &mut Self::Slot) -> Result<(), SinkError> {
            if self.fail_at == Some(index) {
                return Err(SinkError(format!("device full at chunk {index}")));
            }
            assert!(slot[len..].iter().all(|&b| b == 0), "bytes after a short chunk are zero");
            let o = offset as usize;
            self.stream[o..o + len].copy_from_slice(&slot[..len]);
            self.order.push(index);
            Ok(())
        }
        fn finish(&mut self) -> Result<(), SinkError> {
            self.finished = true;
            Ok(())
        }
    }

    impl Host {
        fn file(&self, name: &str) -> Option<&[u8]> {
            let f = self.files.iter().find(|f| f.name == name)?;
            self.stream.get(f.offset as usize..(f.offset + f.size) as usize)
        }
    }

    fn opts(threads: usize) -> UnsealOptions {
        UnsealOptions { threads: NonZeroUsize::new(threads), ..UnsealOptions::default() }
    }

    fn files() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("a.safetensors", (0..50_000u32).map(|i| (i * 7 + i / 251) as u8).collect()),
            ("empty", Vec::new()),
            ("config.json", b"{\"x\":1}".to_vec()),
            ("b.gguf", (0..20_000u32).map(|i| (i * 13) as u8).collect()),
        ]
    }

    #[test]
    fn every_file_arrives_in_place_in_order_from_slices_and_files() {
        let key = DataKey::generate().expect("rng");
        let files = files();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
        let bundle = seal_to_vec("m", &refs, &key, &SealOptions { chunk_size: 4096, ..SealOptions::default() }).expect("seals");
        for t in [1, 2, 5] {
            let mut sink = Host::default();
            let got = unseal_staged(&bundle, &key, &opts(t), &mut sink).expect("unseals");
            assert_eq!(got.model_name, "m");
            assert!(sink.finished);
            for (name, data) in &files {
                assert_eq!(sink.file(name), Some(&data[..]), "{name} with {t} threads");
            }
            // The manifest's bytes are not given to the sink: before the first file it saw
            // zeros (or nothing, 0xAA, for the manifest's chunks before the last one).
            let start = got.files[0].offset as usize;
            assert!(sink.stream[..start].iter().all(|&b| b == 0 || b == 0xAA));
            let mut sorted = sink.order.clone();
            sorted.sort_unstable();
            assert_eq!(sink.order, sorted, "chunks are put in stream order");
            assert!(sink.made <= staging_slots(t) + 1, "{} staging buffers for {t} threads", sink.made);
            let mut tmp = tempfile::tempfile().expect("tempfile");
            std::io::Write::write_all(&mut tmp, &bundle).expect("write");
            let mut from_file = Host::default();
            unseal_staged_file(&tmp, &key, &opts(t), &mut from_file).expect("unseals");
            assert_eq!(from_file.stream, sink.stream);
            // The whole-bundle unseal agrees.
            let whole = unseal_with(&bundle, &key, &opts(t)).expect("unseals");
            for (name, _) in &files {
                assert_eq!(whole.get(name), from_file.file(name));
            }
        }
    }

    #[test]
    fn v1_bundles_with_short_chunks_stage_too() {
        let bundle = include_bytes!("../../tests/data/v1/bundle.sealed");
        let key_file = include_str!("../../tests/data/v1/bundle.key");
        let key = crate::seal::KeyFile::parse(key_file).expect("key file").key;
        let whole = unseal_with(bundle, &key, &opts(2)).expect("unseals");
        for t in [1, 3] {
            let mut sink = Host::default();
            unseal_staged(bundle, &key, &opts(t), &mut sink).expect("unseals");
            for f in &whole.files {
                assert_eq!(sink.file(&f.name), Some(&f.data[..]), "{}", f.name);
            }
        }
    }

    #[test]
    fn a_bad_chunk_is_named_by_the_lowest_index_and_the_sink_never_finishes() {
        let key = DataKey::generate().expect("rng");
        let data = vec![9u8; 40_000];
        let bundle = seal_to_vec("m", &[("w.gguf", &data)], &key, &SealOptions { chunk_size: 4096, ..SealOptions::default() })
            .expect("seals");
        let header_len = crate::seal::read_header(&bundle).expect("header").len();
        let stride = 4096 + TAG_LEN;
        for t in [1, 2, 4] {
            let mut bad = bundle.clone();
            // Chunks 3 and 6 altered: chunk 3 is reported, whatever the workers' timing.
            bad[header_len + 3 * stride + 10] ^= 1;
            bad[header_len + 6 * stride + 10] ^= 1;
            let mut sink = Host::default();
            let e = unseal_staged(&bad, &key, &opts(t), &mut sink).err();
            assert!(matches!(e, Some(UnsealError::Decrypt { chunk: 3 })), "{e:?} with {t} threads");
            assert!(!sink.finished);
            assert!(sink.order.iter().all(|&i| i < 3), "nothing at or after the bad chunk is put: {:?}", sink.order);
            let wrong = DataKey::generate().expect("rng");
            let e = unseal_staged(&bundle, &wrong, &opts(t), &mut Host::default()).err();
            assert!(matches!(e, Some(UnsealError::Decrypt { chunk: 0 })), "{e:?}");
            let e = unseal_staged(&bundle[..bundle.len() - 1], &key, &opts(t), &mut Host::default()).err();
            assert!(matches!(e, Some(UnsealError::Truncated { .. })), "{e:?}");
        }
    }

    /// A v1 bundle of `config.json` (`{}`) and `w.gguf` (`data`), written as a key holder
    /// may write one: with the file hashes given, true or not. Returns it and its header's
    /// length.
    fn v1_bundle(key: &DataKey, config_sha: [u8; 32], data: &[u8], data_sha: [u8; 32]) -> (Vec<u8>, usize) {
        use crate::seal::format::{FORMAT_V1, FileEntry, HeaderV1};
        let header = BundleHeader::V1(HeaderV1 {
            format_version: FORMAT_V1,
            model_name: "m".into(),
            chunk_size: 4096,
            nonce_prefix: [1; 7],
            files: vec![
                FileEntry { name: "config.json".into(), size: 2, sha256: config_sha },
                FileEntry { name: "w.gguf".into(), size: data.len() as u64, sha256: data_sha },
            ],
        })
        .to_sealed()
        .expect("valid");
        let c = ChunkCipher::new(key, [1; 7], header.digest());
        let mut bundle = header.raw.clone();
        let parts: Vec<Vec<u8>> = std::iter::once(b"{}".to_vec()).chain(data.chunks(4096).map(<[u8]>::to_vec)).collect();
        let last = parts.len() - 1;
        for (i, mut p) in parts.into_iter().enumerate() {
            let tag = c.seal(i as u32, i == last, &mut p).expect("seals");
            bundle.extend_from_slice(&p);
            bundle.extend_from_slice(&tag);
        }
        (bundle, header.len())
    }

    #[test]
    fn a_lying_file_hash_is_caught_and_the_sink_never_finishes() {
        // A key holder can write a v1 header whose hashes lie: the AEAD accepts every chunk,
        // the per-file SHA-256 does not.
        let key = DataKey::generate().expect("rng");
        let data = vec![5u8; 10_000];
        let (bundle, header_len) = v1_bundle(&key, Sha256::digest(b"{}").into(), &data, [0; 32]);
        for t in [1, 3] {
            let mut sink = Host::default();
            let e = unseal_staged(&bundle, &key, &opts(t), &mut sink).err();
            assert!(matches!(e, Some(UnsealError::HashMismatch { ref file }) if file == "w.gguf"), "{e:?}");
            assert!(!sink.finished);
        }
        let off = UnsealOptions { verify_sha256: false, ..opts(2) };
        let mut sink = Host::default();
        unseal_staged(&bundle, &key, &off, &mut sink).expect("hashes not checked");
        assert_eq!(sink.file("w.gguf"), Some(&data[..]));
        assert_eq!(sink.file("config.json"), Some(&b"{}"[..]));
        // A bad chunk after the file whose hash lies: the earlier failure is the one named,
        // whatever the threads' timing.
        let mut bad = bundle.clone();
        let at = header_len + (2 + TAG_LEN) + (4096 + TAG_LEN) + 7;
        bad[at] ^= 1;
        for t in [1, 2, 4] {
            let e = unseal_staged(&bad, &key, &opts(t), &mut Host::default()).err();
            assert!(matches!(e, Some(UnsealError::Decrypt { chunk: 2 })), "{e:?}");
        }
    }

    #[test]
    fn the_lowest_failure_wins_between_a_hash_and_a_later_chunk() {
        let key = DataKey::generate().expect("rng");
        let data = vec![6u8; 12_000];
        // Lies about config.json: chunk 0 is the last of that file, so its check fails there.
        let (mut bundle, _) = v1_bundle(&key, [1; 32], &data, Sha256::digest(&data).into());
        // Chunk 3 altered too: the hash at chunk 0 is reported.
        let last = bundle.len() - 20;
        bundle[last] ^= 1;
        for t in [1, 2, 4] {
            for _ in 0..10 {
                let mut sink = Host::default();
                let e = unseal_staged(&bundle, &key, &opts(t), &mut sink).err();
                assert!(
                    matches!(e, Some(UnsealError::HashMismatch { ref file }) if file == "config.json"),
                    "{e:?} ({t} threads)"
                );
                assert!(sink.order.is_empty(), "the chunk whose hash failed is not put: {:?}", sink.order);
            }
        }
    }

    #[test]
    fn a_sink_failure_stops_the_unseal_and_names_the_device_error() {
        let key = DataKey::generate().expect("rng");
        let bundle =
            seal_to_vec("m", &[("w.gguf", &[3u8; 40_000])], &key, &SealOptions { chunk_size: 4096, ..SealOptions::default() })
                .expect("seals");
        for t in [1, 3] {
            let mut sink = Host { fail_at: Some(5), ..Host::default() };
            let e = unseal_staged(&bundle, &key, &opts(t), &mut sink).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("device full at chunk 5"), "{e}");
            assert!(!sink.finished);
        }
    }

    #[test]
    fn the_limit_is_checked_before_anything_is_decrypted() {
        let key = DataKey::generate().expect("rng");
        let bundle = seal_to_vec("m", &[("a", &[1u8; 100])], &key, &SealOptions::default()).expect("seals");
        let o = UnsealOptions { max_plaintext: 1000, ..UnsealOptions::default() };
        let mut sink = Host::default();
        let e = unseal_staged(&bundle, &DataKey::generate().expect("rng"), &o, &mut sink).err();
        assert!(matches!(e, Some(UnsealError::TooLarge { .. })), "{e:?}");
        assert_eq!(sink.made, 0);
    }
}
