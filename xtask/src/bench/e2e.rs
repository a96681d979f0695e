//! `cargo xtask bench e2e`: boot to first token. Per stage — QEMU start → /init → API
//! listening → evidence served → key received → unsealed → model loaded → first token —
//! median of N runs, with SmolLM2-135M-Instruct sealed on a read-only disk, the owner's
//! verification and key release in the loop, and the simulated TEE. Guest-side stages come
//! from the runtime's CLOCK_BOOTTIME milestones (/v1/health), host-side ones from the host
//! clock since QEMU started; both are reported.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrysalis_e2e::qemu::VmConfig;
use chrysalis_e2e::{owner, sim};
use chrysalis_proto::routes;
use serde_json::json;

use super::{median, write_result};
use crate::util::say;

/// Run the benchmark.
pub fn run(root: &Path, runs: usize) -> Result<()> {
    let (out, dir, sealed) = super::image_and_sealed_smollm2(root, "e2e")?;
    let mut rows = Vec::new();
    let mut accel = String::new();
    for i in 0..runs {
        let mut cfg = VmConfig::for_image(&out, &dir.join("vm"))?;
        cfg.disk = Some(sealed.bundle.clone());
        cfg.cmdline.push_str(" chrysalis.plaintext=1");
        let root_key = chrysalis_verify::sim::SimRoot::generate();
        let policy = owner::write_policy(&dir, &owner::sim_policy(&root_key.public_key(), &sim::measurement(&cfg)?, None))?;
        let mut vm = sim::boot(cfg, root_key, |_| {})?;
        accel = vm.accel.name().to_owned();
        vm.wait_for("READY", Duration::from_secs(600))?;
        let host_ready = vm.started.elapsed().as_secs_f64();
        owner::release(&vm.url(), &policy, &sealed.key_file)?;
        let host_released = vm.started.elapsed().as_secs_f64();
        let t = Instant::now();
        first_token(&vm.url())?;
        let host_first_token = vm.started.elapsed().as_secs_f64();
        let ttft = t.elapsed().as_secs_f64();
        let h: serde_json::Value = ureq::get(format!("{}{}", vm.url(), routes::HEALTH)).call()?.body_mut().read_json()?;
        let g = |p: &str| h.pointer(p).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let row = [
            g("/boot/init"),
            g("/boot/listen"),
            g("/milestones/evidence_served"),
            g("/milestones/key_received"),
            g("/milestones/unsealed"),
            g("/milestones/model_loaded"),
            host_ready,
            host_released,
            host_first_token,
            ttft,
            g("/milestones/plaintext_bytes"),
            g("/milestones/peak_rss_unsealed"),
            g("/milestones/peak_rss_loaded"),
            g("/milestones/rss_before_unseal"),
        ];
        say(format!("run {}: first token {host_first_token:.2} s after QEMU start", i + 1));
        rows.push(row);
        vm.press_power_button()?;
        vm.wait_exit(Duration::from_secs(60))?;
    }
    let col = |i: usize| median(&rows.iter().map(|r| r[i]).collect::<Vec<_>>());
    let names = [
        "guest: kernel start → /init",
        "guest: /init → API listening",
        "guest: API listening → evidence served",
        "guest: evidence served → key received",
        "guest: key received → unsealed (98 MB)",
        "guest: unsealed → model loaded",
    ];
    let guest: Vec<f64> = (0..6).map(col).collect();
    println!("\nboot to first token, {accel}, median of {} runs (seconds)", rows.len());
    let mut prev = 0.0;
    for (n, t) in names.iter().zip(&guest) {
        println!("  {n:<42} {:7.3}   (at {t:.3})", t - prev);
        prev = *t;
    }
    println!("  host: QEMU start → READY seen               {:7.3}", col(6));
    println!("  host: QEMU start → key released (owner)     {:7.3}", col(7));
    println!("  host: QEMU start → first token              {:7.3}", col(8));
    println!("  host: request → first token (TTFT)          {:7.3}", col(9));
    let (plain, unsealed, loaded, before) = (col(10), col(11), col(12), col(13));
    let mib = |b: f64| b / f64::from(1u32 << 20);
    println!(
        "  guest memory: runtime before the key {:.0} MiB; peak {:.0} MiB once unsealed, {:.0} MiB once loaded: \
         +{:.2}× and +{:.2}× the {:.0} MiB of plaintext",
        mib(before),
        mib(unsealed),
        mib(loaded),
        (unsealed - before) / plain,
        (loaded - before) / plain,
        mib(plain),
    );
    write_result(
        root,
        "e2e",
        &json!({
            "accelerator": accel,
            "runs": rows.len(),
            "model": "SmolLM2-135M-Instruct Q4_1 (sealed, 98 MB)",
            "median_s": {
                "guest_init": guest[0], "guest_listen": guest[1], "guest_evidence_served": guest[2],
                "guest_key_received": guest[3], "guest_unsealed": guest[4], "guest_model_loaded": guest[5],
                "host_ready": col(6), "host_key_released": col(7), "host_first_token": col(8), "ttft": col(9),
            },
            "median_bytes": {"plaintext": plain, "guest_rss_before_unseal": before, "guest_peak_rss_unsealed": unsealed,
                             "guest_peak_rss_loaded": loaded},
            "all": rows,
        }),
    )
}

fn first_token(url: &str) -> Result<()> {
    let body = json!({"model": "smollm2-135m-instruct", "stream": true, "max_tokens": 1, "temperature": 0,
                      "messages": [{"role": "user", "content": "Hello"}]});
    let resp = ureq::post(format!("{url}{}", routes::CHAT_COMPLETIONS)).send_json(body).context(routes::CHAT_COMPLETIONS)?;
    for line in BufReader::new(resp.into_body().into_reader()).lines() {
        if line?.contains("\"content\"") {
            return Ok(());
        }
    }
    anyhow::bail!("no token in the stream")
}
