//! `cargo xtask run`: boot the image in QEMU, console on this terminal (or a log file),
//! the API forwarded to localhost; prints the exact QEMU command line.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use chrysalis_e2e::qemu::{self, Accel, VmConfig};
use clap::Args;

use crate::util::say;

/// Options of `cargo xtask run`.
#[derive(Args)]
pub struct RunArgs {
    /// Accelerator: kvm, tcg, or auto (KVM when it boots this image).
    #[arg(long, default_value = "auto")]
    accel: String,
    /// Host port for the API (0 = pick a free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Write the serial console to this file instead of the terminal.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Attach this sealed bundle as the read-only disk /dev/vda.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Build the image first.
    #[arg(long)]
    build: bool,
}

/// Boot the image in the foreground until the guest powers off.
pub fn run(root: &Path, args: RunArgs) -> Result<()> {
    if args.build || !root.join("out/initramfs.cpio.gz").exists() {
        crate::image::build(root, &crate::image::Options::defaults(root))?;
    }
    crate::deps::ensure_qemu()?;
    let qemu_bin = qemu::qemu_binary()?;
    let work = root.join("out/run");
    let mut cfg = VmConfig::for_image(&root.join("out"), &work)?;
    cfg.disk = args.bundle.clone();
    let accel = match args.accel.as_str() {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        "auto" => {
            if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok() {
                say("/dev/kvm is usable; trying KVM (use --accel tcg if the guest fails to start)");
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
        other => anyhow::bail!("--accel {other}: expected kvm, tcg or auto"),
    };
    let port = if args.port == 0 { qemu::free_port()? } else { args.port };
    let serial = match &args.log {
        Some(p) => format!("file:{}", p.display()),
        None => "stdio".into(),
    };
    std::fs::create_dir_all(&work)?;
    let qargs = cfg.qemu_args(accel, port, &serial);
    say(format!("accelerator: {}", accel.name()));
    say(format!("API: http://127.0.0.1:{port}/v1/health"));
    println!("{}", qemu::shell_line(qemu_bin, &qargs));
    let status = Command::new(qemu_bin).args(&qargs).status().context("running QEMU")?;
    say(format!("QEMU exited with {status}"));
    Ok(())
}
