//! Sealed bundles, format v2: round trips from memory and files, what the clear header does
//! (not) reveal, and every tamper class of `SEALED_FORMAT.md` gets its specific error, on the
//! in-memory, reader and file paths, sequential and parallel. The v1 read path is checked
//! against bytes of the old writer in `seal_v1_fixture.rs`.
#![allow(clippy::expect_used)]

use std::num::NonZeroUsize;
use std::ops::Range;

use chrysalis_proto::seal::cipher::ChunkCipher;
use chrysalis_proto::seal::format::{FORMAT_V2, MANIFEST_LEN_PREFIX, MAX_MANIFEST_LEN, PREAMBLE_LEN, TAG_LEN};
use chrysalis_proto::seal::{
    BundleHeader, DataKey, FileEntry, HeaderError, HeaderV2, Manifest, ManifestError, Padding, SealOptions, SealSource,
    SealedHeader, UnsealError, UnsealOptions, model_files, read_header, seal, seal_to_vec, unseal_file, unseal_reader,
    unseal_with,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const CS: u32 = 4096;
const STRIDE: usize = CS as usize + TAG_LEN;

fn opts_cs() -> SealOptions {
    SealOptions { chunk_size: CS, padding: Padding::Chunk }
}

struct Fixture {
    key: DataKey,
    bundle: Vec<u8>,
    header: SealedHeader,
    manifest: Manifest,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Manifest, config.json (100 B), model.safetensors (5·CS + 123 B), tokenizer.json (5000 B)
/// back to back, padded to whole chunks of 4096: 7 chunks, files spanning chunk boundaries.
fn fixture_with(key: DataKey) -> Fixture {
    let files = vec![
        ("config.json", data(100, 1)),
        ("model.safetensors", data(5 * CS as usize + 123, 2)),
        ("tokenizer.json", data(5000, 3)),
    ];
    let sources: Vec<SealSource<'_>> = files.iter().map(|(n, d)| SealSource::bytes(*n, d)).collect();
    let mut bundle = Vec::new();
    let sealed = seal("fixture", &sources, &key, &opts_cs(), &mut bundle).expect("seals");
    drop(sources);
    let header = read_header(&bundle).expect("header");
    assert_eq!(header, sealed.header);
    assert_eq!(header.layout.chunk_count, 7);
    Fixture { key, bundle, header, manifest: sealed.manifest, files }
}

fn fixture() -> Fixture {
    fixture_with(DataKey::generate().expect("rng"))
}

impl Fixture {
    /// Byte range of chunk `i` (ciphertext and tag) in the bundle: every v2 chunk is full.
    fn chunk(&self, i: u32) -> Range<usize> {
        let start = self.header.len() + i as usize * STRIDE;
        start..start + STRIDE
    }
}

fn opts(threads: usize) -> UnsealOptions {
    UnsealOptions { threads: NonZeroUsize::new(threads), ..UnsealOptions::default() }
}

/// Unseal on all three paths with 1 and 4 threads; all six must give the same error class.
fn unseal_err_with(bundle: &[u8], key: &DataKey, o: &UnsealOptions) -> UnsealError {
    let mut errs = Vec::new();
    for t in [1, 4] {
        let o = UnsealOptions { threads: NonZeroUsize::new(t), ..o.clone() };
        errs.push(unseal_with(bundle, key, &o).expect_err("must fail"));
        errs.push(unseal_reader(bundle, key, &o).expect_err("must fail"));
        let mut tmp = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut tmp, bundle).expect("write");
        errs.push(unseal_file(&tmp, key, &o).expect_err("must fail"));
    }
    let first = format!("{}", errs[0]);
    for e in &errs {
        // The reader path cannot know the body length up front: same class, maybe other counts.
        assert_eq!(std::mem::discriminant(e), std::mem::discriminant(&errs[0]), "{e} vs {first}");
    }
    errs.swap_remove(0)
}

fn unseal_err(bundle: &[u8], key: &DataKey) -> UnsealError {
    unseal_err_with(bundle, key, &UnsealOptions::default())
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
            let names: Vec<&str> = u.files.iter().map(|x| x.name.as_str()).collect();
            assert_eq!(names, ["config.json", "model.safetensors", "tokenizer.json"]);
            for (name, d) in &f.files {
                assert_eq!(u.get(name), Some(d.as_slice()), "{name}");
            }
        }
    }
}

