//! `cargo xtask bench bigmodel`: a big synthetic Llama sealed, then unsealed and loaded by
//! the runtime's own code on the host, per stage (read, decrypt, hash, load): seconds, GB/s
//! and peak RSS, for model sizes from 0.5 to 4 GiB, with `openssl speed -evp aes-256-gcm`
//! measured in the same run as the decrypt reference.
//!
//! Call as `bench::bigmodel::run(root, &args)` where `args` are the words after
//! `bench bigmodel`: `[--sizes 0.5,1,2,4] [--runs N] [--keep] [--dir DIR] [--skip-openssl]`
//! (default 3 runs per size: the best time per stage, the highest peak RSS).
//!
//! For each size (GiB of weights) it
//! 1. generates (once per size and seed; [`generate`]) a Llama-shaped bf16 safetensors model
//!    (TinyLlama's shape: hidden 2048, MLP 5632, 32 heads, 4 KV heads, vocabulary 32000; the
//!    layer count sets the size) with the tiny seeded Llama's tokenizer, streamed to disk in
//!    8 MiB pieces from a seeded xorshift, so the generator never holds the model;
//! 2. seals it with the real sealer ([`chrysalis_proto::seal::seal`], default options);
//! 3. runs the child `runtime/examples/bigmodel_load.rs` twice per run, each a fresh process whose
//!    peak RSS is its own: `split` (the bundle dropped from the page cache, read cold by
//!    positioned reads on all cores, read again from the page cache, then `unseal_file` from
//!    the page cache without and with the SHA-256 check) and `runtime` (the bundle dropped from the page cache, then
//!    `Bundle::open` + `Bundle::unseal` + `Engine::load`, exactly what the runtime does when
//!    the owner's key arrives, with VmHWM read after unsealing and after loading).
//!
//! The bundle is dropped from the page cache with `posix_fadvise(DONTNEED)` on the bundle
//! file (no root needed, nothing else evicted). A size is skipped, and says so, when the
//! memory available would fall under 4 GiB (estimate: the largest peak-RSS-to-size ratio
//! measured so far, 4× before the first) or the disk lacks twice the size plus 10 GiB.
//! Without `--keep` each size's model and bundle are deleted once measured.
//! Writes `out/bench/bigmodel.json`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrysalis_proto::seal::{DataKey, SealOptions, SealSource, seal};
use serde_json::{Value, json};

const GIB: f64 = (1u64 << 30) as f64;
/// The generator's seed (same size and seed: same weights).
pub const SEED: u64 = 20_261_207;
/// Memory the benchmark leaves free at least.
const MEM_MARGIN: u64 = 4 << 30;
/// Disk left free at least, beyond model + bundle.
const DISK_MARGIN: u64 = 10 << 30;

/// TinyLlama-1.1B's shape; the number of layers is chosen for the size.
const HIDDEN: usize = 2048;
const INTERMEDIATE: usize = 5632;
const HEADS: usize = 32;
const KV_HEADS: usize = 4;
const VOCAB: usize = 32000;

/// The Llama tensors of a model with `layers` decoder layers: (name, shape), in file order.
fn tensors(layers: usize) -> Vec<(String, Vec<usize>)> {
    let kv = HIDDEN / HEADS * KV_HEADS;
    let mut t = vec![("model.embed_tokens.weight".to_owned(), vec![VOCAB, HIDDEN])];
    for i in 0..layers {
        let p = format!("model.layers.{i}");
        t.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}.self_attn.q_proj.weight"), vec![HIDDEN, HIDDEN]));
        t.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, HIDDEN]));
        t.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, HIDDEN]));
        t.push((format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, HIDDEN]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}.mlp.gate_proj.weight"), vec![INTERMEDIATE, HIDDEN]));
        t.push((format!("{p}.mlp.up_proj.weight"), vec![INTERMEDIATE, HIDDEN]));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, INTERMEDIATE]));
    }
    t.push(("model.norm.weight".to_owned(), vec![HIDDEN]));
    t.push(("lm_head.weight".to_owned(), vec![VOCAB, HIDDEN]));
    t
}

fn weight_bytes(layers: usize) -> u64 {
    tensors(layers).iter().map(|(_, s)| 2 * s.iter().product::<usize>() as u64).sum()
}

