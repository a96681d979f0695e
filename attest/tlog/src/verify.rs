//! Verifying a log as a client: checkpoint signature, witness cosignatures, consistency with
//! the last checkpoint seen (state file), inclusion of an entry, and auditing every entry.
//! Everything read from the log directory is untrusted.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use signed_note::{Note, NoteError, Signature, Verifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash};

use crate::Error;
use crate::entry::{Entry, canonical_json, json_diff};
use crate::keys::{CosignatureSigner, CosignatureVerifier, key_label, log_verifier};
use crate::log::{LogFiles, MAX_TREE_SIZE, tile_hashes, write_atomic};

/// What a client requires of a log (the owner policy's `[transparency]` table).
#[derive(Clone, Debug)]
pub struct LogPolicy {
    /// The log's verifier key (`<name>+<id>+<key>`); the name is the log's origin.
    pub log_key: String,
    /// Witness verifier keys (`cosignature/v1`).
    pub witnesses: Vec<String>,
    /// How many distinct listed witnesses must have cosigned the checkpoint.
    pub min_witnesses: usize,
}

/// A checkpoint whose log signature and cosignatures were checked.
#[derive(Clone, Debug)]
pub struct VerifiedCheckpoint {
    /// The origin line (the log's name).
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// Root hash.
    pub root: Hash,
    /// Witnesses (`name+id`) whose cosignatures verified, with their timestamps.
    pub witnesses: Vec<(String, u64)>,
    /// The checkpoint note as read (to rewrite it with a new cosignature).
    note: Vec<u8>,
}

/// The last checkpoint a client accepted (state file, JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SeenCheckpoint {
    /// The log's origin.
    pub origin: String,
    /// Its size.
    pub size: u64,
    /// Its root hash (base64, as in a checkpoint).
    pub root: String,
}

/// What `verify_inclusion` established.
#[derive(Clone, Debug)]
pub struct Inclusion {
    /// The checkpoint the entry is included in.
    pub checkpoint: VerifiedCheckpoint,
    /// The entry's index.
    pub index: u64,
    /// Size of the checkpoint seen before (state file), if any.
    pub previous_size: Option<u64>,
}

fn note_of(bytes: &[u8]) -> Result<Note, Error> {
    Note::from_bytes(bytes).map_err(|e| Error::Malformed(format!("checkpoint note: {e}")))
}