/// Many small and empty files, sizes around chunk boundaries, several chunk counts: every
/// way a file can start and end relative to a chunk, on every path.
#[test]
fn files_spanning_chunks_round_trip() {
    let key = DataKey::generate().expect("rng");
    let sizes: [&[usize]; 5] =
        [&[1], &[0, 5000, 0, 1, 4096, 4095, 8192, 3], &[4096 - 300, 300, 4096, 0], &[10; 40], &[3 * 4096 + 7, 0, 0, 9000]];
    for (k, sizes) in sizes.iter().enumerate() {
        let files: Vec<(String, Vec<u8>)> =
            sizes.iter().enumerate().map(|(i, &n)| (format!("f{i}.bin"), data(n, i as u8))).collect();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect();
        for padding in [Padding::Chunk, Padding::Padme] {
            let bundle = seal_to_vec("spans", &refs, &key, &SealOptions { chunk_size: CS, padding }).expect("seals");
            let mut tmp = tempfile::tempfile().expect("tempfile");
            std::io::Write::write_all(&mut tmp, &bundle).expect("write");
            for t in [1, 3] {
                for verify in [true, false] {
                    let o = UnsealOptions { verify_sha256: verify, ..opts(t) };
                    for u in [unseal_with(&bundle, &key, &o), unseal_reader(&bundle[..], &key, &o), unseal_file(&tmp, &key, &o)] {
                        let u = u.expect("unseals");
                        assert_eq!(u.files.len(), files.len());
                        for ((n, d), got) in files.iter().zip(&u.files) {
                            assert_eq!(&got.name, n, "case {k}");
                            assert_eq!(got.data.as_slice(), d.as_slice(), "case {k} {n}");
                        }
                    }
                }
            }
        }
    }
}

/// The clear header holds no file name, no model name, no per-file size and no file hash:
/// it is exactly the four geometry fields, and none of those strings or numbers occur in it.
#[test]
fn clear_header_reveals_no_name_size_or_hash() {
    let f = fixture();
    let raw = &f.header.raw;
    let BundleHeader::V2(h) = &f.header.header else { panic!("the writer writes v2") };
    assert_eq!(h.format_version, FORMAT_V2);
    // Nothing but preamble and the four fields (a re-encoding of just them is the same bytes).
    let again = BundleHeader::V2(h.clone()).to_sealed().expect("valid");
    assert_eq!(&again.raw, raw);
    assert!(raw.len() <= PREAMBLE_LEN + 1 + 5 + 7 + 5, "{} header bytes", raw.len());
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    // The random nonce prefix is masked so that a number cannot match it by chance.
    let mut fixed = raw.clone();
    let p = raw.windows(7).position(|w| w == h.nonce_prefix).expect("prefix present");
    fixed[p..p + 7].fill(0);
    let varint = |mut v: u64| {
        let mut out = Vec::new();
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break out;
            }
            out.push(b | 0x80);
        }
    };
    assert!(!contains(raw, b"fixture"));
    for (e, (name, d)) in f.manifest.files.iter().zip(&f.files) {
        assert_eq!(e.sha256, <[u8; 32]>::from(Sha256::digest(d)));
        assert!(!contains(raw, name.as_bytes()), "{name}");
        assert!(!contains(raw, &e.sha256), "sha256 of {name}");
        assert!(!contains(&fixed, &e.size.to_le_bytes()) && !contains(&fixed, &e.size.to_be_bytes()), "size of {name}");
        assert!(!contains(&fixed, &(e.size as u32).to_le_bytes()), "size of {name}");
        if e.size >= 128 {
            assert!(!contains(&fixed, &varint(e.size)), "varint size of {name}");
        }
    }
    // The whole stream (prefix + manifest + files) is not revealed either, only the chunk count.
    let needed = f.manifest.needed(f.manifest.encode().expect("valid").len() - MANIFEST_LEN_PREFIX).expect("fits");
    assert!(!contains(&fixed, &varint(needed)));
    assert_eq!(u64::from(h.chunk_count), needed.div_ceil(u64::from(CS)));
}

