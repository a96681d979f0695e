//! The log as static files in a directory (c2sp.org/tlog-tiles): `checkpoint`,
//! `tile/<L>/<N>[.p/<W>]` hash tiles of height 8, `tile/entries/<N>[.p/<W>]` entry bundles.
//! Writing (`Log`) is the log operator's side; reading (`LogFiles`) treats every byte as
//! untrusted and is total.

use std::path::{Path, PathBuf};

use signed_note::{Note, Signer};
use tlog_tiles::{Checkpoint, Hash, HashReader, Tile, TileHashReader, TileReader};

use crate::Error;
use crate::entry::{MAX_ENTRY_LEN, canonical_entry};

/// Tile height fixed by c2sp.org/tlog-tiles.
pub const TILE_HEIGHT: u8 = 8;
/// Entries per full tile / bundle.
pub const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;
/// Largest tree this implementation reads (keeps all tile arithmetic far from overflow).
pub const MAX_TREE_SIZE: u64 = 1 << 40;
/// Largest checkpoint file read.
pub const MAX_CHECKPOINT_LEN: u64 = 1 << 20;
/// Largest tile or bundle file read (256 entries of at most 64 KiB each plus prefixes).
const MAX_TILE_FILE_LEN: u64 = TILE_WIDTH * (MAX_ENTRY_LEN as u64 + 2);

/// The c2sp.org/tlog-tiles path of a tile (`tlog_tiles` writes the Go sumdb form
/// `tile/<H>/<L>/…`, which names the height; C2SP fixes it at 8 and leaves it out, and names
/// data tiles `entries`).
pub fn tile_path(t: &Tile) -> String {
    let go = t.path();
    let prefix = format!("tile/{}/", t.height());
    let rest = go.strip_prefix(&prefix).unwrap_or(&go);
    match rest.strip_prefix("data/") {
        Some(n) => format!("tile/entries/{n}"),
        None => format!("tile/{rest}"),
    }
}

/// The entry bundle holding entries `[n*256, n*256 + w)`.
fn bundle_tile(n: u64, w: u64) -> Tile {
    Tile::new(TILE_HEIGHT, 0, n, w as u32, true)
}

/// Encode entries as an entry bundle: each a big-endian uint16 length and the bytes.
pub fn encode_bundle(entries: &[Vec<u8>]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    for e in entries {
        let len = u16::try_from(e.len()).map_err(|_| Error::Entry(format!("{} bytes do not fit a bundle", e.len())))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(e);
    }
    Ok(out)
}

/// Decode an entry bundle (untrusted bytes): exactly `want` entries, nothing after them.
pub fn decode_bundle(bytes: &[u8], want: usize) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::with_capacity(want.min(TILE_WIDTH as usize));
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            return Err("truncated length prefix".into());
        };
        let len = usize::from(u16::from_be_bytes(*len));
        if tail.len() < len {
            return Err(format!("entry {} claims {len} bytes, {} left", out.len(), tail.len()));
        }
        let (entry, tail) = tail.split_at(len);
        out.push(entry.to_vec());
        rest = tail;
    }
    if out.len() != want {
        return Err(format!("{} entries, expected {want}", out.len()));
    }
    Ok(out)
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    if buf.len() as u64 > limit {
        return Err(Error::Malformed(format!("{} is larger than {limit} bytes", path.display())));
    }
    Ok(buf)
}

/// Write `bytes` to `path` through a temporary file and a rename (readers see old or new).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |e: std::io::Error| Error::Io(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // A name of its own per writer, so that concurrent writers never share a temporary.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}.{n}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Every file a reader of a tree of `size` may need, with the most bytes it may have: the
/// hash tiles and entry bundles of that size (what to fetch to mirror a log served over
/// HTTP). Tiles of a size never change, so a mirror of them stays valid.
pub fn tree_files(size: u64) -> Result<Vec<(String, u64)>, Error> {
    if size > MAX_TREE_SIZE {
        return Err(Error::Malformed(format!("tree size {size} is larger than {MAX_TREE_SIZE}")));
    }
    let mut out: Vec<(String, u64)> = Tile::new_tiles(TILE_HEIGHT, 0, size)
        .iter()
        .map(|t| (tile_path(t), u64::from(t.width()) * tlog_tiles::HASH_SIZE as u64))
        .collect();
    let mut n = 0;
    while n * TILE_WIDTH < size {
        let w = (size - n * TILE_WIDTH).min(TILE_WIDTH);
        out.push((tile_path(&bundle_tile(n, w)), MAX_TILE_FILE_LEN));
        n += 1;
    }
    Ok(out)
}

