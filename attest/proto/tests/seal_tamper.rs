//! Sealed bundles: round trips from files, and every tamper class gets its specific error,
//! on the in-memory and the reader path, sequential and parallel.
#![allow(clippy::expect_used)]

use std::num::NonZeroUsize;
use std::ops::Range;

use chrysalis_proto::seal::cipher::ChunkCipher;
use chrysalis_proto::seal::format::{PREAMBLE_LEN, TAG_LEN};
use chrysalis_proto::seal::{
    DataKey, HeaderError, SealOptions, SealSource, SealedHeader, UnsealError, UnsealOptions, model_files, read_header, seal,
    seal_to_vec, unseal_file, unseal_reader, unseal_with,
};
use proptest::prelude::*;

const CS: u32 = 4096;

struct Fixture {
    key: DataKey,
    bundle: Vec<u8>,
    header: SealedHeader,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// config.json: 1 chunk (0); model.safetensors: 6 chunks (1..=6); tokenizer.json: 2 chunks (7, 8).
fn fixture_with(key: DataKey) -> Fixture {
    let files = vec![
        ("config.json", data(100, 1)),
        ("model.safetensors", data(5 * CS as usize + 123, 2)),
        ("tokenizer.json", data(5000, 3)),
    ];
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    let bundle = seal_to_vec("fixture", &refs, &key, &SealOptions { chunk_size: CS }).expect("seals");
    let header = read_header(&bundle).expect("header");
    assert_eq!(header.layout.chunk_count, 9);
    Fixture { key, bundle, header, files }
}

fn fixture() -> Fixture {
    fixture_with(DataKey::generate().expect("rng"))
}

impl Fixture {
    /// Byte range of chunk `i` (ciphertext and tag) in the bundle.
    fn chunk(&self, i: u32) -> Range<usize> {
        let mut start = self.header.len();
        let mut idx = 0u32;
        for f in &self.header.header.files {
            let mut left = f.size as usize;
            while left > 0 {
                let n = left.min(CS as usize);
                if idx == i {
                    return start..start + n + TAG_LEN;
                }
                start += n + TAG_LEN;
                left -= n;
                idx += 1;
            }
        }
        panic!("no chunk {i}");
    }
}

fn opts(threads: usize) -> UnsealOptions {
    UnsealOptions { threads: NonZeroUsize::new(threads), ..UnsealOptions::default() }
}

/// Unseal on both paths with 1 and 4 threads; all four must give the same error.
fn unseal_err(bundle: &[u8], key: &DataKey) -> UnsealError {
    let mut errs = Vec::new();
    for t in [1, 4] {
        errs.push(unseal_with(bundle, key, &opts(t)).expect_err("must fail"));
        errs.push(unseal_reader(bundle, key, &opts(t)).expect_err("must fail"));
        let mut tmp = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut tmp, bundle).expect("write");
        errs.push(unseal_file(&tmp, key, &opts(t)).expect_err("must fail"));
    }
    let first = format!("{}", errs[0]);
    for e in &errs {
        // The reader path cannot know the body length up front: same class, maybe other counts.
        assert_eq!(std::mem::discriminant(e), std::mem::discriminant(&errs[0]), "{e} vs {first}");
    }
    errs.swap_remove(0)
}

fn assert_decrypt(bundle: &[u8], key: &DataKey, chunk: u32) {
    let e = unseal_err(bundle, key);
    assert!(matches!(e, UnsealError::Decrypt { chunk: c } if c == chunk), "expected decrypt failure at {chunk}, got {e}");
    assert_eq!(e.to_string(), format!("decryption failed at chunk {chunk}"));
}

#[test]
fn round_trip_all_paths() {
    let f = fixture();
    for t in [1, 2, 4, 16] {
        let mut tmp = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut tmp, &f.bundle).expect("write");
        for u in [
            unseal_with(&f.bundle, &f.key, &opts(t)),
            unseal_reader(&f.bundle[..], &f.key, &opts(t)),
            unseal_file(&tmp, &f.key, &opts(t)),
        ] {
            let u = u.expect("unseals");
            assert_eq!(u.model_name, "fixture");
            assert_eq!(u.header_digest, f.header.digest());
            for (name, d) in &f.files {
                assert_eq!(u.get(name), Some(d.as_slice()), "{name}");
            }
        }
    }
}

