//! Owner side: turn model files into a sealed bundle (format v2), streaming.
//!
//! Two passes over the inputs: the first hashes and sizes every file (the manifest, which
//! opens the encrypted stream, and the header's chunk count carry them), the second reads,
//! encrypts and writes chunk by chunk: `u32_le(M) || manifest || file_0 || … || zero padding`,
//! cut into chunks of exactly `chunk_size` bytes. Only one chunk of plaintext is in memory at
//! a time. A file that changes between the two passes is an error, so the manifest never
//! describes bytes other than those sealed.
//!
//! Trust: the inputs are the owner's own files; the output is written for untrusted storage.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::cipher::ChunkCipher;
use super::format::{
    BundleHeader, DEFAULT_CHUNK_SIZE, FORMAT_V2, FileEntry, HeaderError, HeaderV2, MANIFEST_LEN_PREFIX, MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE, Manifest, ManifestError, NONCE_PREFIX_LEN, Padding, SealedHeader,
};
use super::key::DataKey;
use super::unseal::read_full;

/// Options for [`seal`].
#[derive(Clone, Debug)]
pub struct SealOptions {
    /// Plaintext bytes per chunk ([`DEFAULT_CHUNK_SIZE`] unless there is a reason). Also the
    /// granularity of the size the clear header reveals.
    pub chunk_size: u32,
    /// How far the chunk count is padded beyond what the content needs.
    pub padding: Padding,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions { chunk_size: DEFAULT_CHUNK_SIZE, padding: Padding::Chunk }
    }
}

/// One input file: its name in the bundle and where to read it from.
pub struct SealSource<'a> {
    name: String,
    open: Box<dyn Fn() -> io::Result<Box<dyn Read + 'a>> + 'a>,
    path: Option<PathBuf>,
}

impl<'a> SealSource<'a> {
    /// A file on disk, read twice (hash pass, encrypt pass).
    pub fn file(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        let path: PathBuf = path.into();
        let p = path.clone();
        SealSource {
            name: name.into(),
            open: Box::new(move || Ok(Box::new(io::BufReader::with_capacity(1 << 20, File::open(&p)?)) as Box<dyn Read>)),
            path: Some(path),
        }
    }

