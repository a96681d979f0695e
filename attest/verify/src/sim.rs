//! The Chrysalis SIMULATED TEE, for tests and the demo on machines without SEV-SNP or TDX.
//! It is NOT hardware and proves nothing about isolation; verifiers refuse it unless a
//! policy says `[simulation] allow_simulated = true`, and then say so loudly.
//!
//! # Report format
//!
//! A simulated report has the 1184-byte SEV-SNP ATTESTATION_REPORT layout (AMD pub. 56860,
//! Table 23), VERSION 2 (no CPUID fields: it names no CPU), with:
//! - CHIP_ID (0x1A0) beginning with the ASCII marker [`SIM_CHIP_ID_MARKER`]
//!   (`CHRYSALIS SIMULATED TEE - NOT HARDWARE`), rest zero;
//! - SIGNATURE_ALGO (0x034) = [`SIM_SIGNATURE_ALGO`] = `0x4348_0001`: high half "CH" for
//!   Chrysalis, low half 1 for ECDSA P-384/SHA-384. AMD defines only 0 (invalid) and 1, so no
//!   genuine report carries it, and the hardware verifier rejects both markers;
//! - the signature (0x2A0, R then S, 72-byte little-endian fields) by the *simulation root
//!   key* directly over bytes 0x000..0x2A0 (there is no VCEK/ASK/ARK chain);
//! - CURRENT/COMMITTED/LAUNCH/REPORTED_TCB all equal to [`SimPsp::reported_tcb`] in the
//!   Milan/Genoa layout; KEY_INFO 0; REPORT_ID random per [`SimPsp`].
//!
//! # Keys
//!
//! The root key is generated on the host at build time ([`SimRoot::generate`], saved by
//! [`SimRoot::save`] outside the image, the private key file mode 0600) and never enters the
//! guest: a host-side simulated PSP ([`SimPsp`]) signs reports for the guest. Policies pin
//! the root's public key ([`SimRootPublicKey`], SEC1 hex or SPKI PEM).
//!
//! Trust: [`verify_sim`] trusts only the public key its caller passes.

use std::path::{Path, PathBuf};

use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use p384::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rand_core_06::{OsRng, RngCore};
use sha2::{Digest, Sha256, Sha384};
use zeroize::Zeroizing;

use crate::claims::{SnpClaims, SnpProduct, SnpSigner, Verified};
use crate::snp::report::{SIGNED_LEN, policy_bits};
use crate::snp::{SnpError, SnpReport};
use chrysalis_proto::eventlog::EventLog;
use chrysalis_proto::evidence::{EVIDENCE_VERSION, Evidence, PlatformEvidence};

/// ASCII marker at the start of a simulated report's CHIP_ID.
pub const SIM_CHIP_ID_MARKER: &[u8] = b"CHRYSALIS SIMULATED TEE - NOT HARDWARE";

/// SIGNATURE_ALGO of a simulated report ("CH" || 0x0001).
pub const SIM_SIGNATURE_ALGO: u32 = 0x4348_0001;

/// Default guest policy of a simulated guest: SMT allowed, reserved bit 17, debug off.
pub const SIM_DEFAULT_POLICY: u64 = policy_bits::SMT | policy_bits::RESERVED_ONE;

/// Domain string of [`sim_launch_measurement`].
pub const SIM_MEASUREMENT_DOMAIN: &[u8] = b"chrysalis-sim-launch-measurement-v1\0";

/// File names written by [`SimRoot::save`].
pub const KEY_FILE: &str = "sim-root.key.pem";
/// Public key, SPKI PEM.
pub const PUB_PEM_FILE: &str = "sim-root.pub.pem";
/// Public key, SEC1 uncompressed point in hex (for policy files).
pub const PUB_HEX_FILE: &str = "sim-root.pub.hex";

/// Why a simulated report or key was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The bytes are not an SNP-layout report.
    #[error("simulated report: {0}")]
    Report(#[from] SnpError),
    /// CHIP_ID lacks the simulation marker (this is not a simulated report).
    #[error("report is not a Chrysalis simulated report: CHIP_ID lacks the marker")]
    NotSimulated,
    /// SIGNATURE_ALGO is not [`SIM_SIGNATURE_ALGO`].
    #[error("simulated report has signature algorithm {0:#x}, expected {SIM_SIGNATURE_ALGO:#x}")]
    SignatureAlgorithm(u32),
    /// The signature does not verify under the given simulation root.
    #[error("simulated report signature does not verify under the simulation root key {0}")]
    Signature(String),
    /// A key does not decode.
    #[error("simulation root key: {0}")]
    Key(String),
    /// The private key file is readable by group or others.
    #[error("{path}: private key file has mode {mode:o}, expected 600")]
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
    move |source| SimError::Io { path: path.to_path_buf(), source }
}