/// The layer count whose bf16 weights come closest to `target` bytes (at least one layer).
fn layers_for(target: u64) -> usize {
    (1..=512).min_by_key(|&l| weight_bytes(l).abs_diff(target)).unwrap_or(1)
}

/// A seeded xorshift64 stream of bf16 weights: random sign and mantissa, magnitudes between
/// 2^-7 and 2^-3 (like trained weights: finite, no NaN or infinity); norms are 1.0.
struct Weights(u64);

impl Weights {
    fn fill(&mut self, out: &mut [u8], norm: bool) {
        for pair in out.chunks_exact_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            let mut v = [0u8; 8];
            for (k, h) in v.chunks_exact_mut(2).enumerate() {
                let r = (x >> (16 * k)) as u16;
                // sign | exponent 120..=123 | 7 mantissa bits.
                let bits = if norm { 0x3f80 } else { (r & 0x8000) | ((120 + ((r >> 7) & 3)) << 7) | (r & 0x7f) };
                h.copy_from_slice(&bits.to_le_bytes());
            }
            pair.copy_from_slice(&v);
        }
    }
}

/// Writes a Llama-shaped bf16 safetensors model of about `target` bytes into `dir` (kept if
/// already complete): config.json, model.safetensors and the tiny seeded Llama's tokenizer.
/// Returns the weights file's size.
pub fn generate(dir: &Path, target: u64, seed: u64) -> Result<u64> {
    let weights = dir.join("model.safetensors");
    let files = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];
    if files.iter().all(|f| dir.join(f).exists()) {
        crate::util::say(format!("model cached: {}", dir.display()));
        return Ok(std::fs::metadata(&weights)?.len());
    }
    let layers = layers_for(target);
    let tmp = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let tiny = chrysalis_e2e::owner::tiny_llama()?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny.join(f), tmp.join(f)).with_context(|| format!("copying the tiny Llama's {f}"))?;
    }
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 2, "torch_dtype": "bfloat16",
    });
    std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)? + "\n")?;
    // safetensors: u64 header length, JSON header (padded to 8 bytes), then the data.
    let list = tensors(layers);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt", "generator": format!("xtask bench bigmodel, seed {seed}")}));
    let mut off = 0u64;
    for (name, shape) in &list {
        let len = 2 * shape.iter().product::<usize>() as u64;
        header.insert(name.clone(), json!({"dtype": "BF16", "shape": shape, "data_offsets": [off, off + len]}));
        off += len;
    }
    let mut head = serde_json::to_vec(&Value::Object(header))?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let t = Instant::now();
    let path = tmp.join("model.safetensors");
    let mut w = BufWriter::with_capacity(8 << 20, File::create(&path).with_context(|| format!("creating {}", path.display()))?);
    w.write_all(&(head.len() as u64).to_le_bytes())?;
    w.write_all(&head)?;
    let mut rng = Weights(seed | 1);
    let mut buf = vec![0u8; 8 << 20];
    for (name, shape) in &list {
        let mut left = 2 * shape.iter().product::<usize>();
        let norm = name.ends_with("norm.weight");
        while left > 0 {
            let n = left.min(buf.len());
            let piece = buf.get_mut(..n).context("piece")?;
            rng.fill(piece, norm);
            w.write_all(piece)?;
            left -= n;
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let size = std::fs::metadata(&path)?.len();
    crate::util::say(format!(
        "generated {} ({layers} layers, {:.2} GiB, target {:.2} GiB) in {:.1} s",
        dir.display(),
        size as f64 / GIB,
        target as f64 / GIB,
        t.elapsed().as_secs_f64()
    ));
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    Ok(size)
}

/// Bytes free on the file system holding `path` (`df`).
fn disk_free(path: &Path) -> Result<u64> {
    let out = crate::util::output(Command::new("df").args(["-Pk"]).arg(path))?;
    let kib: u64 = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|k| k.parse().ok())
        .context("unparsable df output")?;
    Ok(kib * 1024)
}

/// `MemAvailable` in bytes.
fn mem_available() -> Result<u64> {
    let m = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = m
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .context("no MemAvailable in /proc/meminfo")?;
    Ok(kib * 1024)
}

