//! Boot a Chrysalis image in `qemu-system-x86_64` and talk to it: serial console to a log
//! file, the API port forwarded to localhost, the HMP monitor on a UNIX socket for the
//! ACPI power button. KVM is used when it actually boots the image; TCG otherwise.

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
}

/// Name of the virtio-serial port the simulated TEE uses.
pub const SIM_TEE_PORT: &str = "org.chrysalis.simtee";

impl VmConfig {
    /// Defaults for an image in `out_dir`.
    pub fn for_image(out_dir: &Path, work_dir: &Path) -> Result<Self> {
        let cmdline = std::fs::read_to_string(out_dir.join("cmdline")).context("reading out/cmdline (run `cargo xtask image`)")?;
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
        })
    }

    /// The QEMU argument list for `accel`, forwarding `host_port` to the guest port.
    pub fn qemu_args(&self, accel: Accel, host_port: u16, serial: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "-machine", "q35", "-nodefaults", "-no-reboot", "-display", "none", "-vga", "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(accel.args().iter().map(|s| s.to_string()));
        a.extend([
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            self.cmdline.clone(),
            "-serial".into(),
            serial.into(),
            "-monitor".into(),
            format!("unix:{},server=on,wait=off", self.monitor_path().display()),
            "-netdev".into(),
            format!("user,id=net0,hostfwd=tcp:127.0.0.1:{host_port}-:{}", self.guest_port),
            "-device".into(),
            "virtio-net-pci,netdev=net0,romfile=".into(),
        ]);
        if let Some(disk) = &self.disk {
            a.extend([
                "-drive".into(),
                format!("file={},if=none,id=bundle,format=raw,readonly=on", disk.display()),
                "-device".into(),
                "virtio-blk-pci,drive=bundle".into(),
            ]);
        }
        if let Some(sock) = &self.sim_tee_socket {
            a.extend([
                "-device".into(),
                "virtio-serial-pci".into(),
                "-chardev".into(),
                format!("socket,id=simtee,path={},server=on,wait=off", sock.display()),
                "-device".into(),
                format!("virtserialport,chardev=simtee,name={SIM_TEE_PORT}"),
            ]);
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

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The accelerator to use: `CHRYSALIS_ACCEL=kvm|tcg` if set; else KVM when /dev/kvm opens
/// and an earlier probe did not fail on this host.
fn preferred_accel() -> Result<Accel> {
    match std::env::var("CHRYSALIS_ACCEL").as_deref() {
        Ok("kvm") => return Ok(Accel::Kvm),
        Ok("tcg") => return Ok(Accel::Tcg),
        Ok(other) => bail!("CHRYSALIS_ACCEL={other:?}: expected kvm or tcg"),
        Err(_) => {}
    }
    if kvm_usable() && !kvm_failed_marker().exists() { Ok(Accel::Kvm) } else { Ok(Accel::Tcg) }
}

fn kvm_failed_marker() -> PathBuf {
    std::env::temp_dir().join(format!("chrysalis-kvm-unusable-{}", host_kernel()))
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}

impl Vm {
    /// Start QEMU with the serial console going to a log file. With `accel: None`, KVM is
    /// tried first and abandoned (for this host, remembered) if the guest does not reach
    /// READY: /dev/kvm can exist without being able to run this guest (nested setups).
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        let accel = match cfg.accel {
            Some(a) => a,
            None => preferred_accel()?,
        };
        if cfg.accel.is_none() && accel == Accel::Kvm {
            let mut vm = Vm::start_with(cfg, Accel::Kvm)?;
            match vm.wait_for("READY", Duration::from_secs(60)) {
                Ok(_) => return Ok(vm),
                Err(e) => {
                    eprintln!("[qemu] KVM did not boot the image ({e:#}); falling back to TCG");
                    let _ = std::fs::write(kvm_failed_marker(), b"");
                    drop(vm);
                }
            }
            return Vm::start_with(cfg, Accel::Tcg);
        }
        Vm::start_with(cfg, accel)
    }

    /// Start QEMU with a given accelerator.
    pub fn start_with(cfg: &VmConfig, accel: Accel) -> Result<Vm> {
        let qemu = qemu_binary()?;
        std::fs::create_dir_all(&cfg.work_dir)?;
        let serial_log = cfg.work_dir.join("serial.log");
        let _ = std::fs::remove_file(&serial_log);
        let _ = std::fs::remove_file(cfg.monitor_path());
        let host_port = free_port()?;
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