/// The simulation root key (private). Host-side only.
pub struct SimRoot {
    key: SigningKey,
}

impl std::fmt::Debug for SimRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRoot").field("public", &self.public_key().to_hex()).finish_non_exhaustive()
    }
}

impl SimRoot {
    /// A fresh random root key.
    pub fn generate() -> Self {
        SimRoot { key: SigningKey::random(&mut OsRng) }
    }

    /// The public half, which policies pin.
    pub fn public_key(&self) -> SimRootPublicKey {
        SimRootPublicKey(*self.key.verifying_key())
    }

    /// PKCS#8 PEM of the private key.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, SimError> {
        let sk = p384::SecretKey::from(&self.key);
        sk.to_pkcs8_pem(LineEnding::LF).map_err(|e| SimError::Key(e.to_string()))
    }

    /// Decode a PKCS#8 PEM private key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, SimError> {
        let sk = p384::SecretKey::from_pkcs8_pem(pem).map_err(|e| SimError::Key(e.to_string()))?;
        Ok(SimRoot { key: SigningKey::from(sk) })
    }

    /// Write [`KEY_FILE`] (mode 0600), [`PUB_PEM_FILE`] and [`PUB_HEX_FILE`] into `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), SimError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let key_path = dir.join(KEY_FILE);
        write_private(&key_path, self.to_pkcs8_pem()?.as_bytes())?;
        let public = self.public_key();
        let pub_pem = dir.join(PUB_PEM_FILE);
        std::fs::write(&pub_pem, public.to_pem()?).map_err(io_err(&pub_pem))?;
        let pub_hex = dir.join(PUB_HEX_FILE);
        std::fs::write(&pub_hex, format!("{}\n", public.to_hex())).map_err(io_err(&pub_hex))?;
        Ok(())
    }

    /// Read [`KEY_FILE`] from `dir`, refusing a file readable by group or others.
    pub fn load(dir: &Path) -> Result<Self, SimError> {
        let path = dir.join(KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map_err(io_err(&path))?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(SimError::KeyPermissions { path, mode });
            }
        }
        let pem = Zeroizing::new(std::fs::read_to_string(&path).map_err(io_err(&path))?);
        SimRoot::from_pkcs8_pem(&pem)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SimError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io_err(path))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    }
    f.write_all(bytes).map_err(io_err(path))
}

/// The simulation root's public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimRootPublicKey(VerifyingKey);

impl SimRootPublicKey {
    /// SEC1 uncompressed point, hex (97 bytes).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_encoded_point(false).as_bytes())
    }

    /// SPKI PEM.
    pub fn to_pem(&self) -> Result<String, SimError> {
        self.0.to_public_key_pem(LineEnding::LF).map_err(|e| SimError::Key(e.to_string()))
    }

    /// Decode SEC1 hex (compressed or uncompressed) or SPKI PEM.
    pub fn parse(text: &str) -> Result<Self, SimError> {
        let t = text.trim();
        if t.starts_with("-----BEGIN") {
            return VerifyingKey::from_public_key_pem(t).map(Self).map_err(|e| SimError::Key(e.to_string()));
        }
        let bytes = hex::decode(t).map_err(|e| SimError::Key(format!("not hex or PEM: {e}")))?;
        VerifyingKey::from_sec1_bytes(&bytes).map(Self).map_err(|_| SimError::Key("not a P-384 SEC1 point".into()))
    }

    /// Read a `.pem` or `.hex` public key file.
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        SimRootPublicKey::parse(&text)
    }
}

/// The simulated TEE's launch measurement: SHA-384 over [`SIM_MEASUREMENT_DOMAIN`] followed by
/// SHA-256(kernel), SHA-256(initrd) and SHA-256(cmdline as UTF-8), each 32 bytes, so the input
/// has a fixed layout. (Real SNP hashes OVMF pages and the kernel-hashes table instead.)
pub fn sim_launch_measurement(kernel: &[u8], initrd: &[u8], cmdline: &str) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(SIM_MEASUREMENT_DOMAIN);
    h.update(Sha256::digest(kernel));
    h.update(Sha256::digest(initrd));
    h.update(Sha256::digest(cmdline.as_bytes()));
    h.finalize().into()
}