/// A log directory as files; every read is untrusted.
pub struct LogFiles {
    dir: PathBuf,
}

impl LogFiles {
    /// The log served from `dir`.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The raw `checkpoint` file.
    pub fn checkpoint_bytes(&self) -> Result<Vec<u8>, Error> {
        read_limited(&self.dir.join("checkpoint"), MAX_CHECKPOINT_LEN)
    }

    /// The entries `[0, size)` from the entry bundles of a tree of `size` (unauthenticated:
    /// check each against the tiles before trusting it).
    pub fn entries(&self, size: u64) -> Result<Vec<Vec<u8>>, Error> {
        let mut out = Vec::new();
        let mut n = 0;
        while n * TILE_WIDTH < size {
            let w = (size - n * TILE_WIDTH).min(TILE_WIDTH);
            let tile = bundle_tile(n, w);
            let rel = tile_path(&tile);
            let bytes = read_limited(&self.dir.join(&rel), MAX_TILE_FILE_LEN)?;
            let entries =
                decode_bundle(&bytes, w as usize).map_err(|why| Error::Malformed(format!("entry bundle {rel}: {why}")))?;
            out.extend(entries);
            n += 1;
        }
        Ok(out)
    }
}

impl TileReader for LogFiles {
    fn height(&self) -> u8 {
        TILE_HEIGHT
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|t| {
                let rel = tile_path(t);
                let want = t.width() as usize * tlog_tiles::HASH_SIZE;
                let data = read_limited(&self.dir.join(&rel), MAX_TILE_FILE_LEN)
                    .map_err(|e| tlog_tiles::Error::InvalidInput(format!("{rel}: {e}")))?;
                if data.len() != want {
                    return Err(tlog_tiles::Error::InvalidInput(format!("{rel}: {} bytes, expected {want}", data.len())));
                }
                Ok(data)
            })
            .collect()
    }

    fn save_tiles(&self, _tiles: &[Tile], _data: &[Vec<u8>]) {}
}

/// A `HashReader` over authenticated tiles of a tree, with the tile error kept readable.
pub fn tile_hashes<'a>(files: &'a LogFiles, size: u64, root: Hash) -> TileHashReader<'a> {
    TileHashReader::new(size, root, files)
}

/// Stored hashes held in memory (the writer's view, built from its own entries).
struct MemHashes(Vec<Hash>);

impl HashReader for MemHashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| usize::try_from(i).ok().and_then(|i| self.0.get(i)).copied().ok_or(tlog_tiles::Error::IndexesNotInTree))
            .collect()
    }
}

/// The operator's handle on a log directory: appends entries and signs checkpoints.
pub struct Log<S: Signer> {
    files: LogFiles,
    origin: String,
    signer: S,
    entries: Vec<Vec<u8>>,
    hashes: MemHashes,
}

impl<S: Signer> Log<S> {
    /// Create an empty log in `dir` (which must not hold a checkpoint yet) and sign its
    /// first checkpoint (size 0). The origin must equal the signer's key name.
    pub fn create(dir: &Path, origin: &str, signer: S) -> Result<Self, Error> {
        if signer.name() != origin {
            return Err(Error::Key(format!(
                "the log key is named {:?} but the origin is {origin:?}; name the key after the origin",
                signer.name()
            )));
        }
        if dir.join("checkpoint").exists() {
            return Err(Error::Io(format!("{} already holds a log (checkpoint exists)", dir.display())));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
        let log = Self {
            files: LogFiles::new(dir),
            origin: origin.to_string(),
            signer,
            entries: Vec::new(),
            hashes: MemHashes(Vec::new()),
        };
        log.publish(0)?;
        Ok(log)
    }

    /// Open an existing log for appending: reads its checkpoint (signature checked with the
    /// signer's own key) and all entries, and recomputes the tree, which must hash to the
    /// checkpoint's root.
    pub fn open(dir: &Path, signer: S) -> Result<Self, Error> {
        let files = LogFiles::new(dir);
        let note = Note::from_bytes(&files.checkpoint_bytes()?)
            .map_err(|e| Error::Malformed(format!("{}/checkpoint: {e}", dir.display())))?;
        let cp =
            Checkpoint::from_bytes(note.text()).map_err(|e| Error::Malformed(format!("{}/checkpoint: {e}", dir.display())))?;
        if cp.origin() != signer.name() {
            return Err(Error::Key(format!("the log's origin is {:?}, the key is {:?}", cp.origin(), signer.name())));
        }
        if cp.size() > MAX_TREE_SIZE {
            return Err(Error::Malformed(format!("checkpoint size {} is too large", cp.size())));
        }
        let entries = files.entries(cp.size())?;
        let mut log = Self { files, origin: cp.origin().to_string(), signer, entries: Vec::new(), hashes: MemHashes(Vec::new()) };
        for e in entries {
            log.push(e)?;
        }
        let root = tlog_tiles::tree_hash(cp.size(), &log.hashes).map_err(|e| Error::Malformed(e.to_string()))?;
        if root != *cp.hash() {
            return Err(Error::TileMismatch(format!(
                "the entries in {} hash to {root}, the checkpoint says {}",
                dir.display(),
                cp.hash()
            )));
        }
        Ok(log)
    }

    /// Number of entries.
    pub fn size(&self) -> u64 {
        self.entries.len() as u64
    }

    /// The log's origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn push(&mut self, entry: Vec<u8>) -> Result<(), Error> {
        let n = self.entries.len() as u64;
        let new = tlog_tiles::stored_hashes(n, &entry, &self.hashes).map_err(|e| Error::Malformed(e.to_string()))?;
        self.hashes.0.extend(new);
        self.entries.push(entry);
        Ok(())
    }

