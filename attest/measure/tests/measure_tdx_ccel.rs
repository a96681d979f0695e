//! Cross-checks of `measure::tdx` against real TDX CCEL event logs
//! (`attest/testdata/tdx-eventlog/`): the RTMR extend rule, the fixed RTMR1 events our edk2
//! measures, the shape of RTMR2 (Linux EFI stub: load options, then initrd), and every
//! event whose measured data the log itself carries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use chrysalis_measure::tdx::{self, Mr};
use sha2::{Digest, Sha384};

const EV_SEPARATOR: u32 = 0x4;
const EV_EVENT_TAG: u32 = 0x6;
const EV_PLATFORM_CONFIG_FLAGS: u32 = 0xa;
const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
const EV_EFI_ACTION: u32 = 0x8000_0007;
const EV_NO_ACTION: u32 = 0x3;

struct Event {
    mr_index: u32,
    event_type: u32,
    sha384: Mr,
    data: Vec<u8>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tdx-eventlog")
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// TCG crypto-agile log: a SHA-1-format Spec ID event, then `TCG_PCR_EVENT2`s until the
/// zero-filled tail of the CCEL area.
fn parse_ccel(buf: &[u8]) -> Vec<Event> {
    let spec_len = rd32(buf, 28) as usize;
    let spec = &buf[32..32 + spec_len];
    let n_algs = rd32(spec, 24) as usize;
    let algs: Vec<(u16, usize)> = (0..n_algs)
        .map(|i| {
            let o = 28 + 4 * i;
            (u16::from_le_bytes([spec[o], spec[o + 1]]), usize::from(u16::from_le_bytes([spec[o + 2], spec[o + 3]])))
        })
        .collect();
    let mut off = 32 + spec_len;
    let mut out = Vec::new();
    while off + 8 <= buf.len() {
        let (mr_index, event_type) = (rd32(buf, off), rd32(buf, off + 4));
        if (mr_index == 0 && event_type == 0) || mr_index == u32::MAX {
            break;
        }
        let mut o = off + 8;
        let count = rd32(buf, o) as usize;
        o += 4;
        let mut sha384 = None;
        for _ in 0..count {
            let alg = u16::from_le_bytes([buf[o], buf[o + 1]]);
            let len = algs.iter().find(|(a, _)| *a == alg).expect("digest of unknown algorithm").1;
            if alg == 0xc {
                sha384 = Some(<Mr>::try_from(&buf[o + 2..o + 2 + len]).unwrap());
            }
            o += 2 + len;
        }
        let size = rd32(buf, o) as usize;
        let data = buf[o + 4..o + 4 + size].to_vec();
        off = o + 4 + size;
        out.push(Event { mr_index, event_type, sha384: sha384.expect("no sha384 digest"), data });
    }
    out
}

fn load(name: &str) -> (Vec<Event>, serde_json::Value) {
    let log = parse_ccel(&std::fs::read(dir().join(name)).unwrap());
    let exp = std::fs::read_to_string(dir().join(format!("{name}.replay.expected.json"))).unwrap();
    (log, serde_json::from_str(&exp).unwrap())
}

/// RTMR `r` (0-based) replayed with our `tdx::replay` from the log's digests.
fn rtmr(log: &[Event], r: u32) -> Mr {
    let d: Vec<Mr> = log.iter().filter(|e| e.mr_index == r + 1 && e.event_type != EV_NO_ACTION).map(|e| e.sha384).collect();
    tdx::replay(&d)
}

fn sha384(b: &[u8]) -> Mr {
    Sha384::digest(b).into()
}

const LOGS: [&str; 4] = ["dstack/ccel.bin", "trustee/CCEL_data", "trustee/CCEL_data_ovmf", "trustee/CCEL_data_grub"];

#[test]
fn replay_reproduces_the_independent_rtmr_values() {
    for name in LOGS {
        let (log, exp) = load(name);
        // The expected count includes the Spec ID header event.
        assert_eq!(log.len() as u64 + 1, exp["event_count"].as_u64().unwrap(), "{name}");
        for r in 0..4 {
            let want = exp["replayed"][format!("rtmr{r}")].as_str().unwrap();
            assert_eq!(hex::encode(rtmr(&log, r)), want, "{name} rtmr{r}");
        }
    }
}

#[test]
fn every_event_that_carries_its_data_hashes_to_its_digest() {
    // EFI actions and separators are measured as their raw event data; td-shim's
    // payload-info event carries the command-line page after a 20-byte header.
    let mut checked = 0;
    for name in LOGS {
        let (log, _) = load(name);
        for e in &log {
            let measured: Option<&[u8]> = match e.event_type {
                EV_EFI_ACTION | EV_SEPARATOR => Some(&e.data),
                EV_PLATFORM_CONFIG_FLAGS if e.data.starts_with(b"td_payload_info") => Some(&e.data[20..]),
                _ => None,
            };
            if let Some(m) = measured {
                assert_eq!(sha384(m), e.sha384, "{name}: {:?}", String::from_utf8_lossy(&e.data));
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} data-carrying events");
}

#[test]
fn td_shim_log_carries_its_command_line() {
    let (log, _) = load("trustee/CCEL_data");
    let e = log.iter().find(|e| e.data.starts_with(b"td_payload_info")).unwrap();
    let cmdline = b"root=/dev/vda1 console=hvc0 rw";
    let mut page = vec![0u8; 4096];
    page[..cmdline.len()].copy_from_slice(cmdline);
    assert_eq!(sha384(&page), e.sha384);
}

#[test]
fn our_rtmr1_event_sequence_is_what_a_2023_plus_tdvf_logged() {
    // dstack's TDVF (edk2 with the RTMR1 separator, like our 2025.02 build): RTMR1 is
    // exactly [kernel PE hash, calling, separator, EBS invocation, EBS success].
    let (log, exp) = load("dstack/ccel.bin");
    let r1: Vec<&Event> = log.iter().filter(|e| e.mr_index == 2).collect();
    assert_eq!(r1.len(), 5);
    assert_eq!(r1[0].event_type, EV_EFI_BOOT_SERVICES_APPLICATION);
    let ours = tdx::rtmr1_log_from_digest(r1[0].sha384);
    let theirs: Vec<Mr> = r1.iter().map(|e| e.sha384).collect();
    assert_eq!(ours.iter().map(|e| e.digest).collect::<Vec<_>>(), theirs);
    assert_eq!(hex::encode(tdx::replay(ours.iter().map(|e| &e.digest))), exp["replayed"]["rtmr1"].as_str().unwrap());
    // The kernel event's device path is OVMF's QEMU kernel loader file system, File(kernel).
    let utf16_kernel: Vec<u8> = "kernel".bytes().flat_map(|b| [b, 0]).collect();
    assert!(r1[0].data.windows(utf16_kernel.len()).any(|w| w == utf16_kernel));
}

#[test]
fn older_tdvf_lacks_only_the_rtmr1_separator() {
    // trustee's OVMF log predates the RTMR1 separator (it went to RTMR0 only): the other
    // four RTMR1 events are ours, in our order.
    let (log, _) = load("trustee/CCEL_data_ovmf");
    let r1: Vec<Mr> = log.iter().filter(|e| e.mr_index == 2).map(|e| e.sha384).collect();
    assert_eq!(r1.len(), 4);
    let ours: Vec<Mr> = tdx::rtmr1_log_from_digest(r1[0]).iter().map(|e| e.digest).collect();
    assert_eq!(r1, [ours[0], ours[1], ours[3], ours[4]]);
}

#[test]
fn rtmr2_is_load_options_then_initrd_as_the_efi_stub_logs_them() {
    // Both OVMF-booted logs end RTMR2 with the stub's two tagged events, in our order.
    for name in ["trustee/CCEL_data_ovmf", "trustee/CCEL_data_grub"] {
        let (log, exp) = load(name);
        let tagged: Vec<&Event> = log.iter().filter(|e| e.mr_index == 3 && e.event_type == EV_EVENT_TAG).collect();
        assert_eq!(tagged.len(), 2, "{name}");
        // TCG_PCClientTaggedEvent { u32 id; u32 size; data }: Linux's ids and descriptions.
        assert_eq!(rd32(&tagged[0].data, 0), 0x8F3B_22ED, "{name}");
        assert_eq!(&tagged[0].data[8..], b"LOADED_IMAGE::LoadOptions\0");
        assert_eq!(rd32(&tagged[1].data, 0), 0x8F3B_22EC, "{name}");
        assert_eq!(&tagged[1].data[8..], b"Linux initrd\0");
        let ours = tdx::rtmr2_log("console=hvc0", Some(b"x"));
        assert!(ours[0].description.ends_with("LOADED_IMAGE::LoadOptions"));
        assert!(ours[1].description.ends_with("Linux initrd"));
        if name.ends_with("ovmf") {
            // Direct boot: RTMR2 holds nothing else.
            let d = [tagged[0].sha384, tagged[1].sha384];
            assert_eq!(hex::encode(tdx::replay(&d)), exp["replayed"]["rtmr2"].as_str().unwrap());
        }
    }
}
