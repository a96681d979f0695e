//! The TDX firmware event log: the ACPI "CCEL" table that locates it (LAML/LASA) and the TCG
//! crypto-agile event log it points to, replayed into RTMR0..3 so that a verifier can see
//! *what* the firmware, bootloader and kernel measured and compare it with a quote's RTMRs.
//!
//! Format: TCG PC Client Platform Firmware Profile (PFP) §10 — the first event is a legacy
//! SHA-1-format `TCG_PCClientPCREvent` carrying `TCG_EfiSpecIDEvent` ("Spec ID Event03"),
//! every later one a `TCG_PCR_EVENT2`; the log ends at an all-0x00 or all-0xFF event header.
//! UEFI 2.10 §38.4 maps CC measurement register index 1..=4 to RTMR0..3 on TDX; replay is
//! `RTMR = SHA-384(RTMR || digest)` from 48 zero bytes; `EV_NO_ACTION` events are not
//! extended. ACPI 6.5 §5.2.6 / UEFI "CC Event Log ACPI Table" gives the CCEL table.
//!
//! Input: untrusted bytes. A log is only evidence once its replay equals the RTMRs of a
//! verified quote ([`Replay::check_rtmrs`], [`Replay::check_against`]); until then the event
//! descriptions are just claims.

use core::fmt;

use sha2::{Digest as _, Sha384};

use crate::claims::TdxClaims;
use chrysalis_proto::wire::reader::{Reader, WireError};

/// TPM_ALG_SHA1.
pub const ALG_SHA1: u16 = 0x0004;
/// TPM_ALG_SHA256.
pub const ALG_SHA256: u16 = 0x000B;
/// TPM_ALG_SHA384, the RTMR hash.
pub const ALG_SHA384: u16 = 0x000C;
/// TPM_ALG_SHA512.
pub const ALG_SHA512: u16 = 0x000D;
/// TPM_ALG_SM3_256.
pub const ALG_SM3_256: u16 = 0x0012;

/// Most algorithms a Spec ID event may declare (TPM 2.0 defines far fewer).
const MAX_ALGORITHMS: u32 = 16;
/// Largest digest any declared algorithm may claim.
const MAX_DIGEST_LEN: u16 = 64;

/// Why an event log or CCEL table was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CcelError {
    /// A structure ended early or had trailing bytes.
    #[error("malformed event log: {0}")]
    Wire(#[from] WireError),
    /// The ACPI table is not a CCEL table.
    #[error("acpi table signature is {0:?}, expected \"CCEL\"")]
    AcpiSignature(String),
    /// The ACPI header's length disagrees with the table.
    #[error("acpi table length field says {header} bytes, table has {actual}")]
    AcpiLength {
        /// The header's Length field.
        header: u64,
        /// Bytes given.
        actual: usize,
    },
    /// The ACPI table's bytes do not sum to zero.
    #[error("acpi table checksum is wrong (bytes sum to {0:#04x}, expected 0)")]
    AcpiChecksum(u8),
    /// The log does not start with a valid Spec ID event.
    #[error("first event is not a valid spec id event: {0}")]
    SpecId(&'static str),
    /// The Spec ID event does not declare SHA-384 with 48-byte digests.
    #[error("spec id event does not declare sha-384 (48-byte digests)")]
    NoSha384,
    /// An event uses a digest algorithm the Spec ID event did not declare.
    #[error("event {seq} has digest algorithm {alg:#06x}, not declared in the spec id event")]
    UnknownAlgorithm {
        /// Event number (0 = Spec ID event).
        seq: usize,
        /// TPM_ALG_ID.
        alg: u16,
    },
    /// An event has more digests than algorithms were declared.
    #[error("event {seq} has {count} digests, the spec id event declares {declared} algorithms")]
    DigestCount {
        /// Event number.
        seq: usize,
        /// Its digest count.
        count: u32,
        /// Algorithms declared.
        declared: usize,
    },
    /// A measured event carries no SHA-384 digest, so its RTMR cannot be replayed.
    #[error("event {seq} has no sha-384 digest")]
    MissingSha384 {
        /// Event number.
        seq: usize,
    },
    /// A measured event names a register that is not an RTMR.
    #[error("event {seq} extends cc mr index {index}, which is not an rtmr (1..=4)")]
    MrIndex {
        /// Event number.
        seq: usize,
        /// The CC MR index.
        index: u32,
    },
    /// The replayed RTMR differs from the quoted one.
    #[error("rtmr{index} mismatch: log replays to {replayed}, quote has {quoted}")]
    RtmrMismatch {
        /// RTMR number (0..=3).
        index: usize,
        /// Replayed value (hex).
        replayed: String,
        /// Quoted value (hex).
        quoted: String,
    },
}

/// The ACPI CCEL table (signature "CCEL", 56 bytes): where the firmware put the event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CcelTable {
    /// 0x08: Revision.
    pub revision: u8,
    /// 0x0A, 6 B: OEMID.
    pub oem_id: [u8; 6],
    /// 0x10, 8 B: OEM Table ID.
    pub oem_table_id: [u8; 8],
    /// 0x18: OEM Revision.
    pub oem_revision: u32,
    /// 0x1C, 4 B: Creator ID.
    pub creator_id: [u8; 4],
    /// 0x20: Creator Revision.
    pub creator_revision: u32,
    /// 0x24: CC Type (2 = TDX).
    pub cc_type: u8,
    /// 0x25: CC Subtype.
    pub cc_subtype: u8,
    /// 0x28: LAML, log area minimum length.
    pub laml: u64,
    /// 0x30: LASA, log area start address (guest physical).
    pub lasa: u64,
}

