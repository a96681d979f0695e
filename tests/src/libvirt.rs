//! The image as a libvirt domain: [`domain_xml`] renders the domain XML from the same
//! [`VmConfig`] that [`VmConfig::qemu_args`] turns into a QEMU line, so the launch shape that
//! the published measurements assume (vCPUs, memory, q35, CPU model, firmware, kernel, initrd,
//! cmdline) has one source. Variants: a plain local boot (direct kernel boot, TCG or KVM), an
//! SEV-SNP guest (`<launchSecurity type='sev-snp'>`, kernel hashes, the pinned AmdSev OVMF),
//! a TDX guest (`<launchSecurity type='tdx'>`, the pinned TDVF), each optionally with a GPU
//! passed through (`<hostdev>`).
//!
//! Networking ([`Network`]): a user-mode network with a port forward from 127.0.0.1 on the
//! host to the runtime's port, which needs no bridge, firewall rules or dnsmasq on the host and
//! keeps the guest's static address from the cmdline (`chrysalis.ip=10.0.2.15/24`, gateway
//! 10.0.2.2, QEMU's user-network defaults). With libvirt >= 9.2 that is `<interface
//! type='user'>` with the passt backend and `<portForward>`; Debian 12's libvirt 9.0 rejects
//! the passt backend and its SLIRP interface cannot forward a port, so there the domain passes
//! the QEMU harness's own `-netdev user,hostfwd=…` through `<qemu:commandline>`.
//!
//! The SNP and TDX domains need libvirt >= 10.5 (SNP) or >= 11.x (TDX) on the provider's host;
//! Debian 12's libvirt 9.0 defines only the plain domain.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::qemu::{self, Accel, Confidential, HardwareTee, SIM_TEE_PORT, VmConfig};

/// SEV-SNP guest policy in the domain: bit 17 (reserved, must be 1) and bit 16 (SMT
/// allowed); debugging (bit 19) and migration agents (bit 18) off. The policy is not part of
/// the launch digest; the verifier checks it in the report.
pub const SNP_POLICY: u64 = 0x30000;

/// TDX TD attributes in the domain: SEPT_VE_DISABLE (bit 28) set, DEBUG (bit 0) off.
pub const TDX_POLICY: u64 = 0x1000_0000;

/// What [`domain_xml`] needs besides the [`VmConfig`].
#[derive(Clone, Debug)]
pub struct DomainOptions {
    /// Domain name.
    pub name: String,
    /// TCG (`type='qemu'`) or KVM (`type='kvm'`) for a plain boot; confidential guests are KVM.
    pub accel: Accel,
    /// Host port on 127.0.0.1 forwarded to the guest's API port.
    pub host_port: u16,
    /// Serial console into this file; `None`: a pty (`virsh console`).
    pub serial_log: Option<PathBuf>,
    /// The QEMU binary (`<emulator>`); `None`: libvirt's default.
    pub emulator: Option<PathBuf>,
    /// How the API port reaches the host.
    pub network: Network,
}

/// The domain's user-mode network with a port forward from 127.0.0.1 to the runtime's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// `<interface type='user'>` with the passt backend and a `<portForward>` (libvirt >=
    /// 9.2, and every libvirt that can launch SNP or TDX guests).
    Passt,
    /// QEMU's own `-netdev user,hostfwd=…` (as the QEMU harness), passed with
    /// `<qemu:commandline>`: for older libvirt (Debian 12's 9.0 has no passt backend, and its
    /// SLIRP interface cannot forward a port). libvirt marks such a domain "custom-argv".
    QemuUser,
}

/// The network [`domain_xml`] should use with libvirt `version` (`virsh --version`, e.g.
/// `9.0.0`): passt from 9.2 on, QEMU's user network before.
pub fn network_for(version: &str) -> Network {
    let mut v = version.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if (major, minor) >= (9, 2) { Network::Passt } else { Network::QemuUser }
}

/// Which kind of domain `cfg` describes: `cpu`, `snp` or `tdx`, with `-gpu` when a GPU is
/// passed through (the file name under `out/libvirt/`).
pub fn variant_name(cfg: &VmConfig) -> String {
    let base = match &cfg.confidential {
        None => "cpu",
        Some(Confidential { tee: HardwareTee::Snp, .. }) => "snp",
        Some(Confidential { tee: HardwareTee::Tdx, .. }) => "tdx",
    };
    if cfg.gpu.is_some() { format!("{base}-gpu") } else { base.to_owned() }
}

/// XML-escape text and attribute values.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

