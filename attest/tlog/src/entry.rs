//! Log entries: versioned JSON objects in canonical form (see README.md, "Entries").
//!
//! Canonical JSON here: object keys sorted by their UTF-8 bytes, no insignificant
//! whitespace, strings as serde_json writes them, and numbers only as integers (i64/u64):
//! a float has no fixed-point text form in serde_json (fuzzing found `6…6e78` re-printing
//! differently after a round trip), so documents with floats are refused. The log stores and hashes the
//! canonical bytes, so two files that differ only in key order or spacing are the same entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// The only entry format version.
pub const ENTRY_VERSION: u64 = 1;
/// `kind` of an image release: artifacts, measurements, SBOM digest.
pub const KIND_IMAGE_RELEASE: &str = "image-release";
/// `kind` of a key release: a data key handed to an attested runtime.
pub const KIND_KEY_RELEASE: &str = "key-release";
/// Largest entry the log accepts (the entry bundle's uint16 length prefix).
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;

/// An image release (`cargo xtask package`): what a rebuild from source must reproduce.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRelease {
    /// Always 1.
    pub v: u64,
    /// Always `image-release`.
    pub kind: String,
    /// Release version (e.g. the git tag or `git describe`).
    pub version: String,
    /// File name in the release folder → lowercase hex SHA-256.
    pub artifacts: BTreeMap<String, String>,
    /// The release's measurements.json, verbatim (as JSON).
    pub measurements: Value,
    /// Lowercase hex SHA-256 of sbom.cdx.json.
    pub sbom_sha256: String,
}

impl ImageRelease {
    /// A new image-release entry.
    pub fn new(version: String, artifacts: BTreeMap<String, String>, measurements: Value, sbom_sha256: String) -> Self {
        Self { v: ENTRY_VERSION, kind: KIND_IMAGE_RELEASE.into(), version, artifacts, measurements, sbom_sha256 }
    }

    /// Every launch measurement this release publishes: the hex strings found anywhere
    /// under `measurements` whose key is `measurement` or starts with `mr`/`rtmr`
    /// (SNP `MEASUREMENT`, TDX `MRTD`, `RTMR*`), lowercased.
    pub fn measurement_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_measurements(&self.measurements, None, &mut out);
        out
    }
}

fn collect_measurements(v: &Value, key: Option<&str>, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| collect_measurements(v, Some(k), out)),
        Value::Array(a) => a.iter().for_each(|v| collect_measurements(v, key, out)),
        Value::String(s) => {
            let k = key.unwrap_or("").to_ascii_lowercase();
            if (k.contains("measurement") || k.starts_with("mr") || k.starts_with("rtmr"))
                && s.len() >= 64
                && s.bytes().all(|b| b.is_ascii_hexdigit())
            {
                out.push(s.to_ascii_lowercase());
            }
        }
        _ => {}
    }
}

/// The image-release entry of a release folder (`cargo xtask package`): SHA-256 of every
/// regular file in it except `SHA256SUMS` (which is derived from them), its
/// `measurements.json`, and the SHA-256 of `sbom.cdx.json`.
pub fn image_release_from_folder(dir: &std::path::Path, version: &str) -> Result<ImageRelease, Error> {
    use sha2::Digest;
    let io = |p: &std::path::Path, e: std::io::Error| Error::Io(format!("{}: {e}", p.display()));
    let mut artifacts = BTreeMap::new();
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type().map_err(|e| io(&p, e))?.is_file() || name == "SHA256SUMS" {
            continue;
        }
        let mut f = std::fs::File::open(&p).map_err(|e| io(&p, e))?;
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut f, &mut h).map_err(|e| io(&p, e))?;
        artifacts.insert(name, hex::encode(h.finalize()));
    }
    let mpath = dir.join("measurements.json");
    let measurements: Value = serde_json::from_slice(&std::fs::read(&mpath).map_err(|e| io(&mpath, e))?)
        .map_err(|e| Error::Entry(format!("{}: {e}", mpath.display())))?;
    let sbom_sha256 =
        artifacts.get("sbom.cdx.json").cloned().ok_or_else(|| Error::Entry(format!("{}: no sbom.cdx.json", dir.display())))?;
    Ok(ImageRelease::new(version.to_string(), artifacts, measurements, sbom_sha256))
}

