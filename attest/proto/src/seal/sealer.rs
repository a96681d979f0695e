//! Owner side: turn model files into a sealed bundle, streaming.
//!
//! Two passes over the inputs: the first hashes and sizes every file (the header, which
//! precedes the body, carries them), the second reads, encrypts and writes chunk by chunk.
//! Only one chunk of plaintext is in memory at a time. A file that changes between the two
//! passes is an error, so the header never describes bytes other than those sealed.
//!
//! Trust: the inputs are the owner's own files; the output is written for untrusted storage.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::cipher::ChunkCipher;
use super::format::{
    BundleHeader, DEFAULT_CHUNK_SIZE, FORMAT_VERSION, FileEntry, HeaderError, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, NONCE_PREFIX_LEN,
    SealedHeader,
};
use super::key::DataKey;
use super::unseal::read_full;

/// Options for [`seal`].
#[derive(Clone, Debug)]
pub struct SealOptions {
    /// Plaintext bytes per chunk ([`DEFAULT_CHUNK_SIZE`] unless there is a reason).
    pub chunk_size: u32,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions { chunk_size: DEFAULT_CHUNK_SIZE }
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
    /// The inputs do not make a valid header (names, sizes, chunk size).
    #[error("invalid bundle: {0}")]
    Header(#[from] HeaderError),
    /// The system random number generator failed.
    #[error("system random number generator failed: {0}")]
    Random(getrandom::Error),
    /// The AEAD refused a chunk (only on absurd chunk lengths; never expected).
    #[error("encryption failed at chunk {0}")]
    Encrypt(u32),
}

/// Seal `sources` under `key` into `out`; returns the header that was written.
///
/// The data key must be fresh for this bundle ([`DataKey::generate`]); the nonce prefix is
/// drawn here.
pub fn seal<W: Write>(
    model_name: &str,
    sources: &[SealSource<'_>],
    key: &DataKey,
    opts: &SealOptions,
    out: &mut W,
) -> Result<SealedHeader, SealError> {
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
    let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
    getrandom::fill(&mut nonce_prefix).map_err(SealError::Random)?;
    let header = BundleHeader {
        format_version: FORMAT_VERSION,
        model_name: model_name.to_owned(),
        chunk_size: opts.chunk_size,
        nonce_prefix,
        files,
    };
    let sealed = header.to_sealed()?;
    out.write_all(&sealed.raw).map_err(SealError::Write)?;

    // Pass 2: encrypt chunk by chunk.
    let cipher = ChunkCipher::new(key, nonce_prefix, sealed.digest());
    for (s, (entry, span)) in sources.iter().zip(header.files.iter().zip(&sealed.layout.files)) {
        let mut r = (s.open)().map_err(read_err(s))?;
        let mut h = Sha256::new();
        let mut remaining = entry.size;
        // `Layout::of` checked that the chunk indices of all files fit a u32.
        let end = span.first_chunk.checked_add(span.chunks).ok_or(HeaderError::SizeOverflow)?;
        for index in span.first_chunk..end {
            let want64 = remaining.min(u64::from(opts.chunk_size));
            let want = usize::try_from(want64).unwrap_or(cs);
            let chunk = buf.get_mut(..want).ok_or(SealError::Encrypt(index))?;
            if read_full(&mut r, chunk).map_err(read_err(s))? != want {
                return Err(SealError::FileChanged(s.name.clone()));
            }
            h.update(&*chunk);
            let tag = cipher.seal(index, sealed.layout.is_last(index), chunk).map_err(|_| SealError::Encrypt(index))?;
            out.write_all(chunk).map_err(SealError::Write)?;
            out.write_all(&tag).map_err(SealError::Write)?;
            // `want64 <= remaining` (the minimum above).
            remaining = remaining.saturating_sub(want64);
        }
        let mut probe = [0u8; 1];
        if read_full(&mut r, &mut probe).map_err(read_err(s))? != 0 || <[u8; 32]>::from(h.finalize()) != entry.sha256 {
            return Err(SealError::FileChanged(s.name.clone()));
        }
    }
    out.flush().map_err(SealError::Write)?;
    Ok(sealed)
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
    fn header_describes_inputs() {
        let key = DataKey::generate().expect("rng");
        let a = vec![1u8; 10_000];
        let b = b"{}".to_vec();
        let opts = SealOptions { chunk_size: 4096 };
        let bundle = seal_to_vec("m", &[("model.safetensors", &a), ("config.json", &b)], &key, &opts).expect("seals");
        let h = read_header(&bundle).expect("header");
        assert_eq!(h.header.files[0].size, 10_000);
        assert_eq!(h.header.files[0].sha256, <[u8; 32]>::from(Sha256::digest(&a)));
        assert_eq!(h.layout.chunk_count, 4);
        assert_eq!(bundle.len() as u64, h.len() as u64 + h.layout.body_len);
        // Two seals of the same input differ (fresh nonce prefix).
        let again = seal_to_vec("m", &[("model.safetensors", &a), ("config.json", &b)], &key, &opts).expect("seals");
        assert_ne!(bundle, again);
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
        assert!(matches!(err, Some(SealError::Header(HeaderError::FileName { .. }))));
        let err = seal_to_vec("m", &[("a", b"")], &key, &SealOptions::default()).err();
        assert!(matches!(err, Some(SealError::Header(HeaderError::NoData))));
        let err = seal_to_vec("m", &[("a", b"x")], &key, &SealOptions { chunk_size: 10 }).err();
        assert!(matches!(err, Some(SealError::Header(HeaderError::ChunkSize(10)))));
    }
}
