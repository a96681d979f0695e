//! The log end to end on a temporary directory: append, cosign, verify inclusion; and each
//! way a log can be wrong refused with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use chrysalis_tlog::keys::{KeyKind, log_signer};
use chrysalis_tlog::{Error, Log, LogPolicy, audit, cosign_latest, keygen, verify_inclusion};

const ORIGIN: &str = "example.com/chrysalis-test-log";

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    state: PathBuf,
    log_skey: String,
    log_vkey: String,
    witnesses: Vec<(String, String)>,
    entries: Vec<Vec<u8>>,
}

fn image_entry(i: u32) -> Vec<u8> {
    format!(
        r#"{{"v":1,"kind":"image-release","version":"0.{i}.0","artifacts":{{"initramfs.cpio.gz":"{:064x}"}},
            "measurements":{{"snp":[{{"measurement":"{:096x}"}}]}},"sbom_sha256":"{:064x}"}}"#,
        i, i, i
    )
    .into_bytes()
}

/// A log with 3 image-release entries and 3 witness keys (none cosigned yet).
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let state = tmp.path().join("state.json");
    let (log_skey, log_vkey) = keygen(ORIGIN, KeyKind::Log).unwrap();
    let witnesses = ["w1", "w2", "w3"].iter().map(|n| keygen(n, KeyKind::Witness).unwrap()).collect();
    let mut log = Log::create(&dir, ORIGIN, log_signer(&log_skey).unwrap()).unwrap();
    let entries: Vec<Vec<u8>> = (1..=3).map(image_entry).collect();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(log.append(e).unwrap(), i as u64);
    }
    Fixture { _tmp: tmp, dir, state, log_skey, log_vkey, witnesses, entries }
}

impl Fixture {
    fn policy(&self, min: usize) -> LogPolicy {
        LogPolicy {
            log_key: self.log_vkey.clone(),
            witnesses: self.witnesses.iter().map(|(_, v)| v.clone()).collect(),
            min_witnesses: min,
        }
    }

    fn cosign(&self, w: usize) {
        let latest = self.latest_entry();
        cosign_latest(&self.dir, &self.log_vkey, &self.witnesses[w].0, &latest, None, 1_700_000_000 + w as u64).unwrap();
    }

    fn latest_entry(&self) -> Vec<u8> {
        let size = self.entries.len();
        self.entries[size - 1].clone()
    }

    fn append(&mut self, e: Vec<u8>) {
        let mut log = Log::open(&self.dir, log_signer(&self.log_skey).unwrap()).unwrap();
        log.append(&e).unwrap();
        self.entries.push(e);
    }
}

fn refused(r: Result<impl std::fmt::Debug, Error>) -> String {
    let e = r.expect_err("must be refused");
    e.to_string()
}

fn flip_byte(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap();
    b[at] ^= 0x01;
    std::fs::write(p, b).unwrap();
}

#[test]
fn three_entries_verify_with_two_of_three_witnesses() {
    let f = fixture();
    f.cosign(0);
    f.cosign(1);
    for (i, e) in f.entries.iter().enumerate() {
        let inc = verify_inclusion(&f.dir, e, &f.policy(2), &f.state).unwrap();
        assert_eq!(inc.index, i as u64);
        assert_eq!(inc.checkpoint.size, 3);
        let names: Vec<&str> = inc.checkpoint.witnesses.iter().map(|(n, _)| n.split('+').next().unwrap()).collect();
        assert_eq!(names, ["w1", "w2"]);
        assert_eq!(inc.checkpoint.witnesses[1].1, 1_700_000_001);
    }
    // Key order and whitespace do not matter: the log compares canonical JSON.
    let v: serde_json::Value = serde_json::from_slice(&f.entries[1]).unwrap();
    let pretty = serde_json::to_vec_pretty(&v).unwrap();
    assert_eq!(verify_inclusion(&f.dir, &pretty, &f.policy(2), &f.state).unwrap().index, 1);
    // An entry that is not in the log.
    let msg = refused(verify_inclusion(&f.dir, &image_entry(9), &f.policy(2), &f.state));
    assert!(msg.starts_with("entry ? not included in checkpoint of size 3: no entry of the log equals it"), "{msg}");
}

