//! A simulated-TEE launch as a provider's host would do it, for tests and the demo: a
//! simulation root (kept under `out/sim/`, outside the image), the launch measurement the
//! "hardware" computes from the exact kernel, initrd and cmdline QEMU is given, and the
//! simulated PSP that signs the guest's reports over virtio-serial.

use std::path::Path;

use anyhow::{Context, Result};
use chrysalis_verify::sim::{SimPsp, SimRoot, sim_launch_measurement};

use crate::qemu::{Vm, VmConfig};

/// Load the simulation root from `dir`, creating it on first use.
pub fn root(dir: &Path) -> Result<SimRoot> {
    if dir.join("sim-root.key.pem").exists() {
        return SimRoot::load(dir).with_context(|| format!("loading the simulation root from {}", dir.display()));
    }
    let r = SimRoot::generate();
    std::fs::create_dir_all(dir)?;
    r.save(dir).with_context(|| format!("saving the simulation root to {}", dir.display()))?;
    Ok(r)
}

/// The simulated launch measurement of what `cfg` boots.
pub fn measurement(cfg: &VmConfig) -> Result<[u8; 48]> {
    let kernel = std::fs::read(&cfg.kernel).with_context(|| format!("reading {}", cfg.kernel.display()))?;
    let initrd = std::fs::read(&cfg.initrd).with_context(|| format!("reading {}", cfg.initrd.display()))?;
    Ok(sim_launch_measurement(&kernel, &initrd, &cfg.cmdline))
}

/// Boot `cfg` with a simulated PSP signing with `root` (measurement computed from `cfg`'s
/// files). `tweak` may change the PSP (e.g. set the debug policy bit) before it starts.
pub fn boot(cfg: VmConfig, root: SimRoot, tweak: impl FnOnce(&mut SimPsp)) -> Result<Vm> {
    boot_on(cfg, root, None, tweak)
}

/// [`boot`] forwarding the API to `host_port` (a free port when `None`).
pub fn boot_on(mut cfg: VmConfig, root: SimRoot, host_port: Option<u16>, tweak: impl FnOnce(&mut SimPsp)) -> Result<Vm> {
    let socket = cfg.work_dir.join("simtee.sock");
    let _ = std::fs::remove_file(&socket);
    cfg.sim_tee_socket = Some(socket.clone());
    let mut psp = SimPsp::new(root, measurement(&cfg)?);
    tweak(&mut psp);
    let vm = Vm::start_on(&cfg, host_port)?;
    crate::simtee::serve(&socket, Box::new(move |rd| Ok(psp.report(rd))))?;
    Ok(vm)
}
