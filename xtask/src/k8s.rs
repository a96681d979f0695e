//! `cargo xtask k8s`: Kubernetes manifests for a fleet, written to `out/k8s/` from the same
//! pinned definition the QEMU harness and the measurement use: the published image
//! (`image/expected.json`: artifact hashes, command line, firmware hashes, measurements) and
//! the launch shape of [`VmConfig`] (vCPUs, memory, guest port, the QEMU line of
//! `cargo xtask run --tee snp`). See `FLEET.md` for the design and what KubeVirt can do.
//!
//! - TDX: a KubeVirt `VirtualMachine` (`spec.domain.launchSecurity.tdx`, KubeVirt >= v1.7.0,
//!   feature gate `WorkloadEncryptionTDX`, alpha) with direct kernel boot.
//! - SEV-SNP: a node-agent DaemonSet that runs the exact `run --tee snp` QEMU line, because
//!   KubeVirt's `launchSecurity.snp` cannot ask for `kernel-hashes=on` (so the launch digest
//!   would not cover kernel, initrd and command line) and boots its own OVMF.
//!
//! No Secret and no key anywhere: the model key never goes through Kubernetes. The owner
//! releases it to each attested VM directly (`attest release`, or `attest serve-keys` when the
//! image's measured command line has `chrysalis.key_url`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrysalis_e2e::qemu::{self, Accel, Confidential, HardwareTee, VmConfig};
use chrysalis_proto::routes;
use clap::Args;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::util::say;

/// Options of `cargo xtask k8s`.
#[derive(Args)]
pub struct K8sArgs {
    /// Where the manifests go (default out/k8s/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Kubernetes namespace of every object.
    #[arg(long, default_value = "chrysalis")]
    namespace: String,
    /// vCPUs (must be one of the published SNP measurements: 1, 2, 4, 8; default: the
    /// harness's shape).
    #[arg(long)]
    vcpus: Option<u32>,
    /// Container image holding /boot/vmlinuz and /boot/initramfs.cpio.gz for KubeVirt's
    /// kernel boot (default: a local tag named after the initramfs hash; build it from
    /// out/k8s/boot-image/Containerfile).
    #[arg(long)]
    boot_image: Option<String>,
    /// KubeVirt containerDisk image holding the sealed bundle (ciphertext; /dev/vda).
    #[arg(long, default_value = "localhost/chrysalis-bundle:latest")]
    bundle_image: String,
    /// Image of the SEV-SNP node agent: any image with qemu-system-x86_64 >= 9.1, sh and
    /// sha256sum.
    #[arg(long, default_value = "localhost/chrysalis-snp-agent:qemu-9.2")]
    agent_image: String,
}

/// Where the node agent finds the published files on each SEV-SNP host (a hostPath the
/// provider fills from `cargo xtask package`'s release directory).
const HOST_DIR: &str = "/var/lib/chrysalis";
/// NFD's label for hosts with SEV-SNP enabled in KVM (`/sys/module/kvm_amd/parameters/sev_snp`).
pub const NFD_SNP_LABEL: &str = "feature.node.kubernetes.io/cpu-security.sev.snp.enabled";
/// NFD's label for hosts with TDX enabled.
pub const NFD_TDX_LABEL: &str = "feature.node.kubernetes.io/cpu-security.tdx.enabled";
/// The label KubeVirt's node labeller sets on TDX-capable nodes.
const KUBEVIRT_TDX_LABEL: &str = "kubevirt.io/tdx";
/// Memory QEMU needs beyond the guest's (page tables, device state, the agent's shell).
const QEMU_OVERHEAD_MIB: u32 = 512;
/// The app label every object carries.
const APP: &str = "chrysalis";

