//! Hardware reports through the kernel's configfs-tsm interface
//! (`/sys/kernel/config/tsm/report`, Documentation/ABI/testing/configfs-tsm): make an entry,
//! write 64 bytes of REPORT_DATA to `inblob`, read `outblob` (SNP report or TDX quote),
//! `auxblob` (SNP certificate table) and `provider`, check that `generation` did not move
//! while reading (someone else writing the same entry), remove the entry.
//!
//! Written from the ABI document: a few file operations. (The `configfs-tsm` crate is
//! AGPL-3.0 and is not used.) File access goes through [`ConfigFs`] so that tests can run
//! the real sequence against a fake configfs in a temporary directory.
//! Input: the kernel's files; the report bytes are untrusted until a verifier checks them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::CollectError;

/// Where configfs-tsm reports live.
pub const TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";

/// The file operations the report sequence needs.
pub trait ConfigFs {
    /// mkdir (configfs creates the entry's attribute files).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// rmdir of an entry.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Read a whole attribute.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Write a whole attribute.
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl ConfigFs for RealFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        std::fs::write(path, data)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}

/// What one configfs-tsm request returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsmReport {
    /// The provider that produced it (`sev_guest`, `tdx_guest`, ...).
    pub provider: String,
    /// The report (SNP ATTESTATION_REPORT) or quote (TDX DCAP quote).
    pub outblob: Vec<u8>,
    /// Auxiliary data (SNP: the host's certificate table), if the provider has any.
    pub auxblob: Option<Vec<u8>>,
    /// The entry's generation when the report was read.
    pub generation: u64,
}

/// A configfs-tsm report directory.
#[derive(Debug)]
pub struct Tsm<F: ConfigFs = RealFs> {
    base: PathBuf,
    fs: F,
}

static ENTRY_COUNTER: AtomicU32 = AtomicU32::new(0);

impl Tsm<RealFs> {
    /// The real `/sys/kernel/config/tsm/report`.
    pub fn open_default() -> Result<Self, CollectError> {
        Tsm::open(Path::new(TSM_REPORT_DIR), RealFs)
    }
}

impl<F: ConfigFs> Tsm<F> {
    /// Use `base` as the report directory; fails if it is missing (tsm.ko not loaded or
    /// configfs not mounted).
    pub fn open(base: &Path, fs: F) -> Result<Self, CollectError> {
        if !fs.exists(base) {
            return Err(CollectError::TsmUnavailable { path: base.to_path_buf() });
        }
        Ok(Tsm { base: base.to_path_buf(), fs })
    }

    /// Create an entry of our own (a name no other process uses), retrying past stale ones.
    fn create_entry(&self) -> Result<Entry<'_, F>, CollectError> {
        for _ in 0..16 {
            let n = ENTRY_COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = self.base.join(format!("chrysalis-{}-{n}", std::process::id()));
            match self.fs.create_dir(&path) {
                Ok(()) => return Ok(Entry { fs: &self.fs, path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(CollectError::TsmUnavailable { path: self.base.clone() });
                }
                Err(source) => return Err(CollectError::Tsm { step: "mkdir", path, source }),
            }
        }
        Err(CollectError::Tsm {
            step: "mkdir",
            path: self.base.clone(),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "16 entry names already taken"),
        })
    }

    /// The provider name, by creating and removing an entry.
    pub fn provider(&self) -> Result<String, CollectError> {
        let entry = self.create_entry()?;
        entry.read_text("provider")
    }

    /// Request a report binding `report_data`.
    pub fn request(&self, report_data: &[u8; 64]) -> Result<TsmReport, CollectError> {
        let entry = self.create_entry()?;
        entry.write("inblob", report_data)?;
        let before = entry.generation()?;
        let provider = entry.read_text("provider")?;
        let outblob = entry.fs.read(&entry.path.join("outblob")).map_err(|e| quote_service_error(&provider, e))?;
        if outblob.is_empty() {
            return Err(CollectError::QuoteService { provider, cause: "an empty outblob".into() });
        }
        let auxblob = match entry.fs.read(&entry.path.join("auxblob")) {
            Ok(b) if b.is_empty() => None,
            Ok(b) => Some(b),
            // Providers without auxiliary data hide the attribute.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(source) => return Err(CollectError::Tsm { step: "read", path: entry.path.join("auxblob"), source }),
        };
        let after = entry.generation()?;
        if after != before {
            return Err(CollectError::GenerationRace { before, after });
        }
        Ok(TsmReport { provider, outblob, auxblob, generation: after })
    }
}

