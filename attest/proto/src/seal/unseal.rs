//! Runtime side: decrypt a sealed bundle straight into per-file memory buffers, in parallel
//! across cores, and check each file's SHA-256 against the header.
//!
//! Each file gets one zeroize-on-drop buffer of its exact size; chunk *i* of a file is copied
//! (or read) into its place in that buffer and decrypted in place by whichever worker takes
//! it, so plaintext exists once and is never copied. Workers take chunks in body order; the
//! first failure stops them and the lowest failing chunk index is reported. File hashes are
//! computed by hasher threads that consume decrypted chunks in order while decryption goes
//! on. On any failure every buffer is dropped, and so zeroized: nothing half-decrypted is
//! returned.
//!
//! Trust: the bundle bytes are untrusted; the key came from an attested key release. The
//! header is parsed and its sizes checked against the input before any allocation that
//! depends on them (slices), or against [`UnsealOptions::max_plaintext`] (readers).

use std::fs::File;
use std::io::{self, Read, Seek};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::cipher::ChunkCipher;
use super::format::{HeaderError, Layout, MAX_HEADER_LEN, PREAMBLE_LEN, SealedHeader, TAG_LEN, parse_preamble, read_header};
use super::key::DataKey;
use crate::eventlog::Digest384;

/// Options for [`unseal_with`] and [`unseal_reader`].
#[derive(Clone, Debug)]
pub struct UnsealOptions {
    /// Worker threads; `None` means one per available core. With one thread everything runs
    /// on the calling thread.
    pub threads: Option<NonZeroUsize>,
    /// Check each file's SHA-256 against the header (on by default). The AEAD already
    /// authenticates every byte under the owner's key; this check makes the header's file
    /// hashes, which the runtime measures, a statement about what was actually loaded. It
    /// costs one sequential SHA-256 pass per file, overlapped with decryption.
    pub verify_sha256: bool,
    /// Refuse bundles whose header declares more plaintext than this (the runtime sets its
    /// memory budget; a reader's header is not yet checked against any input length).
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
    /// A file decrypted but its SHA-256 differs from the header's (a sealer bug or a lying
    /// sealer: the AEAD proved the key holder produced it).
    #[error("{file}: plaintext does not match the SHA-256 in the header")]
    HashMismatch {
        /// The file's name.
        file: String,
    },
    /// More plaintext than [`UnsealOptions::max_plaintext`].
    #[error("bundle declares {bytes} plaintext bytes, limit {limit}")]
    TooLarge {
        /// Declared plaintext bytes.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Reading the bundle failed.
    #[error("reading the bundle: {0}")]
    Io(io::Error),
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

/// Everything a bundle held, in header order.
pub struct UnsealedFiles {
    /// The header's model name.
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
    check_limit(layout, opts)?;
    let mut bufs = allocate(layout);
    let cs = layout.chunk_size as usize;
    let mut rest = body;
    let jobs = chunk_slots(&mut bufs, cs).map(|(index, file, dst)| {
        // The body length was checked against the layout: these cannot fail.
        let truncated = || UnsealError::Truncated { expected: layout.body_len, got, chunk: index };
        let (ct, after) = rest.split_at_checked(dst.len()).ok_or_else(truncated)?;
        let (tag, after) = after.split_first_chunk::<TAG_LEN>().ok_or_else(truncated)?;
        rest = after;
        Ok(Job { index, last: layout.is_last(index), file, dst, src: Src::Slice(ct), tag: *tag })
    });
    run(key, &header, threads(opts), opts.verify_sha256, jobs)?;
    Ok(finish(&header, bufs))
}

/// Unseal a bundle from a reader (a file, a disk): ciphertext is read directly into the
/// destination buffers and decrypted there while the next chunks are read.
pub fn unseal_reader<R: Read>(mut reader: R, key: &DataKey, opts: &UnsealOptions) -> Result<UnsealedFiles, UnsealError> {
    let header = read_header_from(&mut reader)?;
    let layout = &header.layout;
    check_limit(layout, opts)?;
    let mut bufs = allocate(layout);
    let cs = layout.chunk_size as usize;
    let mut got = 0u64;
    {
        let got = &mut got;
        let reader = &mut reader;
        let jobs = chunk_slots(&mut bufs, cs).map(|(index, file, dst)| {
            let mut tag = [0u8; TAG_LEN];
            for part in [&mut dst[..], &mut tag[..]] {
                let n = read_full(reader, part).map_err(UnsealError::Io)?;
                // Bounded by the body length the layout allows, which fits a u64.
                *got = got.saturating_add(n as u64);
                if n < part.len() {
                    return Err(UnsealError::Truncated { expected: layout.body_len, got: *got, chunk: index });
                }
            }
            Ok(Job { index, last: layout.is_last(index), file, dst, src: Src::Filled, tag })
        });
        run(key, &header, threads(opts), opts.verify_sha256, jobs)?;
    }
    let extra = io::copy(&mut reader, &mut io::sink()).map_err(UnsealError::Io)?;
    if extra > 0 {
        return Err(UnsealError::Trailing { extra });
    }
    Ok(finish(&header, bufs))
}

/// Unseal a bundle file: the workers read their own chunks with positioned reads, so copying
/// from the page cache and first-touch page faults spread over all cores. The file's length
/// is checked against the header before anything is allocated.
pub fn unseal_file(file: &File, key: &DataKey, opts: &UnsealOptions) -> Result<UnsealedFiles, UnsealError> {
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
    check_limit(layout, opts)?;
    let mut bufs = allocate(layout);
    let cs = layout.chunk_size as usize;
    let mut off = header.len() as u64;
    let jobs = chunk_slots(&mut bufs, cs).map(|(index, file_idx, dst)| {
        let at = off;
        // The file length was checked against the layout above, so the offsets fit a u64; a
        // saturated offset would only make the positioned read fail.
        off = off.saturating_add(dst.len() as u64).saturating_add(TAG_LEN as u64);
        Ok(Job { index, last: layout.is_last(index), file: file_idx, dst, src: Src::File(file, at), tag: [0; TAG_LEN] })
    });
    run(key, &header, threads(opts), opts.verify_sha256, jobs)?;
    Ok(finish(&header, bufs))
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

/// Read and parse only the header from a reader, leaving it positioned at the body.
pub fn read_header_from<R: Read>(reader: &mut R) -> Result<SealedHeader, UnsealError> {
    let mut pre = [0u8; PREAMBLE_LEN];
    let n = read_full(reader, &mut pre).map_err(UnsealError::Io)?;
    let total = parse_preamble(pre.get(..n).unwrap_or_default())?;
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

fn check_limit(layout: &Layout, opts: &UnsealOptions) -> Result<(), UnsealError> {
    if layout.total_plaintext > opts.max_plaintext {
        return Err(UnsealError::TooLarge { bytes: layout.total_plaintext, limit: opts.max_plaintext });
    }
    if usize::try_from(layout.total_plaintext).is_err() {
        return Err(UnsealError::TooLarge { bytes: layout.total_plaintext, limit: usize::MAX as u64 });
    }
    Ok(())
}

fn threads(opts: &UnsealOptions) -> usize {
    opts.threads.or_else(|| std::thread::available_parallelism().ok()).map_or(1, NonZeroUsize::get)
}

/// One zeroed buffer per file (sizes already checked against the input or the limit).
fn allocate(layout: &Layout) -> Vec<Zeroizing<Vec<u8>>> {
    // `vec![0; n]` maps zero pages lazily: the workers touch them in parallel.
    layout.files.iter().map(|f| Zeroizing::new(vec![0u8; usize::try_from(f.size).unwrap_or(0)])).collect()
}

/// Every chunk's destination, in body order: (global index, file index, slot).
fn chunk_slots(bufs: &mut [Zeroizing<Vec<u8>>], cs: usize) -> impl Iterator<Item = (u32, usize, &mut [u8])> {
    bufs.iter_mut()
        .enumerate()
        .flat_map(move |(f, b)| b.chunks_mut(cs).map(move |d| (f, d)))
        .zip(0u32..)
        .map(|((f, d), i)| (i, f, d))
}

fn finish(header: &SealedHeader, bufs: Vec<Zeroizing<Vec<u8>>>) -> UnsealedFiles {
    UnsealedFiles {
        model_name: header.header.model_name.clone(),
        header_digest: header.digest(),
        files: header.header.files.iter().zip(bufs).map(|(e, data)| UnsealedFile { name: e.name.clone(), data }).collect(),
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

/// One chunk to decrypt: its slot in a file buffer and where its ciphertext is.
struct Job<'a> {
    index: u32,
    last: bool,
    file: usize,
    dst: &'a mut [u8],
    src: Src<'a>,
    tag: [u8; TAG_LEN],
}

enum JobError {
    Auth,
    Io(io::Error),
}

fn open_job(cipher: &ChunkCipher, job: &mut Job<'_>) -> Result<(), JobError> {
    match job.src {
        Src::Filled => {}
        Src::Slice(src) => {
            if src.len() != job.dst.len() {
                return Err(JobError::Auth);
            }
            job.dst.copy_from_slice(src);
        }
        Src::File(f, off) => {
            f.read_exact_at(job.dst, off).map_err(JobError::Io)?;
            let tag_at = off
                .checked_add(job.dst.len() as u64)
                .ok_or_else(|| JobError::Io(io::Error::other("chunk tag offset overflows u64")))?;
            f.read_exact_at(&mut job.tag, tag_at).map_err(JobError::Io)?;
        }
    }
    cipher.open(job.index, job.last, job.dst, &job.tag).map_err(|_| JobError::Auth)
}

/// Decrypt every job, with `threads` workers, and check file hashes if asked.
fn run<'a>(
    key: &DataKey,
    header: &SealedHeader,
    threads: usize,
    verify: bool,
    jobs: impl Iterator<Item = Result<Job<'a>, UnsealError>>,
) -> Result<(), UnsealError> {
    let cipher = ChunkCipher::new(key, header.header.nonce_prefix, header.digest());
    let expected: Vec<[u8; 32]> = header.header.files.iter().map(|f| f.sha256).collect();
    if verify {
        let empty: [u8; 32] = Sha256::digest([]).into();
        for (e, span) in header.header.files.iter().zip(&header.layout.files) {
            if span.chunks == 0 && e.sha256 != empty {
                return Err(UnsealError::HashMismatch { file: e.name.clone() });
            }
        }
    }
    let mismatch =
        |f: usize| UnsealError::HashMismatch { file: header.header.files.get(f).map(|e| e.name.clone()).unwrap_or_default() };
    if threads <= 1 {
        // Sequential: hash each chunk right after decrypting it, while it is in cache.
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
        for job in jobs {
            let mut job = job?;
            match open_job(&cipher, &mut job) {
                Ok(()) => {}
                Err(JobError::Auth) => return Err(UnsealError::Decrypt { chunk: job.index }),
                Err(JobError::Io(e)) => return Err(UnsealError::Io(e)),
            }
            if verify {
                match &mut cur {
                    Some((f, h)) if *f == job.file => h.update(&*job.dst),
                    _ => {
                        done(cur.take())?;
                        let mut h = Sha256::new();
                        h.update(&*job.dst);
                        cur = Some((job.file, h));
                    }
                }
            }
        }
        return done(cur);
    }

    let abort = AtomicBool::new(false);
    let failed: Mutex<Option<u32>> = Mutex::new(None);
    let io_failed: Mutex<Option<io::Error>> = Mutex::new(None);
    let (job_tx, job_rx) = mpsc::channel::<Job<'a>>();
    let job_rx = Mutex::new(job_rx);

    // Hashers: files with data, dealt round-robin; each consumes its files' chunks in order.
    let nonempty: Vec<usize> = header.layout.files.iter().enumerate().filter(|(_, s)| s.chunks > 0).map(|(i, _)| i).collect();
    let hashers = if verify { nonempty.len().min(threads).max(1) } else { 0 };
    let mut hasher_of = vec![0usize; header.layout.files.len()];
    let mut plans: Vec<Vec<usize>> = vec![Vec::new(); hashers];
    for (&f, h) in nonempty.iter().zip((0..hashers).cycle()) {
        if let (Some(slot), Some(plan)) = (hasher_of.get_mut(f), plans.get_mut(h)) {
            *slot = h;
            plan.push(f);
        }
    }

    let mut producer_err = None;
    let outcome = std::thread::scope(|scope| {
        let mut hash_txs = Vec::with_capacity(hashers);
        let mut hash_handles = Vec::with_capacity(hashers);
        for plan in plans {
            let (tx, rx) = mpsc::channel::<(u32, &'a [u8])>();
            hash_txs.push(tx);
            let layout = &header.layout;
            let expected = &expected;
            hash_handles.push(scope.spawn(move || hash_files(&rx, &plan, layout, expected)));
        }
        let mut workers = Vec::with_capacity(threads);
        for _ in 0..threads {
            let txs = hash_txs.clone();
            let (abort, failed, io_failed, job_rx, cipher, hasher_of) =
                (&abort, &failed, &io_failed, &job_rx, &cipher, &hasher_of);
            workers.push(scope.spawn(move || {
                loop {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let next = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => break,
                    };
                    let Ok(mut job) = next else { break };
                    match open_job(cipher, &mut job) {
                        Ok(()) => {}
                        Err(JobError::Auth) => {
                            abort.store(true, Ordering::Relaxed);
                            if let Ok(mut f) = failed.lock() {
                                *f = Some(f.map_or(job.index, |x| x.min(job.index)));
                            }
                            break;
                        }
                        Err(JobError::Io(e)) => {
                            abort.store(true, Ordering::Relaxed);
                            if let Ok(mut slot) = io_failed.lock() {
                                slot.get_or_insert(e);
                            }
                            break;
                        }
                    }
                    if let Some(tx) = hasher_of.get(job.file).and_then(|&h| txs.get(h)) {
                        let plain: &'a [u8] = job.dst;
                        // A closed hasher already reported its verdict.
                        let _ = tx.send((job.index, plain));
                    }
                }
            }));
        }
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
    if let Some(e) = io_failed.into_inner().ok().flatten() {
        return Err(UnsealError::Io(e));
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
    /// Decryption stopped before all chunks arrived.
    Incomplete,
}

fn hash_files(rx: &mpsc::Receiver<(u32, &[u8])>, plan: &[usize], layout: &Layout, expected: &[[u8; 32]]) -> HashOutcome {
    let mut pending = std::collections::BTreeMap::new();
    for &f in plan {
        let Some(span) = layout.files.get(f) else { return HashOutcome::Mismatch(f) };
        let mut h = Sha256::new();
        for idx in span.first_chunk..span.first_chunk.saturating_add(span.chunks) {
            let piece = loop {
                if let Some(p) = pending.remove(&idx) {
                    break p;
                }
                match rx.recv() {
                    Ok((i, p)) => {
                        pending.insert(i, p);
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
            &SealOptions { chunk_size: 4096 },
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
        // A key holder can write a header whose hashes lie; the AEAD accepts it, the hash check does not.
        use crate::seal::cipher::ChunkCipher;
        use crate::seal::format::{BundleHeader, FORMAT_VERSION, FileEntry};
        let key = DataKey::generate().expect("rng");
        let data = vec![5u8; 5000];
        let header = BundleHeader {
            format_version: FORMAT_VERSION,
            model_name: "m".into(),
            chunk_size: 4096,
            nonce_prefix: [1; 7],
            files: vec![FileEntry { name: "w.gguf".into(), size: 5000, sha256: [0; 32] }],
        }
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
        let o = UnsealOptions { max_plaintext: 99, ..UnsealOptions::default() };
        assert!(matches!(unseal_reader(&bundle[..], &key, &o), Err(UnsealError::TooLarge { bytes: 100, limit: 99 })));
    }
}