/// Does `note` carry a valid signature by `verifier`? `Ok(false)`: no signature by that key;
/// `Err`: a signature by that key that does not verify.
fn signed_by(note: &Note, verifier: Box<dyn Verifier>) -> Result<bool, String> {
    let name = format!("{}+{:08x}", verifier.name(), verifier.key_id());
    match note.verify(&VerifierList::new(vec![verifier])) {
        Ok(_) => Ok(true),
        Err(NoteError::UnverifiedNote) => Ok(false),
        Err(NoteError::InvalidSignature { .. }) => Err(format!("{name}: signature does not verify")),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

/// Read and check the log's checkpoint: log signature, origin, size bound, and at least
/// `policy.min_witnesses` distinct listed witnesses.
pub fn verify_checkpoint(files: &LogFiles, policy: &LogPolicy) -> Result<VerifiedCheckpoint, Error> {
    let bytes = files.checkpoint_bytes()?;
    verify_checkpoint_bytes(&bytes, policy)
}

/// [`verify_checkpoint`] on checkpoint bytes.
pub fn verify_checkpoint_bytes(bytes: &[u8], policy: &LogPolicy) -> Result<VerifiedCheckpoint, Error> {
    let log = log_verifier(&policy.log_key)?;
    let log_name = log.name().to_string();
    let note = note_of(bytes)?;
    match signed_by(&note, Box::new(log)) {
        Ok(true) => {}
        Ok(false) => return Err(Error::NotSignedByLog { log: log_name }),
        Err(why) => return Err(Error::NotSignedByLog { log: format!("{log_name} ({why})") }),
    }
    let cp = Checkpoint::from_bytes(note.text()).map_err(|e| Error::Malformed(format!("checkpoint body: {e}")))?;
    if cp.origin() != log_name {
        return Err(Error::Malformed(format!("checkpoint origin {:?} is not the log key's name {log_name:?}", cp.origin())));
    }
    if cp.size() > MAX_TREE_SIZE {
        return Err(Error::Malformed(format!("checkpoint size {} is larger than {MAX_TREE_SIZE}", cp.size())));
    }
    let mut have = Vec::new();
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    for vkey in &policy.witnesses {
        let w = CosignatureVerifier::new(vkey)?;
        let label = key_label(vkey);
        if !seen.insert(label.clone()) {
            continue; // the same witness listed twice counts once
        }
        match signed_by(&note, Box::new(w.clone())) {
            Ok(true) => {
                let ts = cosignature_time(&note, &w).unwrap_or(0);
                have.push((label, ts));
            }
            Ok(false) => missing.push(label),
            Err(why) => missing.push(format!("{label} (invalid: {why})")),
        }
    }
    if have.len() < policy.min_witnesses {
        return Err(Error::NotEnoughWitnesses {
            have: have.len(),
            need: policy.min_witnesses,
            have_names: have.iter().map(|(n, _)| n.clone()).collect(),
            missing,
        });
    }
    Ok(VerifiedCheckpoint { origin: log_name, size: cp.size(), root: *cp.hash(), witnesses: have, note: bytes.to_vec() })
}

/// The timestamp of `w`'s (valid) cosignature on `note`.
fn cosignature_time(note: &Note, w: &CosignatureVerifier) -> Option<u64> {
    // `Note` keeps its signatures private: find the line in the encoded note.
    let encoded = note.to_bytes();
    let text = note.text();
    let sigs = encoded.get(text.len() + 1..)?;
    sigs.split(|&b| b == b'\n')
        .filter_map(|line| Signature::from_bytes(line).ok())
        .filter(|s| s.name() == w.name() && s.id() == w.key_id())
        .find_map(|s| w.verify_timestamp(text, s.signature()))
}

/// Check `cp` against the state file's checkpoint (same log; not smaller; same root at the
/// same size; the old tree a prefix of the new one, proven from the tiles).
fn check_consistency(files: &LogFiles, cp: &VerifiedCheckpoint, seen: &SeenCheckpoint) -> Result<(), Error> {
    if seen.origin != cp.origin {
        return Err(Error::State(format!("the state file is for log {:?}, not {:?}", seen.origin, cp.origin)));
    }
    let old_root = Hash::parse_hash(&seen.root).map_err(|e| Error::State(format!("stored root: {e}")))?;
    if cp.size < seen.size {
        return Err(Error::RolledBack { size: cp.size, seen: seen.size });
    }
    if cp.size == seen.size {
        if cp.root != old_root {
            return Err(Error::Fork(format!(
                "checkpoint of size {} has root {} but root {} was seen before at that size",
                cp.size, cp.root, old_root
            )));
        }
        return Ok(());
    }
    if seen.size == 0 {
        // Every tree extends the empty one (whose root is fixed).
        return if old_root == tlog_tiles::EMPTY_HASH {
            Ok(())
        } else {
            Err(Error::Fork(format!("the empty checkpoint seen before has root {old_root}, not the empty hash")))
        };
    }
    let reader = tile_hashes(files, cp.size, cp.root);
    let proof = tlog_tiles::prove_tree(cp.size, seen.size, &reader).map_err(|e| tile_error(files, e))?;
    tlog_tiles::check_tree(&proof, cp.size, cp.root, seen.size, old_root).map_err(|e| {
        Error::Fork(format!(
            "checkpoint of size {} is not consistent with the checkpoint of size {} seen before ({e})",
            cp.size, seen.size
        ))
    })
}

fn tile_error(files: &LogFiles, e: tlog_tiles::Error) -> Error {
    match e {
        tlog_tiles::Error::InconsistentTile => {
            Error::TileMismatch(format!("the tiles under {}/tile do not hash to the checkpoint's root", files.dir().display()))
        }
        other => Error::TileMismatch(format!("reading tiles under {}: {other}", files.dir().display())),
    }
}

/// Read a state file (absent: nothing seen yet).
pub fn read_state(path: &Path) -> Result<Option<SeenCheckpoint>, Error> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::State(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::State(format!("{}: {e}", path.display()))),
    }
}

