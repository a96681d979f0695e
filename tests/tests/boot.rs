//! Boot the real image in real QEMU: it reaches READY, serves /v1/health through the
//! forwarded port, and powers off cleanly on the ACPI power button; a bad command-line
//! parameter gives a clear error on the console and a clean power-off, never a panic.

use std::time::Duration;

use chrysalis_e2e::image::{out_dir, scratch};
use chrysalis_e2e::qemu::{Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(180);

fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

#[test]
fn boots_to_ready_serves_health_and_powers_off_on_acpi_button() {
    let cfg = VmConfig::for_image(&out_dir().unwrap(), &scratch("boot").unwrap()).unwrap();
    let mut vm = Vm::start(&cfg).unwrap();
    let ready = vm.wait_for("READY", BOOT).unwrap();
    let timings: serde_json::Value = serde_json::from_str(ready.split_once("READY ").unwrap().1.trim()).unwrap();
    for stage in ["init", "mounts", "modules", "network", "listen"] {
        assert!(timings[stage].as_f64().is_some_and(|t| t > 0.0), "READY lacks {stage}: {ready}");
    }
    let (status, body) = get(&format!("{}/v1/health", vm.url()));
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    let console = vm.serial();
    assert!(console.contains("tsm:Yes"), "configfs-tsm module not loaded:\n{console}");
    assert!(console.contains("network: eth0 10.0.2.15/24"), "{console}");

    vm.press_power_button().unwrap();
    let status = vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "QEMU exit {status}");
    let console = vm.serial();
    assert!(console.contains("powering off: ACPI power button pressed"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
}

#[test]
fn bad_cmdline_value_is_reported_and_powers_off_cleanly() {
    let mut cfg = VmConfig::for_image(&out_dir().unwrap(), &scratch("badcmdline").unwrap()).unwrap();
    assert!(cfg.cmdline.contains("chrysalis.port=8000"), "{}", cfg.cmdline);
    cfg.cmdline = cfg.cmdline.replace("chrysalis.port=8000", "chrysalis.port=http");
    let mut vm = Vm::start_with(&cfg, chrysalis_e2e::qemu::Accel::Tcg).unwrap();
    let status = vm.wait_exit(BOOT).unwrap();
    let console = vm.serial();
    assert!(status.success(), "QEMU exit {status}:\n{console}");
    assert!(
        console.contains("bad value for chrysalis.port: \"http\" (expected a TCP port 1-65535)"),
        "error not on the console:\n{console}"
    );
    assert!(console.contains("powering off: fatal error during boot"), "{console}");
    assert!(!console.contains("READY"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
}

#[test]
fn unknown_parameter_is_reported_and_powers_off_cleanly() {
    let mut cfg = VmConfig::for_image(&out_dir().unwrap(), &scratch("unknownparam").unwrap()).unwrap();
    cfg.cmdline.push_str(" chrysalis.frobnicate=1");
    let mut vm = Vm::start_with(&cfg, chrysalis_e2e::qemu::Accel::Tcg).unwrap();
    let status = vm.wait_exit(BOOT).unwrap();
    let console = vm.serial();
    assert!(status.success(), "QEMU exit {status}:\n{console}");
    assert!(console.contains("unknown kernel parameter chrysalis.frobnicate"), "{console}");
}
