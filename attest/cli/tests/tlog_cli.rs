//! `attest log keygen|append|verify`, `attest witness cosign` and `attest audit` through the
//! binary: exit codes (0 ok, 1 refused) and what each prints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("chrysalis-attest-tlog-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn attest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attest")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = attest(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{args:?}\n{out}\n{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Exit 1; stdout and stderr together.
fn refused(args: &[&str]) -> String {
    let o = attest(args);
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(1), "{args:?}\n{all}");
    all
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

struct Keys {
    log: PathBuf,
    witnesses: Vec<PathBuf>,
}

fn pubkey(p: &Path) -> String {
    format!("{}.pub", p.display())
}

fn keys(d: &Path) -> Keys {
    let log = d.join("log.key");
    let out = ok(&["log", "keygen", "--name", "example.com/releases", "--out", &s(&log)]);
    assert!(out.starts_with("log key example.com/releases+"), "{out}");
    let vkey = std::fs::read_to_string(pubkey(&log)).unwrap();
    assert!(vkey.starts_with("example.com/releases+") && out.contains(vkey.trim()));
    assert!(std::fs::read_to_string(&log).unwrap().starts_with("PRIVATE+KEY+example.com/releases+"));
    let witnesses = ["w1", "w2", "w3"]
        .iter()
        .map(|n| {
            let p = d.join(format!("{n}.key"));
            ok(&["log", "keygen", "--witness", "--name", n, "--out", &s(&p)]);
            p
        })
        .collect();
    // Never overwrites a key.
    let o = attest(&["log", "keygen", "--name", "x", "--out", &s(&log)]);
    assert_eq!(o.status.code(), Some(2));
    Keys { log, witnesses }
}

fn key_release(d: &Path, i: u32) -> PathBuf {
    let p = d.join(format!("key-release-{i}.json"));
    let e = serde_json::json!({
        "v": 1, "kind": "key-release", "time": format!("2026-12-0{i}T10:00:00Z"),
        "measurement": format!("{i:02x}").repeat(48), "platform_id": format!("{i:02x}").repeat(64),
        "runtime_key": format!("{:02x}", i + 0x10).repeat(32), "bundle_digest": format!("{:02x}", i + 0x20).repeat(48),
        "policy_sha256": format!("{:02x}", i + 0x30).repeat(32),
    });
    std::fs::write(&p, serde_json::to_vec_pretty(&e).unwrap()).unwrap();
    p
}

fn image_release(d: &Path, i: u32, measurement: &str) -> PathBuf {
    let p = d.join(format!("image-release-{i}.json"));
    let e = serde_json::json!({
        "v": 1, "kind": "image-release", "version": format!("0.{i}.0"),
        "artifacts": {"initramfs.cpio.gz": format!("{i:02x}").repeat(32)},
        "measurements": {"snp": [{"vcpus": 1, "measurement": measurement}]},
        "sbom_sha256": format!("{:02x}", i + 1).repeat(32),
    });
    std::fs::write(&p, serde_json::to_vec(&e).unwrap()).unwrap();
    p
}

fn verify_args<'a>(log: &'a str, entry: &'a str, k: &'a [String], min: &'a str, state: &'a str) -> Vec<&'a str> {
    let mut a = vec!["log", "verify", "--log", log, "--entry", entry, "--log-key", &k[0]];
    for w in &k[1..] {
        a.extend(["--witness", w.as_str()]);
    }
    a.extend(["--min-witnesses", min, "--state", state]);
    a
}