impl CcelTable {
    /// Length of a CCEL table.
    pub const SIZE: usize = 56;

    /// Parse and checksum a CCEL table (e.g. `/sys/firmware/acpi/tables/CCEL`).
    pub fn parse(bytes: &[u8]) -> Result<Self, CcelError> {
        let mut r = Reader::new(bytes);
        let sig: [u8; 4] = r.array("ccel table")?;
        if &sig != b"CCEL" {
            return Err(CcelError::AcpiSignature(String::from_utf8_lossy(&sig).into_owned()));
        }
        let length = r.read_u32("ccel table")?;
        if usize::try_from(length).ok() != Some(bytes.len()) {
            return Err(CcelError::AcpiLength { header: length.into(), actual: bytes.len() });
        }
        let sum = bytes.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        if sum != 0 {
            return Err(CcelError::AcpiChecksum(sum));
        }
        let revision = r.read_u8("ccel table")?;
        let _checksum = r.read_u8("ccel table")?;
        let t = CcelTable {
            revision,
            oem_id: r.array("ccel table")?,
            oem_table_id: r.array("ccel table")?,
            oem_revision: r.read_u32("ccel table")?,
            creator_id: r.array("ccel table")?,
            creator_revision: r.read_u32("ccel table")?,
            cc_type: r.read_u8("ccel table")?,
            cc_subtype: r.read_u8("ccel table")?,
            laml: {
                let _reserved = r.read_u16("ccel table")?;
                r.read_u64("ccel table")?
            },
            lasa: r.read_u64("ccel table")?,
        };
        r.expect_empty("ccel table")?;
        Ok(t)
    }
}

/// A TCG event type. Unknown values are kept (policy may still name them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventType(pub u32);

impl EventType {
    /// EV_NO_ACTION: informational, never extended.
    pub const NO_ACTION: EventType = EventType(0x3);

    /// The TCG PFP name of a known type.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0 => "EV_PREBOOT_CERT",
            0x1 => "EV_POST_CODE",
            0x2 => "EV_UNUSED",
            0x3 => "EV_NO_ACTION",
            0x4 => "EV_SEPARATOR",
            0x5 => "EV_ACTION",
            0x6 => "EV_EVENT_TAG",
            0x7 => "EV_S_CRTM_CONTENTS",
            0x8 => "EV_S_CRTM_VERSION",
            0x9 => "EV_CPU_MICROCODE",
            0xA => "EV_PLATFORM_CONFIG_FLAGS",
            0xB => "EV_TABLE_OF_DEVICES",
            0xC => "EV_COMPACT_HASH",
            0xD => "EV_IPL",
            0xE => "EV_IPL_PARTITION_DATA",
            0xF => "EV_NONHOST_CODE",
            0x10 => "EV_NONHOST_CONFIG",
            0x11 => "EV_NONHOST_INFO",
            0x12 => "EV_OMIT_BOOT_DEVICE_EVENTS",
            0x8000_0000 => "EV_EFI_EVENT_BASE",
            0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
            0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
            0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
            0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
            0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
            0x8000_0006 => "EV_EFI_GPT_EVENT",
            0x8000_0007 => "EV_EFI_ACTION",
            0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
            0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
            0x8000_000A => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
            0x8000_000B => "EV_EFI_HANDOFF_TABLES2",
            0x8000_000C => "EV_EFI_VARIABLE_BOOT2",
            0x8000_000D => "EV_EFI_GPT_EVENT2",
            0x8000_0010 => "EV_EFI_HCRTM_EVENT",
            0x8000_00E0 => "EV_EFI_VARIABLE_AUTHORITY",
            0x8000_00E1 => "EV_EFI_SPDM_FIRMWARE_BLOB",
            0x8000_00E2 => "EV_EFI_SPDM_FIRMWARE_CONFIG",
            0x8000_00E3 => "EV_EFI_SPDM_DEVICE_POLICY",
            0x8000_00E4 => "EV_EFI_SPDM_DEVICE_AUTHORITY",
            _ => return None,
        })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.pad(n),
            None => f.pad(&format!("EV_UNKNOWN({:#010x})", self.0)),
        }
    }
}