#[test]
fn too_few_witnesses_names_the_missing_ones() {
    let f = fixture();
    f.cosign(0);
    let msg = refused(verify_inclusion(&f.dir, &f.entries[0], &f.policy(2), &f.state));
    let w1 = chrysalis_tlog::keys::key_label(&f.witnesses[0].1);
    let w2 = chrysalis_tlog::keys::key_label(&f.witnesses[1].1);
    let w3 = chrysalis_tlog::keys::key_label(&f.witnesses[2].1);
    assert_eq!(msg, format!("only 1 of 2 required witness cosignatures (have: {w1}; missing: {w2}, {w3})"));
    assert!(!f.state.exists(), "state written on failure");
    // min 1 passes with the same checkpoint.
    verify_inclusion(&f.dir, &f.entries[0], &f.policy(1), &f.state).unwrap();
}

#[test]
fn a_cosignature_with_another_checkpoint_text_does_not_count() {
    let f = fixture();
    f.cosign(0);
    f.cosign(1);
    // Append: the new checkpoint carries only the log's signature.
    let mut f = f;
    f.append(image_entry(4));
    let msg = refused(verify_inclusion(&f.dir, &f.entries[0], &f.policy(1), &f.state));
    assert!(msg.starts_with("only 0 of 1 required witness cosignatures"), "{msg}");
}

#[test]
fn tampered_entry_file_is_refused() {
    let f = fixture();
    f.cosign(0);
    f.cosign(1);
    let mut e = String::from_utf8(f.entries[1].clone()).unwrap();
    e = e.replace("0.2.0", "0.2.1");
    let msg = refused(verify_inclusion(&f.dir, e.as_bytes(), &f.policy(2), &f.state));
    assert!(msg.contains("not included in checkpoint of size 3: no entry of the log equals it"), "{msg}");
}

#[test]
fn tampered_entry_bundle_is_refused_by_the_inclusion_proof() {
    let f = fixture();
    f.cosign(0);
    f.cosign(1);
    // Change the log's copy of entry 1 and present the same changed entry.
    let bundle = f.dir.join("tile/entries/000.p/3");
    let b = std::fs::read(&bundle).unwrap();
    let needle = b"\"0.2.0\"";
    let pos = b.windows(needle.len()).position(|w| w == needle).unwrap();
    let mut changed = b.clone();
    changed[pos + 5] = b'1'; // "0.2.1"
    std::fs::write(&bundle, &changed).unwrap();
    let forged = String::from_utf8(f.entries[1].clone()).unwrap().replace("0.2.0", "0.2.1");
    let msg = refused(verify_inclusion(&f.dir, forged.as_bytes(), &f.policy(2), &f.state));
    assert!(msg.starts_with("entry 1 not included in checkpoint of size 3: the entry's leaf hash"), "{msg}");
    // The audit finds it too.
    let msg = refused(audit(&f.dir, &f.policy(0)));
    assert!(msg.starts_with("entry 1 not included in checkpoint of size 3: the entry bundle's entry hashes to"), "{msg}");
}

#[test]
fn tampered_tile_is_refused() {
    let f = fixture();
    f.cosign(0);
    f.cosign(1);
    flip_byte(&f.dir.join("tile/0/000.p/3"), 40);
    let msg = refused(verify_inclusion(&f.dir, &f.entries[0], &f.policy(2), &f.state));
    assert!(msg.starts_with("log tile hash mismatch: the tiles under"), "{msg}");
    let msg = refused(audit(&f.dir, &f.policy(0)));
    assert!(msg.starts_with("log tile hash mismatch"), "{msg}");
}