#[test]
fn append_cosign_verify_and_refusals() {
    let d = scratch("flow");
    let k = keys(&d);
    let log = s(&d.join("log"));
    let entries: Vec<PathBuf> = (1..=3).map(|i| image_release(&d, i, &format!("{i:02x}").repeat(48))).collect();
    for (i, e) in entries.iter().enumerate() {
        let out = ok(&["log", "append", "--log", &log, "--key", &s(&k.log), "--entry", &s(e)]);
        assert!(out.starts_with(&format!("appended entry {i} to ")), "{out}");
        assert!(out.contains(&format!("checkpoint size {}", i + 1)), "{out}");
    }
    let vkeys: Vec<String> = std::iter::once(&k.log).chain(&k.witnesses).map(|p| pubkey(p)).collect();
    let state = s(&d.join("state.json"));
    let last = s(&entries[2]);

    // One cosignature, two required: refused, naming the missing witnesses.
    let out =
        ok(&["witness", "cosign", "--log", &log, "--key", &s(&k.witnesses[0]), "--log-key", &vkeys[0], "--expect-entry", &last]);
    assert!(out.starts_with("cosigned checkpoint example.com/releases size 3 root "), "{out}");
    assert!(out.contains("entry 2 equals the rebuild"), "{out}");
    let out = refused(&verify_args(&log, &s(&entries[0]), &vkeys, "2", &state));
    assert!(out.contains("FAIL only 1 of 2 required witness cosignatures (have: w1+"), "{out}");
    assert!(out.contains("; missing: w2+") && out.contains(", w3+"), "{out}");

    // A witness whose rebuild differs refuses, naming the measurement.
    let rebuild_dir = d.join("w2-rebuild");
    std::fs::create_dir_all(&rebuild_dir).unwrap();
    let other = image_release(&rebuild_dir, 3, &"ee".repeat(48));
    let out = refused(&[
        "witness",
        "cosign",
        "--log",
        &log,
        "--key",
        &s(&k.witnesses[1]),
        "--log-key",
        &vkeys[0],
        "--expect-entry",
        &s(&other),
    ]);
    assert!(out.contains("not cosigning: entry 2 differs from the rebuild: measurements.snp.0.measurement:"), "{out}");
    assert!(out.contains(&"ee".repeat(48)), "{out}");

    // The second witness agrees: every entry verifies with 2 of 3.
    ok(&["witness", "cosign", "--log", &log, "--key", &s(&k.witnesses[1]), "--log-key", &vkeys[0], "--expect-entry", &last]);
    for (i, e) in entries.iter().enumerate() {
        let out = ok(&verify_args(&log, &s(e), &vkeys, "2", &state));
        assert!(out.contains("ok   witnesses          2 of 2 required: w1+"), "{out}");
        assert!(out.contains(&format!("ok   inclusion          entry {i} of 3")), "{out}");
    }

    // A tampered entry file.
    let tampered = d.join("tampered.json");
    std::fs::write(&tampered, std::fs::read_to_string(&entries[1]).unwrap().replace("0.2.0", "0.2.9")).unwrap();
    let out = refused(&verify_args(&log, &s(&tampered), &vkeys, "2", &state));
    assert!(out.contains("FAIL entry ? not included in checkpoint of size 3: no entry of the log equals it"), "{out}");

    // A checkpoint signed by another log key.
    let other_key = d.join("other.key");
    ok(&["log", "keygen", "--name", "example.com/releases", "--out", &s(&other_key)]);
    let mut other_vkeys = vkeys.clone();
    other_vkeys[0] = pubkey(&other_key);
    let out = refused(&verify_args(&log, &s(&entries[0]), &other_vkeys, "2", &state));
    assert!(out.contains("FAIL checkpoint not signed by log example.com/releases"), "{out}");

    // A tampered tile.
    let tile = d.join("log/tile/0/000.p/3");
    let good = std::fs::read(&tile).unwrap();
    let mut bad = good.clone();
    bad[0] ^= 0x80;
    std::fs::write(&tile, &bad).unwrap();
    let out = refused(&verify_args(&log, &s(&entries[0]), &vkeys, "2", &state));
    assert!(out.contains("FAIL log tile hash mismatch"), "{out}");
    std::fs::write(&tile, &good).unwrap();

    // Grow the log, verify (state moves to 4), then roll the checkpoint back.
    let cp3 = std::fs::read(d.join("log/checkpoint")).unwrap();
    let e4 = image_release(&d, 4, &"04".repeat(48));
    ok(&["log", "append", "--log", &log, "--key", &s(&k.log), "--entry", &s(&e4)]);
    ok(&verify_args(&log, &s(&e4), &vkeys, "0", &state));
    std::fs::write(d.join("log/checkpoint"), cp3).unwrap();
    let out = refused(&verify_args(&log, &s(&entries[0]), &vkeys, "2", &state));
    assert!(out.contains("FAIL checkpoint size 3 is smaller than the 4 seen before"), "{out}");
}

