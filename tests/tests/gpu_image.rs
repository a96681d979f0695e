//! Boot the GPU image (`cargo xtask image --gpu --bring-up-only`, folder `out/gpu-bringup`)
//! in QEMU, which has no GPU: `/init` opens the image's `libcuda.so.1`, loads DRM, tries
//! `nvidia.ko` (built here from NVIDIA's open sources), and fails closed with one line naming
//! the missing GPU, then powers off cleanly. With `chrysalis.gpu=cpu-fallback` on the measured
//! command line it says the same, serves the tiny model on the CPU instead, and its evidence
//! carries no GPU event.
//!
//! The runtime in this image is built with `gpu-evidence` (GPU bring-up and attestation,
//! inference on the CPU) instead of `cuda`, whose candle kernels need nvcc and an hour of
//! build; the boot path tested here is the same code in both.

use std::path::PathBuf;
use std::time::Duration;

use chrysalis_e2e::fleet::Fleet;
use chrysalis_e2e::image::{root, scratch};
use chrysalis_e2e::owner;
use chrysalis_e2e::qemu::{Accel, Vm, VmConfig};
use chrysalis_e2e::sim;

const BOOT: Duration = Duration::from_secs(300);
/// The GPU image's initramfs unpacks to about 150 MB; the CPU image's default is 2 GiB too.
const MEMORY_MIB: u32 = 1536;

/// `$CHRYSALIS_GPU_OUT` or `<root>/out/gpu-bringup`, checked to hold a GPU image.
fn gpu_out() -> PathBuf {
    let dir = std::env::var_os("CHRYSALIS_GPU_OUT").map(PathBuf::from).unwrap_or_else(|| root().join("out/gpu-bringup"));
    assert!(
        dir.join("initramfs.cpio.gz").exists() && dir.join("libraries.txt").exists(),
        "{} has no GPU image: build it with `cargo xtask image --gpu --bring-up-only` (cargo xtask test does)",
        dir.display()
    );
    dir
}

#[test]
fn without_a_gpu_the_gpu_image_fails_closed_with_one_clear_line() {
    let mut cfg = VmConfig::for_image(&gpu_out(), &scratch("gpu-closed").unwrap()).unwrap();
    cfg.memory_mib = MEMORY_MIB;
    let mut vm = Vm::start_with(&cfg, Accel::Tcg).unwrap();
    let status = vm.wait_exit(BOOT).unwrap();
    let console = vm.serial();
    assert!(status.success(), "QEMU exit {status}:\n{console}");
    for line in [
        "modules: configfs:",
        "gpu: libcuda.so.1 opened (driver API 12.4)",
        "gpu modules: drm:ok",
        "fatal: the GPU image refuses to serve without a usable confidential GPU (chrysalis.gpu=cpu-fallback on the \
         measured command line would serve on the CPU instead): no NVIDIA GPU: the nvidia module found no device it \
         drives (ENODEV)",
        "powering off: fatal error during boot",
    ] {
        assert!(console.contains(line), "console lacks {line:?}:\n{console}");
    }
    assert!(console.contains("NVRM"), "nvidia.ko did not run (no NVRM line):\n{console}");
    assert!(!console.contains("READY"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
}

#[test]
fn with_cpu_fallback_the_gpu_image_says_so_and_serves_the_tiny_model() {
    let dir = scratch("gpu-fallback").unwrap();
    let fleet = Fleet::new(
        &gpu_out(),
        &dir,
        &owner::tiny_llama().unwrap(),
        "tiny-llama",
        "chrysalis.gpu=cpu-fallback chrysalis.plaintext=1",
    )
    .unwrap();
    let mut cfg = fleet.config("node", "").unwrap();
    cfg.memory_mib = MEMORY_MIB;
    let mut vm = sim::boot_on(cfg, sim::root(&dir.join("sim")).unwrap(), None, |_| {}).unwrap();
    let ready = vm.wait_for("READY", BOOT).unwrap_or_else(|e| panic!("{e:#}:\n{}", vm.serial()));
    let timings: serde_json::Value = serde_json::from_str(ready.split_once("READY ").unwrap().1.trim()).unwrap();
    assert!(timings["modules"].as_f64().is_some_and(|t| t > 0.0), "{ready}");
    let console = vm.serial();
    assert!(
        console.contains(
            "*** GPU NOT USED: no NVIDIA GPU: the nvidia module found no device it drives (ENODEV). Serving on the CPU"
        ),
        "{console}"
    );
    // A policy that requires a GPU refuses this boot; the fleet's, which does not, releases.
    let policy = std::fs::read_to_string(&fleet.policy).unwrap();
    std::fs::create_dir_all(dir.join("gpu")).unwrap();
    let gpu_policy = owner::write_policy(&dir.join("gpu"), &format!("{policy}\n[gpu]\nrequire_gpu = true\n")).unwrap();
    let refused = owner::verify_attestation(&vm.url(), &gpu_policy, &[7; 32]).unwrap_err();
    assert!(format!("{refused:#}").contains("GPU"), "{refused:#}");
    owner::release(&vm.url(), &fleet.policy, &fleet.sealed.key_file).unwrap_or_else(|e| panic!("{e:#}:\n{}", vm.serial()));
    let v = chrysalis_e2e::api::complete(&vm.url(), "tiny-llama").unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
    vm.press_power_button().unwrap();
    assert!(vm.wait_exit(Duration::from_secs(60)).unwrap().success());
}
