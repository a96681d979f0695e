//! Format v1 stays readable: `tests/data/v1/` holds a bundle and key file written by the v1
//! writer itself (see its README), not by a re-implementation. Its files unseal on every
//! path to the committed plaintext, its header digest is what the key file says, and the
//! v1 tamper classes still give their errors.
#![allow(clippy::expect_used)]

use std::num::NonZeroUsize;
use std::path::PathBuf;

use chrysalis_proto::seal::format::{FORMAT_V1, TAG_LEN};
use chrysalis_proto::seal::{
    BundleHeader, DataKey, HeaderError, KeyFile, UnsealError, UnsealOptions, read_header, read_header_from, unseal_file,
    unseal_reader, unseal_with,
};

const NAMES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1")
}

fn load() -> (Vec<u8>, KeyFile) {
    let bundle = std::fs::read(dir().join("bundle.sealed")).expect("fixture bundle");
    let text = std::fs::read_to_string(dir().join("bundle.key")).expect("fixture key file");
    (bundle, KeyFile::parse(&text).expect("key file parses"))
}

fn opts(threads: usize) -> UnsealOptions {
    UnsealOptions { threads: NonZeroUsize::new(threads), ..UnsealOptions::default() }
}

#[test]
fn v1_fixture_unseals_on_every_path() {
    let (bundle, kf) = load();
    let h = read_header(&bundle).expect("v1 header parses");
    assert_eq!(h.header.format_version(), FORMAT_V1);
    assert!(matches!(h.header, BundleHeader::V1(_)));
    assert_eq!(h.digest(), kf.header_digest, "the key file names this header");
    let from_reader = read_header_from(&mut &bundle[..]).expect("v1 header from a reader");
    assert_eq!(from_reader, h);
    let path = dir().join("bundle.sealed");
    for t in [1, 4] {
        let file = std::fs::File::open(&path).expect("open");
        for u in [
            unseal_with(&bundle, &kf.key, &opts(t)),
            unseal_reader(&bundle[..], &kf.key, &opts(t)),
            unseal_file(&file, &kf.key, &opts(t)),
        ] {
            let u = u.expect("v1 unseals");
            assert_eq!(u.model_name, "v1 fixture");
            assert_eq!(u.model_name, kf.model_name);
            assert_eq!(u.header_digest, kf.header_digest);
            let names: Vec<&str> = u.files.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(names, NAMES);
            for n in NAMES {
                let want = std::fs::read(dir().join("plain").join(n)).expect("plaintext");
                assert_eq!(u.get(n), Some(want.as_slice()), "{n}");
            }
        }
    }
}

/// What v2 fixes: a v1 header names every file and carries its hash in the clear.
#[test]
fn v1_header_shows_names_and_hashes_in_the_clear() {
    let (bundle, _) = load();
    let h = read_header(&bundle).expect("header");
    let m = h.header.clear_manifest().expect("v1 has a clear manifest");
    assert_eq!(m.files.len(), 3);
    for e in &m.files {
        assert!(h.raw.windows(e.name.len()).any(|w| w == e.name.as_bytes()), "{}", e.name);
        assert!(h.raw.windows(32).any(|w| w == e.sha256), "{}", e.name);
    }
}

#[test]
fn v1_fixture_tampering_fails() {
    let (bundle, kf) = load();
    let h = read_header(&bundle).expect("header");
    let hl = h.len();
    // config.json: chunk 0 (77 B); model.safetensors: chunks 1, 2 (4096 B each) and 3; tokenizer: 4.
    assert_eq!(h.layout.chunk_count, 5);
    let chunk1 = hl + 77 + TAG_LEN;
    let stride = 4096 + TAG_LEN;
    let mut swapped = bundle.clone();
    swapped[chunk1..chunk1 + stride].copy_from_slice(&bundle[chunk1 + stride..chunk1 + 2 * stride]);
    swapped[chunk1 + stride..chunk1 + 2 * stride].copy_from_slice(&bundle[chunk1..chunk1 + stride]);
    let mut flipped = bundle.clone();
    flipped[chunk1 + stride + 5] ^= 4;
    let BundleHeader::V1(mut edited) = h.header.clone() else { panic!("v1") };
    edited.model_name = "v1 fixturf".into();
    let mut renamed = BundleHeader::V1(edited).to_sealed().expect("valid").raw;
    renamed.extend_from_slice(&bundle[hl..]);
    for t in [1, 4] {
        let o = opts(t);
        let wrong = DataKey::generate().expect("rng");
        assert!(matches!(unseal_with(&bundle, &wrong, &o), Err(UnsealError::Decrypt { chunk: 0 })));
        assert!(matches!(unseal_with(&swapped, &kf.key, &o), Err(UnsealError::Decrypt { chunk: 1 })));
        assert!(matches!(unseal_with(&flipped, &kf.key, &o), Err(UnsealError::Decrypt { chunk: 2 })));
        assert!(matches!(unseal_with(&renamed, &kf.key, &o), Err(UnsealError::Decrypt { chunk: 0 })));
        let e = unseal_with(&bundle[..bundle.len() - 1], &kf.key, &o).expect_err("short");
        assert!(matches!(e, UnsealError::Truncated { chunk: 4, .. }), "{e}");
        let e = unseal_reader(&bundle[..hl - 1], &kf.key, &o).expect_err("short header");
        assert!(matches!(e, UnsealError::Header(HeaderError::Truncated { .. })), "{e}");
        let limit = UnsealOptions { max_plaintext: h.layout.stream_len - 1, ..o };
        assert!(matches!(unseal_reader(&bundle[..], &kf.key, &limit), Err(UnsealError::TooLarge { bytes: 10_140, .. })));
    }
}
