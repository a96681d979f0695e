//! `attest policy --from out/measurements.json`: turn an image's published measurements
//! (written by `cargo xtask measure` when the image is rebuilt from source) into a ready
//! policy for `attest verify`, `attest release`, `attest serve-keys` and `attest proxy`.
//!
//! Trust: the measurements file should come from the owner's own reproducible rebuild;
//! this command only reformats it, and the result is checked by parsing it back.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

use super::Outcome;
use chrysalis_verify::policy::Policy;
use chrysalis_verify::snp::minimums;

/// Arguments of `attest policy`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// measurements.json from `cargo xtask measure`.
    #[arg(long)]
    pub from: PathBuf,
    /// Accept only these vCPU counts (default: all published).
    #[arg(long, value_delimiter = ',')]
    pub vcpus: Vec<u32>,
    /// Accept only these QEMU vCPU models, e.g. EPYC-Genoa (default: all published).
    #[arg(long, value_delimiter = ',')]
    pub vcpu_type: Vec<String>,
    /// Also accept the simulated TEE (tests and demos only) with this simulation root
    /// (hex or PEM file, e.g. out/sim/sim-root.pub.hex).
    #[arg(long)]
    pub allow_simulated_with_root: Option<PathBuf>,
    /// The model the runtime must serve: its sealed bundle's header SHA-384 (from
    /// `attest seal`, published by the model owner next to the image measurement).
    #[arg(long, required_unless_present = "any_model")]
    pub bundle_header_sha384: Option<String>,
    /// Pin no model: the policy then accepts a runtime serving any sealed bundle (for owners
    /// releasing keys with `attest release`, which pins the bundle through its key file).
    #[arg(long, conflicts_with = "bundle_header_sha384")]
    pub any_model: bool,
    /// Write the policy here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn quoted(xs: &[String]) -> String {
    let items: Vec<String> = xs.iter().map(|x| format!("  \"{x}\",")).collect();
    if items.is_empty() { "[]".into() } else { format!("[\n{}\n]", items.join("\n")) }
}

/// The `[snp]` section: VMPL 0, the alias check, and the per-product minimum TCB from
/// [`minimums::MIN_TCB_TABLE`] with each value's source as a comment.
fn snp_section() -> String {
    let mut out = String::from(
        "[snp]\n# The report must come from VMPL 0, and firmware that reports PLATFORM_INFO ALIAS_CHECK_COMPLETE\n\
         # (BadRAM mitigation, AMD-SB-3015) must report it set.\nmax_vmpl = 0\nallow_alias_check_incomplete = false\n",
    );
    out.push_str(&format!(
        "# Minimum TCB per product (REPORTED_TCB and LAUNCH_TCB), from chrysalis-verify's sourced table.\n\
         # A product not listed is refused. Turin: {}.\n",
        minimums::TURIN_UNPINNED
    ));
    for r in minimums::MIN_TCB_TABLE {
        let product = format!("{:?}", r.product).to_lowercase();
        out.push_str(&format!(
            "\n[snp.product_min_tcb.{product}]\n# bootloader, tee, snp: {}\n# microcode: {}\n",
            r.firmware_source, r.microcode_source
        ));
        if !r.unpinned.is_empty() {
            out.push_str(&format!("# not pinned by the table: {}\n", r.unpinned));
        }
        for (name, v) in
            [("bootloader", r.bootloader), ("tee", r.tee), ("snp", r.snp), ("microcode", r.microcode), ("fmc", r.fmc)]
        {
            if let Some(v) = v {
                out.push_str(&format!("{name} = {v}\n"));
            }
        }
    }
    out
}

