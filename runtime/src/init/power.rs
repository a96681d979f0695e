//! Powering the VM off: on SIGTERM, on the ACPI power button, on a fatal error. PID 1 must
//! never exit (the kernel would panic) and never hang: it logs why and powers off.

use std::io::Read;

/// Flush filesystems and power off. Outside PID 1 (host mode) it exits the process instead.
pub fn power_off(reason: &str, exit_code: i32) -> ! {
    if std::process::id() == 1 {
        log::info!("powering off: {reason}");
        nix::unistd::sync();
        let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
        // reboot(2) only returns on failure; halting by spinning would be a hang, so try
        // the other ways of stopping the VM before giving up.
        log::error!("power off failed: {err:?}; halting");
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_HALT_SYSTEM);
        loop {
            std::thread::park();
        }
    }
    log::info!("exiting: {reason}");
    std::process::exit(exit_code)
}

/// Size of `struct input_event` on x86_64: timeval (16) + type (2) + code (2) + value (4).
const INPUT_EVENT_LEN: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// How long after boot new input devices are still picked up: the button driver registers
/// its evdev node asynchronously after `finit_module` returns, so one scan can miss it.
const INPUT_SCAN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Watch every evdev device for the ACPI power button (KEY_POWER press) and power off.
/// A background thread rescans `/dev/input` for a while so devices that appear late are
/// watched too.
pub fn watch_power_button() {
    let spawned = std::thread::Builder::new().name("input-scan".into()).spawn(|| {
        let start = std::time::Instant::now();
        let mut watched = std::collections::HashSet::new();
        loop {
            scan_input_devices(&mut watched);
            if start.elapsed() > INPUT_SCAN_WINDOW {
                if watched.is_empty() {
                    log::warn!("no input device appeared: the ACPI power button will not be seen");
                }
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    });
    if let Err(e) = spawned {
        log::warn!("cannot watch for the ACPI power button: {e}");
    }
}

fn scan_input_devices(watched: &mut std::collections::HashSet<std::path::PathBuf>) {
    let Ok(dir) = std::fs::read_dir("/dev/input") else { return };
    for entry in dir.flatten() {
        let path = entry.path();
        if watched.contains(&path) || !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("event")) {
            continue;
        }
        let Ok(mut dev) = std::fs::File::open(&path) else { continue };
        watched.insert(path.clone());
        let spawned = std::thread::Builder::new().name("power-button".into()).spawn(move || {
            let mut buf = [0u8; INPUT_EVENT_LEN];
            while dev.read_exact(&mut buf).is_ok() {
                let ty = u16::from_le_bytes([buf[16], buf[17]]);
                let code = u16::from_le_bytes([buf[18], buf[19]]);
                let value = i32::from_le_bytes([buf[20], buf[21], buf[22], buf[23]]);
                if ty == EV_KEY && code == KEY_POWER && value == 1 {
                    power_off("ACPI power button pressed", 0);
                }
            }
        });
        if let Err(e) = spawned {
            log::warn!("cannot watch {}: {e}", path.display());
        }
    }
}
