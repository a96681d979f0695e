//! Boot a Chrysalis image in `qemu-system-x86_64` and talk to it: serial console to a log
//! file, the API port forwarded to localhost, the HMP monitor on a UNIX socket for the
//! ACPI power button. KVM is used when it actually boots the image; TCG otherwise.
//!
//! [`VmConfig::qemu_args`] is the one place a QEMU launch line is built: for the tests, for
//! `cargo xtask run` locally, and for providers' SEV-SNP/TDX hosts ([`Confidential`]; those
//! lines need QEMU >= 9.1 (SNP) or >= 10.1 (TDX) and a host kernel with SNP/TDX enabled, so
//! they are printed here and run only on such a host).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How QEMU executes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation (`-accel kvm -cpu host`).
    Kvm,
    /// Software emulation (`-accel tcg -cpu max`).
    Tcg,
}

impl Accel {
    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }

    /// Name for logs.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (software emulation)",
        }
    }
}

/// What to boot and how.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// bzImage.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Forced accelerator; `None` = KVM if it boots this image, else TCG.
    pub accel: Option<Accel>,
    /// Port inside the guest that is forwarded (the runtime's `chrysalis.port`).
    pub guest_port: u16,
    /// A disk attached read-only as the first virtio disk (`/dev/vda`).
    pub disk: Option<PathBuf>,
    /// A UNIX socket QEMU listens on for the simulated TEE's virtio-serial port.
    pub sim_tee_socket: Option<PathBuf>,
    /// Directory for the serial log and monitor socket.
    pub work_dir: PathBuf,
    /// Launch as an SEV-SNP or TDX guest (a provider's host; implies KVM).
    pub confidential: Option<Confidential>,
    /// PCI address of a GPU to pass through with VFIO (e.g. `0000:41:00.0`).
    pub gpu: Option<String>,
}

/// Which hardware TEE a confidential launch uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardwareTee {
    /// AMD SEV-SNP (`sev-snp-guest`, OVMF AmdSev build with kernel-hashes).
    Snp,
    /// Intel TDX (`tdx-guest`, TDVF).
    Tdx,
}

/// A confidential launch: the TEE and the firmware it boots (part of the measurement).
#[derive(Clone, Debug)]
pub struct Confidential {
    /// SEV-SNP or TDX.
    pub tee: HardwareTee,
    /// OVMF (SNP) or TDVF (TDX) image.
    pub firmware: PathBuf,
}

/// Name of the virtio-serial port the simulated TEE uses.
pub const SIM_TEE_PORT: &str = "org.chrysalis.simtee";

/// QEMU CPU model of an SEV-SNP launch (its CPUID signature is in the measured VMSAs; the
/// published digests cover this and the other models in `cargo xtask measure`).
pub const SNP_CPU_MODEL: &str = "EPYC-v4";
/// SEV-SNP C-bit position and reduced physical address bits: 51 / 1 hold for Milan, Genoa
/// and Turin.
pub const SNP_CBITPOS: u32 = 51;
/// See [`SNP_CBITPOS`].
pub const SNP_REDUCED_PHYS_BITS: u32 = 1;
/// fw_cfg entry that gives OVMF a 64-bit MMIO window large enough for an 80 GB GPU's BARs.
pub const GPU_MMIO64_FWCFG: (&str, &str) = ("opt/ovmf/X-PciMmio64Mb", "262144");

impl VmConfig {
    /// Defaults for an image in `out_dir`.
    pub fn for_image(out_dir: &Path, work_dir: &Path) -> Result<Self> {
        let cmdline =
            std::fs::read_to_string(out_dir.join("cmdline")).context("reading out/cmdline (run `cargo xtask image`)")?;
        Ok(VmConfig {
            kernel: out_dir.join("vmlinuz"),
            initrd: out_dir.join("initramfs.cpio.gz"),
            cmdline: cmdline.trim().to_owned(),
            memory_mib: 2048,
            cpus: 2,
            accel: None,
            guest_port: 8000,
            disk: None,
            sim_tee_socket: None,
            work_dir: work_dir.to_path_buf(),
            confidential: None,
            gpu: None,
        })
    }