/// Build the policy text.
pub fn policy_text(m: &Value, args: &PolicyArgs) -> Result<String> {
    let snp: Vec<String> = m["snp"]
        .as_array()
        .context("measurements.json has no snp list")?
        .iter()
        .filter(|v| args.vcpus.is_empty() || v["vcpus"].as_u64().is_some_and(|n| args.vcpus.iter().any(|&w| u64::from(w) == n)))
        .filter(|v| args.vcpu_type.is_empty() || v["vcpu_type"].as_str().is_some_and(|t| args.vcpu_type.iter().any(|w| w == t)))
        .filter_map(|v| v["measurement"].as_str().map(str::to_owned))
        .collect();
    if snp.is_empty() {
        bail!("no SEV-SNP measurement matches --vcpus/--vcpu-type");
    }
    let s =
        |p: &str| m.pointer(p).and_then(Value::as_str).map(str::to_owned).with_context(|| format!("measurements.json lacks {p}"));
    let (mrtd, rtmr1, rtmr2) = (s("/tdx/mrtd")?, s("/tdx/rtmr1")?, s("/tdx/rtmr2")?);
    let runtime = s("/runtime/binary_sha384")?;
    let bundle = match &args.bundle_header_sha384 {
        Some(h) => format!("# The model: header SHA-384 of the owner's sealed bundle.\nbundle_header_sha384 = [\"{h}\"]\n"),
        None => "# NO MODEL PINNED (--any-model): a runtime serving any sealed bundle passes.\n".to_owned(),
    };
    let simulation = match &args.allow_simulated_with_root {
        None => "allow_simulated = false\nmeasurements = []\n".to_owned(),
        Some(path) => {
            let root = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            format!(
                "# SIMULATED TEE ACCEPTED: this policy is for tests and demos, it proves nothing about isolation.\n\
                 allow_simulated = true\nroot_public_key = \"{}\"\nmeasurements = [\"{}\"]\n",
                root.trim(),
                s("/simulated/measurement")?
            )
        }
    };
    let gpu = match m.pointer("/gpu/require_gpu").and_then(Value::as_bool) {
        Some(true) => format!(
            "\n[gpu]\n# A GPU image: its evidence must carry GPU evidence, from the image's driver.\nrequire_gpu = true\n\
             allowed_driver_versions = [\"{}\"]\n# NVIDIA's RIMs and stored OCSP responses for this driver and your GPUs' VBIOS: without\n\
             # them every GPU is refused (its measurements cannot be compared with NVIDIA's values).\n\
             # rim_bundle = \"nvidia-rims\"\n",
            s("/gpu/driver")?
        ),
        _ => String::new(),
    };
    Ok(format!(
        "# Generated by `attest policy --from {from}` from the image's published measurements.\n\
         # Image: vmlinuz sha256 {k}, initramfs sha256 {i}\n# cmdline: {c}\n\n\
         allow_debug = false\n\n[measurements]\n# SEV-SNP launch digests (QEMU, OVMF AmdSev, kernel-hashes=on), one per vCPU count/model/features.\n\
         snp = {snp}\n# TDX (QEMU >= 10.1, pinned TDVF). RTMR0 depends on the host's VMM configuration: add it after a first launch.\n\
         tdx_mrtd = [\"{mrtd}\"]\ntdx_rtmr1 = [\"{rtmr1}\"]\ntdx_rtmr2 = [\"{rtmr2}\"]\n\n\
         [report_data]\nbinding = \"chrysalis-eventlog\"\n\n{snp_section}\n[tdx]\naccepted_tcb_statuses = [\"UpToDate\"]\n\n\
         [runtime]\nbinary_sha384 = [\"{runtime}\"]\n{bundle}\n[simulation]\n{simulation}{gpu}",
        from = args.from.display(),
        k = s("/image/vmlinuz_sha256")?,
        i = s("/image/initramfs_sha256")?,
        c = s("/image/cmdline")?,
        snp = quoted(&snp),
        snp_section = snp_section(),
    ))
}

/// Run `attest policy`.
pub(crate) fn run(args: PolicyArgs) -> Result<Outcome> {
    let text = std::fs::read_to_string(&args.from).with_context(|| format!("reading {}", args.from.display()))?;
    let m: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", args.from.display()))?;
    let policy = policy_text(&m, &args)?;
    Policy::from_toml(&policy).map_err(|e| anyhow::anyhow!("generated policy does not parse: {e}"))?;
    match &args.out {
        Some(p) => {
            std::fs::write(p, &policy).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("attest: policy written to {}", p.display());
        }
        None => out!("{policy}"),
    }
    Ok(Outcome::Ok)
}