#[test]
fn truncation_at_every_kind_of_point() {
    let f = fixture();
    let hl = f.header.len();
    let body_len = f.header.layout.body_len;
    // Inside the preamble and inside the header.
    for cut in [0, 5, PREAMBLE_LEN, hl - 1] {
        let e = unseal_err(&f.bundle[..cut], &f.key);
        assert!(matches!(e, UnsealError::Header(HeaderError::Truncated { .. })), "cut {cut}: {e}");
    }
    // Body cuts: nothing, mid-chunk, at a chunk boundary (whole chunks dropped), one byte short.
    let c3 = f.chunk(3);
    let c8 = f.chunk(8);
    for (cut, chunk) in [(hl, 0), (c3.start + 100, 3), (c3.start, 3), (c3.end - 1, 3), (c8.start, 8), (f.bundle.len() - 1, 8)] {
        let got = (cut - hl) as u64;
        let e = unseal_err(&f.bundle[..cut], &f.key);
        assert!(
            matches!(e, UnsealError::Truncated { expected, got: g, chunk: c } if expected == body_len && g == got && c == chunk),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn dropped_reordered_duplicated_chunks() {
    let f = fixture();
    // Drop chunk 2 (whole): the body is short.
    // The reader path decrypts as it reads and meets chunk 3 in chunk 2's place first.
    let mut b = f.bundle.clone();
    b.drain(f.chunk(2));
    for t in [1, 4] {
        assert!(matches!(unseal_with(&b, &f.key, &opts(t)), Err(UnsealError::Truncated { .. })));
        assert!(matches!(unseal_reader(&b[..], &f.key, &opts(t)), Err(UnsealError::Decrypt { chunk: 2 })));
    }
    // Drop chunk 2 and append a copy of chunk 4 at the end: length right, order wrong.
    let mut b = f.bundle.clone();
    b.drain(f.chunk(2));
    b.extend_from_slice(&f.bundle[f.chunk(4)]);
    assert_decrypt(&b, &f.key, 2);
    // Swap chunks 1 and 2 (same length).
    let mut b = f.bundle.clone();
    let (r1, r2) = (f.chunk(1), f.chunk(2));
    b[r1.clone()].copy_from_slice(&f.bundle[r2.clone()]);
    b[r2].copy_from_slice(&f.bundle[r1]);
    assert_decrypt(&b, &f.key, 1);
    // Duplicate: chunk 2 replaced by a copy of chunk 1.
    let mut b = f.bundle.clone();
    b[f.chunk(2)].copy_from_slice(&f.bundle[f.chunk(1)]);
    assert_decrypt(&b, &f.key, 2);
    // Duplicate by insertion: one chunk too many.
    let mut b = f.bundle.clone();
    let c1 = f.bundle[f.chunk(1)].to_vec();
    b.splice(f.chunk(2).start..f.chunk(2).start, c1);
    let e = unseal_with(&b, &f.key, &opts(4)).expect_err("fails");
    assert!(matches!(e, UnsealError::Trailing { extra } if extra == (CS as usize + TAG_LEN) as u64), "{e}");
    // The reader path decrypts in order and meets the misplaced chunk first.
    assert!(matches!(unseal_reader(&b[..], &f.key, &opts(4)), Err(UnsealError::Decrypt { chunk: 2 })));
    // Swap the last chunk across files: tokenizer chunk 7 <-> model chunk 1 (same length).
    let mut b = f.bundle.clone();
    let (r1, r7) = (f.chunk(1), f.chunk(7));
    b[r1.clone()].copy_from_slice(&f.bundle[r7.clone()]);
    b[r7].copy_from_slice(&f.bundle[r1]);
    assert_decrypt(&b, &f.key, 1);
}

#[test]
fn chunks_from_another_bundle_fail_even_with_the_same_key() {
    let f = fixture();
    let g = fixture_with(DataKey::from_bytes(*f.key.as_bytes()));
    assert_eq!(f.bundle.len(), g.bundle.len());
    for i in [0, 3, 8] {
        let mut b = f.bundle.clone();
        b[f.chunk(i)].copy_from_slice(&g.bundle[g.chunk(i)]);
        assert_decrypt(&b, &f.key, i);
    }
    // Same key *and* same nonce prefix, but a different header (model name): the AAD differs.
    let mut h2 = f.header.header.clone();
    h2.model_name = "fixturf".into();
    let s2 = h2.to_sealed().expect("valid");
    let cipher = ChunkCipher::new(&f.key, h2.nonce_prefix, s2.digest());
    let mut chunk3 = f.files[1].1[2 * CS as usize..3 * CS as usize].to_vec();
    let tag = cipher.seal(3, false, &mut chunk3).expect("seals");
    chunk3.extend_from_slice(&tag);
    let mut b = f.bundle.clone();
    b[f.chunk(3)].copy_from_slice(&chunk3);
    assert_decrypt(&b, &f.key, 3);
}

fn with_header(f: &Fixture, edit: impl FnOnce(&mut chrysalis_proto::seal::BundleHeader)) -> Vec<u8> {
    let mut h = f.header.header.clone();
    edit(&mut h);
    let mut b = h.to_sealed().expect("still valid").raw;
    b.extend_from_slice(&f.bundle[f.header.len()..]);
    b
}

#[test]
fn header_edits() {
    let f = fixture();
    // Authenticated-only fields: the AAD changes, chunk 0 fails.
    assert_decrypt(&with_header(&f, |h| h.model_name = "fixturf".into()), &f.key, 0);
    assert_decrypt(&with_header(&f, |h| h.files[1].sha256[0] ^= 1), &f.key, 0);
    assert_decrypt(&with_header(&f, |h| h.nonce_prefix[6] ^= 1), &f.key, 0);
    assert_decrypt(&with_header(&f, |h| h.files[1].name = "model.safetensorz".into()), &f.key, 0);
    // Same total size, redistributed between files: structure fits, AEAD does not.
    assert_decrypt(
        &with_header(&f, |h| {
            h.files[0].size -= 50;
            h.files[2].size += 50;
        }),
        &f.key,
        0,
    );
    // Fields that change the geometry: structural errors where the whole bundle is at hand;
    // the reader path decrypts while it reads and fails at chunk 0 (the AAD changed).
    type Expect = fn(&UnsealError) -> bool;
    let geometry: [(Vec<u8>, Expect); 3] = [
        (with_header(&f, |h| h.files[1].size += 1), |e| matches!(e, UnsealError::Truncated { .. })),
        (with_header(&f, |h| h.chunk_size = 2 * CS), |e| matches!(e, UnsealError::Trailing { .. })),
        (
            with_header(&f, |h| {
                h.files.pop();
            }),
            |e| matches!(e, UnsealError::Trailing { .. }),
        ),
    ];
    for (b, want) in geometry {
        for t in [1, 4] {
            let e = unseal_with(&b, &f.key, &opts(t)).expect_err("fails");
            assert!(want(&e), "{e}");
            assert!(matches!(unseal_reader(&b[..], &f.key, &opts(t)), Err(UnsealError::Decrypt { chunk: 0 })));
        }
    }
    // Preamble bytes.
    let mut b = f.bundle.clone();
    b[3] ^= 0x20;
    assert!(matches!(unseal_err(&b, &f.key), UnsealError::Header(HeaderError::BadMagic)));
    let mut b = f.bundle.clone();
    b[8] = 2;
    assert!(matches!(unseal_err(&b, &f.key), UnsealError::Header(HeaderError::UnsupportedVersion { found: 2 })));
    let mut b = f.bundle.clone();
    b[10] = b[10].wrapping_add(1);
    assert!(matches!(unseal_err(&b, &f.key), UnsealError::Header(_)));
}

#[test]
fn every_nth_bit_flip_fails_with_the_right_chunk() {
    let f = fixture();
    let hl = f.header.len();
    let chunks: Vec<Range<usize>> = (0..9).map(|i| f.chunk(i)).collect();
    let bits = f.bundle.len() * 8;
    let mut flips = 0;
    let mut b = f.bundle.clone();
    for bit in (0..bits).step_by(61) {
        b[bit / 8] ^= 1 << (bit % 8);
        let r = unseal_with(&b, &f.key, &opts(1));
        let byte = bit / 8;
        match r {
            Ok(_) => panic!("bit {bit} flipped and the bundle still unsealed"),
            Err(UnsealError::Decrypt { chunk }) if byte >= hl => {
                assert!(chunks[chunk as usize].contains(&byte), "bit {bit}: blamed chunk {chunk}");
            }
            Err(e) if byte >= hl => panic!("bit {bit} in the body gave {e}"),
            Err(_) => {}
        }
        if bit % (61 * 16) == 0 {
            let p = unseal_with(&b, &f.key, &opts(4)).expect_err("fails");
            let q = unseal_with(&b, &f.key, &opts(1)).expect_err("fails");
            assert_eq!(p.to_string(), q.to_string(), "parallel and sequential disagree at bit {bit}");
        }
        b[bit / 8] ^= 1 << (bit % 8);
        flips += 1;
    }
    assert!(flips > 1000);
}

#[test]
fn wrong_key() {
    let f = fixture();
    assert_decrypt(&f.bundle, &DataKey::generate().expect("rng"), 0);
}

#[test]
fn folder_with_several_files_and_single_gguf_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join("model");
    std::fs::create_dir(&m).expect("mkdir");
    let weights = data(3 * (1 << 20) + 17, 9);
    std::fs::write(m.join("config.json"), b"{\"hidden_size\":8}").expect("write");
    std::fs::write(m.join("tokenizer.json"), data(20_000, 4)).expect("write");
    std::fs::write(m.join("model-00001-of-00002.safetensors"), &weights).expect("write");
    std::fs::write(m.join("model-00002-of-00002.safetensors"), data(1000, 5)).expect("write");
    std::fs::write(m.join("README.md"), b"not sealed").expect("write");
    let files = model_files(&m).expect("lists");
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "tokenizer.json"]);
    let key = DataKey::generate().expect("rng");
    let sources: Vec<SealSource<'_>> = files.iter().map(|(n, p)| SealSource::file(n.clone(), p)).collect();
    let out = dir.path().join("b.sealed");
    let mut w = std::fs::File::create(&out).expect("create");
    let h = seal("folder", &sources, &key, &SealOptions::default(), &mut w).expect("seals");
    drop(w);
    let u = unseal_reader(std::fs::File::open(&out).expect("open"), &key, &UnsealOptions::default()).expect("unseals");
    assert_eq!(u.header_digest, h.digest());
    assert_eq!(u.files.len(), 4);
    for (n, p) in &files {
        assert_eq!(u.get(n), Some(std::fs::read(p).expect("read").as_slice()), "{n}");
    }

    let gguf = dir.path().join("tiny.Q4_1.gguf");
    let mut g = b"GGUF\x03\x00\x00\x00".to_vec();
    g.extend_from_slice(&data(2_500_000, 7));
    std::fs::write(&gguf, &g).expect("write");
    let mut out = Vec::new();
    seal("tiny", &[SealSource::file("tiny.Q4_1.gguf", &gguf)], &key, &SealOptions::default(), &mut out).expect("seals");
    let u = unseal_with(&out, &key, &UnsealOptions::default()).expect("unseals");
    assert_eq!(u.get("tiny.Q4_1.gguf"), Some(g.as_slice()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn header_parser_is_total_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = read_header(&bytes);
    }

    #[test]
    fn header_parser_is_total_on_mutated_headers(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let key = DataKey::from_bytes([1; 32]);
        let b = seal_to_vec("m", &[("config.json", b"{}"), ("w.gguf", &[5u8; 300])], &key, &SealOptions::default()).expect("seals");
        let mut b = b;
        for (pos, val) in edits {
            let i = pos % b.len();
            b[i] = val;
        }
        b.truncate(cut % (b.len() + 1));
        if let Ok(h) = read_header(&b) {
            prop_assert_eq!(h.header.to_sealed().expect("re-encodes").raw, h.raw);
        }
        let o = UnsealOptions { threads: NonZeroUsize::new(1), max_plaintext: 1 << 16, ..UnsealOptions::default() };
        let _ = unseal_with(&b, &key, &o);
    }
}

/// A bundle on a disk: zero padding up to the allowed amount is accepted (block devices
/// round up to whole sectors); non-zero padding or more padding than allowed is not.
#[test]
fn disk_padding_is_zero_and_bounded() {
    let f = fixture();
    let (bundle, key) = (f.bundle.clone(), f.key);
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, pad: &[u8]| {
        let p = dir.path().join(name);
        let mut b = bundle.clone();
        b.extend_from_slice(pad);
        std::fs::write(&p, b).expect("write");
        std::fs::File::open(p).expect("open")
    };
    let opts = UnsealOptions { allow_zero_padding: 4095, ..UnsealOptions::default() };
    assert!(unseal_file(&write("exact", &[]), &key, &opts).is_ok());
    assert!(unseal_file(&write("pad", &[0; 300]), &key, &opts).is_ok());
    let e = unseal_file(&write("pad", &[0; 300]), &key, &UnsealOptions::default()).expect_err("strict");
    assert!(matches!(e, UnsealError::Trailing { extra: 300 }), "{e}");
    let e = unseal_file(&write("nonzero", &[0, 0, 1]), &key, &opts).expect_err("non-zero");
    assert!(matches!(e, UnsealError::Trailing { extra: 3 }), "{e}");
    let e = unseal_file(&write("long", &[0; 4096]), &key, &opts).expect_err("too long");
    assert!(matches!(e, UnsealError::Trailing { extra: 4096 }), "{e}");
}