/// [`image_release_from_folder`] for a folder named `chrysalis-<version>` (what
/// `cargo xtask package` writes): the version is taken from the name, so the packager and a
/// witness rebuilding the release derive the same entry.
pub fn image_release_of_release_folder(dir: &std::path::Path) -> Result<ImageRelease, Error> {
    let version = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("chrysalis-"))
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::Entry(format!("{}: not a release folder chrysalis-<version>", dir.display())))?;
    image_release_from_folder(dir, version)
}

/// A key release (`attest release`, `attest serve-keys`): who got the data key, when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRelease {
    /// Always 1.
    pub v: u64,
    /// Always `key-release`.
    pub kind: String,
    /// When the key was released, RFC 3339 UTC.
    pub time: String,
    /// The runtime's launch measurement (hex) as verified.
    pub measurement: String,
    /// Chip or platform identity from the verified claims (hex), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_id: Option<String>,
    /// The runtime's public key the data key was wrapped to (hex).
    pub runtime_key: String,
    /// SHA-384 of the sealed bundle's header (hex), as the runtime's event log measures it.
    pub bundle_digest: String,
    /// SHA-256 of the owner's policy file (hex).
    pub policy_sha256: String,
}

/// A parsed entry of a known kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// `kind = "image-release"`.
    ImageRelease(ImageRelease),
    /// `kind = "key-release"`.
    KeyRelease(KeyRelease),
}

impl Entry {
    /// Parse and check an entry (version, kind, fields).
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::Entry(format!("not JSON: {e}")))?;
        let version = v.get("v").and_then(Value::as_u64);
        if version != Some(ENTRY_VERSION) {
            return Err(Error::Entry(format!("\"v\" is {}, this tool knows only 1", v.get("v").unwrap_or(&Value::Null))));
        }
        match v.get("kind").and_then(Value::as_str) {
            Some(KIND_IMAGE_RELEASE) => {
                serde_json::from_value(v).map(Entry::ImageRelease).map_err(|e| Error::Entry(format!("image-release: {e}")))
            }
            Some(KIND_KEY_RELEASE) => {
                serde_json::from_value(v).map(Entry::KeyRelease).map_err(|e| Error::Entry(format!("key-release: {e}")))
            }
            other => Err(Error::Entry(format!("unknown kind {other:?} (image-release, key-release)"))),
        }
    }

    /// The entry's canonical bytes.
    pub fn to_canonical(&self) -> Result<Vec<u8>, Error> {
        let v = match self {
            Entry::ImageRelease(e) => serde_json::to_value(e),
            Entry::KeyRelease(e) => serde_json::to_value(e),
        }
        .map_err(|e| Error::Entry(e.to_string()))?;
        canonical_value(&v)
    }
}

/// The canonical form of a JSON document (any JSON, checked for nothing else).
pub fn canonical_json(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| Error::Entry(format!("not JSON: {e}")))?;
    canonical_value(&v)
}

/// Parse `bytes` as a known entry and return its canonical bytes (what `append` stores).
pub fn canonical_entry(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let canonical = canonical_json(bytes)?;
    Entry::parse(&canonical)?;
    if canonical.len() > MAX_ENTRY_LEN {
        return Err(Error::Entry(format!("{} bytes, more than the {MAX_ENTRY_LEN} an entry may have", canonical.len())));
    }
    Ok(canonical)
}

/// Canonical bytes of a JSON value (integers only).
pub fn canonical_value(v: &Value) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    write_canonical(v, &mut out)?;
    Ok(out)
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) -> Result<(), Error> {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&str, &Value> = m.iter().map(|(k, v)| (k.as_str(), v)).collect();
            out.push(b'{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(k.to_string()).to_string().as_bytes());
                out.push(b':');
                write_canonical(v, out)?;
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(v, out)?;
            }
            out.push(b']');
        }
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => {
            return Err(Error::Entry(format!("number {n} is not an integer (entries hold integers only)")));
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
    Ok(())
}