    /// The QEMU argument list for `accel` (ignored for a confidential launch, which is always
    /// KVM), forwarding `host_port` to the guest port.
    pub fn qemu_args(&self, accel: Accel, host_port: u16, serial: &str) -> Vec<String> {
        let mem = format!("{}M", self.memory_mib);
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        match &self.confidential {
            None => {
                push(&["-machine", "q35"]);
                push(&accel.args());
            }
            Some(Confidential { tee: HardwareTee::Snp, firmware }) => {
                push(&["-accel", "kvm", "-cpu", SNP_CPU_MODEL]);
                push(&["-machine", "q35,confidential-guest-support=sev0,memory-backend=ram0,vmport=off"]);
                push(&["-object", &format!("memory-backend-memfd,id=ram0,size={mem},share=true,prealloc=false")]);
                // cbitpos 51 / reduced-phys-bits 1 hold for Milan, Genoa and Turin; kernel-hashes=on
                // makes OVMF measure kernel, initrd and cmdline into the launch digest.
                push(&[
                    "-object",
                    &format!(
                        "sev-snp-guest,id=sev0,cbitpos={SNP_CBITPOS},reduced-phys-bits={SNP_REDUCED_PHYS_BITS},kernel-hashes=on"
                    ),
                ]);
                push(&["-bios", &firmware.display().to_string()]);
            }
            Some(Confidential { tee: HardwareTee::Tdx, firmware }) => {
                push(&["-accel", "kvm", "-cpu", "host"]);
                push(&["-machine", "q35,kernel-irqchip=split,confidential-guest-support=tdx0,memory-backend=ram0"]);
                push(&["-object", &format!("memory-backend-ram,id=ram0,size={mem}")]);
                push(&["-object", "tdx-guest,id=tdx0"]);
                push(&["-bios", &firmware.display().to_string()]);
            }
        }
        push(&["-nodefaults", "-no-reboot", "-display", "none", "-vga", "none"]);
        push(&["-m", &mem, "-smp", &self.cpus.to_string()]);
        push(&["-kernel", &self.kernel.display().to_string(), "-initrd", &self.initrd.display().to_string()]);
        push(&["-append", &self.cmdline, "-serial", serial]);
        push(&["-monitor", &format!("unix:{},server=on,wait=off", self.monitor_path().display())]);
        push(&["-netdev", &format!("user,id=net0,hostfwd=tcp:127.0.0.1:{host_port}-:{}", self.guest_port)]);
        push(&["-device", "virtio-net-pci,netdev=net0,romfile="]);
        if let Some(disk) = &self.disk {
            push(&["-drive", &format!("file={},if=none,id=bundle,format=raw,readonly=on", disk.display())]);
            push(&["-device", "virtio-blk-pci,drive=bundle"]);
        }
        if let Some(sock) = &self.sim_tee_socket {
            push(&["-device", "virtio-serial-pci"]);
            push(&["-chardev", &format!("socket,id=simtee,path={},server=on,wait=off", sock.display())]);
            push(&["-device", &format!("virtserialport,chardev=simtee,name={SIM_TEE_PORT}")]);
        }
        if let Some(bdf) = &self.gpu {
            // H100 in CC mode: VFIO through iommufd, and a 64-bit MMIO window large enough for
            // its BARs (OVMF's default is too small for 80 GB cards).
            push(&["-object", "iommufd,id=iommufd0"]);
            push(&["-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1"]);
            push(&["-device", &format!("vfio-pci,host={bdf},bus=rp0,iommufd=iommufd0")]);
            let (name, value) = GPU_MMIO64_FWCFG;
            push(&["-fw_cfg", &format!("name={name},string={value}")]);
        }
        a
    }

    fn monitor_path(&self) -> PathBuf {
        self.work_dir.join("monitor.sock")
    }
}