fn path(p: &Path) -> String {
    escape(&p.display().to_string())
}

/// A PCI address `DDDD:BB:SS.F` (or `BB:SS.F`) as libvirt's `<address>` attributes.
pub fn pci_address(bdf: &str) -> Result<String> {
    let bad = || anyhow::anyhow!("GPU address {bdf:?}: expected a PCI address such as 0000:41:00.0");
    let (rest, function) = bdf.rsplit_once('.').ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (domain, bus, slot) = match parts.as_slice() {
        [d, b, s] => (*d, *b, *s),
        [b, s] => ("0000", *b, *s),
        _ => return Err(bad()),
    };
    let hex = |s: &str, max: u32| u32::from_str_radix(s, 16).ok().filter(|v| *v <= max && !s.is_empty());
    let (Some(d), Some(b), Some(s), Some(f)) = (hex(domain, 0xffff), hex(bus, 0xff), hex(slot, 0x1f), hex(function, 7)) else {
        return Err(bad());
    };
    Ok(format!("domain='{d:#06x}' bus='{b:#04x}' slot='{s:#04x}' function='{f:#x}'"))
}

/// The libvirt domain XML for `cfg`. Shape (vCPUs, memory, machine, CPU model, firmware,
/// kernel, initrd, cmdline) as in [`VmConfig::qemu_args`].
pub fn domain_xml(cfg: &VmConfig, opts: &DomainOptions) -> Result<String> {
    let mut x = String::new();
    let kvm = cfg.confidential.is_some() || opts.accel == Accel::Kvm;
    let domain_type = if kvm { "kvm" } else { "qemu" };
    match opts.network {
        Network::Passt => {
            let _ = writeln!(x, "<domain type='{domain_type}'>");
        }
        Network::QemuUser => {
            let _ = writeln!(x, "<domain type='{domain_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>");
        }
    }
    let _ = writeln!(x, "  <name>{}</name>", escape(&opts.name));
    let _ = writeln!(
        x,
        "  <description>Chrysalis image ({}), rendered by cargo xtask run --libvirt</description>",
        variant_name(cfg)
    );
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", cfg.memory_mib);
    let _ = writeln!(x, "  <currentMemory unit='MiB'>{}</currentMemory>", cfg.memory_mib);
    if cfg.confidential.as_ref().is_some_and(|c| c.tee == HardwareTee::Snp) {
        // As the QEMU line: guest RAM from a shared memfd.
        x.push_str("  <memoryBacking>\n    <source type='memfd'/>\n    <access mode='shared'/>\n  </memoryBacking>\n");
    }
    let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", cfg.cpus);
    if cfg.gpu.is_some() {
        // A 64-bit MMIO window large enough for an 80 GB card's BARs (as the QEMU line).
        let _ = writeln!(
            x,
            "  <sysinfo type='fwcfg'>\n    <entry name='{}'>{}</entry>\n  </sysinfo>",
            qemu::GPU_MMIO64_FWCFG.0,
            qemu::GPU_MMIO64_FWCFG.1
        );
    }
    x.push_str("  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n");
    if let Some(c) = &cfg.confidential {
        // `type='rom'` is QEMU's -bios: the firmware image as it is measured.
        let _ = writeln!(x, "    <loader type='rom' readonly='yes'>{}</loader>", path(&c.firmware));
    }
    let _ = writeln!(x, "    <kernel>{}</kernel>", path(&cfg.kernel));
    let _ = writeln!(x, "    <initrd>{}</initrd>", path(&cfg.initrd));
    let _ = writeln!(x, "    <cmdline>{}</cmdline>", escape(&cfg.cmdline));
    x.push_str("  </os>\n  <features>\n    <acpi/>\n");
    match &cfg.confidential {
        Some(Confidential { tee: HardwareTee::Snp, .. }) => x.push_str("    <vmport state='off'/>\n"),
        // kernel-irqchip=split.
        Some(Confidential { tee: HardwareTee::Tdx, .. }) => x.push_str("    <ioapic driver='qemu'/>\n"),
        None => {}
    }
    x.push_str("  </features>\n");
    match &cfg.confidential {
        Some(Confidential { tee: HardwareTee::Snp, .. }) => {
            // The CPU model is measured (its CPUID signature is in every VMSA).
            let _ = writeln!(
                x,
                "  <cpu mode='custom' match='exact' check='none'>\n    <model fallback='forbid'>{}</model>\n  </cpu>",
                qemu::SNP_CPU_MODEL
            );
        }
        Some(Confidential { tee: HardwareTee::Tdx, .. }) => x.push_str("  <cpu mode='host-passthrough'/>\n"),
        None if kvm => x.push_str("  <cpu mode='host-passthrough'/>\n"),
        None => x.push_str("  <cpu mode='maximum'/>\n"),
    }
    x.push_str("  <clock offset='utc'/>\n");
    // As QEMU's -no-reboot: the guest powering off or rebooting ends the domain.
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");
    if let Some(e) = &opts.emulator {
        let _ = writeln!(x, "    <emulator>{}</emulator>", path(e));
    }
    match &opts.serial_log {
        Some(log) => {
            let _ = writeln!(
                x,
                "    <serial type='file'>\n      <source path='{}' append='off'/>\n      <target port='0'/>\n    </serial>",
                path(log)
            );
        }
        None => x.push_str("    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n"),
    }
    if opts.network == Network::Passt {
        let (addr, prefix) = guest_address(&cfg.cmdline);
        let _ = writeln!(
            x,
            "    <interface type='user'>\n      <backend type='passt'/>\n      <ip family='ipv4' address='{}' prefix='{}'/>\n      \
             <portForward proto='tcp' address='127.0.0.1'>\n        <range start='{}' to='{}'/>\n      </portForward>\n      \
             <model type='virtio'/>\n      <rom enabled='no'/>\n    </interface>",
            escape(&addr),
            prefix,
            opts.host_port,
            cfg.guest_port
        );
    }
    if let Some(disk) = &cfg.disk {
        let _ = writeln!(
            x,
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      \
             <target dev='vda' bus='virtio'/>\n      <readonly/>\n    </disk>",
            path(disk)
        );
    }
    if let Some(sock) = &cfg.sim_tee_socket {
        let _ = writeln!(
            x,
            "    <channel type='unix'>\n      <source mode='bind' path='{}'/>\n      <target type='virtio' name='{SIM_TEE_PORT}'/>\n    </channel>",
            path(sock)
        );
    }
    if let Some(bdf) = &cfg.gpu {
        let _ = writeln!(
            x,
            "    <hostdev mode='subsystem' type='pci' managed='yes'>\n      <driver name='vfio'/>\n      \
             <source>\n        <address {}/>\n      </source>\n    </hostdev>",
            pci_address(bdf)?
        );
    }
    x.push_str("    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n  </devices>\n");
    if opts.network == Network::QemuUser {
        // Exactly the QEMU harness's network (`-netdev user` with a host forward), passed
        // through to QEMU: libvirt < 9.2 has no passt and its SLIRP interface forwards no port.
        x.push_str("  <qemu:commandline>\n");
        let netdev = format!("user,id=net0,hostfwd=tcp:127.0.0.1:{}-:{}", opts.host_port, cfg.guest_port);
        // An explicit slot on pcie.0 that libvirt leaves free (these arguments come before its
        // own devices, which would otherwise find slot 1 taken).
        for arg in ["-netdev", &netdev, "-device", "virtio-net-pci,netdev=net0,romfile=,bus=pcie.0,addr=0x0c"] {
            let _ = writeln!(x, "    <qemu:arg value='{}'/>", escape(arg));
        }
        x.push_str("  </qemu:commandline>\n");
    }
    match &cfg.confidential {
        Some(Confidential { tee: HardwareTee::Snp, .. }) => {
            let _ = writeln!(
                x,
                "  <launchSecurity type='sev-snp' kernelHashes='yes'>\n    <cbitpos>{}</cbitpos>\n    \
                 <reducedPhysBits>{}</reducedPhysBits>\n    <policy>{SNP_POLICY:#010x}</policy>\n  </launchSecurity>",
                qemu::SNP_CBITPOS,
                qemu::SNP_REDUCED_PHYS_BITS
            );
        }
        Some(Confidential { tee: HardwareTee::Tdx, .. }) => {
            let _ = writeln!(x, "  <launchSecurity type='tdx'>\n    <policy>{TDX_POLICY:#010x}</policy>\n  </launchSecurity>");
        }
        None => {}
    }
    x.push_str("</domain>\n");
    Ok(x)
}