/// Name the errno a provider returned, with what it usually means.
fn quote_service_error(provider: &str, e: io::Error) -> CollectError {
    let errno = match e.raw_os_error() {
        Some(5) => "EIO (the host's quote generation service did not answer)".to_string(),
        Some(95) => "EOPNOTSUPP/ENOTSUP (no quote generation service configured for this guest)".to_string(),
        Some(19) => "ENODEV (the guest driver is loaded but no TEE is present)".to_string(),
        Some(22) => "EINVAL (the provider rejected the request)".to_string(),
        Some(16) => "EBUSY (another request is in flight)".to_string(),
        Some(n) => format!("errno {n}: {e}"),
        None => e.to_string(),
    };
    CollectError::QuoteService { provider: provider.to_string(), cause: errno }
}

/// An entry; removed again when dropped.
struct Entry<'a, F: ConfigFs> {
    fs: &'a F,
    path: PathBuf,
}

impl<F: ConfigFs> Entry<'_, F> {
    fn write(&self, attr: &str, data: &[u8]) -> Result<(), CollectError> {
        let path = self.path.join(attr);
        self.fs.write(&path, data).map_err(|source| CollectError::Tsm { step: "write", path, source })
    }

    fn read_text(&self, attr: &str) -> Result<String, CollectError> {
        let path = self.path.join(attr);
        let b = self.fs.read(&path).map_err(|source| CollectError::Tsm { step: "read", path, source })?;
        Ok(String::from_utf8_lossy(&b).trim().to_string())
    }

    fn generation(&self) -> Result<u64, CollectError> {
        let text = self.read_text("generation")?;
        text.parse().map_err(|_| CollectError::Tsm {
            step: "parse",
            path: self.path.join("generation"),
            source: io::Error::new(io::ErrorKind::InvalidData, format!("generation {text:?} is not a number")),
        })
    }
}

