//! `cargo xtask run`: boot the image in QEMU, console on this terminal (or a log file),
//! the API forwarded to localhost; prints the exact QEMU command line. `--tee snp|tdx`
//! prints the launch line for a confidential host (and runs it with `--exec`); `--tee sim`
//! boots locally with the labelled simulated TEE. `--libvirt` writes the same launch as a
//! libvirt domain (`out/libvirt/<variant>.xml`) and, for a plain boot, defines and starts it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use chrysalis_e2e::qemu::{self, Accel, Confidential, HardwareTee, VmConfig};
use chrysalis_proto::routes;
use clap::Args;

use crate::util::say;

/// Which TEE `cargo xtask run` launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tee {
    /// AMD SEV-SNP (print the provider's launch line).
    Snp,
    /// Intel TDX (print the provider's launch line).
    Tdx,
    /// The labelled simulated TEE (any QEMU, TCG or KVM).
    Sim,
    /// No TEE and no evidence (boot and health only).
    None,
}

/// Options of `cargo xtask run`.
#[derive(Args)]
pub struct RunArgs {
    /// TEE: none (plain local boot), sim (local, simulated TEE), snp or tdx (print the
    /// provider launch line; run it with --exec on a confidential host).
    #[arg(long, value_enum, default_value = "none")]
    tee: Tee,
    /// Run the snp/tdx line instead of only printing it.
    #[arg(long)]
    exec: bool,
    /// Accelerator for local boots: kvm, tcg, or auto (KVM when /dev/kvm opens).
    #[arg(long, default_value = "auto")]
    accel: String,
    /// Host port for the API (0 = pick a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// vCPUs (part of the SNP measurement).
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Write the serial console to this file instead of the terminal (local boots).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Attach this sealed bundle as the read-only disk /dev/vda.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Pass this GPU through with VFIO (PCI address, e.g. 0000:41:00.0; snp/tdx lines).
    #[arg(long)]
    gpu: Option<String>,
    /// Build the image first.
    #[arg(long)]
    build: bool,
    /// Write the launch as a libvirt domain XML (out/libvirt/<cpu|snp|tdx>[-gpu].xml) and,
    /// for --tee none, define and start it with virsh (qemu:///system).
    #[arg(long)]
    libvirt: bool,
    /// With --libvirt: only write the XML.
    #[arg(long, requires = "libvirt")]
    xml_only: bool,
}

/// Boot (or print) according to `args`.
pub fn run(root: &Path, args: RunArgs) -> Result<()> {
    let out = root.join("out");
    if args.build || !out.join("initramfs.cpio.gz").exists() {
        crate::image::build(root, &crate::image::Options::defaults(root))?;
    }
    if args.libvirt {
        return libvirt(root, &args);
    }
    match args.tee {
        Tee::Snp | Tee::Tdx => provider(root, &args),
        Tee::Sim | Tee::None => local(root, &args),
    }
}

fn provider(root: &Path, args: &RunArgs) -> Result<()> {
    let fw = crate::firmware::ensure_firmware(root)?;
    let firmware = if args.tee == Tee::Snp { fw.amd_sev } else { fw.intel_tdx };
    let work = root.join("out/run");
    let mut cfg = VmConfig::for_image(&root.join("out"), &work)?;
    cfg.confidential =
        Some(Confidential { tee: if args.tee == Tee::Snp { HardwareTee::Snp } else { HardwareTee::Tdx }, firmware });
    cfg.disk = args.bundle.clone();
    cfg.cpus = args.vcpus;
    cfg.memory_mib = args.memory;
    cfg.gpu = args.gpu.clone();
    let qargs = cfg.qemu_args(Accel::Kvm, args.port, "stdio");
    let (what, needs) = match args.tee {
        Tee::Snp => ("AMD SEV-SNP", "an SEV-SNP host (Linux >= 6.11 KVM, SNP firmware), QEMU >= 9.1"),
        _ => ("Intel TDX", "a TDX host (Linux >= 6.16 KVM, TDX module), QEMU >= 10.1"),
    };
    say(format!("{what} launch line (needs {needs}); expected measurements: cargo xtask measure"));
    println!("{}", qemu::shell_line("qemu-system-x86_64", &qargs));
    if args.exec {
        std::fs::create_dir_all(&work)?;
        let status = Command::new("qemu-system-x86_64").args(&qargs).status().context("running QEMU")?;
        say(format!("QEMU exited with {status}"));
    }
    Ok(())
}