/// The pinned launch definition, from `image/expected.json` and the harness's [`VmConfig`].
#[derive(Clone, Debug)]
pub struct Pinned {
    /// The measured kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The runtime's port inside the guest (`chrysalis.port`).
    pub guest_port: u16,
    /// SHA-256 of vmlinuz.
    pub vmlinuz_sha256: String,
    /// SHA-256 of initramfs.cpio.gz.
    pub initramfs_sha256: String,
    /// SHA-256 of the pinned OVMF AmdSev build.
    pub ovmf_amdsev_sha256: String,
    /// SHA-256 of the pinned TDVF.
    pub tdvf_sha256: String,
    /// Published SNP launch digests for this vCPU count, EPYC-v4 (guest features 0x1, 0x21).
    pub snp_measurements: Vec<(String, String)>,
    /// Published TDX MRTD, RTMR1, RTMR2 (for the pinned TDVF).
    pub tdx: [String; 3],
    /// The harness's launch definition for this image ([`VmConfig::for_image`]).
    pub launch: VmConfig,
}

impl Pinned {
    /// Read `image/expected.json`, with the launch shape from [`VmConfig`] (its defaults, or
    /// `vcpus`), its command line written to `scratch/cmdline` first.
    pub fn load(root: &Path, scratch: &Path, vcpus: Option<u32>) -> Result<Self> {
        let path = root.join("image/expected.json");
        let e: Value = serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)
            .context("image/expected.json")?;
        let m = &e["measurements"];
        let s = |v: &Value, what: &str| v.as_str().map(str::to_owned).with_context(|| format!("expected.json has no {what}"));
        let cmdline = s(&m["image"]["cmdline"], "measurements.image.cmdline")?;
        std::fs::create_dir_all(scratch)?;
        std::fs::write(scratch.join(crate::image::CMDLINE), &cmdline)?;
        let mut cfg = VmConfig::for_image(scratch, scratch)?;
        let vcpus = vcpus.unwrap_or(cfg.cpus);
        cfg.cpus = vcpus;
        if !crate::measure::VCPUS.contains(&vcpus) {
            bail!("--vcpus {vcpus}: no measurement is published for it (published: {:?})", crate::measure::VCPUS);
        }
        let snp_measurements = m["snp"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["vcpus"] == vcpus && v["vcpu_type"] == "EPYC-v4" && v["vmm"] == "QEMU")
            .filter_map(|v| Some((v["guest_features"].as_str()?.to_owned(), v["measurement"].as_str()?.to_owned())))
            .collect();
        Ok(Pinned {
            cmdline: cfg.cmdline.clone(),
            vcpus,
            memory_mib: cfg.memory_mib,
            guest_port: cfg.guest_port,
            vmlinuz_sha256: s(&m["image"]["vmlinuz_sha256"], "vmlinuz_sha256")?,
            initramfs_sha256: s(&m["image"]["initramfs_sha256"], "initramfs_sha256")?,
            ovmf_amdsev_sha256: s(&m["firmware"]["ovmf_amdsev_sha256"], "ovmf_amdsev_sha256")?,
            tdvf_sha256: s(&m["firmware"]["tdvf_sha256"], "tdvf_sha256")?,
            snp_measurements,
            tdx: [s(&m["tdx"]["mrtd"], "mrtd")?, s(&m["tdx"]["rtmr1"], "rtmr1")?, s(&m["tdx"]["rtmr2"], "rtmr2")?],
            launch: cfg,
        })
    }

    /// The exact SEV-SNP QEMU argument list of `cargo xtask run --tee snp --bundle …`
    /// ([`VmConfig::qemu_args`]) with the node's paths. One change: the API forward listens
    /// on the pod's addresses instead of 127.0.0.1, so the hostPort and the Service reach it.
    /// The network device is not part of the SNP launch digest.
    pub fn snp_qemu_args(&self) -> Vec<String> {
        let mut cfg = self.launch.clone();
        cfg.kernel = format!("{HOST_DIR}/image/vmlinuz").into();
        cfg.initrd = format!("{HOST_DIR}/image/initramfs.cpio.gz").into();
        cfg.disk = Some(format!("{HOST_DIR}/bundle/model.sealed").into());
        cfg.work_dir = "/run/chrysalis".into();
        cfg.confidential =
            Some(Confidential { tee: HardwareTee::Snp, firmware: format!("{HOST_DIR}/firmware/ovmf-amdsev.fd").into() });
        let local = format!("hostfwd=tcp:127.0.0.1:{}-", self.guest_port);
        let any = format!("hostfwd=tcp::{}-", self.guest_port);
        cfg.qemu_args(Accel::Kvm, self.guest_port, "stdio").into_iter().map(|a| a.replace(&local, &any)).collect()
    }
}