    /// Append an entry (checked and stored in canonical JSON form), rewrite the tiles and
    /// bundle it touches, and sign a new checkpoint. Returns the entry's index.
    pub fn append(&mut self, entry: &[u8]) -> Result<u64, Error> {
        let canonical = canonical_entry(entry)?;
        let old = self.size();
        self.push(canonical)?;
        let new = self.size();
        for tile in Tile::new_tiles(TILE_HEIGHT, old, new) {
            let data = tile.read_data(&self.hashes).map_err(|e| Error::Malformed(e.to_string()))?;
            write_atomic(&self.files.dir.join(tile_path(&tile)), &data)?;
        }
        // The bundle holding the new entry (partial or full).
        let n = old / TILE_WIDTH;
        let start = (n * TILE_WIDTH) as usize;
        let end = self.entries.len();
        let bundle = encode_bundle(&self.entries[start..end])?;
        write_atomic(&self.files.dir.join(tile_path(&bundle_tile(n, (end - start) as u64))), &bundle)?;
        self.publish(new)?;
        Ok(old)
    }

    fn publish(&self, size: u64) -> Result<(), Error> {
        let root = tlog_tiles::tree_hash(size, &self.hashes).map_err(|e| Error::Malformed(e.to_string()))?;
        let cp = Checkpoint::new(&self.origin, size, root, "").map_err(|e| Error::Malformed(e.to_string()))?;
        let mut note = Note::new(&cp.to_bytes(), &[]).map_err(|e| Error::Malformed(e.to_string()))?;
        note.add_sigs(&[&self.signer]).map_err(|e| Error::Key(format!("signing the checkpoint: {e}")))?;
        write_atomic(&self.files.dir.join("checkpoint"), &note.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c2sp_paths() {
        assert_eq!(tile_path(&Tile::new(8, 0, 1234067, 256, false)), "tile/0/x001/x234/067");
        assert_eq!(tile_path(&Tile::new(8, 1, 0, 3, false)), "tile/1/000.p/3");
        assert_eq!(tile_path(&bundle_tile(2, 5)), "tile/entries/002.p/5");
    }

    #[test]
    fn tree_files_name_every_tile_and_bundle() {
        let names: Vec<String> = tree_files(257).unwrap().into_iter().map(|(p, _)| p).collect();
        assert_eq!(names, ["tile/0/000", "tile/0/001.p/1", "tile/1/000.p/1", "tile/entries/000", "tile/entries/001.p/1"]);
        assert!(tree_files(0).unwrap().is_empty());
        assert!(tree_files(MAX_TREE_SIZE + 1).is_err());
    }

    #[test]
    fn bundles_round_trip_and_reject_garbage() {
        let b = encode_bundle(&[b"ab".to_vec(), Vec::new(), b"c".to_vec()]).unwrap();
        assert_eq!(decode_bundle(&b, 3).unwrap(), vec![b"ab".to_vec(), Vec::new(), b"c".to_vec()]);
        assert!(decode_bundle(&b, 2).is_err());
        assert!(decode_bundle(&b[..b.len() - 1], 3).is_err());
        assert!(decode_bundle(&[0], 1).is_err());
    }
}