/// Bundles whose files differ in sizes but need the same number of chunks have headers of
/// equal length and equal geometry, and bodies of equal length.
#[test]
fn equal_padded_totals_give_equal_geometry() {
    let key = DataKey::generate().expect("rng");
    let splits: [[usize; 2]; 4] = [[3000, 9000], [9000, 3000], [200, 11_000], [6000, 6100]];
    let mut seen = Vec::new();
    for s in splits {
        let a = data(s[0], 1);
        let b = data(s[1], 2);
        let bundle = seal_to_vec("model", &[("a.bin", &a), ("b.bin", &b)], &key, &opts_cs()).expect("seals");
        let h = read_header(&bundle).expect("header");
        let BundleHeader::V2(v2) = &h.header else { panic!("v2") };
        seen.push((h.raw.len(), v2.chunk_size, v2.chunk_count, h.layout.clone(), bundle.len()));
    }
    assert_eq!(seen[0].2, 3, "12 000 bytes and a manifest fill three 4 KiB chunks");
    for s in &seen {
        assert_eq!(s, &seen[0]);
    }
    // A total that needs one more chunk is visible: that is the granularity of the leak.
    let big = data(12_300, 3);
    let h = read_header(&seal_to_vec("model", &[("a.bin", &big)], &key, &opts_cs()).expect("seals")).expect("header");
    assert_eq!(h.layout.chunk_count, 4);
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
    // Body cuts: nothing, inside the manifest chunk, mid-chunk, at a chunk boundary (whole
    // chunks dropped), the last chunk dropped, one byte short.
    let c3 = f.chunk(3);
    let c6 = f.chunk(6);
    for (cut, chunk) in
        [(hl, 0), (hl + 10, 0), (c3.start + 100, 3), (c3.start, 3), (c3.end - 1, 3), (c6.start, 6), (f.bundle.len() - 1, 6)]
    {
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
    // Swap chunks 1 and 2; swap the manifest chunk with chunk 1; swap the last chunk with chunk 1.
    for (x, y) in [(1, 2), (0, 1), (1, 6)] {
        let mut b = f.bundle.clone();
        let (rx, ry) = (f.chunk(x), f.chunk(y));
        b[rx.clone()].copy_from_slice(&f.bundle[ry.clone()]);
        b[ry].copy_from_slice(&f.bundle[rx]);
        assert_decrypt(&b, &f.key, x);
    }
    // Duplicate: chunk 2 replaced by a copy of chunk 1.
    let mut b = f.bundle.clone();
    b[f.chunk(2)].copy_from_slice(&f.bundle[f.chunk(1)]);
    assert_decrypt(&b, &f.key, 2);
    // Duplicate by insertion: one chunk too many.
    let mut b = f.bundle.clone();
    let c1 = f.bundle[f.chunk(1)].to_vec();
    b.splice(f.chunk(2).start..f.chunk(2).start, c1);
    let e = unseal_with(&b, &f.key, &opts(4)).expect_err("fails");
    assert!(matches!(e, UnsealError::Trailing { extra } if extra == STRIDE as u64), "{e}");
    // The reader path decrypts in order and meets the misplaced chunk first.
    assert!(matches!(unseal_reader(&b[..], &f.key, &opts(4)), Err(UnsealError::Decrypt { chunk: 2 })));
}

#[test]
fn chunks_from_another_bundle_fail_even_with_the_same_key() {
    let f = fixture();
    let g = fixture_with(DataKey::from_bytes(*f.key.as_bytes()));
    assert_eq!(f.bundle.len(), g.bundle.len());
    for i in [0, 3, 6] {
        let mut b = f.bundle.clone();
        b[f.chunk(i)].copy_from_slice(&g.bundle[g.chunk(i)]);
        assert_decrypt(&b, &f.key, i);
    }
    // Same key *and* same nonce prefix, but a different header (chunk count): the AAD differs.
    let BundleHeader::V2(mut h2) = f.header.header.clone() else { panic!("v2") };
    h2.chunk_count += 1;
    let s2 = BundleHeader::V2(h2.clone()).to_sealed().expect("valid");
    let cipher = ChunkCipher::new(&f.key, h2.nonce_prefix, s2.digest());
    let mut chunk3 = f.files[1].1[..CS as usize].to_vec();
    let tag = cipher.seal(3, false, &mut chunk3).expect("seals");
    chunk3.extend_from_slice(&tag);
    let mut b = f.bundle.clone();
    b[f.chunk(3)].copy_from_slice(&chunk3);
    assert_decrypt(&b, &f.key, 3);
}

fn with_header(f: &Fixture, edit: impl FnOnce(&mut HeaderV2)) -> Vec<u8> {
    let BundleHeader::V2(mut h) = f.header.header.clone() else { panic!("v2") };
    edit(&mut h);
    let mut b = BundleHeader::V2(h).to_sealed().expect("still valid").raw;
    b.extend_from_slice(&f.bundle[f.header.len()..]);
    b
}

#[test]
fn header_edits() {
    let f = fixture();
    // The nonce prefix: geometry unchanged, the AAD and nonces change, chunk 0 fails.
    assert_decrypt(&with_header(&f, |h| h.nonce_prefix[6] ^= 1), &f.key, 0);
    // Fields that change the geometry: structural errors where the whole bundle is at hand;
    // the reader path decrypts while it reads and fails at chunk 0 (the AAD changed).
    type Expect = fn(&UnsealError) -> bool;
    let geometry: [(Vec<u8>, Expect); 3] = [
        (with_header(&f, |h| h.chunk_count += 1), |e| matches!(e, UnsealError::Truncated { .. })),
        (with_header(&f, |h| h.chunk_count -= 1), |e| matches!(e, UnsealError::Trailing { .. })),
        (with_header(&f, |h| h.chunk_size = 2 * CS), |e| matches!(e, UnsealError::Truncated { .. })),
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
    b[10] = b[10].wrapping_add(1);
    assert!(matches!(unseal_err(&b, &f.key), UnsealError::Header(_)));
    // A v2 header relabelled v1 does not parse as a v1 header.
    let mut b = f.bundle.clone();
    b[8] = 1;
    assert!(matches!(unseal_err(&b, &f.key), UnsealError::Header(_)));
}

#[test]
fn unknown_version_is_refused_with_a_clear_message() {
    let f = fixture();
    let mut b = f.bundle.clone();
    b[8..10].copy_from_slice(&3u16.to_le_bytes());
    let e = unseal_err(&b, &f.key);
    assert!(matches!(e, UnsealError::Header(HeaderError::UnsupportedVersion { found: 3 })), "{e}");
    assert_eq!(e.to_string(), "sealed header: sealed format version 3 is not supported (this build reads versions 1 and 2)");
    assert_eq!(read_header(&b).err(), Some(HeaderError::UnsupportedVersion { found: 3 }));
}

#[test]
fn every_nth_bit_flip_fails_with_the_right_chunk() {
    let f = fixture();
    let hl = f.header.len();
    let chunks: Vec<Range<usize>> = (0..7).map(|i| f.chunk(i)).collect();
    let bits = f.bundle.len() * 8;
    let mut flips = 0;
    let mut b = f.bundle.clone();
    for bit in (0..bits).step_by(53) {
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
        if bit % (53 * 16) == 0 {
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

/// The limit applies to the padded stream and is checked before anything is decrypted (a
/// wrong key gives the limit error, not a decryption failure).
#[test]
fn oversized_declared_plaintext_is_refused_before_decryption() {
    let f = fixture();
    let stream = f.header.layout.stream_len;
    assert_eq!(stream, 7 * u64::from(CS));
    let o = UnsealOptions { max_plaintext: stream - 1, ..UnsealOptions::default() };
    for key in [&f.key, &DataKey::generate().expect("rng")] {
        let e = unseal_err_with(&f.bundle, key, &o);
        assert!(matches!(e, UnsealError::TooLarge { bytes, limit } if bytes == stream && limit == stream - 1), "{e}");
    }
    // The files' own total is smaller: v2 cannot apply the limit to it before the manifest.
    let o = UnsealOptions { max_plaintext: stream, ..UnsealOptions::default() };
    assert!(unseal_with(&f.bundle, &f.key, &o).is_ok());
}

/// What only a key holder can write: a v2 bundle with the given plaintext stream (padded
/// with zeros to `count` chunks), correctly encrypted.
fn craft(key: &DataKey, count: u32, stream: &[u8]) -> Vec<u8> {
    let h = BundleHeader::V2(HeaderV2 { format_version: FORMAT_V2, chunk_size: CS, nonce_prefix: [3; 7], chunk_count: count })
        .to_sealed()
        .expect("valid");
    let cipher = ChunkCipher::new(key, [3; 7], h.digest());
    let mut plain = stream.to_vec();
    assert!(plain.len() <= count as usize * CS as usize);
    plain.resize(count as usize * CS as usize, 0);
    let mut out = h.raw.clone();
    for (i, c) in plain.chunks(CS as usize).enumerate() {
        let mut c = c.to_vec();
        let tag = cipher.seal(i as u32, i + 1 == count as usize, &mut c).expect("seals");
        out.extend_from_slice(&c);
        out.extend_from_slice(&tag);
    }
    out
}

fn stream_of(m: &Manifest, files: &[&[u8]]) -> Vec<u8> {
    let mut s = m.encode().expect("valid");
    for f in files {
        s.extend_from_slice(f);
    }
    s
}

#[test]
fn manifest_written_by_a_key_holder_is_checked() {
    let key = DataKey::generate().expect("rng");
    let w = data(6000, 4);
    let entry = |sha256| FileEntry { name: "w.gguf".into(), size: 6000, sha256 };
    let honest = Manifest { model_name: "m".into(), files: vec![entry(Sha256::digest(&w).into())] };
    let ok = craft(&key, 2, &stream_of(&honest, &[&w]));
    assert_eq!(unseal_with(&ok, &key, &opts(2)).expect("the crafting is right").get("w.gguf"), Some(&w[..]));

    // A lying manifest hash: the AEAD accepts it, the SHA-256 check does not (unless off).
    let lying = Manifest { model_name: "m".into(), files: vec![entry([0; 32])] };
    let b = craft(&key, 2, &stream_of(&lying, &[&w]));
    let e = unseal_err(&b, &key);
    assert!(matches!(e, UnsealError::HashMismatch { ref file } if file == "w.gguf"), "{e}");
    assert_eq!(e.to_string(), "w.gguf: plaintext does not match the SHA-256 in the manifest");
    assert!(unseal_with(&b, &key, &UnsealOptions { verify_sha256: false, ..opts(2) }).is_ok());

    // Files larger than the body's chunks.
    let b = craft(&key, 1, &stream_of(&honest, &[&w[..4000]]));
    let e = unseal_err(&b, &key);
    assert!(matches!(e, UnsealError::Manifest(ManifestError::ExceedsBody { capacity: 4096, .. })), "{e}");

    // Non-zero padding after the last file: in the manifest's chunk, and in a later chunk.
    let mut s = stream_of(&honest, &[&w]);
    s.push(1);
    let e = unseal_err(&craft(&key, 2, &s), &key);
    assert!(matches!(e, UnsealError::Manifest(ManifestError::Padding { chunk: 1 })), "{e}");
    let mut s = stream_of(&honest, &[&w]);
    s.resize(3 * CS as usize - 1, 0);
    s.push(9);
    let e = unseal_err(&craft(&key, 3, &s), &key);
    assert!(matches!(e, UnsealError::Manifest(ManifestError::Padding { chunk: 2 })), "{e}");
    let small = Manifest {
        model_name: "m".into(),
        files: vec![FileEntry { name: "c".into(), size: 1, sha256: Sha256::digest(b"x").into() }],
    };
    let mut s = stream_of(&small, &[b"x"]);
    s.push(7);
    let e = unseal_err(&craft(&key, 1, &s), &key);
    assert!(matches!(e, UnsealError::Manifest(ManifestError::Padding { chunk: 0 })), "{e}");

    // The manifest length prefix: above the limit, beyond the body; garbage; no files.
    let e = unseal_err(&craft(&key, 1, &u32::MAX.to_le_bytes()), &key);
    assert!(matches!(e, UnsealError::Manifest(ManifestError::TooLarge(_))), "{e}");
    let e = unseal_err(&craft(&key, 1, &(MAX_MANIFEST_LEN as u32).to_le_bytes()), &key);
    assert!(matches!(e, UnsealError::Manifest(ManifestError::ExceedsBody { .. })), "{e}");
    let mut s = 5000u32.to_le_bytes().to_vec();
    s.extend_from_slice(&[0xff; 5000]);
    let e = unseal_err(&craft(&key, 2, &s), &key);
    assert!(matches!(e, UnsealError::Manifest(ManifestError::Malformed(_))), "{e}");
    // postcard of Manifest { model_name: "m", files: [] }: name length, name, no entries.
    let mut s = 3u32.to_le_bytes().to_vec();
    s.extend_from_slice(&[1, b'm', 0]);
    let e = unseal_err(&craft(&key, 1, &s), &key);
    assert!(matches!(e, UnsealError::Manifest(ManifestError::NoData)), "{e}");
    assert_eq!(e.to_string(), "sealed manifest: bundle holds no data");
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
    let sealed = seal("folder", &sources, &key, &SealOptions::default(), &mut w).expect("seals");
    drop(w);
    let u = unseal_reader(std::fs::File::open(&out).expect("open"), &key, &UnsealOptions::default()).expect("unseals");
    assert_eq!(u.header_digest, sealed.header.digest());
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
    fn manifest_parser_is_total_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Manifest::decode(&bytes) {
            prop_assert_eq!(&m.encode().expect("re-encodes")[MANIFEST_LEN_PREFIX..], &bytes[..]);
        }
        let _ = Manifest::declared_len(&bytes, 1 << 20);
    }

    #[test]
    fn header_parser_is_total_on_mutated_headers(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let key = DataKey::from_bytes([1; 32]);
        let b = seal_to_vec("m", &[("config.json", b"{}"), ("w.gguf", &[5u8; 300])], &key, &opts_cs()).expect("seals");
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