/// The guest's static address and prefix from `chrysalis.ip=` (QEMU's user network default
/// 10.0.2.15/24 when absent).
fn guest_address(cmdline: &str) -> (String, u8) {
    let ip = cmdline.split_whitespace().find_map(|w| w.strip_prefix("chrysalis.ip=")).unwrap_or("10.0.2.15/24");
    match ip.split_once('/') {
        Some((a, p)) => (a.to_owned(), p.parse().unwrap_or(24)),
        None => (ip.to_owned(), 24),
    }
}

/// `virsh -c qemu:///system <args>`: its stdout, or an error with its stderr.
pub fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .context("running virsh (Debian: apt-get install libvirt-clients)")?;
    if !out.status.success() {
        bail!("virsh {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Make sure the system libvirt daemon answers: where no service manager started it (no
/// systemd as PID 1, as in containers), start `virtlogd` and `libvirtd` directly.
pub fn ensure_daemon() -> Result<()> {
    if virsh(&["version"]).is_ok() {
        return Ok(());
    }
    for (daemon, pidfile) in [("virtlogd", "/run/virtlogd.pid"), ("libvirtd", "/run/libvirtd.pid")] {
        let running = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !running {
            let st = Command::new(daemon).arg("-d").status().with_context(|| format!("starting {daemon}"))?;
            if !st.success() {
                bail!("{daemon} -d failed ({st})");
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match virsh(&["version"]) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.context("libvirtd did not answer within 20 s")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            kernel: "/o/vmlinuz".into(),
            initrd: "/o/initramfs.cpio.gz".into(),
            cmdline: "console=ttyS0 chrysalis.ip=10.0.2.15/24 a=<b>&'c'".into(),
            memory_mib: 2048,
            cpus: 2,
            accel: None,
            guest_port: 8000,
            disk: None,
            sim_tee_socket: None,
            work_dir: "/w".into(),
            confidential: None,
            gpu: None,
        }
    }

    fn opts() -> DomainOptions {
        DomainOptions {
            name: "c".into(),
            accel: Accel::Tcg,
            host_port: 18000,
            serial_log: None,
            emulator: None,
            network: Network::Passt,
        }
    }

    #[test]
    fn values_are_escaped_and_shape_is_the_configs() {
        let xml = domain_xml(&cfg(), &opts()).unwrap();
        assert!(
            xml.contains("<cmdline>console=ttyS0 chrysalis.ip=10.0.2.15/24 a=&lt;b&gt;&amp;&apos;c&apos;</cmdline>"),
            "{xml}"
        );
        assert!(xml.contains("<vcpu placement='static'>2</vcpu>"));
        assert!(xml.contains("<memory unit='MiB'>2048</memory>"));
        assert!(xml.contains("machine='q35'"));
        assert!(xml.contains("<range start='18000' to='8000'/>"));
        assert!(!xml.contains("launchSecurity") && !xml.contains("<loader"));
    }

    #[test]
    fn snp_tdx_and_gpu_variants() {
        let mut c = cfg();
        c.confidential = Some(Confidential { tee: HardwareTee::Snp, firmware: "/fw/ovmf.fd".into() });
        c.gpu = Some("0000:41:00.0".into());
        assert_eq!(variant_name(&c), "snp-gpu");
        let xml = domain_xml(&c, &opts()).unwrap();
        assert!(xml.starts_with("<domain type='kvm'>"));
        assert!(xml.contains("<launchSecurity type='sev-snp' kernelHashes='yes'>"), "{xml}");
        assert!(xml.contains("<policy>0x00030000</policy>"), "{xml}");
        assert!(xml.contains("<model fallback='forbid'>EPYC-v4</model>"));
        assert!(xml.contains("<loader type='rom' readonly='yes'>/fw/ovmf.fd</loader>"));
        assert!(xml.contains("<address domain='0x0000' bus='0x41' slot='0x00' function='0x0'/>"), "{xml}");
        c.confidential = Some(Confidential { tee: HardwareTee::Tdx, firmware: "/fw/tdvf.fd".into() });
        c.gpu = None;
        let xml = domain_xml(&c, &opts()).unwrap();
        assert!(xml.contains("<launchSecurity type='tdx'>"), "{xml}");
        assert!(pci_address("41:00.0").is_ok());
        assert_eq!(network_for("9.0.0"), Network::QemuUser);
        assert_eq!(network_for("11.3.0\n"), Network::Passt);
        let mut o = opts();
        o.network = Network::QemuUser;
        let xml = domain_xml(&cfg(), &o).unwrap();
        assert!(xml.contains("<qemu:arg value='user,id=net0,hostfwd=tcp:127.0.0.1:18000-:8000'/>"), "{xml}");
        assert!(!xml.contains("<interface"));
        assert!(pci_address("0000:41:00").is_err());
        assert!(pci_address("0000:41:20.0").is_err());
        assert!(pci_address("0000:4g:00.0").is_err());
    }
}
