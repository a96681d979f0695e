//! `attest seal`: encrypt a model directory or a single GGUF/safetensors file into a sealed
//! bundle (format v2: file names, sizes and hashes only in the encrypted manifest) plus a
//! key file (mode 0600). Refuses to overwrite either output.
//!
//! Trust: the inputs are the owner's files.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

use chrysalis_proto::seal::format::DEFAULT_CHUNK_SIZE;
use chrysalis_proto::seal::{DataKey, KeyFile, Padding, SealOptions, SealSource, model_files, seal};

/// Arguments of `attest seal`.
#[derive(clap::Args, Debug, Clone)]
pub struct SealArgs {
    /// Model directory (config.json, tokenizer files, *.safetensors, *.gguf) or a single
    /// .gguf / .safetensors file.
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the sealed bundle (never overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the data key, mode 0600 (never overwritten). Keep it secret.
    #[arg(long)]
    pub key_out: PathBuf,
    /// Model name recorded in the header (default: the directory or file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Plaintext bytes per chunk (4096..=67108864). The bundle's header reveals the model's
    /// total size rounded up to whole chunks.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// Also round the chunk count up with Padmé (reveals O(log log n) bits of the size, costs
    /// up to about 12 % more bundle bytes) instead of to whole chunks only.
    #[arg(long)]
    pub padme: bool,
    /// Print a JSON summary instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What `attest seal` did.
#[derive(Debug, Serialize)]
pub struct SealSummary {
    /// Model name in the header.
    pub model_name: String,
    /// The bundle written.
    pub bundle: PathBuf,
    /// The key file written.
    pub key_file: PathBuf,
    /// SHA-384 of the header: what the runtime measures as its BundleHeader event.
    pub header_sha384: String,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Chunks in the body (with the chunk size, all that the header says about the size).
    pub chunk_count: u32,
    /// Bundle size in bytes.
    pub bundle_bytes: u64,
    /// The sealed files.
    pub files: Vec<SealedFileSummary>,
    /// Wall time.
    pub seconds: f64,
}

/// One sealed file.
#[derive(Debug, Serialize)]
pub struct SealedFileSummary {
    /// Name in the bundle.
    pub name: String,
    /// Plaintext bytes.
    pub size: u64,
    /// Plaintext SHA-256.
    pub sha256: String,
}

fn inputs(model: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let meta = fs::metadata(model).with_context(|| format!("reading {}", model.display()))?;
    if meta.is_dir() {
        let files = model_files(model).with_context(|| format!("listing {}", model.display()))?;
        if !files.iter().any(|(n, _)| n.ends_with(".safetensors") || n.ends_with(".gguf")) {
            bail!("{} holds no *.safetensors or *.gguf weights", model.display());
        }
        return Ok(files);
    }
    let name = model.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
    if !(name.ends_with(".gguf") || name.ends_with(".safetensors")) {
        bail!("{} is neither a model directory nor a .gguf/.safetensors file", model.display());
    }
    Ok(vec![(name, model.to_path_buf())])
}

fn default_name(model: &Path) -> String {
    let stem = if model.is_dir() { model.file_name() } else { model.file_stem() };
    stem.and_then(|s| s.to_str()).unwrap_or("model").to_owned()
}

/// Seal the model and print the summary.
pub fn run(args: &SealArgs) -> anyhow::Result<SealSummary> {
    for p in [&args.out, &args.key_out] {
        if p.exists() || p.is_symlink() {
            bail!("{} already exists: refusing to overwrite", p.display());
        }
    }
    let files = inputs(&args.model)?;
    let model_name = args.name.clone().unwrap_or_else(|| default_name(&args.model));
    let sources: Vec<SealSource<'_>> = files.iter().map(|(n, p)| SealSource::file(n.clone(), p)).collect();
    let key = DataKey::generate().context("drawing a data key")?;
    let started = Instant::now();

    let mut partial = args.out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let opts = SealOptions { chunk_size: args.chunk_size, padding: if args.padme { Padding::Padme } else { Padding::Chunk } };
    let result = seal(&model_name, &sources, &key, &opts, &mut w).context("sealing").and_then(|h| {
        let f = w.into_inner().map_err(|e| e.into_error()).context("writing the bundle")?;
        f.sync_all().context("syncing the bundle")?;
        Ok(h)
    });
    let sealed = match result {
        Ok(h) => h,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };

    let key_file = KeyFile { model_name: model_name.clone(), header_digest: sealed.header.digest(), key };
    let mut kf = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&args.key_out) {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e).with_context(|| format!("creating {}", args.key_out.display()));
        }
    };
    let mut finish = || -> anyhow::Result<()> {
        kf.write_all(key_file.to_text().as_bytes()).context("writing the key file")?;
        kf.sync_all().context("syncing the key file")?;
        // A hard link never replaces an existing file, unlike rename.
        fs::hard_link(&partial, &args.out).with_context(|| format!("creating {}", args.out.display()))
    };
    if let Err(e) = finish() {
        let _ = fs::remove_file(&partial);
        let _ = fs::remove_file(&args.key_out);
        return Err(e);
    }
    let _ = fs::remove_file(&partial);
    let bundle_bytes = File::open(&args.out).and_then(|f| f.metadata()).map(|m| m.len()).unwrap_or(0);

    let summary = SealSummary {
        model_name,
        bundle: args.out.clone(),
        key_file: args.key_out.clone(),
        header_sha384: hex::encode(sealed.header.digest()),
        chunk_size: args.chunk_size,
        chunk_count: sealed.header.layout.chunk_count,
        bundle_bytes,
        files: sealed
            .manifest
            .files
            .iter()
            .map(|f| SealedFileSummary { name: f.name.clone(), size: f.size, sha256: hex::encode(f.sha256) })
            .collect(),
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&summary).context("encoding JSON")?);
    } else {
        out!("{summary}");
    }
    Ok(summary)
}

impl std::fmt::Display for SealSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "sealed {:?} into {} ({} bytes, {:.1} s)",
            self.model_name,
            self.bundle.display(),
            self.bundle_bytes,
            self.seconds
        )?;
        writeln!(f, "  header sha384  {}", self.header_sha384)?;
        writeln!(
            f,
            "  chunks         {} of {} bytes, AES-256-GCM STREAM, format v2 (names, sizes, hashes encrypted)",
            self.chunk_count, self.chunk_size
        )?;
        writeln!(f, "  key file       {} (mode 0600, keep secret)", self.key_file.display())?;
        writeln!(f, "  {:<44} {:>14}  sha256", "file", "bytes")?;
        for x in &self.files {
            writeln!(f, "  {:<44} {:>14}  {}", x.name, x.size, x.sha256)?;
        }
        Ok(())
    }
}