#[test]
fn audit_lists_key_releases_and_fails_on_a_tampered_one() {
    let d = scratch("audit");
    let k = keys(&d);
    let log = s(&d.join("log"));
    for i in 1..=3 {
        ok(&["log", "append", "--log", &log, "--key", &s(&k.log), "--entry", &s(&key_release(&d, i))]);
    }
    let vkey = pubkey(&k.log);
    let out = ok(&["audit", "--log", &log, "--log-key", &vkey]);
    assert!(out.starts_with(&format!("audit of {log}: checkpoint example.com/releases size 3 root ")), "{out}");
    for i in 1..=3u32 {
        let line = out.lines().find(|l| l.trim_start().starts_with(&format!("{} ", i - 1))).unwrap();
        assert!(
            line.contains(&format!("2026-12-0{i}T10:00:00Z  key-release  measurement={}", format!("{i:02x}").repeat(48))),
            "{line}"
        );
        assert!(line.contains(&format!("runtime_key={}", format!("{:02x}", i + 0x10).repeat(32))), "{line}");
        assert!(line.contains(&format!("bundle={}", format!("{:02x}", i + 0x20).repeat(48))), "{line}");
        assert!(line.contains(&format!("policy={}", format!("{:02x}", i + 0x30).repeat(32))), "{line}");
    }
    assert!(out.contains("ok: all 3 entries hash into the signed checkpoint"), "{out}");

    // Rewrite entry 1's measurement in the bundle (same length): the audit catches it.
    let bundle = d.join("log/tile/entries/000.p/3");
    let text = std::fs::read(&bundle).unwrap();
    let needle = "02".repeat(48);
    let pos = text.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap();
    let mut bad = text.clone();
    bad[pos..pos + needle.len()].copy_from_slice("ff".repeat(48).as_bytes());
    std::fs::write(&bundle, bad).unwrap();
    let out = refused(&["audit", "--log", &log, "--log-key", &vkey]);
    assert!(out.contains("FAIL entry 1 not included in checkpoint of size 3: the entry bundle's entry hashes to"), "{out}");
}

const VIRTEE_MEASUREMENT: &str =
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";
const VIRTEE_REPORT_DATA: &str = "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd";

