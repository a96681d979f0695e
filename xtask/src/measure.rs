//! `cargo xtask measure`: the values the hardware will report for this image, computed from
//! the built artifacts and the pinned firmware, written to `out/measurements.json`. Model
//! owners turn it into a policy with `attest policy --from out/measurements.json`.

use std::path::Path;

use anyhow::{Context, Result};
use chrysalis_measure::{snp, tdx};
use chrysalis_verify::sim::sim_launch_measurement;
use serde_json::{Value, json};
use sha2::{Digest, Sha384};

use crate::image::{CMDLINE, INITRAMFS, KERNEL};
use crate::util::sha256_file;

/// vCPU counts published (the SNP digest has one VMSA per vCPU).
pub const VCPUS: &[u32] = &[1, 2, 4, 8];
/// QEMU CPU models a provider may launch with (each has its own CPUID signature in the VMSA).
pub const VCPU_TYPES: &[&str] = &["EPYC-v4", "EPYC-Milan", "EPYC-Genoa", "EPYC-Turin"];
/// SEV features: 0x1 = SNP active (QEMU < 9.2 / older hosts), 0x21 = plus DebugSwap (QEMU's
/// default where the host kernel offers it). The provider's host decides; both are published.
pub const GUEST_FEATURES: &[u64] = &[0x1, 0x21];

/// Compute every published value for the image in `out` (kernel, initramfs, cmdline).
pub fn compute(root: &Path, out: &Path) -> Result<Value> {
    let read = |n: &str| {
        std::fs::read(out.join(n)).with_context(|| format!("reading {} (run `cargo xtask image`)", out.join(n).display()))
    };
    let kernel = read(KERNEL)?;
    let initrd = read(INITRAMFS)?;
    let cmdline = String::from_utf8(read(CMDLINE)?).context("cmdline is not UTF-8")?;
    let fw = crate::firmware::ensure_firmware(root)?;
    let ovmf = std::fs::read(&fw.amd_sev)?;
    let tdvf = std::fs::read(&fw.intel_tdx)?;

    let ovmf_digest = snp::ovmf_digest(&ovmf).context("OVMF SEV metadata")?;
    let mut snp_values = Vec::new();
    for vcpu_type in VCPU_TYPES {
        let sig = snp::vcpu_sig_of(vcpu_type).with_context(|| format!("unknown vCPU type {vcpu_type}"))?;
        for &features in GUEST_FEATURES {
            for &vcpus in VCPUS {
                let d = snp::launch_digest(&snp::SnpLaunchInputs {
                    ovmf: &ovmf,
                    kernel: Some(&kernel),
                    initrd: Some(&initrd),
                    cmdline: &cmdline,
                    vcpus,
                    vcpu_sig: sig,
                    guest_features: features,
                    vmm: snp::VmmType::Qemu,
                    ovmf_digest: Some(ovmf_digest),
                })
                .context("SNP launch digest")?;
                snp_values.push(json!({
                    "vcpus": vcpus, "vcpu_type": vcpu_type, "guest_features": format!("{features:#x}"),
                    "vmm": "QEMU", "measurement": hex::encode(d),
                }));
            }
        }
    }
    let t = tdx::measure(&tdvf, &kernel, Some(&initrd), &cmdline).context("TDX measurements")?;
    let sim = sim_launch_measurement(&kernel, &initrd, &cmdline);
    let manifest: Value = serde_json::from_slice(&read("manifest.json")?).context("manifest.json")?;
    let runtime_sha384 = manifest["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "init (runtime)"))
        .and_then(|x| x["sha384"].as_str())
        .map(str::to_owned)
        .context("manifest has no runtime artifact")?;
    Ok(json!({
        "version": 1,
        "image": {
            "vmlinuz_sha256": sha256_file(&out.join(KERNEL))?,
            "initramfs_sha256": sha256_file(&out.join(INITRAMFS))?,
            "cmdline": cmdline,
        },
        "firmware": {
            "ovmf_amdsev_sha256": sha256_file(&fw.amd_sev)?,
            "tdvf_sha256": sha256_file(&fw.intel_tdx)?,
        },
        "snp": snp_values,
        "tdx": {
            "mrtd": hex::encode(t.mrtd),
            "rtmr1": hex::encode(t.rtmr1),
            "rtmr2": hex::encode(t.rtmr2),
            "rtmr0": null,
            "rtmr0_note": "RTMR0 depends on the VMM's ACPI tables, the memory size and layout (TD HOB) and the firmware's \
                           configuration volume: record it from a first launch on the provider's host (see attest/MEASUREMENT.md)",
            "assumes": "QEMU >= 10.1 direct kernel boot with the pinned TDVF (kernel passed unmodified as etc/boot/kernel)",
        },
        "simulated": {
            "measurement": hex::encode(sim),
            "note": "the Chrysalis simulated TEE (tests and the demo only); accepted only by policies with allow_simulated",
        },
        "runtime": {
            "binary_sha384": runtime_sha384,
            "cmdline_sha384": hex::encode(Sha384::digest(cmdline.as_bytes())),
        },
    }))
}

/// Write `measurements.json` of the image in `out/` (or of the GPU image in its folder, with
/// a `gpu` section that makes `attest policy --from` require GPU evidence from this driver)
/// and print a summary.
pub fn run(root: &Path, gpu: Option<crate::gpu::image::Runtime>) -> Result<()> {
    let out = root.join(gpu.map_or("out", |g| g.out_dir()));
    let mut m = compute(root, &out)?;
    if let Some(g) = gpu {
        m["gpu"] = json!({
            "runtime_features": g.features(),
            "driver": crate::gpu::DRIVER_VERSION,
            "require_gpu": true,
            "note": "the GPU image serves only after attesting a GPU in production CC mode (chrysalis.gpu=required, the \
                     published command line's default)",
        });
    }
    let path = out.join("measurements.json");
    std::fs::write(&path, serde_json::to_string_pretty(&m)? + "\n")?;
    println!("SEV-SNP (QEMU, EPYC-v4, guest features 0x1):");
    for v in m["snp"].as_array().into_iter().flatten() {
        if v["vcpu_type"] == "EPYC-v4" && v["guest_features"] == "0x1" {
            println!("  {} vCPU  {}", v["vcpus"], v["measurement"].as_str().unwrap_or_default());
        }
    }
    println!("TDX: MRTD  {}", m["tdx"]["mrtd"].as_str().unwrap_or_default());
    println!("     RTMR1 {}", m["tdx"]["rtmr1"].as_str().unwrap_or_default());
    println!("     RTMR2 {}", m["tdx"]["rtmr2"].as_str().unwrap_or_default());
    println!("simulated: {}", m["simulated"]["measurement"].as_str().unwrap_or_default());
    crate::util::say(format!("written to {}", path.display()));
    Ok(())
}
