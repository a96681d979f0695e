//! The image launched through libvirt (Debian 12's libvirt 9.0, TCG): the domain XML that
//! `cargo xtask run --libvirt` writes is defined and started with `virsh`, reaches READY on
//! its serial console, serves /v1/health and /v1/attestation (simulated TEE over the
//! domain's virtio-serial channel) through passt's port forward, and `virsh` shows the shape
//! the measurements assume. And the SEV-SNP launch line and domain checked against Debian
//! 13's QEMU 10.0 and libvirt schema, unpacked privately: they must fail only for want of
//! SEV-SNP hardware, not for their syntax.
//!
//! The test installs libvirt when it runs as root and it is missing (`cargo xtask test` does
//! so beforehand) and starts `virtlogd`/`libvirtd` directly where no service manager did.
// Helper functions of this test file fail the test on error, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrysalis_e2e::image::{out_dir, root, scratch};
use chrysalis_e2e::libvirt::{self, DomainOptions};
use chrysalis_e2e::qemu::{self, Accel, Confidential, HardwareTee, VmConfig};
use chrysalis_e2e::{owner, sim};
use chrysalis_verify::sim::{SimPsp, SimRoot};

const BOOT: Duration = Duration::from_secs(180);

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Install Debian packages (as root) when the program `probe` is missing.
fn ensure_installed(probe: &str, packages: &[&str]) {
    if Command::new("sh").args(["-c", &format!("command -v {probe}")]).output().is_ok_and(|o| o.status.success()) {
        return;
    }
    assert!(is_root(), "{probe} is missing: apt-get install {} (or run `cargo xtask test` as root)", packages.join(" "));
    let apt = |args: &[&str]| {
        let st = Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status().unwrap();
        assert!(st.success(), "apt-get {args:?} failed");
    };
    apt(&["update", "-qq"]);
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    apt(&args);
}