/// A running VM. Dropping it kills QEMU.
pub struct Vm {
    child: Option<Child>,
    /// The accelerator in use.
    pub accel: Accel,
    /// Serial console log.
    pub serial_log: PathBuf,
    /// Host port forwarded to the guest API.
    pub host_port: u16,
    /// When QEMU was started.
    pub started: Instant,
    /// The exact command line, for humans.
    pub command_line: String,
    monitor: PathBuf,
}

/// The QEMU binary, or an error that says how to get it.
pub fn qemu_binary() -> Result<&'static str> {
    match Command::new("qemu-system-x86_64").arg("--version").output() {
        Ok(o) if o.status.success() => Ok("qemu-system-x86_64"),
        _ => bail!(
            "qemu-system-x86_64 not found: run `cargo xtask test` or `cargo xtask demo` (they install it as root \
             on Debian/Ubuntu), or `apt-get install qemu-system-x86`"
        ),
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether `/dev/kvm` can be opened for reading and writing.
pub fn kvm_device_opens() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The accelerator to use: `CHRYSALIS_ACCEL=kvm|tcg` if set; else KVM when `/dev/kvm` opens
/// and the probe says it can run a Linux guest on this host (see [`kvm_probe`]).
pub fn preferred_accel(kernel: &Path) -> Result<Accel> {
    match std::env::var("CHRYSALIS_ACCEL").as_deref() {
        Ok("kvm") => return Ok(Accel::Kvm),
        Ok("tcg") => return Ok(Accel::Tcg),
        Ok(other) => bail!("CHRYSALIS_ACCEL={other:?}: expected kvm or tcg"),
        Err(_) => {}
    }
    Ok(if kvm_probe(kernel, false).usable { Accel::Kvm } else { Accel::Tcg })
}

/// What [`kvm_probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvmProbe {
    /// KVM ran the kernel to its first console output and its expected panic.
    pub usable: bool,
    /// Why, in words (from the cache or from this probe).
    pub detail: String,
    /// The answer came from the per-host cache file rather than a boot.
    pub cached: bool,
}

/// How long the probe waits for the kernel. Under KVM a kernel with no initramfs reaches
/// its "unable to mount root" panic in well under a second; a host whose `/dev/kvm` cannot
/// run the guest (nested "kvm-pvm" setups) shows nothing at all.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(6);

/// Probe once per host whether KVM can run a Linux guest: boot `kernel` under KVM with no
/// initramfs and no disk, and wait (a few seconds at most) for its panic on the missing
/// root file system. `/dev/kvm` can exist and open without being able to run this guest.
///
/// The answer is cached per host (kernel release, CPU model, QEMU version) in
/// `$XDG_CACHE_HOME/chrysalis/kvm-probe` (default `~/.cache/chrysalis/`); `redo`, or
/// `CHRYSALIS_KVM_REPROBE=1`, or deleting that file makes it probe again
/// (`cargo xtask kvm-probe --redo` does the former).
pub fn kvm_probe(kernel: &Path, redo: bool) -> KvmProbe {
    if !kvm_device_opens() {
        return KvmProbe { usable: false, detail: "/dev/kvm does not exist or cannot be opened".into(), cached: false };
    }
    let key = host_key();
    let cache = kvm_probe_cache();
    let redo = redo || std::env::var_os("CHRYSALIS_KVM_REPROBE").is_some_and(|v| !v.is_empty() && v != "0");
    if !redo && let Some(found) = std::fs::read_to_string(&cache).ok().and_then(|t| parse_probe_cache(&t, &key)) {
        return KvmProbe { usable: found.0, detail: found.1, cached: true };
    }
    let (usable, detail) = match boot_probe(kernel) {
        Ok(d) => (true, d),
        Err(e) => (false, format!("{e:#}")),
    };
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let line = format!("{}\t{}\t{}\n", key, if usable { "usable" } else { "unusable" }, detail.replace(['\t', '\n'], " "));
    let _ = std::fs::write(&cache, line);
    KvmProbe { usable, detail, cached: false }
}