#[test]
fn checkpoint_signed_by_another_key_is_refused() {
    let f = fixture();
    // Same origin, another key: a log operator who lost the key, or an impostor.
    let (other_skey, _) = keygen(ORIGIN, KeyKind::Log).unwrap();
    let other = tempfile::tempdir().unwrap();
    let mut log = Log::create(other.path(), ORIGIN, log_signer(&other_skey).unwrap()).unwrap();
    for e in &f.entries {
        log.append(e).unwrap();
    }
    let msg = refused(verify_inclusion(other.path(), &f.entries[0], &f.policy(0), &f.state));
    assert_eq!(msg, format!("checkpoint not signed by log {ORIGIN}"));
    // A forged signature line under the right key name and id.
    let cp = std::fs::read_to_string(f.dir.join("checkpoint")).unwrap();
    let other_cp = std::fs::read_to_string(other.path().join("checkpoint")).unwrap();
    let body = cp.split("\n\n").next().unwrap();
    let other_sig = other_cp.split("\n\n").nth(1).unwrap();
    assert_eq!(body, other_cp.split("\n\n").next().unwrap(), "same tree, same body");
    let real_sig = cp.split("\n\n").nth(1).unwrap();
    // Keep the real key id (first 4 bytes), use the other key's signature bytes.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let real = b64.decode(real_sig.trim().rsplit(' ').next().unwrap()).unwrap();
    let fake = b64.decode(other_sig.trim().rsplit(' ').next().unwrap()).unwrap();
    let forged = [&real[..4], &fake[4..]].concat();
    std::fs::write(f.dir.join("checkpoint"), format!("{body}\n\n— {ORIGIN} {}\n", b64.encode(forged))).unwrap();
    let msg = refused(verify_inclusion(&f.dir, &f.entries[0], &f.policy(0), &f.state));
    assert!(msg.starts_with(&format!("checkpoint not signed by log {ORIGIN} (")), "{msg}");
    assert!(msg.contains("signature does not verify"), "{msg}");
}

#[test]
fn rolled_back_checkpoint_is_refused() {
    let mut f = fixture();
    let old_checkpoint = std::fs::read(f.dir.join("checkpoint")).unwrap();
    f.append(image_entry(4));
    f.append(image_entry(5));
    verify_inclusion(&f.dir, &f.entries[4], &f.policy(0), &f.state).unwrap();
    let before = std::fs::read(&f.state).unwrap();
    // The server goes back to the size-3 checkpoint.
    std::fs::write(f.dir.join("checkpoint"), old_checkpoint).unwrap();
    let msg = refused(verify_inclusion(&f.dir, &f.entries[0], &f.policy(0), &f.state));
    assert_eq!(msg, "checkpoint size 3 is smaller than the 5 seen before (rolled back)");
    assert_eq!(std::fs::read(&f.state).unwrap(), before, "state changed on failure");
}

#[test]
fn growing_log_is_consistent_and_updates_the_state() {
    let mut f = fixture();
    verify_inclusion(&f.dir, &f.entries[2], &f.policy(0), &f.state).unwrap();
    for i in 4..=300 {
        f.append(image_entry(i));
    }
    // Crosses a full tile of 256 entries.
    assert!(f.dir.join("tile/0/000").exists() && f.dir.join("tile/entries/000").exists());
    let inc = verify_inclusion(&f.dir, &f.entries[260], &f.policy(0), &f.state).unwrap();
    assert_eq!((inc.index, inc.checkpoint.size, inc.previous_size), (260, 300, Some(3)));
    let (_, all) = audit(&f.dir, &f.policy(0)).unwrap();
    assert_eq!(all.len(), 300);
    assert!(all.iter().all(|e| e.entry.is_ok()));
}

#[test]
fn forked_log_is_refused() {
    let f = fixture();
    verify_inclusion(&f.dir, &f.entries[0], &f.policy(0), &f.state).unwrap();
    // Same key, same size, different third entry.
    let fork = tempfile::tempdir().unwrap();
    let mut log = Log::create(fork.path(), ORIGIN, log_signer(&f.log_skey).unwrap()).unwrap();
    for e in [&f.entries[0], &f.entries[1], &image_entry(7)] {
        log.append(e).unwrap();
    }
    let msg = refused(verify_inclusion(fork.path(), &f.entries[0], &f.policy(0), &f.state));
    assert!(msg.starts_with("fork: checkpoint of size 3 has root"), "{msg}");
    // And a bigger fork: not an extension of what was seen.
    log.append(&image_entry(8)).unwrap();
    let msg = refused(verify_inclusion(fork.path(), &f.entries[0], &f.policy(0), &f.state));
    assert!(msg.starts_with("fork: checkpoint of size 4 is not consistent with the checkpoint of size 3"), "{msg}");
}

