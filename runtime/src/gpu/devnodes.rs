//! The device nodes NVML and CUDA open (`/dev/nvidiactl`, `/dev/nvidia<minor>`,
//! `/dev/nvidia-uvm`, `/dev/nvidia-uvm-tools`). The image has neither udev nor
//! nvidia-modprobe, so PID 1 creates them once the NVIDIA modules are loaded, the way
//! nvidia-modprobe does: major 195 for the control and GPU nodes, the minor of each GPU from
//! `/proc/driver/nvidia/gpus/*/information`, and nvidia-uvm's dynamic major from `/proc/devices`.
//!
//! Trust: reads only kernel-provided /proc files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

/// `NV_MAJOR_DEVICE_NUMBER`: the nvidia driver's fixed character major.
pub const NVIDIA_MAJOR: u64 = 195;
/// Minor of `/dev/nvidiactl`.
pub const CTL_MINOR: u64 = 255;

/// The `Device Minor:` value of one `/proc/driver/nvidia/gpus/<bus id>/information` file.
pub fn device_minor(information: &str) -> Option<u64> {
    information.lines().find_map(|l| l.trim().strip_prefix("Device Minor:").and_then(|v| v.trim().parse().ok()))
}

/// The major of character device `name` in `/proc/devices`.
pub fn char_major(proc_devices: &str, name: &str) -> Option<u64> {
    proc_devices
        .lines()
        .skip_while(|l| !l.starts_with("Character devices:"))
        .take_while(|l| !l.starts_with("Block devices:"))
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            let major = parts.next()?.parse().ok()?;
            (parts.next() == Some(name) && parts.next().is_none()).then_some(major)
        })
}

/// The nodes to create: (path, major, minor).
pub fn plan(gpu_minors: &[u64], uvm_major: Option<u64>) -> Vec<(PathBuf, u64, u64)> {
    let mut v = vec![(PathBuf::from("/dev/nvidiactl"), NVIDIA_MAJOR, CTL_MINOR)];
    v.extend(gpu_minors.iter().map(|m| (PathBuf::from(format!("/dev/nvidia{m}")), NVIDIA_MAJOR, *m)));
    if let Some(major) = uvm_major {
        v.push((PathBuf::from("/dev/nvidia-uvm"), major, 0));
        v.push((PathBuf::from("/dev/nvidia-uvm-tools"), major, 1));
    }
    v
}

/// Create the nodes for the GPUs the driver found. Fails when it found none.
pub fn create() -> Result<Vec<PathBuf>> {
    let dir = Path::new("/proc/driver/nvidia/gpus");
    let mut minors = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {} (is nvidia.ko loaded?)", dir.display()))? {
        let info = entry.context("listing the NVIDIA GPUs")?.path().join("information");
        let text = std::fs::read_to_string(&info).with_context(|| format!("reading {}", info.display()))?;
        minors.push(device_minor(&text).with_context(|| format!("{} has no Device Minor line", info.display()))?);
    }
    if minors.is_empty() {
        bail!("the NVIDIA driver found no GPU ({} is empty)", dir.display());
    }
    minors.sort_unstable();
    let devices = std::fs::read_to_string("/proc/devices").context("reading /proc/devices")?;
    let uvm = char_major(&devices, "nvidia-uvm");
    if uvm.is_none() {
        log::warn!("gpu: nvidia-uvm is not loaded: CUDA will not run");
    }
    let mut made = Vec::new();
    for (path, major, minor) in plan(&minors, uvm) {
        match mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(major, minor)) {
            Ok(()) | Err(Errno::EEXIST) => made.push(path),
            Err(e) => return Err(e).with_context(|| format!("creating {} ({major}:{minor})", path.display())),
        }
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let info = "Model: \t\t NVIDIA H100 PCIe\nIRQ:   \t\t 42\nDevice Minor: \t 3\nBus Location: \t 0000:01:00.0\n";
        assert_eq!(device_minor(info), Some(3));
        assert_eq!(device_minor("Model: x\n"), None);
        let devices =
            "Character devices:\n  1 mem\n195 nvidia\n195 nvidia-modeset\n509 nvidia-uvm\n\nBlock devices:\n509 nvidia-uvm-blk\n";
        assert_eq!(char_major(devices, "nvidia-uvm"), Some(509));
        assert_eq!(char_major(devices, "nvidia"), Some(195));
        assert_eq!(char_major(devices, "nvidia-uvm-blk"), None);
        assert_eq!(char_major("", "nvidia-uvm"), None);
    }

    #[test]
    fn plan_names_every_node() {
        let p = plan(&[0, 1], Some(509));
        let names: Vec<String> = p.iter().map(|(path, ma, mi)| format!("{} {ma}:{mi}", path.display())).collect();
        assert_eq!(
            names,
            [
                "/dev/nvidiactl 195:255",
                "/dev/nvidia0 195:0",
                "/dev/nvidia1 195:1",
                "/dev/nvidia-uvm 509:0",
                "/dev/nvidia-uvm-tools 509:1"
            ]
        );
        assert_eq!(plan(&[0], None).len(), 2);
    }
}