impl<F: ConfigFs> Drop for Entry<'_, F> {
    fn drop(&mut self) {
        if let Err(e) = self.fs.remove_dir(&self.path) {
            log::warn!("tsm: could not remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake configfs: a temporary directory whose "kernel" side is played by this type.
    use super::*;
    use std::cell::{Cell, RefCell};

    /// The fake provider: outblob for an inblob, or the errno to fail with.
    pub(crate) type Respond = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, i32>>;

    /// Behaviour of the fake provider.
    pub(crate) struct FakeTsm {
        pub root: PathBuf,
        pub provider: String,
        /// outblob for a given inblob (None: answer with this errno).
        pub respond: Respond,
        pub auxblob: Option<Vec<u8>>,
        /// Simulate a concurrent writer bumping the generation during the outblob read.
        pub race: Cell<bool>,
        pub removed: RefCell<Vec<PathBuf>>,
    }

    impl FakeTsm {
        pub(crate) fn new(tag: &str, provider: &str, respond: Respond) -> Self {
            let root = std::env::temp_dir().join(format!("chrysalis-fake-tsm-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let base = root.join("sys/kernel/config/tsm/report");
            std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("{e}"));
            FakeTsm {
                root,
                provider: provider.into(),
                respond,
                auxblob: None,
                race: Cell::new(false),
                removed: RefCell::new(vec![]),
            }
        }

        pub(crate) fn base(&self) -> PathBuf {
            self.root.join("sys/kernel/config/tsm/report")
        }

        fn bump(&self, entry: &Path) -> io::Result<()> {
            let g: u64 = std::fs::read_to_string(entry.join("generation"))?.trim().parse().unwrap_or(0);
            std::fs::write(entry.join("generation"), format!("{}\n", g + 1))
        }
    }

    impl Drop for FakeTsm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    impl ConfigFs for &FakeTsm {
        fn create_dir(&self, path: &Path) -> io::Result<()> {
            std::fs::create_dir(path)?;
            std::fs::write(path.join("provider"), format!("{}\n", self.provider))?;
            std::fs::write(path.join("generation"), "0\n")?;
            std::fs::write(path.join("privlevel_floor"), "0\n")?;
            if let Some(a) = &self.auxblob {
                std::fs::write(path.join("auxblob"), a)?;
            }
            Ok(())
        }
        fn remove_dir(&self, path: &Path) -> io::Result<()> {
            self.removed.borrow_mut().push(path.to_path_buf());
            std::fs::remove_dir_all(path)
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            let entry = path.parent().unwrap_or(path);
            if path.file_name().is_some_and(|n| n == "outblob") {
                let inblob = std::fs::read(entry.join("inblob"))?;
                if self.race.get() {
                    self.bump(entry)?;
                }
                return (self.respond)(&inblob).map_err(io::Error::from_raw_os_error);
            }
            std::fs::read(path)
        }
        fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            std::fs::write(path, data)?;
            let entry = path.parent().unwrap_or(path);
            self.bump(entry)
        }
        fn exists(&self, path: &Path) -> bool {
            path.exists()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeTsm;
    use super::*;

    #[test]
    fn request_reads_outblob_auxblob_and_removes_entry() {
        let mut fake = FakeTsm::new("ok", "sev_guest", Box::new(|inblob| Ok([b"REPORT:".as_slice(), inblob].concat())));
        fake.auxblob = Some(b"certs".to_vec());
        let tsm = Tsm::open(&fake.base(), &fake).unwrap_or_else(|e| panic!("{e}"));
        let r = tsm.request(&[7; 64]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.provider, "sev_guest");
        assert_eq!(&r.outblob[..7], b"REPORT:");
        assert_eq!(&r.outblob[7..], &[7; 64]);
        assert_eq!(r.auxblob.as_deref(), Some(&b"certs"[..]));
        assert_eq!(r.generation, 1, "one write to inblob");
        assert_eq!(fake.removed.borrow().len(), 1);
        assert_eq!(std::fs::read_dir(fake.base()).map(|d| d.count()).unwrap_or(99), 0, "entry removed");
        assert_eq!(tsm.provider().ok().as_deref(), Some("sev_guest"));
    }

    #[test]
    fn missing_directory_names_the_module() {
        let fake = FakeTsm::new("missing", "tdx_guest", Box::new(|_| Err(5)));
        let err = Tsm::open(&fake.root.join("nope"), &fake).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("tsm module not loaded / configfs not mounted"), "{err}");
    }

    #[test]
    fn provider_errors_name_the_quote_service() {
        let fake = FakeTsm::new("eio", "tdx_guest", Box::new(|_| Err(5)));
        let tsm = Tsm::open(&fake.base(), &fake).unwrap_or_else(|e| panic!("{e}"));
        let err = tsm.request(&[0; 64]).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            err,
            "quote generation service unavailable (provider tdx_guest returned EIO (the host's quote generation service did not answer))"
        );
        assert_eq!(fake.removed.borrow().len(), 1, "entry removed on error too");
        let fake = FakeTsm::new("enotsup", "tdx_guest", Box::new(|_| Err(95)));
        let tsm = Tsm::open(&fake.base(), &fake).unwrap_or_else(|e| panic!("{e}"));
        let err = tsm.request(&[0; 64]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("provider tdx_guest returned EOPNOTSUPP/ENOTSUP"), "{err}");
    }

    #[test]
    fn generation_change_is_detected() {
        let fake = FakeTsm::new("race", "sev_guest", Box::new(|i| Ok(i.to_vec())));
        fake.race.set(true);
        let tsm = Tsm::open(&fake.base(), &fake).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(tsm.request(&[1; 64]), Err(CollectError::GenerationRace { before: 1, after: 2 })));
    }
}
