//! Mount the pseudo-filesystems the runtime needs. The Debian kernel does not auto-mount
//! devtmpfs, so /dev is mounted here; configfs (a module) is mounted after modules load.

use anyhow::{Context, Result};
use nix::mount::{MsFlags, mount};

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<()> {
    std::fs::create_dir_all(target).with_context(|| format!("creating mount point {target}"))?;
    mount(Some(source), target, Some(fstype), flags, data).with_context(|| format!("mounting {fstype} on {target}"))
}

/// /proc, /sys, /dev (devtmpfs) and /run (tmpfs, memory only).
pub fn basic() -> Result<()> {
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", "proc", secure, None)?;
    mount_fs("sysfs", "/sys", "sysfs", secure, None)?;
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("mode=0755"))?;
    mount_fs("tmpfs", "/run", "tmpfs", secure, Some("mode=0755,size=16m"))?;
    Ok(())
}

/// configfs at /sys/kernel/config (needs the configfs module), where configfs-tsm lives.
pub fn configfs() -> Result<()> {
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("configfs", "/sys/kernel/config", "configfs", secure, None)
}