/// Where two JSON documents differ: `path: left vs right` lines (at most `limit`).
pub fn json_diff(left: &Value, right: &Value, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    diff_at("", left, right, &mut out, limit);
    out
}

fn diff_at(path: &str, l: &Value, r: &Value, out: &mut Vec<String>, limit: usize) {
    if out.len() >= limit || l == r {
        return;
    }
    let child = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match (l, r) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let (x, y) = (a.get(k).unwrap_or(&Value::Null), b.get(k).unwrap_or(&Value::Null));
                diff_at(&child(k), x, y, out, limit);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_at(&child(&i.to_string()), x, y, out, limit);
            }
        }
        _ => out.push(format!("{}: {l} vs {r}", if path.is_empty() { "(entry)" } else { path })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_and_drops_whitespace() {
        let a = canonical_json(br#"{ "b": [1, {"y":2,"x":"\u00e9"}], "a": null }"#).unwrap();
        assert_eq!(String::from_utf8(a).unwrap(), r#"{"a":null,"b":[1,{"x":"é","y":2}]}"#);
        assert!(canonical_json(b"[1.5]").is_err());
        assert!(canonical_json(b"6666666666666666666666666666666666666666666666666666666666666666666666666666666").is_err());
        assert_eq!(canonical_json(b"[-1, 18446744073709551615]").unwrap(), b"[-1,18446744073709551615]");
    }

    #[test]
    fn entry_kinds_are_checked() {
        assert!(Entry::parse(br#"{"v":2,"kind":"image-release"}"#).is_err());
        assert!(Entry::parse(br#"{"v":1,"kind":"other"}"#).is_err());
        let e = br#"{"v":1,"kind":"image-release","version":"1","artifacts":{},"measurements":{"snp":{"measurement":"ab"}},"sbom_sha256":"00"}"#;
        assert!(matches!(Entry::parse(e), Ok(Entry::ImageRelease(_))));
        let extra = br#"{"v":1,"kind":"image-release","version":"1","artifacts":{},"measurements":{},"sbom_sha256":"00","x":1}"#;
        assert!(Entry::parse(extra).is_err());
    }

    #[test]
    fn image_release_from_a_release_folder() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("initramfs.cpio.gz"), b"initramfs").unwrap();
        std::fs::write(d.path().join("sbom.cdx.json"), b"{}").unwrap();
        std::fs::write(d.path().join("SHA256SUMS"), b"ignored").unwrap();
        let m = format!(r#"{{"snp":[{{"measurement":"{}"}}],"tdx":{{"mrtd":"{}"}}}}"#, "Ab".repeat(48), "cd".repeat(48));
        std::fs::write(d.path().join("measurements.json"), &m).unwrap();
        let e = image_release_from_folder(d.path(), "0.1.0").unwrap();
        use sha2::Digest;
        let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
        assert_eq!(e.artifacts.len(), 3, "{:?}", e.artifacts);
        assert_eq!(e.artifacts["initramfs.cpio.gz"], sha(b"initramfs"));
        assert_eq!(e.artifacts["measurements.json"], sha(m.as_bytes()));
        assert_eq!(e.sbom_sha256, sha(b"{}"));
        assert_eq!(e.measurement_values(), vec!["ab".repeat(48), "cd".repeat(48)]);
        let bytes = Entry::ImageRelease(e.clone()).to_canonical().unwrap();
        assert_eq!(Entry::parse(&bytes).unwrap(), Entry::ImageRelease(e));
        std::fs::remove_file(d.path().join("sbom.cdx.json")).unwrap();
        assert!(image_release_from_folder(d.path(), "0.1.0").is_err());
    }

    #[test]
    fn diff_names_the_path() {
        let l: Value = serde_json::from_str(r#"{"m":{"snp":"aa"},"v":1}"#).unwrap();
        let r: Value = serde_json::from_str(r#"{"m":{"snp":"bb"},"v":1}"#).unwrap();
        assert_eq!(json_diff(&l, &r, 8), vec![r#"m.snp: "aa" vs "bb""#.to_string()]);
    }
}
