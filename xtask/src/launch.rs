//! QEMU command lines for providers: the image as an SEV-SNP or TDX guest on a confidential
//! host, with the sealed bundle as a read-only virtio disk, the API on a forwarded port and
//! (optionally) a GPU passed through with VFIO. These lines need QEMU >= 9.1 (SNP) or
//! >= 10.1 (TDX) and a host kernel with SNP/TDX enabled; they cannot run on the build
//! machines, which is why `cargo xtask run` prints them and runs them only with `--exec`.

use std::path::Path;

/// Which confidential-computing technology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tee {
    /// AMD SEV-SNP (`sev-snp-guest`, OVMF AmdSev build with kernel-hashes).
    Snp,
    /// Intel TDX (`tdx-guest`, TDVF).
    Tdx,
    /// The labelled simulated TEE (any QEMU, TCG or KVM).
    Sim,
    /// No TEE and no evidence (boot and health only).
    None,
}

/// Inputs of a provider launch line.
pub struct Launch<'a> {
    /// `out/` with vmlinuz, initramfs.cpio.gz, cmdline.
    pub out: &'a Path,
    /// Firmware for SNP/TDX.
    pub firmware: Option<&'a Path>,
    /// Sealed bundle.
    pub bundle: Option<&'a Path>,
    /// vCPUs (part of the SNP measurement: one VMSA per vCPU).
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Host port for the API.
    pub port: u16,
    /// PCI address of a GPU to pass through (VFIO, iommufd).
    pub gpu: Option<&'a str>,
}

/// The QEMU arguments for SNP or TDX (the caller prints them with the cmdline quoted).
pub fn confidential_args(tee: Tee, l: &Launch<'_>) -> Vec<String> {
    let mem = format!("{}M", l.memory_mib);
    let fw = l.firmware.map(|p| p.display().to_string()).unwrap_or_else(|| "FIRMWARE.fd".into());
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    match tee {
        Tee::Snp => {
            push(&["-accel", "kvm", "-cpu", "EPYC-v4"]);
            push(&["-machine", "q35,confidential-guest-support=sev0,memory-backend=ram0,vmport=off"]);
            push(&["-object", &format!("memory-backend-memfd,id=ram0,size={mem},share=true,prealloc=false")]);
            // cbitpos 51 / reduced-phys-bits 1 hold for Milan, Genoa and Turin; kernel-hashes=on
            // makes OVMF measure kernel, initrd and cmdline into the launch digest.
            push(&["-object", "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on"]);
            push(&["-bios", &fw]);
        }
        Tee::Tdx => {
            push(&["-accel", "kvm", "-cpu", "host"]);
            push(&["-machine", "q35,kernel-irqchip=split,confidential-guest-support=tdx0,memory-backend=ram0"]);
            push(&["-object", &format!("memory-backend-ram,id=ram0,size={mem}")]);
            push(&["-object", "tdx-guest,id=tdx0"]);
            push(&["-bios", &fw]);
        }
        Tee::Sim | Tee::None => {}
    }
    push(&["-smp", &l.vcpus.to_string(), "-m", &mem, "-nodefaults", "-no-reboot", "-nographic", "-serial", "stdio"]);
    push(&["-kernel", &l.out.join("vmlinuz").display().to_string()]);
    push(&["-initrd", &l.out.join("initramfs.cpio.gz").display().to_string()]);
    let cmdline = std::fs::read_to_string(l.out.join("cmdline")).unwrap_or_default();
    push(&["-append", cmdline.trim()]);
    push(&["-netdev", &format!("user,id=net0,hostfwd=tcp:127.0.0.1:{}-:8000", l.port)]);
    push(&["-device", "virtio-net-pci,netdev=net0,romfile="]);
    if let Some(b) = l.bundle {
        push(&["-drive", &format!("file={},if=none,id=bundle,format=raw,readonly=on", b.display())]);
        push(&["-device", "virtio-blk-pci,drive=bundle"]);
    }
    if let Some(bdf) = l.gpu {
        // H100 in CC mode: VFIO through iommufd, and a 64-bit MMIO window large enough for
        // its BARs (OVMF's default is too small for 80 GB cards).
        push(&["-object", "iommufd,id=iommufd0"]);
        push(&["-device", &format!("pcie-root-port,id=rp0,bus=pcie.0,chassis=1")]);
        push(&["-device", &format!("vfio-pci,host={bdf},bus=rp0,iommufd=iommufd0")]);
        push(&["-fw_cfg", "name=opt/ovmf/X-PciMmio64Mb,string=262144"]);
    }
    a
}