/// What the Spec ID event (the log's first event) declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecId {
    /// platformClass (0 = client, 1 = server).
    pub platform_class: u32,
    /// specVersionMajor.minor, errata.
    pub spec_version: (u8, u8, u8),
    /// uintnSize (1 = 32-bit UINTN, 2 = 64-bit).
    pub uintn_size: u8,
    /// (TPM_ALG_ID, digest size) of every algorithm in the log.
    pub algorithms: Vec<(u16, u16)>,
    /// vendorInfo.
    pub vendor_info: Vec<u8>,
}

/// One event of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CcelEvent {
    /// Position in the log; 0 is the Spec ID event.
    pub seq: usize,
    /// Byte offset of the event in the log.
    pub offset: usize,
    /// CC measurement register index (1..=4 = RTMR0..3; the Spec ID event has 0).
    pub mr_index: u32,
    /// Event type.
    pub event_type: EventType,
    /// (TPM_ALG_ID, digest) pairs; the Spec ID event has one SHA-1 field (zero).
    pub digests: Vec<(u16, Vec<u8>)>,
    /// Event data (untrusted unless `digest_covers_data`).
    pub data: Vec<u8>,
}

impl CcelEvent {
    /// The RTMR this event extends (0..=3), or `None` for EV_NO_ACTION.
    pub fn rtmr(&self) -> Option<usize> {
        if self.event_type == EventType::NO_ACTION {
            return None;
        }
        // MR index 1..=4 is RTMR 0..=3 (index 0 is MRTD, which the log does not extend).
        match self.mr_index {
            1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(3),
            _ => None,
        }
    }

    /// The SHA-384 digest, if present.
    pub fn sha384(&self) -> Option<[u8; 48]> {
        self.digests.iter().find(|(alg, _)| *alg == ALG_SHA384).and_then(|(_, d)| <[u8; 48]>::try_from(d.as_slice()).ok())
    }

    /// Whether the SHA-384 digest is the hash of the event data itself, so the data shown is
    /// exactly what was measured. Otherwise the data only describes the measured object.
    pub fn digest_covers_data(&self) -> bool {
        self.sha384().is_some_and(|d| d.as_slice() == Sha384::digest(&self.data).as_slice())
    }

    /// A one-line human description decoded from the event data.
    pub fn description(&self) -> String {
        describe(self.event_type, &self.data)
    }
}

/// A parsed and replayed event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// Replayed RTMR0..3.
    pub rtmr: [[u8; 48]; 4],
    /// Every event, the Spec ID event first.
    pub events: Vec<CcelEvent>,
    /// The Spec ID event's declarations.
    pub spec_id: SpecId,
    /// Bytes of the log area that hold events (the rest is padding).
    pub used_len: usize,
}

impl Replay {
    /// Compare with the RTMRs of a verified quote: `(rtmr index, equal)` for RTMR0..3.
    pub fn check_against(&self, claims: &TdxClaims) -> Vec<(usize, bool)> {
        (0..4)
            .map(|i| {
                let quoted = claims.rtmr.get(i).map(Vec::as_slice);
                (i, quoted == self.rtmr.get(i).map(|r| r.as_slice()))
            })
            .collect()
    }

    /// Fail with the first RTMR whose replay differs from `quoted`.
    pub fn check_rtmrs(&self, quoted: &[[u8; 48]; 4]) -> Result<(), CcelError> {
        for (index, (r, q)) in self.rtmr.iter().zip(quoted).enumerate() {
            if r != q {
                return Err(CcelError::RtmrMismatch { index, replayed: hex::encode(r), quoted: hex::encode(q) });
            }
        }
        Ok(())
    }

