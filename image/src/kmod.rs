//! Kernel module metadata: read the `.modinfo` section of a `.ko` (optionally
//! xz-compressed, as Debian ships them) and order a set of modules so that every module
//! comes after the modules it depends on. Build-time only; inputs come from the pinned,
//! hash-checked kernel package.

use std::collections::{BTreeMap, BTreeSet};

use object::{Object, ObjectSection};

use crate::ImageError;

/// A module read from the kernel package.
#[derive(Clone, Debug)]
pub struct Module {
    /// Canonical module name (`-` replaced by `_`), as the kernel names it.
    pub name: String,
    /// Names of the modules it depends on (`depends=` in `.modinfo`).
    pub depends: Vec<String>,
    /// The uncompressed ELF object.
    pub object: Vec<u8>,
}

/// Canonical form of a module name: the kernel treats `-` and `_` alike.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Decompress `.ko.xz` bytes (or pass plain `.ko` through) and read its metadata.
pub fn parse_module(file_name: &str, bytes: &[u8]) -> Result<Module, ImageError> {
    let object = if file_name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut std::io::Cursor::new(bytes), &mut out)
            .map_err(|e| ImageError::Module { module: file_name.to_owned(), why: format!("xz: {e}") })?;
        out
    } else {
        bytes.to_vec()
    };
    let info = modinfo(&object).map_err(|why| ImageError::Module { module: file_name.to_owned(), why })?;
    let name = info
        .get("name")
        .map(|n| canonical(n))
        .ok_or_else(|| ImageError::Module { module: file_name.to_owned(), why: "no name= in .modinfo".into() })?;
    let depends =
        info.get("depends").map(|d| d.split(',').filter(|s| !s.is_empty()).map(canonical).collect()).unwrap_or_default();
    Ok(Module { name, depends, object })
}

/// The key=value pairs of an ELF object's `.modinfo` section (last value wins).
fn modinfo(elf: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF object: {e}"))?;
    let section = file.section_by_name(".modinfo").ok_or("no .modinfo section")?;
    let data = section.data().map_err(|e| format!(".modinfo: {e}"))?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

/// Order `wanted` modules and all their dependencies so dependencies load first. `available`
/// maps canonical names to parsed modules. Ties are broken by name, so the order is a pure
/// function of the inputs.
pub fn load_order(wanted: &[String], available: &BTreeMap<String, Module>) -> Result<Vec<String>, ImageError> {
    fn visit(
        name: &str,
        available: &BTreeMap<String, Module>,
        done: &mut BTreeSet<String>,
        active: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        if done.contains(name) {
            return Ok(());
        }
        if active.iter().any(|a| a == name) {
            return Err(ImageError::DependencyCycle(active.join(" -> ")));
        }
        let module = available
            .get(name)
            .ok_or_else(|| ImageError::MissingModule { module: name.to_owned(), needed_by: active.last().cloned() })?;
        active.push(name.to_owned());
        let mut deps = module.depends.clone();
        deps.sort();
        for dep in &deps {
            visit(dep, available, done, active, order)?;
        }
        active.pop();
        done.insert(name.to_owned());
        order.push(name.to_owned());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    for w in wanted {
        visit(&canonical(w), available, &mut done, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, deps: &[&str]) -> (String, Module) {
        (name.to_owned(), Module { name: name.into(), depends: deps.iter().map(|d| d.to_string()).collect(), object: vec![] })
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let avail: BTreeMap<_, _> = [
            m("virtio_net", &["net_failover"]),
            m("net_failover", &["failover"]),
            m("failover", &[]),
            m("sev_guest", &["tsm"]),
            m("tsm", &["configfs"]),
            m("configfs", &[]),
        ]
        .into_iter()
        .collect();
        let want = ["sev-guest", "virtio_net", "tsm"].map(String::from);
        let order = load_order(&want, &avail).unwrap_or_default();
        assert_eq!(order, ["configfs", "tsm", "sev_guest", "failover", "net_failover", "virtio_net"]);
    }

    #[test]
    fn missing_and_cyclic_modules_are_errors() {
        let avail: BTreeMap<_, _> = [m("a", &["b"]), m("b", &["a"]), m("c", &["zz"])].into_iter().collect();
        assert!(matches!(load_order(&["a".into()], &avail), Err(ImageError::DependencyCycle(_))));
        assert!(matches!(
            load_order(&["c".into()], &avail),
            Err(ImageError::MissingModule { module, .. }) if module == "zz"
        ));
    }

    #[test]
    fn non_elf_input_is_an_error() {
        assert!(parse_module("x.ko", b"not elf").is_err());
        assert!(parse_module("x.ko.xz", b"not xz").is_err());
    }
}