fn get(url: &str) -> (u16, Vec<u8>) {
    match ureq::get(url).config().http_status_as_error(false).build().call() {
        Ok(mut r) => (r.status().as_u16(), r.body_mut().read_to_vec().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Destroys and undefines the domain when dropped (also when the test fails).
struct Domain(String);

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = libvirt::virsh(&["destroy", &self.0]);
        let _ = libvirt::virsh(&["undefine", &self.0]);
    }
}

fn wait_for_line(log: &Path, needle: &str, timeout: Duration, dom: &str) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        if let Some(line) = complete.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        let state = libvirt::virsh(&["domstate", dom]).unwrap_or_default();
        assert!(
            Instant::now() < deadline && state.trim() == "running",
            "{needle:?} did not appear (domain {}); console:\n{}",
            state.trim(),
            qemu::tail(&text, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The text of the first `<tag>…</tag>` in `xml`, unescaped.
fn element(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}"))?;
    let open_end = start + xml[start..].find('>')? + 1;
    let close = open_end + xml[open_end..].find(&format!("</{tag}>"))?;
    Some(
        xml[open_end..close]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&apos;", "'")
            .replace("&quot;", "\"")
            .replace("&amp;", "&"),
    )
}

fn sha256(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_owned()
}

#[test]
fn libvirt_domain_boots_serves_and_has_the_measured_shape() {
    let t0 = Instant::now();
    ensure_installed("virsh", &["libvirt-daemon-system", "libvirt-clients", "passt"]);
    ensure_installed("passt", &["passt"]);
    ensure_installed("xmllint", &["libxml2-utils"]);
    libvirt::ensure_daemon().unwrap();
    let out = out_dir().unwrap();
    let dir = scratch("libvirt").unwrap();
    // QEMU runs as libvirt-qemu: it creates the console file and the channel socket here.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Copies of the image: libvirt relabels (chowns) what it boots, and out/ is shared.
    let mut cfg = VmConfig::for_image(&out, &dir).unwrap();
    for (from, to) in [(&out.join("vmlinuz"), &mut cfg.kernel), (&out.join("initramfs.cpio.gz"), &mut cfg.initrd)] {
        *to = dir.join(from.file_name().unwrap());
        std::fs::copy(from, &*to).unwrap();
    }
    let published = std::fs::read_to_string(out.join("cmdline")).unwrap().trim().to_owned();
    assert_eq!(cfg.cmdline, published);
    let sock = dir.join("simtee.sock");
    cfg.sim_tee_socket = Some(sock.clone());
    let serial = dir.join("serial.log");
    let name = format!("chrysalis-e2e-{}", std::process::id());
    let host_port = qemu::free_port().unwrap();
    let version = Command::new("virsh").arg("--version").output().unwrap();
    let network = libvirt::network_for(&String::from_utf8_lossy(&version.stdout));
    let opts = DomainOptions {
        name: name.clone(),
        accel: Accel::Tcg,
        host_port,
        serial_log: Some(serial.clone()),
        emulator: None,
        network,
    };
    let xml = libvirt::domain_xml(&cfg, &opts).unwrap();
    let xml_path = dir.join("cpu.xml");
    std::fs::write(&xml_path, &xml).unwrap();
    let v = Command::new("virt-xml-validate").arg(&xml_path).arg("domain").output().unwrap();
    let said = String::from_utf8_lossy(&v.stdout).into_owned() + &String::from_utf8_lossy(&v.stderr);
    assert!(v.status.success(), "virt-xml-validate: {said}");
    println!("virt-xml-validate (libvirt 9.0 schema): {}", said.trim());

    let _ = libvirt::virsh(&["destroy", &name]);
    let _ = libvirt::virsh(&["undefine", &name]);
    libvirt::virsh(&["define", &xml_path.display().to_string()]).unwrap();
    let dom = Domain(name.clone());
    let started = Instant::now();
    libvirt::virsh(&["start", &name]).unwrap();
    // The simulated PSP signs for the measurement of exactly what the domain boots.
    let sim_root = SimRoot::generate();
    let measurement = sim::measurement(&cfg).unwrap();
    let policy = owner::write_policy(&dir, &owner::sim_policy(&sim_root.public_key(), &measurement, None)).unwrap();
    let psp = SimPsp::new(sim_root, measurement);
    let _psp = chrysalis_e2e::simtee::serve(&sock, Box::new(move |rd| Ok(psp.report(rd)))).unwrap();

    let ready = wait_for_line(&serial, "READY", BOOT, &name);
    let boot_s = started.elapsed().as_secs_f64();
    println!("libvirt domain {name}: {ready} ({boot_s:.1} s after virsh start)");
    let url = format!("http://127.0.0.1:{host_port}");
    let (status, body) = get(&format!("{url}/v1/health"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    owner::verify_attestation(&url, &policy, &[9u8; 32]).unwrap();
    println!(
        "served: /v1/health {health}; /v1/attestation verified under the measurement of the domain's kernel, initrd and cmdline"
    );

    // The running domain's shape, as libvirt reports it and as QEMU was really started.
    let vcpus = libvirt::virsh(&["vcpucount", &name, "--live", "--active"]).unwrap();
    assert_eq!(vcpus.trim(), cfg.cpus.to_string(), "virsh vcpucount");
    let info = libvirt::virsh(&["dominfo", &name]).unwrap();
    let field = |k: &str| {
        info.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_owned()).unwrap_or_else(|| panic!("{k}: {info}"))
    };
    assert_eq!(field("CPU(s):"), cfg.cpus.to_string());
    assert_eq!(field("Max memory:"), format!("{} KiB", u64::from(cfg.memory_mib) * 1024));
    assert_eq!(field("State:"), "running");
    let live = libvirt::virsh(&["dumpxml", &name]).unwrap();
    assert_eq!(element(&live, "cmdline").as_deref(), Some(published.as_str()), "{live}");
    assert_eq!(sha256(Path::new(&element(&live, "kernel").unwrap())), sha256(&out.join("vmlinuz")));
    assert_eq!(sha256(Path::new(&element(&live, "initrd").unwrap())), sha256(&out.join("initramfs.cpio.gz")));
    assert!(live.contains("machine='pc-q35"), "machine type: {live}");
    assert!(element(&live, "loader").is_none(), "a plain boot has no firmware image: {live}");
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid")).unwrap();
    let argv: Vec<String> = std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .unwrap()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let after = |flag: &str| argv.iter().position(|a| a == flag).and_then(|i| argv.get(i + 1)).cloned();
    assert_eq!(after("-append").as_deref(), Some(published.as_str()), "{argv:?}");
    assert!(after("-smp").is_some_and(|s| s.starts_with(&format!("{},", cfg.cpus))), "{argv:?}");
    assert!(after("-machine").is_some_and(|s| s.starts_with("pc-q35")), "{argv:?}");
    println!(
        "virsh shape: vcpucount {} / dominfo CPU(s) {} / Max memory {} / cmdline = out/cmdline / kernel, initrd sha256 = out/; QEMU -smp {} -m {}",
        vcpus.trim(),
        field("CPU(s):"),
        field("Max memory:"),
        after("-smp").unwrap_or_default(),
        after("-m").unwrap_or_default()
    );
    drop(dom);
    assert!(libvirt::virsh(&["domstate", &name]).is_err(), "domain still defined");
    println!("libvirt test: {:.1} s in all", t0.elapsed().as_secs_f64());
}

/// Debian 13's `qemu-system-x86` 10.0 (it has `sev-snp-guest`) and libvirt's schemas,
/// downloaded with a private apt configuration into `.cache/debian13/` and unpacked there.
/// `None` (with the reason) when the Debian 13 archive cannot be reached.
fn debian13() -> Result<PathBuf, String> {
    let base = root().join(".cache/debian13");
    let tree = base.join("root");
    let ready = base.join("unpacked-qemu-libvirt-common");
    if ready.exists() {
        return Ok(tree);
    }
    let apt = base.join("apt");
    for d in ["etc", "lists/partial", "cache/archives/partial", "debs"] {
        std::fs::create_dir_all(apt.join(d)).map_err(|e| e.to_string())?;
    }
    let mirror = std::env::var("CHRYSALIS_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    std::fs::write(
        apt.join("etc/sources.list"),
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} trixie main\n"),
    )
    .map_err(|e| e.to_string())?;
    let a = apt.display();
    let opts = [
        format!("-oDir::Etc::sourcelist={a}/etc/sources.list"),
        "-oDir::Etc::sourceparts=/dev/null".into(),
        "-oDir::Etc::preferencesparts=/dev/null".into(),
        format!("-oDir::State::Lists={a}/lists"),
        format!("-oDir::Cache={a}/cache"),
        "-oDir::State::status=/dev/null".into(),
        "-oAPT::Architecture=amd64".into(),
        "-oAcquire::Languages=none".into(),
        "-oAPT::Sandbox::User=root".into(),
        "-q".into(),
    ];
    let run = |prog: &str, args: &[&str], cwd: &Path| -> Result<String, String> {
        let o = Command::new(prog).args(&opts).args(args).current_dir(cwd).output().map_err(|e| format!("{prog}: {e}"))?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        if o.status.success() && !text.contains("Err:") {
            Ok(text)
        } else {
            Err(format!("{prog} {args:?}: {}", qemu::tail(&text, 5)))
        }
    };
    run("apt-get", &["update"], &base).map_err(|e| format!("the Debian 13 archive is unreachable ({mirror}): {e}"))?;
    // qemu-system-x86 with the shared libraries it needs (its whole dependency closure,
    // libc included: it is run with Debian 13's own dynamic loader), and libvirt's schemas.
    let closure = run(
        "apt-cache",
        &[
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            "qemu-system-x86",
        ],
        &base,
    )?;
    let mut pkgs: Vec<String> = closure
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<'))
        .map(|l| l.trim().to_owned())
        .filter(|p| p.starts_with("lib") && !p.starts_with("libpam") || p == "qemu-system-x86")
        .collect();
    pkgs.sort();
    pkgs.dedup();
    // libvirt-common carries the schemas (virt-xml-validate's domain.rng).
    pkgs.push("libvirt-common".into());
    let debs = apt.join("debs");
    let mut args = vec!["download"];
    args.extend(pkgs.iter().map(String::as_str));
    run("apt-get", &args, &debs)?;
    for deb in std::fs::read_dir(&debs).map_err(|e| e.to_string())? {
        let deb = deb.map_err(|e| e.to_string())?.path();
        let st = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree).status().map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("dpkg-deb -x {} failed", deb.display()));
        }
    }
    std::fs::write(&ready, "").map_err(|e| e.to_string())?;
    Ok(tree)
}