#[test]
fn witness_refuses_a_mismatching_rebuild() {
    let f = fixture();
    let mut rebuilt: serde_json::Value = serde_json::from_slice(&f.latest_entry()).unwrap();
    rebuilt["measurements"]["snp"][0]["measurement"] = serde_json::Value::String(format!("{:096x}", 0xbad));
    let rebuilt = serde_json::to_vec(&rebuilt).unwrap();
    let before = std::fs::read(f.dir.join("checkpoint")).unwrap();
    let msg = refused(cosign_latest(&f.dir, &f.log_vkey, &f.witnesses[0].0, &rebuilt, None, 1));
    assert!(msg.starts_with("not cosigning: entry 2 differs from the rebuild: measurements.snp.0.measurement: \""), "{msg}");
    assert!(msg.contains(&format!("{:096x}", 0xbad)), "{msg}");
    assert_eq!(std::fs::read(f.dir.join("checkpoint")).unwrap(), before);
    // The same entry with another key order cosigns.
    let v: serde_json::Value = serde_json::from_slice(&f.latest_entry()).unwrap();
    let c = cosign_latest(&f.dir, &f.log_vkey, &f.witnesses[0].0, &serde_json::to_vec_pretty(&v).unwrap(), None, 1).unwrap();
    assert_eq!(c.index, 2);
    // A witness also refuses a log whose signature it cannot verify.
    let (_, other_vkey) = keygen(ORIGIN, KeyKind::Log).unwrap();
    let msg = refused(cosign_latest(&f.dir, &other_vkey, &f.witnesses[1].0, &f.latest_entry(), None, 1));
    assert_eq!(msg, format!("checkpoint not signed by log {ORIGIN}"));
}

#[test]
fn garbage_checkpoints_are_errors() {
    let f = fixture();
    for junk in [&b""[..], b"\n\n", b"x\n\n\xe2\x80\x94 x AAAA\n", &[0xff; 64], b"a\n1\nAAAA\n\n"] {
        std::fs::write(f.dir.join("checkpoint"), junk).unwrap();
        let msg = refused(verify_inclusion(&f.dir, &f.entries[0], &f.policy(0), &f.state));
        assert!(msg.starts_with("malformed log: checkpoint note"), "{msg}");
    }
}

#[test]
fn witness_state_follows_the_log_and_refuses_a_rollback() {
    let mut f = fixture();
    let wstate = f.dir.parent().unwrap().join("witness-state.json");
    let cp3 = std::fs::read(f.dir.join("checkpoint")).unwrap();
    cosign_latest(&f.dir, &f.log_vkey, &f.witnesses[0].0, &f.latest_entry(), Some(&wstate), 1).unwrap();
    f.append(image_entry(4));
    let c = cosign_latest(&f.dir, &f.log_vkey, &f.witnesses[0].0, &f.latest_entry(), Some(&wstate), 2).unwrap();
    assert_eq!((c.index, c.checkpoint.size), (3, 4));
    std::fs::write(f.dir.join("checkpoint"), cp3).unwrap();
    let msg = refused(cosign_latest(&f.dir, &f.log_vkey, &f.witnesses[0].0, &f.entries[2], Some(&wstate), 3));
    assert_eq!(msg, "checkpoint size 3 is smaller than the 4 seen before (rolled back)");
}

#[test]
fn a_client_that_saw_the_empty_log_accepts_any_extension() {
    let f = fixture();
    let empty = r#"{"origin":"example.com/chrysalis-test-log","size":0,"root":"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}"#;
    std::fs::write(&f.state, empty).unwrap();
    let inc = verify_inclusion(&f.dir, &f.entries[0], &f.policy(0), &f.state).unwrap();
    assert_eq!(inc.previous_size, Some(0));
    let bad = empty.replace("47DEQ", "57DEQ");
    std::fs::write(&f.state, bad).unwrap();
    let msg = refused(verify_inclusion(&f.dir, &f.entries[0], &f.policy(0), &f.state));
    assert!(msg.starts_with("fork: the empty checkpoint seen before has root"), "{msg}");
}