fn write_state(path: &Path, cp: &VerifiedCheckpoint) -> Result<(), Error> {
    let seen = SeenCheckpoint { origin: cp.origin.clone(), size: cp.size, root: cp.root.to_string() };
    let json = serde_json::to_vec_pretty(&seen).map_err(|e| Error::State(e.to_string()))?;
    write_atomic(path, &json)
}

/// Check that the leaf at `index` of `cp` is `entry` (inclusion proof computed from the
/// authenticated tiles).
fn check_included(files: &LogFiles, cp: &VerifiedCheckpoint, index: u64, entry: &[u8]) -> Result<(), Error> {
    let not_included = |why: String| Error::NotIncluded { index, size: cp.size, why };
    if index >= cp.size {
        return Err(not_included("index past the end".into()));
    }
    let reader = tile_hashes(files, cp.size, cp.root);
    let proof = tlog_tiles::prove_record(cp.size, index, &reader).map_err(|e| tile_error(files, e))?;
    let leaf = tlog_tiles::record_hash(entry);
    tlog_tiles::check_record(&proof, cp.size, cp.root, index, leaf)
        .map_err(|e| not_included(format!("the entry's leaf hash {leaf} does not prove into the root ({e})")))
}

/// Verify that `entry` (any JSON; compared in canonical form) is in the log in `dir`:
/// checkpoint signed by the log and cosigned by enough witnesses, consistent with the
/// checkpoint in `state` (if any), and the entry's inclusion proven from the tiles. The
/// state file is updated only when everything passed.
pub fn verify_inclusion(dir: &Path, entry: &[u8], policy: &LogPolicy, state: &Path) -> Result<Inclusion, Error> {
    let canonical = canonical_json(entry)?;
    verify_with(dir, policy, state, |files, cp| {
        let entries = files.entries(cp.size)?;
        let index = entries.iter().rposition(|e| *e == canonical).ok_or_else(|| Error::NotIncluded {
            index: cp.size,
            size: cp.size,
            why: format!(
                "no entry of the log equals it (sha256 {})",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&canonical))
            ),
        })?;
        check_included(files, cp, index as u64, &canonical)?;
        Ok(index as u64)
    })
}

/// Verify that an image-release entry whose measurements include `measurement` (hex, any
/// case) is in the log, as [`verify_inclusion`] does for a given entry.
pub fn verify_measurement_released(
    dir: &Path,
    measurement: &str,
    policy: &LogPolicy,
    state: &Path,
) -> Result<(Inclusion, Entry), Error> {
    let want = measurement.to_ascii_lowercase();
    let mut found = None;
    let inclusion = verify_with(dir, policy, state, |files, cp| {
        let entries = files.entries(cp.size)?;
        let hit = entries.iter().enumerate().rev().find_map(|(i, e)| match Entry::parse(e) {
            Ok(Entry::ImageRelease(r)) if r.measurement_values().contains(&want) => Some((i, e, r)),
            _ => None,
        });
        let Some((i, bytes, release)) = hit else {
            return Err(Error::NotIncluded {
                index: cp.size,
                size: cp.size,
                why: format!("no image-release entry lists measurement {want}"),
            });
        };
        check_included(files, cp, i as u64, bytes)?;
        found = Some(Entry::ImageRelease(release));
        Ok(i as u64)
    })?;
    let entry = found.ok_or_else(|| Error::Malformed("no entry".into()))?;
    Ok((inclusion, entry))
}

fn verify_with(
    dir: &Path,
    policy: &LogPolicy,
    state: &Path,
    find: impl FnOnce(&LogFiles, &VerifiedCheckpoint) -> Result<u64, Error>,
) -> Result<Inclusion, Error> {
    let files = LogFiles::new(dir);
    let cp = verify_checkpoint(&files, policy)?;
    let seen = read_state(state)?;
    if let Some(seen) = &seen {
        check_consistency(&files, &cp, seen)?;
    }
    let index = find(&files, &cp)?;
    write_state(state, &cp)?;
    Ok(Inclusion { checkpoint: cp, index, previous_size: seen.map(|s| s.size) })
}

/// One entry of an audited log.
#[derive(Clone, Debug)]
pub struct AuditedEntry {
    /// Index in the log.
    pub index: u64,
    /// The canonical bytes.
    pub bytes: Vec<u8>,
    /// The parsed entry, or why it did not parse.
    pub entry: Result<Entry, String>,
}