    /// Like [`Replay::check_rtmrs`], against a verified quote's claims.
    pub fn check_claims(&self, claims: &TdxClaims) -> Result<(), CcelError> {
        let mut quoted = [[0u8; 48]; 4];
        for (q, c) in quoted.iter_mut().zip(&claims.rtmr) {
            // A claim of the wrong length can never match; an all-0xFF value stands in for it.
            *q = <[u8; 48]>::try_from(c.as_slice()).unwrap_or([0xFF; 48]);
        }
        self.check_rtmrs(&quoted)
    }
}

impl fmt::Display for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algs: Vec<String> = self.spec_id.algorithms.iter().map(|(a, s)| format!("{} ({s} B)", alg_name(*a))).collect();
        writeln!(
            f,
            "TCG event log: {} events, {} bytes used, algorithms: {}",
            self.events.len(),
            self.used_len,
            algs.join(", ")
        )?;
        for (i, r) in self.rtmr.iter().enumerate() {
            writeln!(f, "  replayed RTMR{i}: {}", hex::encode(r))?;
        }
        writeln!(f, "  (* = digest is SHA-384 of the event data shown; otherwise the data only describes what was measured)")?;
        for e in &self.events {
            let mr = match e.rtmr() {
                Some(r) => format!("RTMR{r}"),
                None => "-".to_string(),
            };
            let digest = e.sha384().map_or_else(|| "-".to_string(), hex::encode);
            let star = if e.digest_covers_data() { '*' } else { ' ' };
            writeln!(f, "{:>4} {:<5} mr{} {:<33} {}{} {}", e.seq, mr, e.mr_index, e.event_type, digest, star, e.description())?;
        }
        Ok(())
    }
}

/// Parse a CCEL log area (e.g. `/sys/firmware/acpi/tables/data/CCEL`) and replay RTMR0..3.
pub fn replay(log: &[u8]) -> Result<Replay, CcelError> {
    let mut r = Reader::new(log);
    let (spec_id, first) = read_spec_id_event(&mut r)?;
    let sha384_len = spec_id.algorithms.iter().find(|(a, _)| *a == ALG_SHA384).map(|(_, s)| *s);
    if sha384_len != Some(48) {
        return Err(CcelError::NoSha384);
    }
    let mut events = vec![first];
    let mut rtmr = [[0u8; 48]; 4];
    loop {
        let rest = r.peek_rest();
        let head = rest.get(..8);
        match head {
            None if rest.iter().all(|&b| b == 0 || b == 0xFF) => break,
            Some(h) if h.iter().all(|&b| b == 0) || h.iter().all(|&b| b == 0xFF) => break,
            _ => {}
        }
        let seq = events.len();
        let ev = read_event2(&mut r, seq, &spec_id)?;
        if ev.event_type != EventType::NO_ACTION {
            let idx = ev.rtmr().ok_or(CcelError::MrIndex { seq, index: ev.mr_index })?;
            let d = ev.sha384().ok_or(CcelError::MissingSha384 { seq })?;
            if let Some(slot) = rtmr.get_mut(idx) {
                let mut h = Sha384::new();
                h.update(*slot);
                h.update(d);
                slot.copy_from_slice(&h.finalize());
            }
        }
        events.push(ev);
    }
    Ok(Replay { rtmr, events, spec_id, used_len: r.used() })
}