fn snp_data(p: &str) -> String {
    s(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/snp").join(p))
}

/// `require_transparency`: `attest verify` passes a genuine SNP report only while an
/// image-release entry with its measurement is in the log, cosigned as the policy asks.
#[test]
fn verify_requires_the_measurement_in_the_log() {
    let d = scratch("require");
    let k = keys(&d);
    let log = s(&d.join("log"));
    let vkey = std::fs::read_to_string(pubkey(&k.log)).unwrap().trim().to_string();
    let w1 = std::fs::read_to_string(pubkey(&k.witnesses[0])).unwrap().trim().to_string();
    let policy = d.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "require_transparency = true\n[measurements]\nsnp = [\"{VIRTEE_MEASUREMENT}\"]\n[report_data]\nbinding = \"fixed\"\n\
             expected = \"{VIRTEE_REPORT_DATA}\"\n[snp.min_tcb]\nbootloader = 3\nsnp = 8\nmicrocode = 115\n\
             [transparency]\nlog = \"log\"\nlog_key = \"{vkey}\"\nwitnesses = [\"{w1}\"]\nmin_witnesses = 1\nstate = \"state.json\"\n"
        ),
    )
    .unwrap();
    let verify = || {
        attest(&[
            "verify",
            "--policy",
            &s(&policy),
            "--snp-report",
            &snp_data("virtee-sev-milan/report_milan.bin"),
            "--certs",
            &snp_data("virtee-sev-milan"),
            "--time",
            "2026-01-01T00:00:00Z",
        ])
    };
    let row = |o: &Output| {
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        out.lines().find(|l| l.starts_with("transparency.log")).map(str::to_string).unwrap_or_else(|| out.clone())
    };
    // A log with another release only.
    let other = image_release(&d, 1, &"01".repeat(48));
    ok(&["log", "append", "--log", &log, "--key", &s(&k.log), "--entry", &s(&other)]);
    ok(&["witness", "cosign", "--log", &log, "--key", &s(&k.witnesses[0]), "--log-key", &vkey, "--expect-entry", &s(&other)]);
    let o = verify();
    assert_eq!(o.status.code(), Some(1), "{}", row(&o));
    assert!(row(&o).contains("FAIL") && row(&o).contains("no image-release entry lists measurement 7a1e5c26"), "{}", row(&o));
    // The release is logged but not yet cosigned: still refused, naming the witness.
    let this = image_release(&d, 2, VIRTEE_MEASUREMENT);
    ok(&["log", "append", "--log", &log, "--key", &s(&k.log), "--entry", &s(&this)]);
    let o = verify();
    assert_eq!(o.status.code(), Some(1));
    assert!(row(&o).contains("only 0 of 1 required witness cosignatures (have: none; missing: w1+"), "{}", row(&o));
    // Cosigned: passes.
    ok(&["witness", "cosign", "--log", &log, "--key", &s(&k.witnesses[0]), "--log-key", &vkey, "--expect-entry", &s(&this)]);
    let o = verify();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(row(&o).contains("pass") && row(&o).contains("measurement in image-release 0.2.0 (entry 1 of 2"), "{}", row(&o));
    assert!(d.join("state.json").exists(), "the state file is relative to the policy");
    // No [transparency] table: the policy does not load.
    std::fs::write(&policy, "require_transparency = true\n").unwrap();
    let o = verify();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("require_transparency = true needs a [transparency] table"));
}

/// `attest proxy` with `require_transparency`: its verifier is wrapped so that a node whose
/// verified measurement is not in the log is refused (and every re-attestation checks again).
#[test]
fn proxy_verifier_requires_the_measurement_in_the_log() {
    use chrysalis_attest::transparency::TransparencyVerifier;
    use chrysalis_proto::eventlog::EventLog;
    use chrysalis_proto::evidence::{EVIDENCE_VERSION, Evidence, PlatformEvidence};
    use chrysalis_verify::attested::{AttestError, Challenge, EvidenceVerifier, VerifiedRuntime};
    use chrysalis_verify::policy::Policy;

    /// Accepts any simulated report (REPORT_DATA first, measurement at 0x90..0xC0).
    struct AnySimulated;
    impl EvidenceVerifier for AnySimulated {
        fn verify(&self, ev: &Evidence, _: Challenge<'_>) -> Result<VerifiedRuntime, AttestError> {
            let PlatformEvidence::Simulated { report } = &ev.platform else {
                return Err(AttestError::Refused("not simulated".into()));
            };
            Ok(VerifiedRuntime { report_data: report[..64].try_into().unwrap(), steps: vec![], warnings: vec![] })
        }
    }
    let evidence = |m: u8| {
        let mut report = vec![0u8; 0x4A0];
        report[0x90..0xC0].fill(m);
        Evidence {
            version: EVIDENCE_VERSION,
            nonce: vec![1; 32],
            platform: PlatformEvidence::Simulated { report },
            event_log: EventLog::default(),
            gpus: vec![],
        }
    };
    let challenge = Challenge { nonce: &[1; 32], issued_at: None };

    let d = scratch("proxy");
    let k = keys(&d);
    let log = d.join("log");
    let entry = image_release(&d, 1, &"11".repeat(48));
    ok(&["log", "append", "--log", &s(&log), "--key", &s(&k.log), "--entry", &s(&entry)]);
    let vkey = std::fs::read_to_string(pubkey(&k.log)).unwrap().trim().to_string();
    let toml = format!(
        "require_transparency = true\n[transparency]\nlog = \"{}\"\nlog_key = \"{vkey}\"\nstate = \"{}\"\n",
        log.display(),
        d.join("state.json").display()
    );
    let v = TransparencyVerifier::wrap(Box::new(AnySimulated), Policy::from_toml(&toml).unwrap());
    let ok_rt = v.verify(&evidence(0x11), challenge).expect("logged measurement passes");
    let step = ok_rt.steps.iter().find(|s| s.name == "transparency log").expect("step");
    assert!(step.detail.starts_with("measurement in image-release 0.1.0 (entry 0 of 1"), "{}", step.detail);
    let e = v.verify(&evidence(0xbd), challenge).expect_err("unlogged measurement refused").to_string();
    assert!(e.contains(&format!("no image-release entry lists measurement {}", "bd".repeat(48))), "{e}");
    // Without require_transparency nothing changes.
    let plain = TransparencyVerifier::wrap(Box::new(AnySimulated), Policy::default());
    assert!(plain.verify(&evidence(0xbd), challenge).is_ok());
}