/// The value of `key=` in a kernel command line.
fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// KubeVirt's masquerade binding gives the guest the second address of `vmNetworkCIDR` and
/// the first as gateway (DHCP). The runtime takes a static address from its measured command
/// line, so the pod network reaches it only if those agree: `Ok(cidr)` when they do, else why
/// not.
pub fn masquerade_cidr(cmdline: &str) -> std::result::Result<String, String> {
    let (Some(ip), Some(gw)) = (cmdline_value(cmdline, "chrysalis.ip"), cmdline_value(cmdline, "chrysalis.gw")) else {
        return Err("the command line sets no chrysalis.ip/chrysalis.gw".into());
    };
    let parse = |s: &str| s.parse::<std::net::Ipv4Addr>().map(u32::from).map_err(|e| format!("{s}: {e}"));
    let (addr, prefix) = ip.split_once('/').ok_or("chrysalis.ip has no prefix length")?;
    let prefix: u32 = prefix.parse().map_err(|_| "bad prefix length".to_owned())?;
    if !(1..=30).contains(&prefix) {
        return Err(format!("prefix /{prefix} leaves no room for a gateway and a guest"));
    }
    let (addr, gw) = (parse(addr)?, parse(gw)?);
    let net = addr & (u32::MAX << (32 - prefix));
    if gw == net + 1 && addr == net + 2 {
        Ok(format!("{}/{prefix}", std::net::Ipv4Addr::from(net)))
    } else {
        Err(format!(
            "the measured command line has chrysalis.ip={ip} chrysalis.gw={}, made for QEMU user networking; KubeVirt's \
             masquerade binding gives the guest {} with gateway {} (bridge and passt give it the pod's address by DHCP, \
             which the runtime does not use; the slirp plugin has 10.0.2.15/10.0.2.2 but only e1000/rtl8139 NICs, for \
             which the image has no driver). Build an image whose kernel/cmdline.txt says chrysalis.ip={}/{prefix} \
             chrysalis.gw={} and publish its measurements before using this VirtualMachine",
            std::net::Ipv4Addr::from(gw),
            std::net::Ipv4Addr::from(net + 2),
            std::net::Ipv4Addr::from(net + 1),
            std::net::Ipv4Addr::from(net + 2),
            std::net::Ipv4Addr::from(net + 1),
        ))
    }
}

fn labels(tee: &str) -> Value {
    json!({ "app.kubernetes.io/name": APP, "app.kubernetes.io/component": "runtime", "chrysalis.dev/tee": tee })
}

/// Annotations that tie an object to the published image.
fn image_annotations(p: &Pinned) -> serde_json::Map<String, Value> {
    let mut a = serde_json::Map::new();
    a.insert("chrysalis.dev/generated-by".into(), "cargo xtask k8s (from image/expected.json)".into());
    a.insert("chrysalis.dev/vmlinuz-sha256".into(), p.vmlinuz_sha256.clone().into());
    a.insert("chrysalis.dev/initramfs-sha256".into(), p.initramfs_sha256.clone().into());
    a.insert("chrysalis.dev/cmdline-sha256".into(), hex::encode(Sha256::digest(p.cmdline.as_bytes())).into());
    a.insert(
        "chrysalis.dev/keys".into(),
        "none: the model key never goes through Kubernetes; the owner releases it to each attested VM".into(),
    );
    a
}