fn read_spec_id_event(r: &mut Reader<'_>) -> Result<(SpecId, CcelEvent), CcelError> {
    const W: &str = "spec id event";
    let offset = r.used();
    let mr_index = r.read_u32(W)?;
    let event_type = EventType(r.read_u32(W)?);
    let sha1: [u8; 20] = r.array(W)?;
    let size = r.read_u32(W)?;
    let data = r.bytes(usize::try_from(size).unwrap_or(usize::MAX), W)?;
    if event_type != EventType::NO_ACTION {
        return Err(CcelError::SpecId("event type is not EV_NO_ACTION"));
    }
    let mut d = Reader::new(data);
    let sig: [u8; 16] = d.array(W)?;
    if &sig != b"Spec ID Event03\0" {
        return Err(CcelError::SpecId("signature is not \"Spec ID Event03\""));
    }
    let platform_class = d.read_u32(W)?;
    let minor = d.read_u8(W)?;
    let major = d.read_u8(W)?;
    let errata = d.read_u8(W)?;
    let uintn_size = d.read_u8(W)?;
    let n = d.read_u32(W)?;
    if n == 0 || n > MAX_ALGORITHMS {
        return Err(CcelError::SpecId("number of algorithms is 0 or too large"));
    }
    let mut algorithms = Vec::new();
    for _ in 0..n {
        let alg = d.read_u16(W)?;
        let size = d.read_u16(W)?;
        if size == 0 || size > MAX_DIGEST_LEN {
            return Err(CcelError::SpecId("digest size is 0 or larger than 64"));
        }
        if algorithms.iter().any(|(a, _)| *a == alg) {
            return Err(CcelError::SpecId("algorithm declared twice"));
        }
        algorithms.push((alg, size));
    }
    let vendor_len = d.read_u8(W)?;
    let vendor_info = d.bytes(vendor_len.into(), W)?.to_vec();
    d.expect_empty(W)?;
    let spec = SpecId { platform_class, spec_version: (major, minor, errata), uintn_size, algorithms, vendor_info };
    let ev = CcelEvent { seq: 0, offset, mr_index, event_type, digests: vec![(ALG_SHA1, sha1.to_vec())], data: data.to_vec() };
    Ok((spec, ev))
}

fn read_event2(r: &mut Reader<'_>, seq: usize, spec: &SpecId) -> Result<CcelEvent, CcelError> {
    const W: &str = "event";
    let offset = r.used();
    let mr_index = r.read_u32(W)?;
    let event_type = EventType(r.read_u32(W)?);
    let count = r.read_u32(W)?;
    if usize::try_from(count).map_or(true, |c| c > spec.algorithms.len()) {
        return Err(CcelError::DigestCount { seq, count, declared: spec.algorithms.len() });
    }
    let mut digests = Vec::new();
    for _ in 0..count {
        let alg = r.read_u16(W)?;
        let size =
            spec.algorithms.iter().find(|(a, _)| *a == alg).map(|(_, s)| *s).ok_or(CcelError::UnknownAlgorithm { seq, alg })?;
        digests.push((alg, r.bytes(size.into(), "event digest")?.to_vec()));
    }
    let size = r.read_u32(W)?;
    let data = r.bytes(usize::try_from(size).unwrap_or(usize::MAX), "event data")?.to_vec();
    Ok(CcelEvent { seq, offset, mr_index, event_type, digests, data })
}

fn alg_name(alg: u16) -> String {
    match alg {
        ALG_SHA1 => "sha1".into(),
        ALG_SHA256 => "sha256".into(),
        ALG_SHA384 => "sha384".into(),
        ALG_SHA512 => "sha512".into(),
        ALG_SM3_256 => "sm3_256".into(),
        other => format!("alg {other:#06x}"),
    }
}

// ---- human-readable descriptions of event data -------------------------------------------

/// Printable text in `data` (ASCII or UTF-16LE, trailing NULs dropped), escaped for a terminal.
fn text(data: &[u8]) -> Option<String> {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i.saturating_add(1));
    let t = data.get(..end)?;
    if t.is_empty() {
        return None;
    }
    let printable = |c: char| !c.is_control() || c == '\t' || c == '\n';
    if t.iter().all(|&b| b.is_ascii() && printable(char::from(b))) {
        return Some(String::from_utf8_lossy(t).escape_debug().to_string());
    }
    utf16(data).filter(|s| !s.is_empty())
}

/// UTF-16LE text (NUL-terminated or not), if all of it is printable.
fn utf16(data: &[u8]) -> Option<String> {
    if !data.len().is_multiple_of(2) {
        return None;
    }
    let (pairs, _) = data.as_chunks::<2>();
    let units: Vec<u16> = pairs.iter().map(|&p| u16::from_le_bytes(p)).take_while(|&u| u != 0).collect();
    let s = String::from_utf16(&units).ok()?;
    // Firmware strings are ASCII in UCS-2; anything else is binary data that happens to be
    // valid UTF-16.
    if s.chars().all(|c| c.is_ascii() && !c.is_control()) { Some(s.escape_debug().to_string()) } else { None }
}

