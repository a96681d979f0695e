//! Our measurements on real artifacts: the pinned firmware images committed in
//! `image/firmware/bin/`, a real kernel, and the reference implementation
//! `sev-snp-measure` from PyPI.
//!
//! Environment (set by the project's test command):
//! - `CHRYSALIS_PYTHON` (required): a Python with `attest/measure/measure-requirements.txt`
//!   installed, e.g. `.venv/bin/python`.
//! - `CHRYSALIS_KERNEL` (optional): the image's kernel (Debian's
//!   `vmlinuz-6.12.117+deb12-cloud-amd64`); without it a generated stand-in is used for the
//!   SNP comparison (the SNP digest depends on the kernel only through its SHA-256) and the
//!   Authenticode check is skipped with a note.
//! - `CHRYSALIS_INITRD` (optional): the initrd; a generated one otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

use chrysalis_measure::snp::{self, SnpLaunchInputs, VmmType};
use chrysalis_measure::tdx;
use sha2::{Digest, Sha256};

const CMDLINE: &str = "console=hvc0 quiet panic=-1 chrysalis.mode=serve";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn firmware(name: &str) -> (PathBuf, Vec<u8>) {
    let p = root().join(format!("image/firmware/bin/{name}.fd"));
    let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask firmware`)", p.display()));
    (p, b)
}

/// Deterministic filler standing in for an artifact that was not provided.
fn generated(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest([seed]).to_vec();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    out.truncate(len);
    out
}

/// The file named by `var`, or a generated stand-in written to the target dir.
fn artifact(var: &str, stand_in: usize, seed: u8) -> (PathBuf, Vec<u8>) {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{var}={}: {e}", p.display()));
        return (p, b);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let p = dir.join(format!("measure-stand-in-{seed}.bin"));
    let b = generated(stand_in, seed);
    std::fs::write(&p, &b).unwrap();
    eprintln!("note: {var} not set, using a generated {stand_in}-byte stand-in");
    (p, b)
}

fn python() -> PathBuf {
    let p = std::env::var_os("CHRYSALIS_PYTHON").unwrap_or_else(|| {
        panic!(
            "CHRYSALIS_PYTHON is not set: create a venv with `python3 -m venv .venv && \
             .venv/bin/pip install -r attest/measure/measure-requirements.txt` and set \
             CHRYSALIS_PYTHON=$PWD/.venv/bin/python"
        )
    });
    PathBuf::from(p)
}

fn sev_snp_measure(args: &[String]) -> String {
    let py = python();
    let out = Command::new(&py)
        .args(["-m", "sevsnpmeasure.cli"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {} -m sevsnpmeasure.cli: {e}", py.display()));
    assert!(
        out.status.success(),
        "sev-snp-measure failed ({}): {} (is attest/measure/measure-requirements.txt installed in {}?)",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        py.display()
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn snp_digest_agrees_with_sev_snp_measure_for_1_2_4_vcpus() {
    let (ovmf_path, ovmf) = firmware("ovmf-amdsev");
    let (kernel_path, kernel) = artifact("CHRYSALIS_KERNEL", 11 << 20, 1);
    let (initrd_path, initrd) = artifact("CHRYSALIS_INITRD", 3 << 20, 2);
    println!(
        "ovmf sha256 {}\nkernel sha256 {}\ninitrd sha256 {}\ncmdline {CMDLINE:?}",
        hex::encode(Sha256::digest(&ovmf)),
        hex::encode(Sha256::digest(&kernel)),
        hex::encode(Sha256::digest(&initrd))
    );
    for features in [0x1u64, 0x21] {
        for vcpus in [1u32, 2, 4] {
            let ours = snp::launch_digest(&SnpLaunchInputs {
                ovmf: &ovmf,
                kernel: Some(&kernel),
                initrd: Some(&initrd),
                cmdline: CMDLINE,
                vcpus,
                vcpu_sig: snp::vcpu_sig_of("EPYC-v4").unwrap(),
                guest_features: features,
                vmm: VmmType::Qemu,
                ovmf_digest: None,
            })
            .unwrap();
            let theirs = sev_snp_measure(&[
                "--mode".into(),
                "snp".into(),
                "--vcpus".into(),
                vcpus.to_string(),
                "--vcpu-type".into(),
                "EPYC-v4".into(),
                "--ovmf".into(),
                ovmf_path.display().to_string(),
                "--kernel".into(),
                kernel_path.display().to_string(),
                "--initrd".into(),
                initrd_path.display().to_string(),
                "--append".into(),
                CMDLINE.into(),
                "--guest-features".into(),
                format!("{features:#x}"),
            ]);
            println!("vcpus {vcpus} features {features:#x}: ours {} sev-snp-measure {theirs}", hex::encode(ours));
            assert_eq!(hex::encode(ours), theirs, "vcpus {vcpus} features {features:#x}");
        }
    }
    // The OVMF-only seed agrees too.
    let theirs = sev_snp_measure(&["--mode".into(), "snp:ovmf-hash".into(), "--ovmf".into(), ovmf_path.display().to_string()]);
    assert_eq!(hex::encode(snp::ovmf_digest(&ovmf).unwrap()), theirs);
}

#[test]
fn snp_digest_changes_with_any_byte_of_kernel_initrd_or_cmdline() {
    let (_, ovmf) = firmware("ovmf-amdsev");
    let kernel = generated(64 << 10, 3);
    let initrd = generated(32 << 10, 4);
    let digest = |k: &[u8], i: &[u8], c: &str| {
        snp::launch_digest(&SnpLaunchInputs {
            ovmf: &ovmf,
            kernel: Some(k),
            initrd: Some(i),
            cmdline: c,
            vcpus: 2,
            vcpu_sig: snp::vcpu_sig_of("EPYC-v4").unwrap(),
            guest_features: 0x21,
            vmm: VmmType::Qemu,
            ovmf_digest: None,
        })
        .unwrap()
    };
    let base = digest(&kernel, &initrd, CMDLINE);
    for pos in (0..kernel.len()).step_by(4093).chain([kernel.len() - 1]) {
        let mut k = kernel.clone();
        k[pos] ^= 0x01;
        assert_ne!(digest(&k, &initrd, CMDLINE), base, "kernel byte {pos}");
    }
    for pos in (0..initrd.len()).step_by(4093).chain([initrd.len() - 1]) {
        let mut i = initrd.clone();
        i[pos] ^= 0x80;
        assert_ne!(digest(&kernel, &i, CMDLINE), base, "initrd byte {pos}");
    }
    for pos in 0..CMDLINE.len() {
        let mut c = CMDLINE.as_bytes().to_vec();
        c[pos] = if c[pos] == b'x' { b'y' } else { b'x' };
        assert_ne!(digest(&kernel, &initrd, std::str::from_utf8(&c).unwrap()), base, "cmdline byte {pos}");
    }
    assert_ne!(digest(&kernel, &initrd, &format!("{CMDLINE} ")), base, "appended space");
    assert_ne!(digest(&kernel[..kernel.len() - 1], &initrd, CMDLINE), base, "truncated kernel");
}

#[test]
fn tdx_mrtd_of_the_pinned_tdvf_is_stable_and_sensitive() {
    let (_, fw) = firmware("ovmf-inteltdx");
    let sections = tdx::tdvf_sections(&fw).unwrap();
    assert!(sections.iter().any(|s| s.kind == tdx::TdvfSectionType::Bfv && s.attributes & tdx::ATTR_MR_EXTEND != 0));
    let m = tdx::mrtd(&fw).unwrap();
    println!("ovmf-inteltdx mrtd {}", hex::encode(m));
    for s in &sections {
        println!("  {s:?}");
    }
    // A byte of the measured BFV changes MRTD; the order of adds and extends matters.
    let bfv = sections.iter().find(|s| s.kind == tdx::TdvfSectionType::Bfv).unwrap();
    let mut f = fw.clone();
    f[bfv.data_offset as usize + 0x1000] ^= 1;
    assert_ne!(tdx::mrtd(&f).unwrap(), m);
    assert_ne!(tdx::mrtd_with_order(&fw, tdx::PageAddOrder::TwoPass).unwrap(), m);
}

/// The signed Debian kernel carries the Authenticode SHA-256 its signer computed: our PE
/// hash procedure (the one edk2 uses for RTMR1, there with SHA-384) must reproduce it.
#[test]
fn pe_hash_reproduces_the_kernel_signature_digest() {
    let Some(p) = std::env::var_os("CHRYSALIS_KERNEL") else {
        eprintln!("note: CHRYSALIS_KERNEL not set; the Authenticode cross-check needs the real kernel");
        return;
    };
    let kernel = std::fs::read(&p).unwrap();
    // SpcIndirectDataContent's DigestInfo: AlgorithmIdentifier(sha256) then OCTET STRING(32).
    let marker = [0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];
    let at = kernel.windows(marker.len()).position(|w| w == marker).expect("kernel carries no sha256 authenticode signature");
    let signed = &kernel[at + marker.len()..at + marker.len() + 32];
    let ours = tdx::pe_image_hash::<Sha256>(&kernel).unwrap();
    assert_eq!(hex::encode(ours), hex::encode(signed));
    let rtmr1 = tdx::rtmr1(&kernel).unwrap();
    let (_, tdvf) = firmware("ovmf-inteltdx");
    let (_, initrd) = artifact("CHRYSALIS_INITRD", 3 << 20, 2);
    let all = tdx::measure(&tdvf, &kernel, Some(&initrd), CMDLINE).unwrap();
    assert_eq!(all.rtmr1, rtmr1);
    println!("tdx mrtd {}\ntdx rtmr2 {}", hex::encode(all.mrtd), hex::encode(all.rtmr2));
    println!("kernel pe sha384 {}\nrtmr1 {}", hex::encode(tdx::pe_image_digest(&kernel).unwrap()), hex::encode(rtmr1));
}

#[test]
fn tdx_rtmrs_change_with_any_measured_byte() {
    let kernel = std::env::var_os("CHRYSALIS_KERNEL").map(|p| std::fs::read(p).unwrap());
    let initrd = generated(32 << 10, 5);
    let base2 = tdx::rtmr2(CMDLINE, Some(&initrd));
    for pos in (0..initrd.len()).step_by(997) {
        let mut i = initrd.clone();
        i[pos] ^= 1;
        assert_ne!(tdx::rtmr2(CMDLINE, Some(&i)), base2, "initrd byte {pos}");
    }
    for pos in 0..CMDLINE.len() {
        let mut c = CMDLINE.as_bytes().to_vec();
        c[pos] ^= 0x20;
        assert_ne!(tdx::rtmr2(std::str::from_utf8(&c).unwrap(), Some(&initrd)), base2, "cmdline byte {pos}");
    }
    let Some(kernel) = kernel else {
        eprintln!("note: CHRYSALIS_KERNEL not set; RTMR1 sensitivity is covered by the unit tests only");
        return;
    };
    let base1 = tdx::rtmr1(&kernel).unwrap();
    // Every sampled byte outside the PE checksum and certificate table changes RTMR1 (or
    // makes the image one OVMF cannot load at all).
    let sig_len = u32::from_le_bytes(kernel[0x3c..0x40].try_into().unwrap()) as usize; // e_lfanew
    let opt = sig_len + 24;
    let excluded = |p: usize| (opt + 64..opt + 68).contains(&p) || (opt + 144..opt + 152).contains(&p);
    let cert_len = u32::from_le_bytes(kernel[opt + 148..opt + 152].try_into().unwrap()) as usize;
    for pos in (0..kernel.len() - cert_len).step_by(499_979).filter(|p| !excluded(*p)) {
        let mut k = kernel.clone();
        k[pos] ^= 1;
        assert_ne!(tdx::rtmr1(&k).ok(), Some(base1), "kernel byte {pos}");
    }
}
