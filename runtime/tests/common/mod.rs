//! Shared helpers of the runtime's inference tests: where the reference Python and the
//! model files are, generating/fetching them idempotently, and loading models from disk.
//! Trusts: the local test environment.
#![allow(dead_code)]

use chrysalis_runtime::infer::ModelFiles;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use zeroize::Zeroizing;

pub const SETUP: &str = "run `cargo xtask test`, or by hand from the repository root: \
    python3 -m venv .venv && .venv/bin/pip install -r runtime/tests/reference/requirements.txt && \
    export CHRYSALIS_PYTHON=$PWD/.venv/bin/python CHRYSALIS_MODELS=$PWD/.cache/models";

/// The reference interpreter and the models folder, from CHRYSALIS_PYTHON / CHRYSALIS_MODELS.
/// Panics with the setup command when they are missing: these tests must not silently skip.
pub fn env() -> (PathBuf, PathBuf) {
    let python =
        std::env::var_os("CHRYSALIS_PYTHON").map(PathBuf::from).unwrap_or_else(|| panic!("CHRYSALIS_PYTHON is not set: {SETUP}"));
    let models =
        std::env::var_os("CHRYSALIS_MODELS").map(PathBuf::from).unwrap_or_else(|| panic!("CHRYSALIS_MODELS is not set: {SETUP}"));
    assert!(python.exists(), "CHRYSALIS_PYTHON={} does not exist: {SETUP}", python.display());
    (python, models)
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(name)
}

fn run_python(args: &[&std::ffi::OsStr]) {
    let (python, models) = env();
    let out = Command::new(&python)
        .args(args)
        .env("CHRYSALIS_MODELS", &models)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}: {SETUP}", python.display()));
    assert!(
        out.status.success(),
        "{:?} failed ({}):\n{}\n{}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates (once per test binary) the tiny seeded models and fetches SmolLM2.
pub fn ensure_models() -> PathBuf {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let (_, models) = env();
        std::fs::create_dir_all(&models).unwrap_or_else(|e| panic!("creating {}: {e}", models.display()));
        for arch in ["llama", "qwen2"] {
            run_python(&[script("make_tiny_model.py").as_os_str(), "--arch".as_ref(), arch.as_ref()]);
        }
        run_python(&[script("fetch_smollm2.py").as_os_str()]);
        models
    })
    .clone()
}

pub fn smollm2_path() -> PathBuf {
    ensure_models().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Reads a folder (or one file) as the unseal step would hand it over.
pub fn read_model(path: &Path) -> ModelFiles {
    let mut files = ModelFiles::new();
    let paths: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect()
    } else {
        vec![path.to_owned()]
    };
    for p in paths {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        files.insert(name, Zeroizing::new(bytes));
    }
    files
}

/// Runs reference_logits.py on `request`; returns its JSON result and the logits rows.
pub fn reference(request: &serde_json::Value) -> (serde_json::Value, Vec<f32>) {
    let dir = std::env::temp_dir().join(format!("chrysalis-ref-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let req = dir.join("request.json");
    let res = dir.join("result.json");
    let logits = dir.join("logits.f32");
    std::fs::write(&req, serde_json::to_vec(request).unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    run_python(&[script("reference_logits.py").as_os_str(), req.as_os_str(), res.as_os_str(), logits.as_os_str()]);
    let result: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&res).unwrap_or_default()).unwrap_or_else(|e| panic!("result: {e}"));
    let raw = std::fs::read(&logits).unwrap_or_default();
    let floats = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let _ = std::fs::remove_dir_all(&dir);
    (result, floats)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

/// Index of the first maximum, as torch.argmax.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_u64().unwrap_or_else(|| panic!("not an id: {x}")) as u32)
        .collect()
}