/// Serve the files under `root` to HTTP GETs (one request per connection) from a thread.
fn serve_dir(root: PathBuf) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) <= 2 {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let (status, body) = match std::fs::read(root.join(&path)) {
                Ok(b) => ("200 OK", b),
                Err(_) => ("404 Not Found", b"not found".to_vec()),
            };
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}/")
}

/// `attest log verify --log http://…`: the checkpoint, tiles and bundles are fetched into a
/// temporary mirror and verified as a directory would be.
#[test]
fn verify_a_log_served_over_http() {
    let d = scratch("http");
    let k = keys(&d);
    let log = d.join("log");
    let entries: Vec<PathBuf> = (1..=3).map(|i| image_release(&d, i, &format!("{i:02x}").repeat(48))).collect();
    for e in &entries {
        ok(&["log", "append", "--log", &s(&log), "--key", &s(&k.log), "--entry", &s(e)]);
    }
    let vkey = pubkey(&k.log);
    let w1 = pubkey(&k.witnesses[0]);
    ok(&[
        "witness",
        "cosign",
        "--log",
        &s(&log),
        "--key",
        &s(&k.witnesses[0]),
        "--log-key",
        &vkey,
        "--expect-entry",
        &s(&entries[2]),
    ]);
    let url = serve_dir(log.clone());
    let state = s(&d.join("state.json"));
    let verify = |entry: &Path| {
        attest(&[
            "log",
            "verify",
            "--log",
            &url,
            "--entry",
            &s(entry),
            "--log-key",
            &vkey,
            "--witness",
            &w1,
            "--min-witnesses",
            "1",
            "--state",
            &state,
        ])
    };
    for (i, e) in entries.iter().enumerate() {
        let o = verify(e);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(o.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains(&format!("ok   inclusion          entry {i} of 3")), "{out}");
    }
    let tile = log.join("tile/0/000.p/3");
    let mut bad = std::fs::read(&tile).unwrap();
    bad[33] ^= 1;
    std::fs::write(&tile, bad).unwrap();
    let o = verify(&entries[0]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL log tile hash mismatch"), "{out}");
    // A checkpoint signed by another key is refused before any tile is fetched.
    let other = d.join("other.key");
    ok(&["log", "keygen", "--name", "example.com/releases", "--out", &s(&other)]);
    let o = attest(&[
        "log",
        "verify",
        "--log",
        &url,
        "--entry",
        &s(&entries[0]),
        "--log-key",
        &pubkey(&other),
        "--min-witnesses",
        "0",
        "--state",
        &state,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FAIL checkpoint not signed by log example.com/releases"));
}
