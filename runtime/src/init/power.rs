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

/// Watch every evdev device for the ACPI power button (KEY_POWER press) and power off.
pub fn watch_power_button() {
    let Ok(dir) = std::fs::read_dir("/dev/input") else {
        log::warn!("no /dev/input: the ACPI power button will not be seen");
        return;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("event")) {
            continue;
        }
        let Ok(mut dev) = std::fs::File::open(&path) else { continue };
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
