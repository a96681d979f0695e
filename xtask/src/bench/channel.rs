//! `cargo xtask bench channel`: what the end-user channel costs. One VM (simulated TEE,
//! SmolLM2-135M-Instruct (or, with `--tiny`, the tiny seeded Llama) sealed on a disk, configured with `chrysalis.plaintext=1` so that
//! both paths are open), the key released, then alternating streamed chat completions sent
//! (a) straight to the runtime's plain API and (b) through `attest proxy` (HPKE-sealed
//! request, sealed SSE records, receipt checked). Same HTTP client, same prompt, same
//! greedy decoding; reports time to first token and tokens/s for both and their ratios.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrysalis_attest::proxy::{self, ProxyArgs};
use chrysalis_e2e::qemu::VmConfig;
use chrysalis_e2e::{owner, sim};
use chrysalis_proto::routes;
use chrysalis_verify::PolicyVerifier;
use chrysalis_verify::policy::Policy;
use serde_json::json;

use super::{median, write_result};
use crate::util::say;

/// One streamed completion: seconds to the first content chunk, and content chunks per
/// second after it.
struct Sample {
    ttft: f64,
    tokens_per_s: f64,
}

/// Run the benchmark.
pub fn run(root: &Path, runs: usize, max_tokens: u32, tiny: bool) -> Result<()> {
    let (out, dir, sealed, model_name) = if tiny {
        // The channel's cost is per request and per record, not per FLOP: the tiny seeded
        // Llama (`cargo xtask models`) makes TCG runs finish in minutes, and shows the
        // channel's share at its largest.
        crate::deps::ensure_qemu()?;
        crate::image::build(root, &crate::image::Options::defaults(root))?;
        let out = root.join("out");
        let dir = out.join("bench/channel-tiny");
        std::fs::create_dir_all(&dir)?;
        let sealed = owner::seal(&owner::model("tiny-llama")?, &dir, "tiny-llama")?;
        (out, dir, sealed, "tiny-llama")
    } else {
        let (out, dir, sealed) = super::image_and_sealed_smollm2(root, "channel")?;
        (out, dir, sealed, "smollm2-135m-instruct")
    };
    let mut cfg = VmConfig::for_image(&out, &dir.join("vm"))?;
    cfg.disk = Some(sealed.bundle.clone());
    cfg.cmdline.push_str(" chrysalis.plaintext=1");
    let sim_root = chrysalis_verify::sim::SimRoot::generate();
    let policy_path = owner::write_policy(
        &dir,
        &owner::sim_policy(&sim_root.public_key(), &sim::measurement(&cfg)?, Some(&sealed.header_sha384)),
    )?;
    let mut vm = sim::boot(cfg, sim_root, |_| {})?;
    let accel = vm.accel.name().to_owned();
    vm.wait_for("READY", Duration::from_secs(600))?;
    owner::release(&vm.url(), &policy_path, &sealed.key_file)?;
    let policy = Policy::load(&policy_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let args = ProxyArgs { url: vm.url(), reattest_secs: 3600, ..ProxyArgs::embedded(&policy_path) };
    let running = proxy::start(&args, Box::new(PolicyVerifier::new(policy)))?;
    let direct = vm.url();
    let sealed_url = format!("http://{}", running.addr);
    // Warm both paths (first request loads caches; the proxy attests once).
    stream(&direct, model_name, max_tokens)?;
    stream(&sealed_url, model_name, max_tokens)?;
    let (mut plain, mut chan) = (Vec::new(), Vec::new());
    for i in 0..runs {
        plain.push(stream(&direct, model_name, max_tokens)?);
        chan.push(stream(&sealed_url, model_name, max_tokens)?);
        say(format!("run {}: ttft plain {:.3} s, channel {:.3} s", i + 1, plain[i].ttft, chan[i].ttft));
    }
    drop(running);
    vm.press_power_button()?;
    vm.wait_exit(Duration::from_secs(60))?;

    let med = |v: &[Sample], f: fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let (pt, ct) = (med(&plain, |s| s.ttft), med(&chan, |s| s.ttft));
    let (pr, cr) = (med(&plain, |s| s.tokens_per_s), med(&chan, |s| s.tokens_per_s));
    println!("\nencrypted channel vs plain API, {accel}, {model_name}, {max_tokens} tokens, median of {runs}");
    println!("  {:<22} {:>10} {:>10} {:>8}", "", "plain", "channel", "ratio");
    println!("  {:<22} {:>10.3} {:>10.3} {:>7.3}x", "time to first token s", pt, ct, ct / pt);
    println!("  {:<22} {:>10.1} {:>10.1} {:>7.3}x", "tokens/s", pr, cr, cr / pr);
    write_result(
        root,
        "channel",
        &json!({
            "accelerator": accel, "runs": runs, "max_tokens": max_tokens,
            "model": model_name,
            "median": {
                "plain_ttft_s": pt, "channel_ttft_s": ct, "ttft_ratio": ct / pt,
                "plain_tokens_per_s": pr, "channel_tokens_per_s": cr, "tokens_per_s_ratio": cr / pr,
            },
            "plain": plain.iter().map(|s| [s.ttft, s.tokens_per_s]).collect::<Vec<_>>(),
            "channel": chan.iter().map(|s| [s.ttft, s.tokens_per_s]).collect::<Vec<_>>(),
        }),
    )
}

/// Stream one chat completion from `base` and time it.
fn stream(base: &str, model: &str, max_tokens: u32) -> Result<Sample> {
    let body = json!({"model": model, "stream": true, "max_tokens": max_tokens, "temperature": 0,
                      "messages": [{"role": "user", "content": "Write a short poem about the sea."}]});
    let start = Instant::now();
    let resp = ureq::post(format!("{base}{}", routes::CHAT_COMPLETIONS)).send_json(body).context(routes::CHAT_COMPLETIONS)?;
    let (mut first, mut last, mut chunks) = (None, start.elapsed(), 0u32);
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        let line = line?;
        if line.contains("\"content\"") && !line.contains("\"content\":\"\"") {
            first.get_or_insert_with(|| start.elapsed());
            last = start.elapsed();
            chunks += 1;
        }
    }
    let Some(first) = first else { bail!("{base}: the stream carried no tokens") };
    let gen_s = (last - first).as_secs_f64();
    let tokens_per_s = if chunks > 1 && gen_s > 0.0 { f64::from(chunks - 1) / gen_s } else { 0.0 };
    Ok(Sample { ttft: first.as_secs_f64(), tokens_per_s })
}