fn guid(b: &[u8; 16]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

fn hex_prefix(data: &[u8]) -> String {
    let shown = data.get(..16).unwrap_or(data);
    let more = if data.len() > shown.len() { "…" } else { "" };
    format!("{} bytes: {}{more}", data.len(), hex::encode(shown))
}

fn describe(t: EventType, data: &[u8]) -> String {
    let decoded = match t.0 {
        0x3 => describe_no_action(data),
        0x4 => Some(match data {
            [0, 0, 0, 0] => "separator".to_string(),
            [0xFF, 0xFF, 0xFF, 0xFF] => "error separator".to_string(),
            _ => format!("separator {}", hex::encode(data)),
        }),
        0x6 => describe_tagged(data),
        0xA => describe_td_shim_config(data),
        0x8000_0001 | 0x8000_0002 | 0x8000_000C | 0x8000_00E0 => describe_variable(data),
        0x8000_0003..=0x8000_0005 => describe_image(data),
        0x8000_000A => describe_blob2(data),
        0x8000_000B => describe_handoff2(data),
        0x8000_0006 => Some(format!("GPT header and partition entries ({} bytes)", data.len())),
        _ => None,
    };
    decoded.or_else(|| text(data).map(|s| format!("\"{s}\""))).unwrap_or_else(|| hex_prefix(data))
}

/// td-shim's TD_SHIM_PLATFORM_CONFIG_INFO: a 16-byte ASCII descriptor, a u32 length and the
/// data (e.g. "td_payload_info" followed by the kernel command line).
fn describe_td_shim_config(data: &[u8]) -> Option<String> {
    let mut r = Reader::new(data);
    let desc = text(r.take(16)?)?;
    let len = usize::try_from(r.u32()?).ok()?;
    let body = r.take(len).unwrap_or_else(|| r.rest());
    match text(body) {
        Some(t) => Some(format!("{desc}: \"{t}\"")),
        None => Some(format!("{desc} ({len} bytes)")),
    }
}

fn describe_no_action(data: &[u8]) -> Option<String> {
    let sig = data.get(..16)?;
    let name = text(sig)?;
    Some(format!("\"{name}\" ({} bytes)", data.len()))
}

fn describe_tagged(data: &[u8]) -> Option<String> {
    let mut r = Reader::new(data);
    let id = r.u32()?;
    let len = r.u32()?;
    let body = r.take(usize::try_from(len).ok()?)?;
    let body_text = text(body).map_or_else(|| hex_prefix(body), |s| format!("\"{s}\""));
    Some(format!("tag {id:#x}: {body_text}"))
}

/// UEFI_VARIABLE_DATA: VariableName GUID, UnicodeNameLength, VariableDataLength, name, data.
fn describe_variable(data: &[u8]) -> Option<String> {
    let mut r = Reader::new(data);
    let vendor: [u8; 16] = r.array("var").ok()?;
    let name_len = usize::try_from(r.u64()?).ok()?;
    let data_len = usize::try_from(r.u64()?).ok()?;
    let name = utf16(r.take(name_len.checked_mul(2)?)?)?;
    let value = r.take(data_len)?;
    let detail = match name.as_str() {
        "SecureBoot" | "SetupMode" | "AuditMode" | "DeployedMode" => match value {
            [v] => format!(" = {v}"),
            _ => String::new(),
        },
        "BootOrder" => {
            let (pairs, _) = value.as_chunks::<2>();
            let order: Vec<String> = pairs.iter().map(|&p| format!("{:04X}", u16::from_le_bytes(p))).collect();
            format!(" = {}", order.join(","))
        }
        n if n.starts_with("Boot") && n.len() == 8 => load_option(value).map(|d| format!(" = \"{d}\"")).unwrap_or_default(),
        _ => String::new(),
    };
    Some(format!("{{{}}} {name}{detail} ({data_len} bytes)", guid(&vendor)))
}

/// EFI_LOAD_OPTION's description string.
fn load_option(value: &[u8]) -> Option<String> {
    let mut r = Reader::new(value);
    let _attributes = r.u32()?;
    let _path_len = r.u16()?;
    let rest = r.rest();
    let units: Vec<u8> = rest.chunks_exact(2).take_while(|c| c != &[0, 0]).flatten().copied().collect();
    utf16(&units)
}

/// UEFI_IMAGE_LOAD_EVENT: location, length, link-time address, device path length, path.
fn describe_image(data: &[u8]) -> Option<String> {
    let mut r = Reader::new(data);
    let _location = r.u64()?;
    let length = r.u64()?;
    let _link = r.u64()?;
    let path_len = usize::try_from(r.u64()?).ok()?;
    let path = r.take(path_len)?;
    Some(format!("image {length:#x} bytes, path {}", device_path(path)))
}

/// A device path as text, decoding the node kinds that appear in boot logs.
fn device_path(mut b: &[u8]) -> String {
    let mut nodes = Vec::new();
    while let [ty, sub, l0, l1, ..] = *b {
        let len = usize::from(u16::from_le_bytes([l0, l1]));
        let Some(node) = b.get(4..len) else { break };
        if len < 4 {
            break;
        }
        let s = match (ty, sub) {
            (0x7F, _) => break,
            (0x01, 0x01) => match node {
                [func, dev] => format!("Pci({dev:#x},{func:#x})"),
                _ => "Pci(?)".into(),
            },
            (0x02, 0x01) => match node {
                [a, b2, c, d, e, f, g, h] => {
                    format!("Acpi({:#x},{:#x})", u32::from_le_bytes([*a, *b2, *c, *d]), u32::from_le_bytes([*e, *f, *g, *h]))
                }
                _ => "Acpi(?)".into(),
            },
            (0x04, 0x01) => match node.first_chunk::<4>() {
                Some(p) => format!("HD({},…)", u32::from_le_bytes(*p)),
                None => "HD(?)".into(),
            },
            (0x04, 0x03) => match node.first_chunk::<16>() {
                Some(g) => format!("VenMedia({})", guid(g)),
                None => "VenMedia(?)".into(),
            },
            (0x04, 0x04) => format!("File({})", utf16(node).unwrap_or_else(|| "?".into())),
            (0x04, 0x06) => match node.first_chunk::<16>() {
                Some(g) => format!("FvFile({})", guid(g)),
                None => "FvFile(?)".into(),
            },
            (0x04, 0x07) => match node.first_chunk::<16>() {
                Some(g) => format!("Fv({})", guid(g)),
                None => "Fv(?)".into(),
            },
            _ => format!("Path({ty:#x},{sub:#x})"),
        };
        nodes.push(s);
        b = b.get(len..).unwrap_or_default();
    }
    if nodes.is_empty() { "(none)".into() } else { nodes.join("/") }
}

/// UEFI_PLATFORM_FIRMWARE_BLOB2: description length, description, base, length.
fn describe_blob2(data: &[u8]) -> Option<String> {
    let mut r = Reader::new(data);
    let n = r.u8()?;
    let desc = text(r.take(n.into())?).unwrap_or_default();
    let base = r.u64()?;
    let len = r.u64()?;
    Some(format!("\"{desc}\" base {base:#x} length {len:#x}"))
}

/// UEFI_HANDOFF_TABLE_POINTERS2: description length, description, table count, tables.
fn describe_handoff2(data: &[u8]) -> Option<String> {
    let mut r = Reader::new(data);
    let n = r.u8()?;
    let desc = text(r.take(n.into())?).unwrap_or_default();
    let count = r.u64()?;
    let mut tables = Vec::new();
    for _ in 0..count.min(8) {
        let g: [u8; 16] = r.array("table").ok()?;
        let _ptr = r.u64()?;
        tables.push(guid(&g));
    }
    Some(format!("\"{desc}\" {count} table(s) {}", tables.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_id_event(algs: &[(u16, u16)]) -> Vec<u8> {
        let mut d = b"Spec ID Event03\0".to_vec();
        d.extend_from_slice(&0u32.to_le_bytes());
        d.extend_from_slice(&[0, 2, 0, 2]);
        d.extend_from_slice(&(algs.len() as u32).to_le_bytes());
        for (a, s) in algs {
            d.extend_from_slice(&a.to_le_bytes());
            d.extend_from_slice(&s.to_le_bytes());
        }
        d.push(0);
        let mut e = Vec::new();
        e.extend_from_slice(&0u32.to_le_bytes());
        e.extend_from_slice(&3u32.to_le_bytes());
        e.extend_from_slice(&[0; 20]);
        e.extend_from_slice(&(d.len() as u32).to_le_bytes());
        e.extend_from_slice(&d);
        e
    }

    fn event2(mr: u32, ty: u32, digest: &[u8; 48], data: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&mr.to_le_bytes());
        e.extend_from_slice(&ty.to_le_bytes());
        e.extend_from_slice(&1u32.to_le_bytes());
        e.extend_from_slice(&ALG_SHA384.to_le_bytes());
        e.extend_from_slice(digest);
        e.extend_from_slice(&(data.len() as u32).to_le_bytes());
        e.extend_from_slice(data);
        e
    }

    #[test]
    fn replays_synthetic_log() {
        let data = b"hello";
        let digest: [u8; 48] = Sha384::digest(data).into();
        let mut log = spec_id_event(&[(ALG_SHA384, 48)]);
        log.extend(event2(3, 0x8000_0007, &digest, data));
        log.extend(event2(1, 3, &[0; 48], b"ignored"));
        log.extend([0u8; 64]);
        let r = replay(&log).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.events.len(), 3);
        let mut h = Sha384::new();
        h.update([0u8; 48]);
        h.update(digest);
        let expected: [u8; 48] = h.finalize().into();
        assert_eq!(r.rtmr, [[0; 48], [0; 48], expected, [0; 48]]);
        assert!(r.events[1].digest_covers_data());
        assert_eq!(r.events[1].description(), "\"hello\"");
        assert!(r.to_string().contains("EV_EFI_ACTION"));
    }

    #[test]
    fn typed_errors() {
        let mut log = spec_id_event(&[(ALG_SHA256, 32)]);
        log.extend([0u8; 8]);
        assert_eq!(replay(&log), Err(CcelError::NoSha384));

        let mut log = spec_id_event(&[(ALG_SHA384, 48)]);
        log.extend(event2(5, 4, &[1; 48], &[0; 4]));
        assert_eq!(replay(&log), Err(CcelError::MrIndex { seq: 1, index: 5 }));

        let mut log = spec_id_event(&[(ALG_SHA384, 48)]);
        let mut ev = event2(1, 4, &[1; 48], &[0; 4]);
        ev[12] = 0x34; // digest algorithm id
        log.extend(ev);
        assert_eq!(replay(&log), Err(CcelError::UnknownAlgorithm { seq: 1, alg: 0x0034 }));

        let mut log = spec_id_event(&[(ALG_SHA384, 48)]);
        let mut ev = event2(1, 4, &[1; 48], &[0; 4]);
        ev[8] = 9; // digest count
        log.extend(ev);
        assert_eq!(replay(&log), Err(CcelError::DigestCount { seq: 1, count: 9, declared: 1 }));

        let mut log = spec_id_event(&[(ALG_SHA384, 48)]);
        log[4] = 4;
        assert_eq!(replay(&log), Err(CcelError::SpecId("event type is not EV_NO_ACTION")));
        assert!(matches!(replay(&[]), Err(CcelError::Wire(WireError::Truncated { .. }))));
    }

    #[test]
    fn ccel_acpi_table() {
        let mut t = b"CCEL".to_vec();
        t.extend_from_slice(&56u32.to_le_bytes());
        t.push(1); // revision
        t.push(0); // checksum, fixed below
        t.extend_from_slice(b"INTEL ");
        t.extend_from_slice(b"EDK2    ");
        t.extend_from_slice(&2u32.to_le_bytes());
        t.extend_from_slice(b"INTL");
        t.extend_from_slice(&0x1000013u32.to_le_bytes());
        t.extend_from_slice(&[2, 0, 0, 0]);
        t.extend_from_slice(&0x10000u64.to_le_bytes());
        t.extend_from_slice(&0x7f000000u64.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = 0u8.wrapping_sub(sum);
        let parsed = CcelTable::parse(&t).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((parsed.cc_type, parsed.laml, parsed.lasa), (2, 0x10000, 0x7f000000));
        assert_eq!(&parsed.oem_id, b"INTEL ");
        let mut bad = t.clone();
        bad[20] ^= 1;
        assert!(matches!(CcelTable::parse(&bad), Err(CcelError::AcpiChecksum(_))));
        let mut bad = t.clone();
        bad[0] = b'X';
        assert_eq!(CcelTable::parse(&bad), Err(CcelError::AcpiSignature("XCEL".into())));
        assert!(matches!(CcelTable::parse(&t[..40]), Err(CcelError::AcpiLength { header: 56, actual: 40 })));
    }

    #[test]
    fn device_paths_and_guids() {
        let g = [0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c];
        assert_eq!(guid(&g), "8BE4DF61-93CA-11D2-AA0D-00E098032B8C");
        let mut p = vec![4, 4, 16, 0];
        p.extend("abcdef".encode_utf16().flat_map(u16::to_le_bytes));
        p.extend([0x7f, 0xff, 4, 0]);
        assert_eq!(device_path(&p), "File(abcdef)");
        assert_eq!(device_path(&[1, 2, 3]), "(none)");
        assert_eq!(device_path(&[4, 4, 2, 0, 0, 0]), "(none)");
    }
}