/// The host-side simulated PSP: holds the root key and the guest's launch parameters, and
/// signs reports for the guest's REPORT_DATA. Fields are public so tests can produce reports
/// with debug enabled, another TCB, and so on.
#[derive(Debug)]
pub struct SimPsp {
    /// The simulation root key that signs reports.
    pub root: SimRoot,
    /// MEASUREMENT (see [`sim_launch_measurement`]).
    pub measurement: [u8; 48],
    /// Guest POLICY (see [`crate::snp::policy_bits`]); default [`SIM_DEFAULT_POLICY`].
    pub policy: u64,
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// VMPL.
    pub vmpl: u32,
    /// TCB written to every TCB field but LAUNCH_TCB (Milan/Genoa layout).
    pub reported_tcb: u64,
    /// LAUNCH_TCB; `None` = the same as `reported_tcb`.
    pub launch_tcb: Option<u64>,
    /// PLATFORM_INFO.
    pub platform_info: u64,
    /// FAMILY_ID.
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    pub image_id: [u8; 16],
    /// REPORT_ID.
    pub report_id: [u8; 32],
}

impl SimPsp {
    /// A simulated PSP for a guest with `measurement`, default policy, zero TCB.
    pub fn new(root: SimRoot, measurement: [u8; 48]) -> Self {
        let mut report_id = [0u8; 32];
        OsRng.fill_bytes(&mut report_id);
        SimPsp {
            root,
            measurement,
            policy: SIM_DEFAULT_POLICY,
            host_data: [0; 32],
            guest_svn: 0,
            vmpl: 0,
            reported_tcb: 0,
            launch_tcb: None,
            platform_info: 0,
            family_id: [0; 16],
            image_id: [0; 16],
            report_id,
        }
    }

    /// Set or clear the DEBUG policy bit.
    pub fn set_debug(&mut self, on: bool) {
        if on {
            self.policy |= policy_bits::DEBUG;
        } else {
            self.policy &= !policy_bits::DEBUG;
        }
    }

    /// A signed simulated report carrying `report_data` (layout: see the module docs).
    pub fn report(&self, report_data: &[u8; 64]) -> Vec<u8> {
        let mut r = vec![0u8; SnpReport::SIZE];
        fn put_at(r: &mut [u8], off: usize, bytes: &[u8]) {
            if let Some(dst) = off.checked_add(bytes.len()).and_then(|end| r.get_mut(off..end)) {
                dst.copy_from_slice(bytes);
            }
        }
        let mut put = |off: usize, bytes: &[u8]| put_at(&mut r, off, bytes);
        put(0x000, &2u32.to_le_bytes());
        put(0x004, &self.guest_svn.to_le_bytes());
        put(0x008, &self.policy.to_le_bytes());
        put(0x010, &self.family_id);
        put(0x020, &self.image_id);
        put(0x030, &self.vmpl.to_le_bytes());
        put(0x034, &SIM_SIGNATURE_ALGO.to_le_bytes());
        put(0x038, &self.reported_tcb.to_le_bytes());
        put(0x040, &self.platform_info.to_le_bytes());
        put(0x050, report_data);
        put(0x090, &self.measurement);
        put(0x0C0, &self.host_data);
        put(0x140, &self.report_id);
        put(0x160, &[0xFF; 32]);
        put(0x180, &self.reported_tcb.to_le_bytes());
        put(0x1A0, SIM_CHIP_ID_MARKER);
        put(0x1E0, &self.reported_tcb.to_le_bytes());
        put(0x1F0, &self.launch_tcb.unwrap_or(self.reported_tcb).to_le_bytes());
        let sig: Signature = self.root.key.sign(r.get(..SIGNED_LEN).unwrap_or(&[]));
        let mut put = |off: usize, bytes: &[u8]| put_at(&mut r, off, bytes);
        let (rb, sb) = sig.split_bytes();
        let mut r_le = rb.to_vec();
        r_le.reverse();
        let mut s_le = sb.to_vec();
        s_le.reverse();
        put(0x2A0, &r_le);
        put(0x2E8, &s_le);
        r
    }

    /// A complete evidence bundle for `nonce`: REPORT_DATA = `log.report_data(nonce)`.
    pub fn evidence(&self, log: EventLog, nonce: &[u8]) -> Evidence {
        let report = self.report(&log.report_data(nonce));
        Evidence {
            version: EVIDENCE_VERSION,
            nonce: nonce.to_vec(),
            platform: PlatformEvidence::Simulated { report },
            event_log: log,
            gpus: vec![],
        }
    }
}