#[test]
fn snp_launch_line_and_domain_pass_debian13_qemu_and_libvirt_schema() {
    let t0 = Instant::now();
    ensure_installed("xmllint", &["libxml2-utils"]);
    let tree = match debian13() {
        Ok(t) => t,
        Err(why) => {
            println!("SKIPPED (not passed): the SNP line was not checked against Debian 13's QEMU: {why}");
            return;
        }
    };
    let lib = format!("{0}/usr/lib/x86_64-linux-gnu:{0}/lib/x86_64-linux-gnu", tree.display());
    let qemu13 = |args: &[String]| {
        Command::new(tree.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"))
            .arg("--library-path")
            .arg(&lib)
            .arg(tree.join("usr/bin/qemu-system-x86_64"))
            .args(args)
            .output()
            .unwrap()
    };
    let version = qemu13(&["--version".into()]);
    let version = String::from_utf8_lossy(&version.stdout).lines().next().unwrap_or_default().to_owned();
    assert!(version.starts_with("QEMU emulator version 10."), "{version}");

    let out = out_dir().unwrap();
    let dir = scratch("snp-qemu13").unwrap();
    let firmware = root().join("image/firmware/bin/ovmf-amdsev.fd");
    let mut cfg = VmConfig::for_image(&out, &dir).unwrap();
    cfg.confidential = Some(Confidential { tee: HardwareTee::Snp, firmware: firmware.clone() });
    // The line `cargo xtask run --tee snp` prints, with -S (do not start the vCPUs).
    let mut args = cfg.qemu_args(Accel::Kvm, qemu::free_port().unwrap(), "null");
    args.push("-S".into());
    let o = qemu13(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    println!("{version}: SNP launch line exits {} with: {}", o.status, err.trim());
    assert!(!o.status.success(), "QEMU accepted the SNP line on a host without SEV-SNP?");
    let hardware =
        ["vm-type SEV-SNP not supported by KVM", "/dev/sev", "Could not access KVM kernel module", "failed to initialize kvm"];
    assert!(
        hardware.iter().any(|h| err.contains(h)),
        "QEMU rejected the SNP line for another reason than missing SEV-SNP/KVM:\n{err}"
    );
    // And the check itself catches syntax: a misspelt property is rejected before KVM.
    let mut bad = args.clone();
    for a in &mut bad {
        *a = a.replace("kernel-hashes=on", "kernel-hashes=on,kernel-hashez=on");
    }
    let e = String::from_utf8_lossy(&qemu13(&bad).stderr).into_owned();
    assert!(!hardware.iter().any(|h| e.contains(h)) && e.contains("kernel-hashez"), "{e}");

    // The SNP (and TDX, GPU) domains against libvirt's schemas: Debian 13's libvirt 11.3 knows
    // sev-snp; Debian 12's 9.0 does not.
    let schemas = tree.join("usr/share/libvirt/schemas");
    let opts = DomainOptions {
        name: "chrysalis-snp".into(),
        accel: Accel::Kvm,
        host_port: 8000,
        serial_log: None,
        emulator: None,
        network: libvirt::Network::Passt,
    };
    for gpu in [None, Some("0000:41:00.0")] {
        cfg.gpu = gpu.map(str::to_owned);
        let xml = libvirt::domain_xml(&cfg, &opts).unwrap();
        let p = dir.join(format!("{}.xml", libvirt::variant_name(&cfg)));
        std::fs::write(&p, &xml).unwrap();
        let v = Command::new("xmllint").args(["--noout", "--relaxng"]).arg(schemas.join("domain.rng")).arg(&p).output();
        match v {
            Ok(v) => assert!(v.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&v.stderr)),
            Err(e) => println!("SKIPPED schema check of {}: xmllint: {e}", p.display()),
        }
        println!("{} validates against Debian 13's libvirt schema", p.display());
    }
    println!(
        "not validated: the TDX domain (Debian 13's libvirt 11.3 schema has no launchSecurity type='tdx'; TDX support \
         came in a later libvirt)"
    );
    println!("Debian 13 SNP check: {:.1} s", t0.elapsed().as_secs_f64());
}
