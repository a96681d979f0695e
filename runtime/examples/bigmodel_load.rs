//! The child process of `cargo xtask bench bigmodel`: unseals a sealed bundle and loads the
//! model through the runtime's own code path on the host, timing each stage and reading
//! this process's peak RSS after each. Prints one JSON object on stdout.
//!
//! `bigmodel_load BUNDLE KEY_HEX_FILE runtime`: drops the bundle from the page cache, then
//! `Bundle::open` + `Bundle::unseal` (what the runtime does when the owner's key arrives:
//! positioned reads, decryption and SHA-256 on all cores) + `Engine::load` on the unsealed
//! files (what `EngineSink::load` in main.rs does).
//!
//! `bigmodel_load BUNDLE KEY_HEX_FILE split`: the stages apart: a cold read of the bundle
//! (positioned reads on all cores, no decryption), the same read again from the page cache,
//! then `unseal_file` from the page cache without and with the SHA-256 check (decrypt;
//! decrypt + hash).

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrysalis_proto::seal::{self, DataKey, UnsealOptions};
use chrysalis_runtime::bundle::Bundle;
use chrysalis_runtime::infer::{Engine, LoadOptions, ModelFiles};
use serde_json::json;

/// `VmHWM` and `VmRSS` of this process, in bytes.
fn rss() -> (u64, u64) {
    use chrysalis_runtime::sys;
    (sys::peak_rss().unwrap_or(0), sys::rss().unwrap_or(0))
}

/// This process's (user CPU s, system CPU s, minor faults, major faults) so far, from
/// /proc/self/stat (clock ticks at the usual 100 Hz).
fn cpu() -> [f64; 4] {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
    let f: Vec<f64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
    [at(11) / 100.0, at(12) / 100.0, at(7), at(9)]
}

fn delta(a: [f64; 4], b: [f64; 4]) -> serde_json::Value {
    json!({"user_s": b[0] - a[0], "sys_s": b[1] - a[1], "minor_faults": b[2] - a[2], "major_faults": b[3] - a[3]})
}

/// Drops `path` from the page cache (its pages are clean: nothing to write back).
fn drop_cache(path: &Path) -> Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .context("posix_fadvise(DONTNEED)")?;
    Ok(())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Reads the whole file with positioned reads, `cores()` threads each taking every n-th
/// 8 MiB block (as the unsealer's workers do), and discards the bytes.
fn read_all(path: &Path) -> Result<u64> {
    const BLOCK: u64 = 8 << 20;
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let n = cores() as u64;
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..n)
            .map(|w| {
                let f = &f;
                s.spawn(move || -> std::io::Result<()> {
                    let mut buf = vec![0u8; BLOCK as usize];
                    let mut at = w * BLOCK;
                    while at < len {
                        let want = (len - at).min(BLOCK) as usize;
                        f.read_exact_at(&mut buf[..want], at)?;
                        at += n * BLOCK;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(len)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle_path, key_path, mode] = args.as_slice() else {
        bail!("usage: bigmodel_load BUNDLE KEY_HEX_FILE runtime|split");
    };
    let bundle_path = Path::new(bundle_path);
    let key_hex = std::fs::read_to_string(key_path).with_context(|| format!("reading {key_path}"))?;
    let key_bytes: [u8; 32] = hex::decode(key_hex.trim())
        .context("key file: not hex")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("key file: not 32 bytes"))?;
    let key = DataKey::from_bytes(key_bytes);
    let bundle_bytes = std::fs::metadata(bundle_path)?.len();
    let out = match mode.as_str() {
        "runtime" => {
            drop_cache(bundle_path)?;
            let t = Instant::now();
            let bundle = Bundle::open(bundle_path)?;
            let open_s = t.elapsed().as_secs_f64();
            let measured = bundle.header.digest();
            let (t, c0) = (Instant::now(), cpu());
            let files = bundle.unseal(&key, &measured)?;
            let unseal_s = t.elapsed().as_secs_f64();
            let c1 = cpu();
            let plaintext = files.total_bytes();
            let (hwm_unseal, rss_unseal) = rss();
            // As `EngineSink::load` in main.rs: the unsealed buffers become the engine's files.
            let map: ModelFiles = files.files.into_iter().map(|f| (f.name, f.data)).collect();
            let opts = LoadOptions { kv_cache_bytes: Some(64 << 20), ..LoadOptions::new("bigmodel") };
            let t = Instant::now();
            let engine = Engine::load(map, &opts).context("loading the model")?;
            let load_s = t.elapsed().as_secs_f64();
            let c2 = cpu();
            let (hwm_load, rss_load) = rss();
            let info = engine.info().clone();
            drop(engine);
            json!({
                "mode": "runtime", "bundle_bytes": bundle_bytes, "plaintext_bytes": plaintext,
                "open_s": open_s, "unseal_s": unseal_s, "load_s": load_s,
                "vm_hwm_after_unseal": hwm_unseal, "vm_rss_after_unseal": rss_unseal,
                "vm_hwm_after_load": hwm_load, "vm_rss_after_load": rss_load,
                "unseal_cpu": delta(c0, c1), "load_cpu": delta(c1, c2),
                "weights": info.weights, "architecture": info.architecture, "vocab_size": info.vocab_size,
            })
        }
        "split" => {
            drop_cache(bundle_path)?;
            let t = Instant::now();
            read_all(bundle_path)?;
            let read_cold_s = t.elapsed().as_secs_f64();
            // Again, now from the page cache: what the decrypt passes below read from.
            let t = Instant::now();
            read_all(bundle_path)?;
            let read_warm_s = t.elapsed().as_secs_f64();
            let f = File::open(bundle_path)?;
            let unseal = |verify: bool| -> Result<(f64, u64)> {
                let o = UnsealOptions { verify_sha256: verify, ..UnsealOptions::default() };
                let t = Instant::now();
                let files = seal::unseal_file(&f, &key, &o)?;
                let s = t.elapsed().as_secs_f64();
                Ok((s, files.total_bytes()))
            };
            let (decrypt_s, plaintext) = unseal(false)?;
            let (decrypt_hash_s, _) = unseal(true)?;
            json!({
                "mode": "split", "bundle_bytes": bundle_bytes, "plaintext_bytes": plaintext, "threads": cores(),
                "read_cold_s": read_cold_s, "read_warm_s": read_warm_s, "decrypt_warm_s": decrypt_s, "decrypt_sha256_warm_s": decrypt_hash_s,
            })
        }
        other => bail!("unknown mode {other:?} (runtime or split)"),
    };
    println!("{out}");
    Ok(())
}