    /// Bytes already in memory (tests, benchmarks).
    pub fn bytes(name: impl Into<String>, data: &'a [u8]) -> Self {
        SealSource { name: name.into(), open: Box::new(move || Ok(Box::new(data) as Box<dyn Read + 'a>)), path: None }
    }

    /// The name the file gets in the bundle.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Why sealing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Reading an input failed.
    #[error("reading {name}{}: {source}", .path.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default())]
    Read {
        /// Bundle name of the input.
        name: String,
        /// Its path, if it is a file.
        path: Option<PathBuf>,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the bundle failed.
    #[error("writing the bundle: {0}")]
    Write(io::Error),
    /// An input's size or content differs between the hash pass and the encrypt pass.
    #[error("{0} changed while it was being sealed")]
    FileChanged(String),
    /// The chunk size or the resulting geometry makes no valid header.
    #[error("invalid bundle: {0}")]
    Header(#[from] HeaderError),
    /// The model name or the inputs make no valid manifest (names, sizes).
    #[error("invalid bundle: {0}")]
    Manifest(#[from] ManifestError),
    /// The system random number generator failed.
    #[error("system random number generator failed: {0}")]
    Random(getrandom::Error),
    /// The AEAD refused a chunk (only on absurd chunk lengths; never expected).
    #[error("encryption failed at chunk {0}")]
    Encrypt(u32),
}

/// What [`seal`] wrote: the clear header and the manifest it encrypted.
#[derive(Clone, Debug)]
pub struct Sealed {
    /// The clear header (its digest is what the runtime measures and the key file records).
    pub header: SealedHeader,
    /// The encrypted manifest: model name, file names, sizes and SHA-256.
    pub manifest: Manifest,
}

/// Accumulates the plaintext stream into chunk-sized pieces and writes each encrypted.
struct ChunkWriter<'w, W: Write> {
    cipher: ChunkCipher,
    buf: Zeroizing<Vec<u8>>,
    fill: usize,
    index: u32,
    count: u32,
    out: &'w mut W,
}

impl<W: Write> ChunkWriter<'_, W> {
    /// Encrypt and write the full buffer as the next chunk.
    fn emit(&mut self) -> Result<(), SealError> {
        let index = self.index;
        if index >= self.count {
            return Err(SealError::Encrypt(index));
        }
        let last = index.checked_add(1) == Some(self.count);
        let tag = self.cipher.seal(index, last, &mut self.buf).map_err(|_| SealError::Encrypt(index))?;
        self.out.write_all(&self.buf).map_err(SealError::Write)?;
        self.out.write_all(&tag).map_err(SealError::Write)?;
        self.index = index.saturating_add(1);
        self.fill = 0;
        Ok(())
    }

    /// Append bytes to the stream.
    fn push(&mut self, mut data: &[u8]) -> Result<(), SealError> {
        while !data.is_empty() {
            let space = self.buf.get_mut(self.fill..).unwrap_or_default();
            let k = space.len().min(data.len());
            let (now, later) = data.split_at(k);
            space.get_mut(..k).unwrap_or_default().copy_from_slice(now);
            self.fill = self.fill.saturating_add(k);
            data = later;
            if self.fill == self.buf.len() {
                self.emit()?;
            }
        }
        Ok(())
    }

    /// Append exactly `size` bytes read from `r` (read straight into the chunk buffer),
    /// hashing them. Outer error: writing; inner: reading `r` (`UnexpectedEof` if it ends
    /// before `size` bytes).
    fn push_reader(&mut self, r: &mut dyn Read, mut size: u64) -> Result<Result<[u8; 32], io::Error>, SealError> {
        let mut h = Sha256::new();
        while size > 0 {
            let space = self.buf.get_mut(self.fill..).unwrap_or_default();
            let want = usize::try_from(size).unwrap_or(usize::MAX).min(space.len());
            let dst = space.get_mut(..want).unwrap_or_default();
            let n = match read_full(r, dst) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            h.update(dst.get(..n).unwrap_or_default());
            self.fill = self.fill.saturating_add(n);
            size = size.saturating_sub(n as u64);
            if n < want {
                return Ok(Err(io::Error::new(io::ErrorKind::UnexpectedEof, "input shorter than in the first pass")));
            }
            if self.fill == self.buf.len() {
                self.emit()?;
            }
        }
        Ok(Ok(h.finalize().into()))
    }

    /// Zero-pad to the declared chunk count.
    fn finish(&mut self) -> Result<(), SealError> {
        while self.index < self.count {
            self.buf.get_mut(self.fill..).unwrap_or_default().fill(0);
            self.fill = self.buf.len();
            self.emit()?;
        }
        Ok(())
    }
}

/// Seal `sources` under `key` into `out` as a format-v2 bundle; returns the header written
/// and the manifest encrypted.
///
/// The data key must be fresh for this bundle ([`DataKey::generate`]); the nonce prefix is
/// drawn here.
pub fn seal<W: Write>(
    model_name: &str,
    sources: &[SealSource<'_>],
    key: &DataKey,
    opts: &SealOptions,
    out: &mut W,
) -> Result<Sealed, SealError> {
    let read_err = |s: &SealSource<'_>| {
        let name = s.name.clone();
        let path = s.path.clone();
        move |source| SealError::Read { name, path, source }
    };
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&opts.chunk_size) {
        return Err(HeaderError::ChunkSize(opts.chunk_size).into());
    }
    let cs = usize::try_from(opts.chunk_size).map_err(|_| HeaderError::ChunkSize(opts.chunk_size))?;
    let mut buf = Zeroizing::new(vec![0u8; cs]);

    // Pass 1: sizes and plaintext hashes.
    let mut files = Vec::with_capacity(sources.len());
    for s in sources {
        let (size, sha256) = hash_source(s, &mut buf).map_err(read_err(s))?;
        files.push(FileEntry { name: s.name.clone(), size, sha256 });
    }
    let manifest = Manifest { model_name: model_name.to_owned(), files };
    let prefix = Zeroizing::new(manifest.encode()?);
    let needed = manifest.needed(prefix.len().saturating_sub(MANIFEST_LEN_PREFIX)).ok_or(ManifestError::SizeOverflow)?;
    let chunk_count = opts.padding.chunk_count(needed.div_ceil(u64::from(opts.chunk_size))).ok_or(ManifestError::SizeOverflow)?;
    let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
    getrandom::fill(&mut nonce_prefix).map_err(SealError::Random)?;
    let header = BundleHeader::V2(HeaderV2 { format_version: FORMAT_V2, chunk_size: opts.chunk_size, nonce_prefix, chunk_count });
    let sealed = header.to_sealed()?;
    out.write_all(&sealed.raw).map_err(SealError::Write)?;

    // Pass 2: the stream, encrypted chunk by chunk.
    let cipher = ChunkCipher::new(key, nonce_prefix, sealed.digest());
    let mut w = ChunkWriter { cipher, buf, fill: 0, index: 0, count: chunk_count, out };
    w.push(&prefix)?;
    for (s, entry) in sources.iter().zip(&manifest.files) {
        let mut r = (s.open)().map_err(read_err(s))?;
        let sha256 = match w.push_reader(&mut r, entry.size)? {
            Ok(h) => h,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(SealError::FileChanged(s.name.clone())),
            Err(e) => return Err(read_err(s)(e)),
        };
        let mut probe = [0u8; 1];
        if read_full(&mut r, &mut probe).map_err(read_err(s))? != 0 || sha256 != entry.sha256 {
            return Err(SealError::FileChanged(s.name.clone()));
        }
    }
    w.finish()?;
    w.out.flush().map_err(SealError::Write)?;
    Ok(Sealed { header: sealed, manifest })
}

fn hash_source(s: &SealSource<'_>, buf: &mut [u8]) -> io::Result<(u64, [u8; 32])> {
    let mut r = (s.open)()?;
    let mut h = Sha256::new();
    let mut size = 0u64;
    loop {
        let n = read_full(&mut r, buf)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
        size = u64::try_from(n)
            .ok()
            .and_then(|n| size.checked_add(n))
            .ok_or_else(|| io::Error::other("input size overflows u64"))?;
    }
    Ok((size, h.finalize().into()))
}

/// Seal in-memory files into an in-memory bundle (tests, benchmarks, small models).
pub fn seal_to_vec(model_name: &str, files: &[(&str, &[u8])], key: &DataKey, opts: &SealOptions) -> Result<Vec<u8>, SealError> {
    let sources: Vec<SealSource<'_>> = files.iter().map(|(n, d)| SealSource::bytes(*n, d)).collect();
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    let mut out = Vec::with_capacity(total.saturating_add(total / 1000).saturating_add(4096));
    seal(model_name, &sources, key, opts, &mut out)?;
    Ok(out)
}

/// Which files of a model directory are sealed: the config, tokenizer files and weights.
/// Returned sorted by name; names are the plain file names.
pub fn model_files(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    const EXACT: &[&str] = &[
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.model",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "model.safetensors.index.json",
    ];
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else { continue };
        if EXACT.contains(&name.as_str()) || name.ends_with(".safetensors") || name.ends_with(".gguf") {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::format::read_header;
    use std::cell::Cell;

    #[test]
    fn header_reveals_only_the_padded_geometry() {
        let key = DataKey::generate().expect("rng");
        let a = vec![1u8; 10_000];
        let b = b"{}".to_vec();
        let opts = SealOptions { chunk_size: 4096, ..SealOptions::default() };
        let mut bundle = Vec::new();
        let sources = [SealSource::bytes("model.safetensors", &a), SealSource::bytes("config.json", &b)];
        let sealed = seal("m", &sources, &key, &opts, &mut bundle).expect("seals");
        let h = read_header(&bundle).expect("header");
        assert_eq!(h, sealed.header);
        assert_eq!(h.header.clear_manifest(), None);
        assert_eq!(sealed.manifest.files[0].size, 10_000);
        assert_eq!(sealed.manifest.files[0].sha256, <[u8; 32]>::from(Sha256::digest(&a)));
        let m = sealed.manifest.encode().expect("valid").len() as u64;
        assert_eq!(u64::from(h.layout.chunk_count), (m + 10_002).div_ceil(4096));
        assert_eq!(bundle.len() as u64, h.len() as u64 + h.layout.body_len);
        assert_eq!(h.layout.body_len, u64::from(h.layout.chunk_count) * (4096 + 16));
        // Two seals of the same input differ (fresh nonce prefix).
        let again = seal_to_vec("m", &[("model.safetensors", &a), ("config.json", &b)], &key, &opts).expect("seals");
        assert_ne!(bundle, again);
        // Padmé: 9 chunks of content become 10.
        let big = vec![2u8; 8 * 4096];
        let padded = SealOptions { chunk_size: 4096, padding: Padding::Padme };
        let plain = seal_to_vec("m", &[("w", &big)], &key, &opts).expect("seals");
        let padme = seal_to_vec("m", &[("w", &big)], &key, &padded).expect("seals");
        assert_eq!(read_header(&plain).expect("header").layout.chunk_count, 9);
        assert_eq!(read_header(&padme).expect("header").layout.chunk_count, 10);
    }

    #[test]
    fn input_that_changes_between_passes_is_refused() {
        let calls = Cell::new(0u32);
        let src = SealSource {
            name: "model.gguf".into(),
            open: Box::new(|| {
                calls.set(calls.get() + 1);
                let data: &[u8] = if calls.get() == 1 { b"original" } else { b"tampered" };
                Ok(Box::new(data) as Box<dyn Read>)
            }),
            path: None,
        };
        let key = DataKey::generate().expect("rng");
        let err = seal("m", &[src], &key, &SealOptions::default(), &mut Vec::new()).err();
        assert!(matches!(err, Some(SealError::FileChanged(n)) if n == "model.gguf"));
    }

    #[test]
    fn invalid_inputs_are_refused() {
        let key = DataKey::generate().expect("rng");
        let err = seal_to_vec("m", &[("a/b", b"x")], &key, &SealOptions::default()).err();
        assert!(matches!(err, Some(SealError::Manifest(ManifestError::FileName { .. }))));
        let err = seal_to_vec("m", &[("a", b"")], &key, &SealOptions::default()).err();
        assert!(matches!(err, Some(SealError::Manifest(ManifestError::NoData))));
        let err = seal_to_vec("", &[("a", b"x")], &key, &SealOptions::default()).err();
        assert!(matches!(err, Some(SealError::Manifest(ManifestError::ModelName("empty")))));
        let err = seal_to_vec("m", &[("a", b"x")], &key, &SealOptions { chunk_size: 10, ..SealOptions::default() }).err();
        assert!(matches!(err, Some(SealError::Header(HeaderError::ChunkSize(10)))));
    }
}