/// `--libvirt`: the domain XML of the same launch as the QEMU line (one `VmConfig`).
fn libvirt(root: &Path, args: &RunArgs) -> Result<()> {
    use chrysalis_e2e::libvirt::{DomainOptions, Network, domain_xml, network_for, variant_name, virsh};
    let dir = root.join("out/libvirt");
    std::fs::create_dir_all(&dir)?;
    let mut cfg = VmConfig::for_image(&root.join("out"), &dir)?;
    cfg.disk = args.bundle.clone();
    cfg.cpus = args.vcpus;
    cfg.memory_mib = args.memory;
    cfg.gpu = args.gpu.clone();
    let accel = match args.tee {
        Tee::Snp | Tee::Tdx => {
            let fw = crate::firmware::ensure_firmware(root)?;
            let (tee, firmware) =
                if args.tee == Tee::Snp { (HardwareTee::Snp, fw.amd_sev) } else { (HardwareTee::Tdx, fw.intel_tdx) };
            cfg.confidential = Some(Confidential { tee, firmware });
            Accel::Kvm
        }
        Tee::Sim => bail!("--libvirt with --tee sim: not supported (the simulated PSP is a host process); use --tee none"),
        Tee::None => match args.accel.as_str() {
            "kvm" => Accel::Kvm,
            "tcg" => Accel::Tcg,
            "auto" => {
                if qemu::kvm_probe(&cfg.kernel, false).usable {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            other => bail!("--accel {other}: expected kvm, tcg or auto"),
        },
    };
    if args.gpu.is_some() && cfg.confidential.is_none() {
        bail!("--gpu with --libvirt needs --tee snp or --tee tdx");
    }
    let variant = variant_name(&cfg);
    // Confidential hosts have a libvirt with passt (SNP needs >= 10.5); a plain local boot
    // uses what this host's libvirt supports.
    let network = if cfg.confidential.is_some() {
        Network::Passt
    } else {
        let v = Command::new("virsh").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        v.map(|v| network_for(&v)).unwrap_or(Network::Passt)
    };
    let serial_log = dir.join(format!("{variant}-serial.log"));
    let opts = DomainOptions {
        name: format!("chrysalis-{variant}"),
        accel,
        host_port: if args.port == 0 { qemu::free_port()? } else { args.port },
        serial_log: (cfg.confidential.is_none()).then(|| serial_log.clone()),
        emulator: None,
        network,
    };
    let xml = domain_xml(&cfg, &opts)?;
    let path = dir.join(format!("{variant}.xml"));
    std::fs::write(&path, &xml).with_context(|| format!("writing {}", path.display()))?;
    say(format!("libvirt domain {} ({}) written to {}", opts.name, accel.name(), path.display()));
    if cfg.confidential.is_some() {
        say(
            "define and start it on the provider's host: virsh define <xml> && virsh start <name> (SEV-SNP: libvirt >= 10.5, QEMU >= 9.1; TDX: a libvirt with launchSecurity type='tdx', QEMU >= 10.1)",
        );
        return Ok(());
    }
    if args.xml_only {
        return Ok(());
    }
    crate::deps::ensure_packages(crate::deps::LIBVIRT_PACKAGES)?;
    chrysalis_e2e::libvirt::ensure_daemon()?;
    let _ = virsh(&["destroy", &opts.name]);
    let _ = virsh(&["undefine", &opts.name]);
    virsh(&["define", &path.display().to_string()])?;
    virsh(&["start", &opts.name])?;
    say(format!(
        "started; console: {} ; API: http://127.0.0.1:{}{} ; stop: virsh destroy {} && virsh undefine {}",
        serial_log.display(),
        opts.host_port,
        routes::HEALTH,
        opts.name,
        opts.name
    ));
    Ok(())
}

fn local(root: &Path, args: &RunArgs) -> Result<()> {
    crate::deps::ensure_qemu()?;
    let qemu_bin = qemu::qemu_binary()?;
    let work = root.join("out/run");
    std::fs::create_dir_all(&work)?;
    let mut cfg = VmConfig::for_image(&root.join("out"), &work)?;
    cfg.disk = args.bundle.clone();
    cfg.cpus = args.vcpus;
    cfg.memory_mib = args.memory;
    let accel = match args.accel.as_str() {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        "auto" => {
            let probe = qemu::kvm_probe(&cfg.kernel, false);
            say(format!("KVM probe: {}", probe.detail));
            if probe.usable { Accel::Kvm } else { Accel::Tcg }
        }
        other => bail!("--accel {other}: expected kvm, tcg or auto"),
    };
    let port = if args.port == 0 { qemu::free_port()? } else { args.port };
    let mut psp_thread = None;
    if args.tee == Tee::Sim {
        let sock = work.join("simtee.sock");
        let _ = std::fs::remove_file(&sock);
        cfg.sim_tee_socket = Some(sock);
        say("SIMULATED TEE: the guest's evidence is signed by a local simulation root (out/sim/), not by hardware");
    }
    let serial = match &args.log {
        Some(p) => format!("file:{}", p.display()),
        None => "stdio".into(),
    };
    let qargs = cfg.qemu_args(accel, port, &serial);
    say(format!("accelerator: {}", accel.name()));
    say(format!("API: http://127.0.0.1:{port}{}", routes::HEALTH));
    println!("{}", qemu::shell_line(qemu_bin, &qargs));
    let mut child = Command::new(qemu_bin).args(&qargs).spawn().context("running QEMU")?;
    if let Some(sock) = &cfg.sim_tee_socket {
        let root_key = chrysalis_e2e::sim::root(&root.join("out/sim"))?;
        let measurement = chrysalis_e2e::sim::measurement(&cfg)?;
        say(format!("simulated launch measurement {}", hex::encode(measurement)));
        let psp = chrysalis_verify::sim::SimPsp::new(root_key, measurement);
        psp_thread = Some(chrysalis_e2e::simtee::serve(sock, Box::new(move |rd| Ok(psp.report(rd))))?);
    }
    let status = child.wait().context("waiting for QEMU")?;
    drop(psp_thread);
    say(format!("QEMU exited with {status}"));
    Ok(())
}