/// Builds the child (release) in the workspace's target folder; returns the executable.
fn build_child(root: &Path) -> Result<PathBuf> {
    crate::util::say("building runtime/examples/bigmodel_load.rs (release)");
    crate::util::run(crate::util::cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "chrysalis-runtime",
        "--example",
        "bigmodel_load",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    Ok(target.join("release/examples/bigmodel_load"))
}

fn child(exe: &Path, bundle: &Path, key: &Path, mode: &str) -> Result<Value> {
    let out = crate::util::output(Command::new(exe).arg(bundle).arg(key).arg(mode))?;
    serde_json::from_str(out.trim()).with_context(|| format!("parsing the child's output {out:?}"))
}

fn num(v: &Value, k: &str) -> Result<f64> {
    v.get(k).and_then(Value::as_f64).with_context(|| format!("child output lacks {k}"))
}

/// Run the benchmark; `args` are the words after `bench bigmodel`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut sizes = vec![0.5, 1.0, 2.0, 4.0];
    let mut keep = false;
    let mut skip_openssl = false;
    let mut runs: usize = 3;
    let mut dir = PathBuf::from("/var/tmp/chrysalis-big");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = it
                    .next()
                    .context("--sizes needs a value")?
                    .split(',')
                    .map(|s| s.trim().parse::<f64>().with_context(|| format!("--sizes: {s:?}")))
                    .collect::<Result<_>>()?;
            }
            "--keep" => keep = true,
            "--runs" => runs = it.next().context("--runs needs a value")?.parse().context("--runs")?,
            "--skip-openssl" => skip_openssl = true,
            "--dir" => dir = PathBuf::from(it.next().context("--dir needs a value")?),
            other => {
                bail!("unknown argument {other:?} (expected --sizes 0.5,1,2,4, --runs N, --keep, --dir DIR, --skip-openssl)")
            }
        }
    }
    if sizes.iter().any(|&s| s.is_nan() || s <= 0.0 || s > 64.0) {
        bail!("--sizes: GiB between 0 and 64");
    }
    if runs == 0 {
        bail!("--runs: at least 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let exe = build_child(root)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rows = Vec::new();
    let mut ratio: f64 = 4.0;
    for &gib in &sizes {
        let target = (gib * GIB) as u64;
        let label = format!("{gib}gib-seed{SEED}");
        let model = dir.join(format!("model-{label}"));
        let bundle = dir.join(format!("bundle-{label}.sealed"));
        let key_path = dir.join(format!("bundle-{label}.key"));
        let cached = model.join("model.safetensors").exists();
        let disk_needed = if cached { target } else { 2 * target } + DISK_MARGIN;
        let free = disk_free(&dir)?;
        if free < disk_needed {
            crate::util::say(format!(
                "{gib} GiB skipped: {:.1} GiB of disk free, needs {:.1}",
                free as f64 / GIB,
                disk_needed as f64 / GIB
            ));
            rows.push(json!({"size_gib": gib, "skipped": "disk"}));
            continue;
        }
        let avail = mem_available()?;
        let est = (ratio * target as f64) as u64;
        if avail < est + MEM_MARGIN {
            crate::util::say(format!(
                "{gib} GiB skipped: {:.1} GiB of memory available, the load would take about {:.1} GiB ({ratio:.1}× the size) and 4 GiB must stay free",
                avail as f64 / GIB,
                est as f64 / GIB
            ));
            rows.push(json!({"size_gib": gib, "skipped": "memory", "mem_available": avail, "estimated_peak": est}));
            continue;
        }
        let weights_bytes = generate(&model, target, SEED)?;
        // Seal with the real sealer (reads each file twice: hash pass, encrypt pass).
        let key = DataKey::generate().context("rng")?;
        let t = Instant::now();
        let names = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];
        let sources: Vec<SealSource<'_>> = names.iter().map(|n| SealSource::file(*n, model.join(n))).collect();
        let mut out = BufWriter::with_capacity(8 << 20, File::create(&bundle)?);
        seal(&format!("bigmodel {gib} GiB"), &sources, &key, &SealOptions::default(), &mut out).context("sealing")?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        let seal_s = t.elapsed().as_secs_f64();
        write_key(&key_path, &key)?;
        // The model files were just read twice by the sealer: give their page cache back so it
        // does not crowd the bundle's (GNU dd: posix_fadvise(DONTNEED) on the whole file).
        for n in names {
            let _ = Command::new("dd")
                .arg(format!("if={}", model.join(n).display()))
                .args(["iflag=nocache", "count=0", "status=none"])
                .status();
        }
        crate::util::say(format!("sealed {} in {seal_s:.1} s", bundle.display()));

        let (mut splits, mut rts) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            splits.push(child(&exe, &bundle, &key_path, "split")?);
            rts.push(child(&exe, &bundle, &key_path, "runtime")?);
        }
        // Best time of the runs per stage; the highest peak RSS.
        let pick = |vs: &[Value], k: &str, max: bool| -> Result<f64> {
            let xs = vs.iter().map(|v| num(v, k)).collect::<Result<Vec<_>>>()?;
            Ok(if max { xs.into_iter().fold(0.0, f64::max) } else { xs.into_iter().fold(f64::INFINITY, f64::min) })
        };
        let split = |k: &str| pick(&splits, k, false);
        let rt_best = |k: &str| pick(&rts, k, false);
        let rt_max = |k: &str| pick(&rts, k, true);
        let rt = rts.first().cloned().context("no runs")?;
        let plain = num(&rt, "plaintext_bytes")?;
        let bundle_bytes = num(&rt, "bundle_bytes")?;
        let gbs = |bytes: f64, s: f64| if s > 0.0 { bytes / s / 1e9 } else { 0.0 };
        let (read_s, dec_s, dec_sha_s) = (split("read_cold_s")?, split("decrypt_warm_s")?, split("decrypt_sha256_warm_s")?);
        let (unseal_s, load_s) = (rt_best("unseal_s")?, rt_best("load_s")?);
        let (hwm_u, hwm_l) = (rt_max("vm_hwm_after_unseal")?, rt_max("vm_hwm_after_load")?);
        ratio = ratio.max(hwm_l / plain).max(1.0);
        let row = json!({
            "size_gib": gib, "weights_bytes": weights_bytes, "plaintext_bytes": plain, "bundle_bytes": bundle_bytes,
            "layers": layers_for(target), "seal_s": seal_s,
            "read_cold_s": read_s, "read_cold_gb_s": gbs(bundle_bytes, read_s),
            "read_warm_s": split("read_warm_s")?, "read_warm_gb_s": gbs(bundle_bytes, split("read_warm_s")?),
            "decrypt_warm_s": dec_s, "decrypt_warm_gb_s": gbs(plain, dec_s),
            "decrypt_sha256_warm_s": dec_sha_s, "decrypt_sha256_warm_gb_s": gbs(plain, dec_sha_s),
            "sha256_added_s": dec_sha_s - dec_s,
            "unseal_cold_s": unseal_s, "unseal_cold_gb_s": gbs(plain, unseal_s),
            "load_s": load_s, "load_gb_s": gbs(plain, load_s),
            "peak_rss_after_unseal": hwm_u, "peak_rss_after_load": hwm_l,
            "peak_rss_after_unseal_x": hwm_u / plain, "peak_rss_after_load_x": hwm_l / plain,
            "rss_after_load": rt_max("vm_rss_after_load")?, "runs": runs, "weights_in_memory": rt.get("weights"),
            "split_runs": splits, "runtime_runs": rts,
        });
        crate::util::say(format!(
            "{gib} GiB: unseal {unseal_s:.2} s ({:.2} GB/s), load {load_s:.2} s, peak RSS {:.2} GiB ({:.2}× the plaintext)",
            gbs(plain, unseal_s),
            hwm_l / GIB,
            hwm_l / plain
        ));
        rows.push(row);
        if !keep {
            for p in [&bundle, &key_path] {
                let _ = std::fs::remove_file(p);
            }
            let _ = std::fs::remove_dir_all(&model);
        }
    }
    let openssl = if skip_openssl { None } else { Some(super::unseal::openssl_reference(cores)?) };
    print_table(&rows, openssl, cores, runs);
    let report = json!({
        "machine_cores": cores,
        "release_build": !cfg!(debug_assertions),
        "seed": SEED,
        "shape": {"hidden": HIDDEN, "intermediate": INTERMEDIATE, "heads": HEADS, "kv_heads": KV_HEADS, "vocab": VOCAB, "dtype": "bf16"},
        "page_cache": "bundle dropped with posix_fadvise(DONTNEED) before the cold read and before the runtime run",
        "openssl_single_gb_s": openssl.map(|o| o.0),
        "openssl_multi_gb_s": openssl.map(|o| o.1),
        "sizes": rows,
    });
    super::write_result(root, "bigmodel", &report)?;
    if !keep {
        let _ = std::fs::remove_dir(&dir);
    }
    Ok(())
}