/// Read every entry of the log and check that each leaf hashes into the signed checkpoint
/// (the whole tree is rebuilt from the entries and compared with the root, and with the
/// tiles). Witnesses are not required (`policy.min_witnesses` applies when non-zero).
pub fn audit(dir: &Path, policy: &LogPolicy) -> Result<(VerifiedCheckpoint, Vec<AuditedEntry>), Error> {
    let files = LogFiles::new(dir);
    let cp = verify_checkpoint(&files, policy)?;
    let entries = files.entries(cp.size)?;
    let reader = tile_hashes(&files, cp.size, cp.root);
    // Level-0 hashes from the authenticated tiles, 256 at a time.
    let mut out = Vec::with_capacity(entries.len());
    for (chunk_no, chunk) in entries.chunks(crate::log::TILE_WIDTH as usize).enumerate() {
        let first = chunk_no as u64 * crate::log::TILE_WIDTH;
        let indexes: Vec<u64> = (0..chunk.len() as u64).map(|i| tlog_tiles::stored_hash_index(0, first + i)).collect();
        let leaves = tlog_tiles::HashReader::read_hashes(&reader, &indexes).map_err(|e| tile_error(&files, e))?;
        for (i, (bytes, leaf)) in chunk.iter().zip(leaves).enumerate() {
            let index = first + i as u64;
            let got = tlog_tiles::record_hash(bytes);
            if got != leaf {
                return Err(Error::NotIncluded {
                    index,
                    size: cp.size,
                    why: format!("the entry bundle's entry hashes to {got}, the log's tile has leaf {leaf}"),
                });
            }
            out.push(AuditedEntry { index, bytes: bytes.clone(), entry: Entry::parse(bytes).map_err(|e| e.to_string()) });
        }
    }
    Ok((cp, out))
}

/// What a witness did.
#[derive(Clone, Debug)]
pub struct Cosigned {
    /// The checkpoint cosigned.
    pub checkpoint: VerifiedCheckpoint,
    /// Index of the entry compared (the latest).
    pub index: u64,
}

/// Witness: cosign the log's latest checkpoint, only if its signature verifies, it is
/// consistent with the witness's state (if `state`), the latest entry is included, and that
/// entry equals `expected` (the witness's own rebuild) in canonical JSON. The cosignature
/// (`cosignature/v1`, time `timestamp`) is added to the `checkpoint` file.
pub fn cosign_latest(
    dir: &Path,
    log_key: &str,
    witness_key: &str,
    expected: &[u8],
    state: Option<&Path>,
    timestamp: u64,
) -> Result<Cosigned, Error> {
    let signer = CosignatureSigner::new(witness_key, timestamp)?;
    let expected = canonical_json(expected)?;
    let policy = LogPolicy { log_key: log_key.to_string(), witnesses: Vec::new(), min_witnesses: 0 };
    let files = LogFiles::new(dir);
    let cp = verify_checkpoint(&files, &policy)?;
    if let Some(state) = state
        && let Some(seen) = read_state(state)?
    {
        check_consistency(&files, &cp, &seen)?;
    }
    let Some(index) = cp.size.checked_sub(1) else {
        return Err(Error::Mismatch("the log is empty".into()));
    };
    let entries = files.entries(cp.size)?;
    let latest = entries.last().ok_or_else(|| Error::Malformed("no entries".into()))?;
    check_included(&files, &cp, index, latest)?;
    if *latest != expected {
        let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap_or(serde_json::Value::Null);
        let diff = json_diff(&parse(latest), &parse(&expected), 8);
        return Err(Error::Mismatch(format!(
            "entry {index} differs from the rebuild: {} (log vs rebuild)",
            if diff.is_empty() { "byte order".to_string() } else { diff.join("; ") }
        )));
    }
    let mut note = note_of(&cp.note)?;
    note.add_sigs(&[&signer]).map_err(|e| Error::Key(format!("cosigning: {e}")))?;
    write_atomic(&dir.join("checkpoint"), &note.to_bytes())?;
    if let Some(state) = state {
        write_state(state, &cp)?;
    }
    Ok(Cosigned { checkpoint: cp, index })
}