/// Record that KVM passed the probe but still did not boot the full image on this host.
fn record_kvm_unusable(detail: &str) {
    let cache = kvm_probe_cache();
    if let Some(dir) = cache.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&cache, format!("{}\tunusable\t{}\n", host_key(), detail.replace(['\t', '\n'], " ")));
}

fn parse_probe_cache(text: &str, key: &str) -> Option<(bool, String)> {
    let mut fields = text.trim_end().splitn(3, '\t');
    if fields.next()? != key {
        return None;
    }
    let usable = match fields.next()? {
        "usable" => true,
        "unusable" => false,
        _ => return None,
    };
    Some((usable, fields.next().unwrap_or("").to_owned()))
}

fn kvm_probe_cache() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("chrysalis/kvm-probe")
}

/// What identifies "this host" for the cache: the host kernel, the CPU model and QEMU.
fn host_key() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_default();
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_owned())
        .unwrap_or_default();
    format!("{} | {} | {}", kernel.trim(), cpu, qemu.trim()).replace('\t', " ")
}

/// Boot `kernel` under KVM without an initramfs; Ok when its panic on the missing root
/// file system shows up on the console in time.
fn boot_probe(kernel: &Path) -> Result<String> {
    let qemu = qemu_binary()?;
    let dir = std::env::temp_dir().join(format!("chrysalis-kvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let serial = dir.join("serial.log");
    let started = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-machine", "q35", "-nodefaults", "-no-reboot", "-display", "none", "-vga", "none"])
        .args(Accel::Kvm.args())
        .args(["-m", "256", "-smp", "1", "-kernel"])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4", "-serial"])
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let verdict = loop {
        let text = String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
        if text.contains("Kernel panic") || text.contains("VFS:") {
            break Ok(format!("kernel reached its expected panic under KVM in {:.1} s", started.elapsed().as_secs_f64()));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(e) = child.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            break Err(anyhow::anyhow!("QEMU exited ({status}) before the kernel printed anything: {}", err.trim()));
        }
        if started.elapsed() > KVM_PROBE_TIMEOUT {
            break Err(anyhow::anyhow!(
                "/dev/kvm opens but a Linux guest printed {} bytes and no panic within {:?} (nested or limited KVM)",
                text.len(),
                KVM_PROBE_TIMEOUT
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    verdict
}

impl Vm {
    /// Start QEMU with the serial console going to a log file. With `accel: None`, KVM is
    /// tried first and abandoned (for this host, remembered) if the guest does not reach
    /// READY: /dev/kvm can exist without being able to run this guest (nested setups).
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        Vm::start_on(cfg, None)
    }

    /// [`Vm::start`] forwarding `host_port` (a free one when `None`): a node restarted on
    /// its old port keeps its URL, as a provider's restarted VM would.
    pub fn start_on(cfg: &VmConfig, host_port: Option<u16>) -> Result<Vm> {
        let accel = match cfg.accel {
            Some(a) => a,
            None => preferred_accel(&cfg.kernel)?,
        };
        if cfg.accel.is_none() && accel == Accel::Kvm {
            let mut vm = Vm::launch(cfg, Accel::Kvm, host_port)?;
            match vm.wait_for("READY", Duration::from_secs(60)) {
                Ok(_) => return Ok(vm),
                Err(e) => {
                    eprintln!("[qemu] KVM passed the probe but did not boot the image ({e:#}); falling back to TCG");
                    record_kvm_unusable("KVM passed the kernel probe but the image did not reach READY within 60 s");
                    drop(vm);
                }
            }
            return Vm::launch(cfg, Accel::Tcg, host_port);
        }
        Vm::launch(cfg, accel, host_port)
    }

    /// Start QEMU with a given accelerator.
    pub fn start_with(cfg: &VmConfig, accel: Accel) -> Result<Vm> {
        Vm::launch(cfg, accel, None)
    }

    fn launch(cfg: &VmConfig, accel: Accel, host_port: Option<u16>) -> Result<Vm> {
        let qemu = qemu_binary()?;
        std::fs::create_dir_all(&cfg.work_dir)?;
        let serial_log = cfg.work_dir.join("serial.log");
        let _ = std::fs::remove_file(&serial_log);
        let _ = std::fs::remove_file(cfg.monitor_path());
        let host_port = match host_port {
            Some(p) => p,
            None => free_port()?,
        };
        let args = cfg.qemu_args(accel, host_port, &format!("file:{}", serial_log.display()));
        let command_line = shell_line(qemu, &args);
        let child = Command::new(qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        Ok(Vm {
            child: Some(child),
            accel,
            serial_log,
            host_port,
            started: Instant::now(),
            command_line,
            monitor: cfg.monitor_path(),
        })
    }

    /// Everything the guest printed so far.
    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial_log).unwrap_or_default()).into_owned()
    }

    /// Wait until a serial line contains `needle`; return that line. Fails early if QEMU
    /// exits, with the console tail in the error.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.serial();
            // Only whole lines: the guest may be midway through writing the one we want.
            let complete = text.rfind('\n').map_or("", |end| &text[..end]);
            if let Some(line) = complete.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.try_exit()? {
                bail!("QEMU exited ({status}) before {needle:?} appeared; console:\n{}\n{}", tail(&text, 40), self.stderr());
            }
            if Instant::now() > deadline {
                bail!("{needle:?} did not appear within {timeout:?}; console:\n{}", tail(&text, 40));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// QEMU's exit status if it has exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => Ok(c.try_wait()?),
            None => bail!("VM already reaped"),
        }
    }

    /// Wait for QEMU to exit on its own (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("the VM did not power off within {timeout:?}; console:\n{}", tail(&self.serial(), 40));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Press the ACPI power button (HMP `system_powerdown`).
    pub fn press_power_button(&self) -> Result<()> {
        let mut s = UnixStream::connect(&self.monitor).context("connecting to the QEMU monitor")?;
        s.write_all(b"system_powerdown\n")?;
        s.flush()?;
        // Closing the socket before QEMU has read the command can drop it (QEMU sees the
        // hang-up first): wait until the monitor has answered with its next prompt.
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            let text = String::from_utf8_lossy(&seen);
            if text.find("system_powerdown").is_some_and(|at| text[at..].contains("(qemu)")) {
                return Ok(());
            }
        }
        anyhow::bail!("the QEMU monitor did not acknowledge system_powerdown: {}", String::from_utf8_lossy(&seen))
    }

    /// Base URL of the forwarded API.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.host_port)
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(e) = self.child.as_mut().and_then(|c| c.stderr.as_mut()) {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A command line a human can paste into a shell.
pub fn shell_line(program: &str, args: &[String]) -> String {
    let quote = |s: &str| {
        if s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c)) {
            s.to_owned()
        } else {
            format!("'{}'", s.replace('\'', "'\\''"))
        }
    };
    std::iter::once(program.to_owned()).chain(args.iter().map(|a| quote(a))).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_cache_is_per_host_and_strict() {
        let key = "6.18.44 | AMD EPYC | QEMU emulator version 7.2.22";
        let line = format!("{key}\tunusable\tQEMU exited (signal 6) before the kernel printed anything\n");
        assert_eq!(
            parse_probe_cache(&line, key),
            Some((false, "QEMU exited (signal 6) before the kernel printed anything".into()))
        );
        assert_eq!(parse_probe_cache(&format!("{key}\tusable\tok\n"), key), Some((true, "ok".into())));
        // Another host (kernel, CPU or QEMU changed): probe again.
        assert_eq!(parse_probe_cache(&line, "6.19.0 | AMD EPYC | QEMU emulator version 7.2.22"), None);
        // A damaged file is not trusted either way.
        assert_eq!(parse_probe_cache(&format!("{key}\tmaybe\tx\n"), key), None);
        assert_eq!(parse_probe_cache("", key), None);
    }
}