fn write_key(path: &Path, key: &DataKey) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(hex::encode(key.as_bytes()).as_bytes())?;
    Ok(())
}

fn print_table(rows: &[Value], openssl: Option<(f64, f64)>, cores: usize, runs: usize) {
    let f = |r: &Value, k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    println!();
    println!(
        "big model (bf16 Llama, TinyLlama shape), {cores} cores, best of {runs}; s (GB/s of plaintext; read: of the bundle); peak RSS in GiB (× plaintext)"
    );
    println!(
        "{:>5} {:>6} {:>16} {:>16} {:>16} {:>16} {:>9} {:>16} {:>16} {:>14} {:>14}",
        "GiB",
        "layers",
        "read (cold)",
        "read (cached)",
        "decrypt",
        "decrypt+sha256",
        "sha256 +s",
        "unseal (cold)",
        "load",
        "RSS unsealed",
        "RSS loaded"
    );
    for r in rows {
        if let Some(why) = r.get("skipped").and_then(Value::as_str) {
            println!("{:>5} skipped ({why})", f(r, "size_gib"));
            continue;
        }
        let st = |s: &str, g: &str| format!("{:.2} ({:.2})", f(r, s), f(r, g));
        let rss = |k: &str, x: &str| format!("{:.2} ({:.2}×)", f(r, k) / GIB, f(r, x));
        println!(
            "{:>5} {:>6} {:>16} {:>16} {:>16} {:>16} {:>9.2} {:>16} {:>16} {:>14} {:>14}",
            f(r, "size_gib"),
            f(r, "layers"),
            st("read_cold_s", "read_cold_gb_s"),
            st("read_warm_s", "read_warm_gb_s"),
            st("decrypt_warm_s", "decrypt_warm_gb_s"),
            st("decrypt_sha256_warm_s", "decrypt_sha256_warm_gb_s"),
            f(r, "sha256_added_s"),
            st("unseal_cold_s", "unseal_cold_gb_s"),
            st("load_s", "load_gb_s"),
            rss("peak_rss_after_unseal", "peak_rss_after_unseal_x"),
            rss("peak_rss_after_load", "peak_rss_after_load_x"),
        );
    }
    if let Some((s, m)) = openssl {
        println!(
            "reference: openssl speed -evp aes-256-gcm: {s:.2} GB/s on 1 core, x {cores} = {:.2} GB/s; -multi {cores}: {m:.2} GB/s",
            s * cores as f64
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_counts_hit_the_sizes_within_5_percent() {
        for gib in [0.5, 1.0, 2.0, 4.0] {
            let target = (gib * GIB) as u64;
            let got = weight_bytes(layers_for(target));
            assert!(got.abs_diff(target) * 20 <= target, "{gib} GiB: {got} bytes");
        }
    }

    #[test]
    fn weights_are_seeded_finite_and_small() {
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        Weights(SEED | 1).fill(&mut a, false);
        Weights(SEED | 1).fill(&mut b, false);
        assert_eq!(a, b);
        for h in a.chunks_exact(2) {
            let v = f32::from_bits(u32::from(u16::from_le_bytes([h[0], h[1]])) << 16).abs();
            assert!(v.is_finite() && (1.0 / 128.0..0.125).contains(&v), "{v}");
        }
        Weights(7).fill(&mut a, true);
        assert!(a.chunks_exact(2).all(|h| h == [0x80, 0x3f]));
    }
}
