//! The offline collateral bundle for GPU appraisal: NVIDIA's signed RIMs and stored OCSP
//! responses, so that verification never contacts NVIDIA's RIM or OCSP services.
//!
//! Trusts nothing in it: every RIM is signature- and chain-checked before use, every OCSP
//! response is signature-checked. File names only select; they are not trusted.
//!
//! Layout on disk ([`RimBundle::load_dir`]):
//!
//! ```text
//! <dir>/
//!   NV_GPU_DRIVER_GH100_550.90.07.swidtag         driver RIM, named by NVIDIA's RIM id
//!   NV_GPU_VBIOS_1010_0200_882_96009F0001.swidtag  VBIOS RIM (project_sku_chipsku_version)
//!   ocsp/<anything>.der                            DER OCSPResponse, any number
//! ```
//!
//! The RIM ids are the ones NVIDIA's RIM service serves them under, so a bundle can be
//! filled by fetching those ids once, online, and shipping the files.

use std::collections::BTreeMap;
use std::path::Path;

/// Largest file read into a bundle.
pub const MAX_BUNDLE_FILE: u64 = 4 << 20;

/// RIMs keyed by NVIDIA RIM id, plus stored OCSP responses.
#[derive(Clone, Debug, Default)]
pub struct RimBundle {
    rims: BTreeMap<String, Vec<u8>>,
    ocsp: Vec<Vec<u8>>,
}

impl RimBundle {
    /// An empty bundle (verification then reports RIMs as not available).
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a RIM under its NVIDIA RIM id.
    pub fn insert_rim(&mut self, id: impl Into<String>, xml: Vec<u8>) {
        self.rims.insert(id.into(), xml);
    }

    /// Add a DER OCSP response.
    pub fn insert_ocsp(&mut self, der: Vec<u8>) {
        self.ocsp.push(der);
    }

    /// The RIM stored under `id`.
    pub fn rim(&self, id: &str) -> Option<&[u8]> {
        self.rims.get(id).map(Vec::as_slice)
    }

    /// Ids of all stored RIMs.
    pub fn rim_ids(&self) -> impl Iterator<Item = &str> {
        self.rims.keys().map(String::as_str)
    }

    /// Stored OCSP responses.
    pub fn ocsp(&self) -> &[Vec<u8>] {
        &self.ocsp
    }

    /// Read a bundle directory (layout in the module docs). Files over
    /// [`MAX_BUNDLE_FILE`] are an error, unknown files are ignored.
    pub fn load_dir(dir: &Path) -> std::io::Result<Self> {
        let mut b = RimBundle::new();
        for entry in sorted_entries(dir)? {
            if entry.extension().is_some_and(|e| e == "swidtag")
                && let Some(stem) = entry.file_stem().and_then(|s| s.to_str())
            {
                b.insert_rim(stem, read_limited(&entry)?);
            }
        }
        let ocsp_dir = dir.join("ocsp");
        if ocsp_dir.is_dir() {
            for entry in sorted_entries(&ocsp_dir)? {
                if entry.extension().is_some_and(|e| e == "der") {
                    b.insert_ocsp(read_limited(&entry)?);
                }
            }
        }
        Ok(b)
    }
}

fn sorted_entries(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut v = std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>()?;
    v.sort();
    Ok(v)
}

fn read_limited(p: &Path) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(p)?.len();
    if len > MAX_BUNDLE_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {len} bytes, limit {MAX_BUNDLE_FILE}", p.display()),
        ));
    }
    std::fs::read(p)
}

/// NVIDIA's RIM id of the Hopper driver RIM for `driver_version` (e.g. `550.90.07`).
pub fn driver_rim_id(driver_version: &str) -> String {
    format!("NV_GPU_DRIVER_GH100_{driver_version}")
}

/// NVIDIA's RIM id of a VBIOS RIM: project, project SKU, chip SKU and the VBIOS version
/// without dots, upper-case (`96.00.9f.00.01` becomes `96009F0001`).
pub fn vbios_rim_id(project: &str, project_sku: &str, chip_sku: &str, vbios_version: &str) -> String {
    let v: String = vbios_version.chars().filter(|c| *c != '.').collect::<String>().to_uppercase();
    format!("NV_GPU_VBIOS_{project}_{project_sku}_{chip_sku}_{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rim_ids_follow_nvidia_naming() {
        assert_eq!(driver_rim_id("550.90.07"), "NV_GPU_DRIVER_GH100_550.90.07");
        assert_eq!(vbios_rim_id("1010", "0200", "882", "96.00.9f.00.01"), "NV_GPU_VBIOS_1010_0200_882_96009F0001");
    }

    #[test]
    fn load_dir_reads_rims_and_ocsp() {
        let dir = std::env::temp_dir().join(format!("nv-bundle-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ocsp")).unwrap();
        std::fs::write(dir.join("NV_GPU_DRIVER_GH100_1.swidtag"), b"<x/>").unwrap();
        std::fs::write(dir.join("README"), b"ignored").unwrap();
        std::fs::write(dir.join("ocsp/a.der"), [0x30, 0]).unwrap();
        let b = RimBundle::load_dir(&dir).unwrap();
        assert_eq!(b.rim("NV_GPU_DRIVER_GH100_1"), Some(&b"<x/>"[..]));
        assert_eq!(b.rim_ids().count(), 1);
        assert_eq!(b.ocsp().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
