//! `cargo xtask bench boot`: boot the image N times per accelerator and split the time
//! into QEMU start → /init (guest uptime at /init start, which covers firmware and kernel)
//! → mounts → modules → network → API listening → READY seen on the host.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chrysalis_e2e::qemu::{Accel, Vm, VmConfig};
use serde_json::json;

use super::{median, write_result};
use crate::util::say;

/// Run the benchmark.
pub fn run(root: &Path, runs: usize) -> Result<()> {
    crate::deps::ensure_qemu()?;
    crate::image::build(root, &crate::image::Options::defaults(root))?;
    let out = root.join("out");
    let mut accels = vec![Accel::Tcg];
    let probe = chrysalis_e2e::qemu::kvm_probe(&out.join(crate::image::KERNEL), false);
    say(format!("KVM probe: {}", probe.detail));
    if probe.usable {
        accels.push(Accel::Kvm);
    }
    let mut results = serde_json::Map::new();
    for accel in accels {
        let mut rows = Vec::new();
        for i in 0..runs {
            let mut cfg = VmConfig::for_image(&out, &out.join("bench/boot-vm"))?;
            cfg.accel = Some(accel);
            let mut vm = Vm::start_with(&cfg, accel)?;
            let line = match vm.wait_for("READY", Duration::from_secs(120)) {
                Ok(l) => l,
                Err(e) => {
                    say(format!("{}: boot {i} failed: {e:#}", accel.name()));
                    break;
                }
            };
            let host = vm.started.elapsed().as_secs_f64();
            let json_part = line.split_once("READY ").map(|(_, j)| j).context("READY line without timings")?;
            let t: serde_json::Value = serde_json::from_str(json_part.trim()).context("parsing READY timings")?;
            let g = |k: &str| t.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            rows.push([host, g("init"), g("mounts"), g("modules"), g("network"), g("listen")]);
            vm.press_power_button()?;
            vm.wait_exit(Duration::from_secs(60))?;
        }
        if rows.is_empty() {
            results.insert(accel.name().into(), json!({"error": "the image did not boot with this accelerator"}));
            continue;
        }
        let col = |i: usize| median(&rows.iter().map(|r| r[i]).collect::<Vec<_>>());
        let (host, init, mounts, modules, net, listen) = (col(0), col(1), col(2), col(3), col(4), col(5));
        println!("\n{} — median of {} boots (seconds)", accel.name(), rows.len());
        println!("  QEMU start → READY seen on host      {host:7.3}");
        println!("  kernel start → /init (guest uptime)  {init:7.3}");
        println!("  /init → mounts done                  {:7.3}", mounts - init);
        println!("  mounts → modules loaded              {:7.3}", modules - mounts);
        println!("  modules → network up                 {:7.3}", net - modules);
        println!("  network → API listening              {:7.3}", listen - net);
        println!("  firmware+QEMU (host total − guest)   {:7.3}", host - listen);
        results.insert(
            accel.name().into(),
            json!({
                "runs": rows.len(),
                "median_s": {"host_ready": host, "guest_init": init, "guest_mounts": mounts, "guest_modules": modules,
                              "guest_network": net, "guest_listen": listen},
                "all": rows,
            }),
        );
    }
    let sizes: serde_json::Value = ["vmlinuz", "initramfs.cpio.gz"]
        .iter()
        .map(|n| (n.to_string(), json!(std::fs::metadata(out.join(n)).map(|m| m.len()).unwrap_or(0))))
        .collect::<serde_json::Map<_, _>>()
        .into();
    println!("\nimage sizes: {sizes}");
    write_result(root, "boot", &json!({"boot": results, "sizes": sizes}))
}