/// The TDX KubeVirt `VirtualMachine`.
pub fn tdx_virtual_machine(p: &Pinned, ns: &str, boot_image: &str, bundle_image: &str) -> Value {
    let mut ann = image_annotations(p);
    ann.insert(
        "chrysalis.dev/tdvf".into(),
        "KubeVirt boots virt-launcher's OVMF.inteltdx.fd, not the pinned TDVF: MRTD is that firmware's; RTMR1/RTMR2 cover \
         kernel, initrd and command line; RTMR0 is recorded from a first launch (see FLEET.md)"
            .into(),
    );
    ann.insert("chrysalis.dev/published-tdvf-sha256".into(), p.tdvf_sha256.clone().into());
    ann.insert("chrysalis.dev/published-mrtd".into(), p.tdx[0].clone().into());
    ann.insert("chrysalis.dev/published-rtmr1".into(), p.tdx[1].clone().into());
    ann.insert("chrysalis.dev/published-rtmr2".into(), p.tdx[2].clone().into());
    let network = match masquerade_cidr(&p.cmdline) {
        Ok(cidr) => json!({ "name": "pod", "pod": { "vmNetworkCIDR": cidr } }),
        Err(why) => {
            ann.insert("chrysalis.dev/network-unreachable".into(), why.into());
            json!({ "name": "pod", "pod": { "vmNetworkCIDR": "10.0.2.0/24" } })
        }
    };
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": { "name": "chrysalis-tdx", "namespace": ns, "labels": labels("tdx"), "annotations": ann },
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": { "labels": labels("tdx") },
                "spec": {
                    "nodeSelector": { KUBEVIRT_TDX_LABEL: "true", NFD_TDX_LABEL: "true" },
                    "terminationGracePeriodSeconds": 30,
                    "domain": {
                        "launchSecurity": { "tdx": {} },
                        "machine": { "type": "q35" },
                        "firmware": {
                            // TDX needs OVMF; stateless (no persistent EFI variables), no Secure Boot:
                            // the kernel is measured into RTMR1 and checked by the owner instead.
                            "bootloader": { "efi": { "secureBoot": false, "persistent": false } },
                            "kernelBoot": {
                                // Exactly the measured command line (RTMR2); KubeVirt passes it as-is.
                                "kernelArgs": p.cmdline,
                                "container": {
                                    "image": boot_image,
                                    "kernelPath": "/boot/vmlinuz",
                                    "initrdPath": "/boot/initramfs.cpio.gz",
                                    "imagePullPolicy": "IfNotPresent"
                                }
                            }
                        },
                        // The measured shape: fixed, identical on every node.
                        "cpu": { "sockets": 1, "cores": p.vcpus, "threads": 1 },
                        "memory": { "guest": format!("{}Mi", p.memory_mib) },
                        "resources": { "requests": { "memory": format!("{}Mi", p.memory_mib) } },
                        // TDX refuses SMM.
                        "features": { "smm": { "enabled": false } },
                        "devices": {
                            // Nothing but the bundle disk and one NIC: no balloon, graphics or vsock.
                            "autoattachGraphicsDevice": false,
                            "autoattachMemBalloon": false,
                            "autoattachVSOCK": false,
                            "autoattachSerialConsole": true,
                            "disks": [ { "name": "bundle", "disk": { "bus": "virtio", "readonly": true } } ],
                            "interfaces": [ {
                                "name": "pod",
                                "masquerade": {},
                                "ports": [ { "name": "api", "port": p.guest_port, "protocol": "TCP" } ]
                            } ]
                        }
                    },
                    "networks": [ network ],
                    "volumes": [ { "name": "bundle", "containerDisk": { "image": bundle_image } } ]
                }
            }
        }
    })
}

/// The shell script the SEV-SNP agent runs: check the node's files against the pins (an early,
/// friendly failure; the real check is the owner's attestation), then exec the QEMU line.
pub fn snp_launch_script(p: &Pinned) -> String {
    format!(
        "#!/bin/sh\n\
         # Generated by `cargo xtask k8s` from image/expected.json. Holds no key and no secret:\n\
         # the owner releases the model key to the attested VM directly.\n\
         set -eu\n\
         cd {HOST_DIR}\n\
         sha256sum -c - <<'EOF'\n\
         {}  image/vmlinuz\n\
         {}  image/initramfs.cpio.gz\n\
         {}  firmware/ovmf-amdsev.fd\n\
         EOF\n\
         test -r bundle/model.sealed\n\
         mkdir -p /run/chrysalis\n\
         exec {}\n",
        p.vmlinuz_sha256,
        p.initramfs_sha256,
        p.ovmf_amdsev_sha256,
        qemu::shell_line("qemu-system-x86_64", &p.snp_qemu_args()),
    )
}

