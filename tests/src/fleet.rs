//! A provider's fleet in miniature, for the fleet test and `cargo xtask bench fleet`: several
//! VMs booted from the same image with the simulated TEE (one simulation root), each with
//! the same sealed model on its disk and its key released by the owner, behind one policy
//! that pins the measurement and the model.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use chrysalis_attest::seal::SealSummary;

use crate::qemu::{Vm, VmConfig};
use crate::{owner, sim};

/// How long one node may take to reach READY (three TCG guests share two host cores).
pub const BOOT: Duration = Duration::from_secs(600);

/// Guest memory of a node. The tiny model needs a few MiB, and the guest kernel zeroes all of
/// its memory at boot (`init_on_free=1`), so a node holds its whole memory on the host: four
/// nodes of the default 2 GiB were 8.8 GiB resident (measured under TCG), with 768 MiB 3.7 GiB.
pub const NODE_MEMORY_MIB: u32 = 768;

/// One runtime VM of the fleet.
pub struct Node {
    /// The VM (dropping it kills QEMU: a node that dies).
    pub vm: Vm,
    /// Its API's base URL.
    pub url: String,
}

/// The fleet's shared parts.
pub struct Fleet {
    /// Where the image is (`out/`).
    pub out: PathBuf,
    /// Scratch directory: the simulation root, the policy, one directory per node.
    pub dir: PathBuf,
    /// The sealed model every node serves.
    pub sealed: SealSummary,
    /// The policy pinning the simulated root, the image's measurement and the model.
    pub policy: PathBuf,
    /// Added to every node's command line (measured: it is part of the policy's measurement).
    pub extra_cmdline: String,
}

impl Fleet {
    /// Seal `model` (as `name`) into `dir` and write a policy for the image in `out` booted
    /// with `extra_cmdline` appended.
    pub fn new(out: &Path, dir: &Path, model: &Path, name: &str, extra_cmdline: &str) -> Result<Fleet> {
        std::fs::create_dir_all(dir)?;
        let sealed = owner::seal(model, dir, name)?;
        let fleet = Fleet {
            out: out.to_path_buf(),
            dir: dir.to_path_buf(),
            sealed,
            policy: PathBuf::new(),
            extra_cmdline: extra_cmdline.into(),
        };
        let measurement = sim::measurement(&fleet.config("policy", "")?)?;
        let root = sim::root(&dir.join("sim"))?;
        let policy =
            owner::write_policy(dir, &owner::sim_policy(&root.public_key(), &measurement, Some(&fleet.sealed.header_sha384)))?;
        Ok(Fleet { policy, ..fleet })
    }

    /// The VM configuration of node `name`, with `more` appended to the command line.
    pub fn config(&self, name: &str, more: &str) -> Result<VmConfig> {
        let mut cfg = VmConfig::for_image(&self.out, &self.dir.join(name))?;
        cfg.disk = Some(self.sealed.bundle.clone());
        cfg.memory_mib = NODE_MEMORY_MIB;
        for extra in [self.extra_cmdline.as_str(), more] {
            if !extra.is_empty() {
                cfg.cmdline.push(' ');
                cfg.cmdline.push_str(extra);
            }
        }
        Ok(cfg)
    }

    /// Start node `name` (on `host_port`, or a free port), with `more` on its command line;
    /// it is not waited for.
    pub fn start(&self, name: &str, more: &str, host_port: Option<u16>) -> Result<Node> {
        let cfg = self.config(name, more)?;
        let vm = sim::boot_on(cfg, sim::root(&self.dir.join("sim"))?, host_port, |_| {})?;
        Ok(Node { url: vm.url(), vm })
    }

    /// Wait for `node` to be READY and release the model's key to it under the policy.
    pub fn ready_and_released(&self, node: &mut Node) -> Result<()> {
        node.vm.wait_for("READY", BOOT).with_context(|| format!("node {}", node.url))?;
        owner::release(&node.url, &self.policy, &self.sealed.key_file)
            .with_context(|| format!("key release to {}: console:\n{}", node.url, node.vm.serial()))?;
        Ok(())
    }

    /// Start `count` nodes named `node0`…, then wait for each and release its key.
    pub fn boot(&self, count: usize) -> Result<Vec<Node>> {
        let mut nodes = (0..count).map(|i| self.start(&format!("node{i}"), "", None)).collect::<Result<Vec<_>>>()?;
        for n in &mut nodes {
            self.ready_and_released(n)?;
        }
        Ok(nodes)
    }
}

/// Write the router's upstreams file: one URL per line.
pub fn write_upstreams(path: &Path, urls: &[&str]) -> Result<()> {
    let mut text = String::from("# runtimes behind this router\n");
    for u in urls {
        text.push_str(u);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