/// Verify a simulated report against the simulation root `root`. The claims say
/// `simulated: true`, product and signer [`SnpProduct::Simulated`]/[`SnpSigner::Simulated`].
pub fn verify_sim(report: &[u8], root: &SimRootPublicKey) -> Result<Verified<SnpClaims>, SimError> {
    let parsed = SnpReport::parse(report)?;
    if !parsed.is_simulated() {
        return Err(SimError::NotSimulated);
    }
    let algo = parsed.signature_algo();
    if algo != SIM_SIGNATURE_ALGO {
        return Err(SimError::SignatureAlgorithm(algo));
    }
    let short = root.to_hex().get(..16).unwrap_or("").to_string();
    crate::snp::check_report_signature(&parsed, &root.0, "simulation root", short.clone())
        .map_err(|_| SimError::Signature(format!("{short}…")))?;
    Ok(Verified::new(parsed.claims(SnpProduct::Simulated, SnpSigner::Simulated, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trip_and_fields() {
        let root = SimRoot::generate();
        let public = root.public_key();
        let m = sim_launch_measurement(b"kernel", b"initrd", "console=ttyS0");
        let mut psp = SimPsp::new(root, m);
        psp.host_data = [7; 32];
        let rd = [0x5a; 64];
        let report = psp.report(&rd);
        assert_eq!(report.len(), 1184);
        let v = verify_sim(&report, &public).unwrap();
        let c = v.claims();
        assert!(c.simulated);
        assert_eq!((c.product, c.signer), (SnpProduct::Simulated, SnpSigner::Simulated));
        assert_eq!(c.measurement, m.to_vec());
        assert_eq!(c.report_data, rd.to_vec());
        assert_eq!(c.host_data, vec![7; 32]);
        assert_eq!(c.policy, SIM_DEFAULT_POLICY);
        assert!(c.chip_id.starts_with(SIM_CHIP_ID_MARKER));
        // The hardware verifier refuses it outright.
        assert!(matches!(crate::snp::verify_report(&report, &[], std::time::SystemTime::now()), Err(SnpError::SimulatedReport)));
    }

    #[test]
    fn other_root_and_tampering_fail() {
        let psp = SimPsp::new(SimRoot::generate(), [1; 48]);
        let report = psp.report(&[0; 64]);
        let other = SimRoot::generate().public_key();
        assert!(matches!(verify_sim(&report, &other), Err(SimError::Signature(_))));
        let mut t = report.clone();
        t[0x90] ^= 1;
        assert!(matches!(verify_sim(&t, &psp.root.public_key()), Err(SimError::Signature(_))));
        let mut t = report.clone();
        t[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(verify_sim(&t, &psp.root.public_key()), Err(SimError::SignatureAlgorithm(1))));
        let mut t = report;
        t[0x1A0] = b'X';
        assert!(matches!(verify_sim(&t, &psp.root.public_key()), Err(SimError::NotSimulated)));
        assert!(matches!(verify_sim(&[0; 10], &psp.root.public_key()), Err(SimError::Report(_))));
    }

    #[test]
    fn debug_bit_is_settable() {
        let mut psp = SimPsp::new(SimRoot::generate(), [1; 48]);
        psp.set_debug(true);
        let v = verify_sim(&psp.report(&[0; 64]), &psp.root.public_key()).unwrap();
        assert_ne!(v.claims().policy & policy_bits::DEBUG, 0);
        psp.set_debug(false);
        let v = verify_sim(&psp.report(&[0; 64]), &psp.root.public_key()).unwrap();
        assert_eq!(v.claims().policy & policy_bits::DEBUG, 0);
    }

    #[test]
    fn measurement_depends_on_each_input() {
        let a = sim_launch_measurement(b"k", b"i", "c");
        assert_ne!(a, sim_launch_measurement(b"k2", b"i", "c"));
        assert_ne!(a, sim_launch_measurement(b"k", b"i2", "c"));
        assert_ne!(a, sim_launch_measurement(b"k", b"i", "c2"));
        assert_eq!(a, sim_launch_measurement(b"k", b"i", "c"));
    }

    #[test]
    fn keys_save_load_and_parse() {
        let dir = std::env::temp_dir().join(format!("chrysalis-sim-test-{}", std::process::id()));
        let root = SimRoot::generate();
        root.save(&dir).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let loaded = SimRoot::load(&dir).unwrap();
        assert_eq!(loaded.public_key(), root.public_key());
        assert_eq!(SimRootPublicKey::load(&dir.join(PUB_PEM_FILE)).unwrap(), root.public_key());
        assert_eq!(SimRootPublicKey::load(&dir.join(PUB_HEX_FILE)).unwrap(), root.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(SimRoot::load(&dir), Err(SimError::KeyPermissions { mode: 0o644, .. })));
        }
        assert!(!format!("{root:?}").contains("PRIVATE"));
        assert!(SimRootPublicKey::parse("zz").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