/// The pinned definition as data (also in the ConfigMap).
pub fn definition(p: &Pinned) -> Value {
    json!({
        "version": 1,
        "source": "image/expected.json + tests/src/qemu.rs VmConfig (cargo xtask k8s)",
        "cmdline": p.cmdline,
        "vcpus": p.vcpus,
        "memory_mib": p.memory_mib,
        "guest_port": p.guest_port,
        "vmlinuz_sha256": p.vmlinuz_sha256,
        "initramfs_sha256": p.initramfs_sha256,
        "ovmf_amdsev_sha256": p.ovmf_amdsev_sha256,
        "tdvf_sha256": p.tdvf_sha256,
        "snp": {
            "vcpu_type": "EPYC-v4",
            "measurements": p.snp_measurements.iter().map(|(f, m)| json!({ "guest_features": f, "measurement": m })).collect::<Vec<_>>(),
            "qemu_args": p.snp_qemu_args(),
        },
        "tdx": { "mrtd": p.tdx[0], "rtmr1": p.tdx[1], "rtmr2": p.tdx[2] },
    })
}

/// Every object, as (file name, object). The ConfigMap's name carries a hash of the
/// definition, so a new image rolls the DaemonSet.
pub fn manifests(p: &Pinned, a: &K8sArgs, boot_image: &str) -> Result<Vec<(String, Value)>> {
    let ns = a.namespace.as_str();
    let def = serde_json::to_string_pretty(&definition(p))? + "\n";
    let script = snp_launch_script(p);
    let tag = hex::encode(&Sha256::digest(format!("{def}{script}").as_bytes())[..5]);
    let cm_name = format!("chrysalis-snp-{tag}");
    let snp = labels("snp");
    let selector = json!({ "app.kubernetes.io/name": APP, "chrysalis.dev/tee": "snp" });
    let guaranteed = json!({
        "cpu": p.vcpus.to_string(),
        "memory": format!("{}Mi", p.memory_mib + QEMU_OVERHEAD_MIB),
    });
    let host_path = |name: &str, path: &str, kind: &str| json!({ "name": name, "hostPath": { "path": path, "type": kind } });
    let mut out = vec![
        (
            "namespace.json".to_owned(),
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": ns, "labels": {
                    "app.kubernetes.io/name": APP,
                    // The SNP agent is privileged (/dev/kvm, /dev/sev, locked guest memory).
                    "pod-security.kubernetes.io/enforce": "privileged"
                } }
            }),
        ),
        ("tdx-kubevirt-vm.json".to_owned(), tdx_virtual_machine(p, ns, boot_image, &a.bundle_image)),
        (
            "snp-configmap.json".to_owned(),
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": cm_name, "namespace": ns, "labels": snp, "annotations": image_annotations(p) },
                "immutable": true,
                "data": { "definition.json": def, "launch.sh": script }
            }),
        ),
        (
            "snp-serviceaccount.json".to_owned(),
            json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": "chrysalis-snp-agent", "namespace": ns, "labels": snp },
                // The agent never talks to the Kubernetes API.
                "automountServiceAccountToken": false
            }),
        ),
        (
            "snp-daemonset.json".to_owned(),
            json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": { "name": "chrysalis-snp-agent", "namespace": ns, "labels": snp, "annotations": image_annotations(p) },
                "spec": {
                    "selector": { "matchLabels": selector },
                    "updateStrategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
                    "template": {
                        "metadata": { "labels": snp },
                        "spec": {
                            "serviceAccountName": "chrysalis-snp-agent",
                            "automountServiceAccountToken": false,
                            "nodeSelector": { NFD_SNP_LABEL: "true" },
                            "terminationGracePeriodSeconds": 30,
                            "containers": [ {
                                "name": "qemu",
                                "image": a.agent_image,
                                "command": [ "/bin/sh", "/etc/chrysalis/launch.sh" ],
                                // Each node's runtime is its own attested instance: reach it on the
                                // node's address (the router's upstream list), never through a
                                // load-balanced address.
                                "ports": [ { "name": "api", "containerPort": p.guest_port, "hostPort": p.guest_port, "protocol": "TCP" } ],
                                "readinessProbe": {
                                    "httpGet": { "path": routes::HEALTH, "port": p.guest_port },
                                    "periodSeconds": 10
                                },
                                "resources": { "requests": guaranteed, "limits": guaranteed },
                                "securityContext": { "privileged": true },
                                "volumeMounts": [
                                    { "name": "definition", "mountPath": "/etc/chrysalis", "readOnly": true },
                                    { "name": "published", "mountPath": HOST_DIR, "readOnly": true },
                                    { "name": "kvm", "mountPath": "/dev/kvm" },
                                    { "name": "sev", "mountPath": "/dev/sev" },
                                    { "name": "run", "mountPath": "/run/chrysalis" }
                                ]
                            } ],
                            "volumes": [
                                { "name": "definition", "configMap": { "name": cm_name } },
                                host_path("published", HOST_DIR, "Directory"),
                                host_path("kvm", "/dev/kvm", "CharDevice"),
                                host_path("sev", "/dev/sev", "CharDevice"),
                                { "name": "run", "emptyDir": { "medium": "Memory" } }
                            ]
                        }
                    }
                }
            }),
        ),
        (
            "snp-service.json".to_owned(),
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": "chrysalis-snp", "namespace": ns, "labels": snp },
                // Headless: one address per node's runtime, for whoever writes the router's
                // upstream list. Never a single load-balanced address.
                "spec": {
                    "clusterIP": "None",
                    "selector": selector,
                    "ports": [ { "name": "api", "port": p.guest_port, "targetPort": p.guest_port, "protocol": "TCP" } ]
                }
            }),
        ),
    ];
    // Read-only access for the (design-only) controller that writes `attest proxy`'s upstream
    // list from the EndpointSlices. A wrong list can only deny service: each upstream is
    // attested before any request reaches it.
    let lister = json!({ "app.kubernetes.io/name": APP, "app.kubernetes.io/component": "upstreams" });
    out.push((
        "upstreams-rbac-serviceaccount.json".to_owned(),
        json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": { "name": "chrysalis-upstreams", "namespace": ns, "labels": lister } }),
    ));
    out.push((
        "upstreams-rbac-role.json".to_owned(),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": { "name": "chrysalis-upstreams", "namespace": ns, "labels": lister },
                "rules": [
                    { "apiGroups": [ "discovery.k8s.io" ], "resources": [ "endpointslices" ], "verbs": [ "get", "list", "watch" ] },
                    { "apiGroups": [ "kubevirt.io" ], "resources": [ "virtualmachineinstances" ], "verbs": [ "get", "list", "watch" ] }
                ] }),
    ));
    out.push((
        "upstreams-rbac-rolebinding.json".to_owned(),
        json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": { "name": "chrysalis-upstreams", "namespace": ns, "labels": lister },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "chrysalis-upstreams" },
                "subjects": [ { "kind": "ServiceAccount", "name": "chrysalis-upstreams", "namespace": ns } ] }),
    ));
    Ok(out)
}

/// `cargo xtask k8s`.
pub fn run(root: &Path, a: K8sArgs) -> Result<()> {
    let dir = a.out.clone().unwrap_or_else(|| root.join("out/k8s"));
    let p = Pinned::load(root, &dir, a.vcpus)?;
    let boot_image = a.boot_image.clone().unwrap_or_else(|| format!("localhost/chrysalis-boot:{}", &p.initramfs_sha256[..12]));
    for (name, obj) in manifests(&p, &a, &boot_image)? {
        std::fs::write(dir.join(&name), serde_json::to_string_pretty(&obj)? + "\n")?;
        println!("{}", dir.join(&name).display());
    }
    std::fs::write(dir.join("definition.json"), serde_json::to_string_pretty(&definition(&p))? + "\n")?;
    let boot = dir.join("boot-image");
    std::fs::create_dir_all(&boot)?;
    std::fs::write(
        boot.join("Containerfile"),
        format!(
            "# KubeVirt kernel-boot image: copy out/vmlinuz and out/initramfs.cpio.gz here, then\n\
             # build and push it as {boot_image} (the VM pins nothing else from it; the owner's\n\
             # attestation checks the kernel, initrd and command line).\n\
             # vmlinuz sha256 {}\n# initramfs.cpio.gz sha256 {}\n\
             FROM scratch\nCOPY vmlinuz initramfs.cpio.gz /boot/\n",
            p.vmlinuz_sha256, p.initramfs_sha256
        ),
    )?;
    if let Err(why) = masquerade_cidr(&p.cmdline) {
        say(format!("WARNING: tdx-kubevirt-vm.json cannot reach the runtime as published: {why}"));
    }
    say("KubeVirt TDX needs KubeVirt >= v1.7.0 with the WorkloadEncryptionTDX feature gate (alpha); see FLEET.md");
    say(format!("written to {}", dir.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory per test (they run in parallel and each writes a cmdline there).
    fn scratch(test: &str) -> PathBuf {
        std::env::temp_dir().join(format!("chrysalis-k8s-{test}-{}", std::process::id()))
    }

    fn pinned(test: &str) -> Pinned {
        Pinned::load(&crate::util::project_root(), &scratch(test), None).expect("image/expected.json")
    }

    fn args() -> K8sArgs {
        K8sArgs {
            out: None,
            namespace: "chrysalis".into(),
            vcpus: None,
            boot_image: None,
            bundle_image: "b".into(),
            agent_image: "a".into(),
        }
    }

    #[test]
    fn tdx_vm_has_the_measured_shape_and_nothing_else() {
        let p = pinned("tdx");
        let vm = tdx_virtual_machine(&p, "ns", "boot", "bundle");
        let d = &vm["spec"]["template"]["spec"]["domain"];
        assert_eq!(vm["apiVersion"], "kubevirt.io/v1");
        assert_eq!(d["launchSecurity"], json!({ "tdx": {} }));
        assert_eq!(d["firmware"]["kernelBoot"]["kernelArgs"], p.cmdline.as_str());
        assert_eq!(d["cpu"]["cores"].as_u64().unwrap() * d["cpu"]["sockets"].as_u64().unwrap(), u64::from(p.vcpus));
        assert_eq!(d["memory"]["guest"], format!("{}Mi", p.memory_mib));
        assert_eq!(d["firmware"]["bootloader"]["efi"]["persistent"], false);
        assert_eq!(d["features"]["smm"]["enabled"], false);
        assert_eq!(d["devices"]["disks"].as_array().unwrap().len(), 1);
        assert_eq!(d["devices"]["interfaces"].as_array().unwrap().len(), 1);
        assert_eq!(d["devices"]["autoattachMemBalloon"], false);
        // The published command line is made for QEMU user networking: flagged, not hidden.
        assert!(vm["metadata"]["annotations"]["chrysalis.dev/network-unreachable"].is_string());
    }

    #[test]
    fn masquerade_needs_gateway_first_guest_second() {
        assert_eq!(masquerade_cidr("chrysalis.ip=10.0.2.2/24 chrysalis.gw=10.0.2.1"), Ok("10.0.2.0/24".into()));
        assert_eq!(masquerade_cidr("a chrysalis.ip=192.168.7.2/30 chrysalis.gw=192.168.7.1 b"), Ok("192.168.7.0/30".into()));
        assert!(masquerade_cidr("chrysalis.ip=10.0.2.15/24 chrysalis.gw=10.0.2.2").is_err());
        assert!(masquerade_cidr("console=ttyS0").is_err());
    }

    #[test]
    fn snp_agent_runs_the_run_tee_snp_line() {
        let p = pinned("snp");
        let q = p.snp_qemu_args();
        let has = |pair: [&str; 2]| q.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1]);
        assert!(has(["-smp", &p.vcpus.to_string()]));
        assert!(has(["-m", &format!("{}M", p.memory_mib)]));
        assert!(has(["-append", &p.cmdline]));
        assert!(has(["-cpu", "EPYC-v4"]));
        assert!(q.iter().any(|a| a.contains("sev-snp-guest") && a.contains("kernel-hashes=on")));
        assert!(q.iter().any(|a| a.contains(&format!("hostfwd=tcp::{}-:{}", p.guest_port, p.guest_port))));
        assert!(!q.iter().any(|a| a.contains("127.0.0.1")));
        // Apart from paths and the forward address, the same line as `run --tee snp`.
        let mut cfg = VmConfig::for_image(&scratch("snp"), Path::new("/run/chrysalis")).unwrap();
        cfg.kernel = format!("{HOST_DIR}/image/vmlinuz").into();
        cfg.initrd = format!("{HOST_DIR}/image/initramfs.cpio.gz").into();
        cfg.disk = Some(format!("{HOST_DIR}/bundle/model.sealed").into());
        cfg.confidential =
            Some(Confidential { tee: HardwareTee::Snp, firmware: format!("{HOST_DIR}/firmware/ovmf-amdsev.fd").into() });
        let run_line = cfg.qemu_args(Accel::Kvm, p.guest_port, "stdio");
        assert_eq!(run_line.len(), q.len());
        let differ: Vec<_> = run_line.iter().zip(&q).filter(|(a, b)| a != b).collect();
        assert_eq!(differ.len(), 1, "{differ:?}");
        let script = snp_launch_script(&p);
        assert!(script.contains(&p.vmlinuz_sha256) && script.contains(&p.ovmf_amdsev_sha256));
    }

    #[test]
    fn no_secret_and_the_snp_nodes_selected_by_nfd() {
        let p = pinned("objects");
        let all = manifests(&p, &args(), "boot").unwrap();
        assert!(all.iter().all(|(_, o)| o["kind"] != "Secret"));
        let ds = &all.iter().find(|(_, o)| o["kind"] == "DaemonSet").unwrap().1;
        assert_eq!(ds["spec"]["template"]["spec"]["nodeSelector"][NFD_SNP_LABEL], "true");
        assert_eq!(ds["spec"]["template"]["spec"]["automountServiceAccountToken"], false);
        let cm = &all.iter().find(|(_, o)| o["kind"] == "ConfigMap").unwrap().1;
        let def: Value = serde_json::from_str(cm["data"]["definition.json"].as_str().unwrap()).unwrap();
        assert_eq!(def["cmdline"], p.cmdline.as_str());
        assert!(!p.snp_measurements.is_empty());
        let svc = &all.iter().find(|(_, o)| o["kind"] == "Service").unwrap().1;
        assert_eq!(svc["spec"]["clusterIP"], "None");
    }

    /// The generated objects against the published schemas, offline: Kubernetes' (strict,
    /// through kubernetes-validate's vendored copies) and, when `CHRYSALIS_KUBEVIRT_OPENAPI`
    /// names KubeVirt's `api/openapi-spec/swagger.json`, KubeVirt's. Installs the validator into
    /// `.venv` itself; skipped, loudly, when it cannot (no network, no python3-venv).
    #[test]
    fn manifests_validate_against_published_schemas() {
        let root = crate::util::project_root();
        let python = match crate::deps::ensure_venv_with(&root, &["xtask/k8s/requirements.txt"]) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("SKIPPED k8s schema validation: could not install kubernetes-validate into .venv: {e:#}");
                return;
            }
        };
        let p = pinned("validate");
        let dir = scratch("validate");
        let mut cmd = std::process::Command::new(python);
        cmd.arg(root.join("xtask/k8s/validate.py"));
        if let Some(openapi) = std::env::var_os("CHRYSALIS_KUBEVIRT_OPENAPI") {
            cmd.arg("--kubevirt-openapi").arg(openapi);
        }
        for (name, obj) in manifests(&p, &args(), "localhost/boot:1").unwrap() {
            std::fs::write(dir.join(&name), serde_json::to_string_pretty(&obj).unwrap()).unwrap();
            cmd.arg(dir.join(&name));
        }
        let out = cmd.output().expect("running xtask/k8s/validate.py");
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "manifests do not validate");
        assert!(!text.contains("INVALID"));
    }
}
