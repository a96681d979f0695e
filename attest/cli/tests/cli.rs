//! The `attest` binary: exit codes (0 ok, 1 verification failure, 2 usage or I/O), the
//! table and JSON output, `--url` against a local HTTP server, and `fetch-vcek`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrysalis_proto::eventlog::{Event, EventKind, EventLog};
use chrysalis_verify::sim::{SimPsp, SimRoot};

const VIRTEE_MEASUREMENT: &str =
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";
const VIRTEE_REPORT_DATA: &str = "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0f3f8dae7b79fecb3d1cd82bd6a93ebfd";

fn snp_data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/snp").join(p)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("chrysalis-attest-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn attest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attest")).args(args).output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_policy(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn virtee_policy(dir: &Path, measurement: &str) -> String {
    write_policy(
        dir,
        "virtee.toml",
        &format!(
            "[measurements]\nsnp = [\"{measurement}\"]\n[report_data]\nbinding = \"fixed\"\nexpected = \"{VIRTEE_REPORT_DATA}\"\n[snp.min_tcb]\nbootloader = 3\nsnp = 8\nmicrocode = 115\n"
        ),
    )
}

fn verify_virtee(policy: &str, extra: &[&str]) -> Output {
    let report = snp_data("virtee-sev-milan/report_milan.bin").display().to_string();
    let certs = snp_data("virtee-sev-milan").display().to_string();
    let mut args =
        vec!["verify", "--policy", policy, "--snp-report", &report, "--certs", &certs, "--time", "2026-01-01T00:00:00Z"];
    args.extend_from_slice(extra);
    attest(&args)
}

#[test]
fn genuine_snp_report_verifies_exit_0_with_table() {
    let d = scratch("ok");
    let o = verify_virtee(&virtee_policy(&d, VIRTEE_MEASUREMENT), &[]);
    let out = stdout(&o);
    assert_eq!(code(&o), 0, "{out}\n{}", stderr(&o));
    assert!(out.starts_with("attestation: OK"), "{out}");
    assert!(out.contains("platform: sev-snp   verified at: 2026-01-01T00:00:00Z"), "{out}");
    let header = out.lines().find(|l| l.starts_with("CHECK")).unwrap();
    assert!(header.contains("RESULT") && header.contains("FOUND") && header.contains("EXPECTED"));
    let chain = out.lines().find(|l| l.starts_with("snp.cert_chain")).unwrap();
    assert!(chain.contains("pass") && chain.contains("CN=SEV-VCEK <- CN=SEV-Milan <- CN=ARK-Milan"), "{chain}");
    // Columns are aligned: RESULT starts at the same position on every row.
    let col = header.find("RESULT").unwrap();
    for l in out.lines().skip_while(|l| !l.starts_with("CHECK")).take_while(|l| !l.is_empty()) {
        assert!(l[col..].starts_with("pass") || l[col..].starts_with("FAIL") || l[col..].starts_with("RESULT"), "{l}");
    }
    assert!(out.contains(&format!("measurement   {VIRTEE_MEASUREMENT}")), "{out}");
    // Also as hex text.
    let certs = snp_data("virtee-sev-milan").display().to_string();
    let hexfile = snp_data("virtee-sev-milan/report_milan.hex").display().to_string();
    let policy = virtee_policy(&d, VIRTEE_MEASUREMENT);
    let o =
        attest(&["verify", "--policy", &policy, "--snp-report", &hexfile, "--certs", &certs, "--time", "2026-01-01T00:00:00Z"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
}

#[test]
fn wrong_measurement_exits_1_and_names_the_check() {
    let d = scratch("wrong");
    let o = verify_virtee(&virtee_policy(&d, &"ab".repeat(48)), &[]);
    assert_eq!(code(&o), 1);
    let out = stdout(&o);
    assert!(out.starts_with("attestation: FAILED (1 of"), "{out}");
    let line = out.lines().find(|l| l.starts_with("snp.measurement")).unwrap();
    assert!(line.contains("FAIL") && line.contains("7a1e5c266c01…cd81841f") && line.contains("abababababab…abababab"), "{line}");
}

#[test]
fn json_output() {
    let d = scratch("json");
    let o = verify_virtee(&virtee_policy(&d, VIRTEE_MEASUREMENT), &["--json"]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["platform"], "sev-snp");
    assert_eq!(v["claims"]["kind"], "snp");
    assert_eq!(v["claims"]["fields"]["product"], "Milan");
    assert!(v["checks"].as_array().unwrap().iter().all(|c| c["passed"] == true));
    let o = verify_virtee(&virtee_policy(&d, &"00".repeat(48)), &["--json"]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
}

#[test]
fn expired_or_not_yet_valid_certs_exit_1() {
    let d = scratch("time");
    let p = write_policy(
        &d,
        "none.toml",
        "[report_data]\nbinding = \"none\"\n[measurements]\nsnp = [\"7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599847ff250dbffcd07e1ba639771d6f05d\"]\n",
    );
    let report = snp_data("dstack-milan-v3/report.bin").display().to_string();
    let certs = snp_data("dstack-milan-v3").display().to_string();
    let o = attest(&["verify", "--policy", &p, "--snp-report", &report, "--certs", &certs, "--time", "2026-01-01T00:00:00Z"]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("is not valid at 2026-01-01T00:00:00Z: valid from 2026-06-17T01:05:04Z"), "{}", stdout(&o));
    let o = attest(&["verify", "--policy", &p, "--snp-report", &report, "--certs", &certs, "--time", "2026-07-01T00:00:00Z"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
}

#[test]
fn usage_and_io_errors_exit_2() {
    let d = scratch("usage");
    let policy = virtee_policy(&d, VIRTEE_MEASUREMENT);
    // No input.
    assert_eq!(code(&attest(&["verify", "--policy", &policy])), 2);
    // Two inputs.
    let r = snp_data("virtee-sev-milan/report_milan.bin").display().to_string();
    assert_eq!(code(&attest(&["verify", "--policy", &policy, "--snp-report", &r, "--evidence", &r])), 2);
    // --tdx-quote needs --collateral.
    assert_eq!(code(&attest(&["verify", "--policy", &policy, "--tdx-quote", &r])), 2);
    // Missing files.
    let o = attest(&["verify", "--policy", "/nonexistent/policy.toml", "--snp-report", &r]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("/nonexistent/policy.toml"), "{}", stderr(&o));
    assert_eq!(code(&attest(&["verify", "--policy", &policy, "--snp-report", "/nonexistent.bin"])), 2);
    // Bad values.
    assert_eq!(code(&verify_virtee(&policy, &["--time", "yesterday"])), 2);
    assert_eq!(code(&attest(&["verify", "--policy", &policy, "--snp-report", &r, "--nonce", "xyz"])), 2);
    let bad = write_policy(&d, "bad.toml", "allow_debg = true\n");
    let o = attest(&["verify", "--policy", &bad, "--snp-report", &r]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("allow_debg"), "{}", stderr(&o));
    assert_eq!(code(&attest(&["frobnicate"])), 2);
    assert_eq!(code(&attest(&["--help"])), 0);
}

fn runtime_log() -> EventLog {
    let mut l = EventLog::default();
    l.extend(Event::digest_of(EventKind::RuntimeBinary, b"runtime"));
    l.extend(Event::with_data(EventKind::PublicKey, vec![5; 32]));
    l
}

fn sim_policy(dir: &Path, psp: &SimPsp, allow: bool, extra: &str) -> String {
    write_policy(
        dir,
        &format!("sim-{allow}.toml"),
        &format!(
            "[simulation]\nallow_simulated = {allow}\nroot_public_key = \"{}\"\nmeasurements = [\"{}\"]\n{extra}",
            psp.root.public_key().to_hex(),
            hex::encode(psp.measurement)
        ),
    )
}

#[test]
fn simulated_evidence_file() {
    let d = scratch("sim");
    let psp = SimPsp::new(SimRoot::generate(), [3; 48]);
    let nonce = [7u8; 32];
    let ev = d.join("evidence.bin");
    std::fs::write(&ev, psp.evidence(runtime_log(), &nonce).to_bytes()).unwrap();
    let ev = ev.display().to_string();
    let nonce_hex = hex::encode(nonce);

    let refused = attest(&["verify", "--policy", &sim_policy(&d, &psp, false, ""), "--evidence", &ev, "--nonce", &nonce_hex]);
    assert_eq!(code(&refused), 1);
    let out = stdout(&refused);
    assert!(out.contains("!!! WARNING: SIMULATED TEE"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("simulation") && l.contains("FAIL")), "{out}");
    assert!(stderr(&refused).contains("SIMULATED TEE"), "log::warn on stderr: {}", stderr(&refused));

    let allowed = attest(&["verify", "--policy", &sim_policy(&d, &psp, true, ""), "--evidence", &ev, "--nonce", &nonce_hex]);
    assert_eq!(code(&allowed), 0, "{}", stdout(&allowed));
    assert!(stdout(&allowed).contains("!!! WARNING: SIMULATED TEE"));

    // Another nonce: the binding fails.
    let stale = attest(&["verify", "--policy", &sim_policy(&d, &psp, true, ""), "--evidence", &ev, "--nonce", "00"]);
    assert_eq!(code(&stale), 1);
    // No nonce: the echoed one is used, with a warning.
    let echoed = attest(&["verify", "--policy", &sim_policy(&d, &psp, true, ""), "--evidence", &ev]);
    assert_eq!(code(&echoed), 0);
    assert!(stdout(&echoed).contains("freshness is NOT established"));
    // A corrupt bundle is a verification failure, not a crash.
    let bad = d.join("bad.bin");
    std::fs::write(&bad, b"\x01\x02garbage").unwrap();
    let o = attest(&["verify", "--policy", &sim_policy(&d, &psp, true, ""), "--evidence", &bad.display().to_string()]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).lines().any(|l| l.starts_with("evidence.decode") && l.contains("FAIL")));
}

/// Serve `count` requests; each gets evidence bound to the nonce in its query string.
fn serve_sim(psp: SimPsp, count: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let h = std::thread::spawn(move || {
        let mut paths = vec![];
        for _ in 0..count {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let nonce = path.split("nonce=").nth(1).and_then(|n| hex::decode(n).ok()).unwrap_or_default();
            let body = psp.evidence(runtime_log(), &nonce).to_bytes();
            write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
            s.write_all(&body).unwrap();
            paths.push(path);
        }
        paths
    });
    (url, h)
}

#[test]
fn url_mode_sends_a_fresh_nonce() {
    let d = scratch("url");
    let psp = SimPsp::new(SimRoot::generate(), [9; 48]);
    let policy = sim_policy(&d, &psp, true, "[freshness]\nmax_evidence_age_secs = 60");
    let (url, server) = serve_sim(psp, 2);
    let a = attest(&["verify", "--policy", &policy, "--url", &url, "--json"]);
    let b = attest(&["verify", "--policy", &policy, "--url", &format!("{url}/")]);
    assert_eq!(code(&a), 0, "{}{}", stdout(&a), stderr(&a));
    assert_eq!(code(&b), 0, "{}{}", stdout(&b), stderr(&b));
    let v: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert!(v["checks"].as_array().unwrap().iter().any(|c| c["name"] == "freshness" && c["passed"] == true));
    let paths = server.join().unwrap();
    assert_eq!(paths.len(), 2);
    for p in &paths {
        assert!(p.starts_with("/v1/attestation?nonce="), "{p}");
        assert_eq!(p.len(), "/v1/attestation?nonce=".len() + 64, "{p}");
    }
    assert_ne!(paths[0], paths[1], "nonces must differ");
    // Nothing listening: an I/O error.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    assert_eq!(code(&attest(&["verify", "--policy", &policy, "--url", &dead])), 2);
    // --url and --nonce do not combine.
    assert_eq!(code(&attest(&["verify", "--policy", &policy, "--url", &dead, "--nonce", "00"])), 2);
}

#[test]
fn fetch_vcek_print_url_and_local_mirror() {
    let d = scratch("fetch");
    let report = snp_data("dstack-milan-v3/report.bin").display().to_string();
    let o = attest(&["fetch-vcek", "--snp-report", &report, "--print-url"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).starts_with("https://kdsintf.amd.com/vcek/v1/Milan/38d174589d2d"), "{}", stdout(&o));
    // No TLS in this build: a clear I/O error with the URL to fetch by hand.
    let out = d.join("cache").display().to_string();
    let o = attest(&["fetch-vcek", "--snp-report", &report, "--out", &out]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("no TLS") && stderr(&o).contains("kdsintf.amd.com"), "{}", stderr(&o));
    // v2 reports need --product.
    let v2 = snp_data("trustee-milan/test-report.bin").display().to_string();
    assert_eq!(code(&attest(&["fetch-vcek", "--snp-report", &v2, "--print-url"])), 2);

    // A local http mirror serving the trustee VCEK: fetched, verified, cached, then usable.
    let vcek = std::fs::read(snp_data("trustee-milan/test-vcek.der")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mirror = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
        write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", vcek.len()).unwrap();
        s.write_all(&vcek).unwrap();
        line
    });
    let o = attest(&["fetch-vcek", "--snp-report", &v2, "--product", "milan", "--out", &out, "--kds-url", &mirror]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let request = server.join().unwrap();
    assert!(request.starts_with("GET /vcek/v1/Milan/c38427a30d4c"), "{request}");
    assert!(request.contains("?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"), "{request}");
    let cached: Vec<_> = std::fs::read_dir(&out).unwrap().filter_map(|e| e.ok()).collect();
    assert_eq!(cached.len(), 1);
    let p = write_policy(
        &d,
        "trustee.toml",
        "[report_data]\nbinding = \"none\"\n[measurements]\nsnp = [\"a1f3930413247bb38cfc171579ea3c12d5fe4901f0c792f63fd75d98f1ef827c23500644e0e692e6be917f9050d3d38c\"]\n",
    );
    let o = attest(&["verify", "--policy", &p, "--snp-report", &v2, "--certs", &out, "--time", "2026-01-01T00:00:00Z"]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
}

/// A measurements.json shaped like `cargo xtask measure` writes it (synthetic values).
fn measurements_json(dir: &Path) -> String {
    let h = |b: u8| hex::encode([b; 48]);
    let m = serde_json::json!({
        "image": { "vmlinuz_sha256": hex::encode([1u8; 32]), "initramfs_sha256": hex::encode([2u8; 32]), "cmdline": "console=hvc0" },
        "snp": [{ "vcpus": 1, "vcpu_type": "EPYC-v4", "measurement": h(3) }],
        "tdx": { "mrtd": h(4), "rtmr1": h(5), "rtmr2": h(6) },
        "runtime": { "binary_sha384": h(7) },
    });
    let p = dir.join("measurements.json");
    std::fs::write(&p, m.to_string()).unwrap();
    p.display().to_string()
}

/// A generated policy names the model (or says loudly that it does not) and pins RTMR1 and
/// RTMR2 with MRTD; without either model option it is not generated.
#[test]
fn generated_policy_pins_the_model_and_the_tdx_rtmrs() {
    let dir = scratch("policy-from");
    let m = measurements_json(&dir);
    let none = attest(&["policy", "--from", &m]);
    assert_eq!(code(&none), 2, "{}", stderr(&none));
    assert!(stderr(&none).contains("--bundle-header-sha384"), "{}", stderr(&none));

    let header = hex::encode([9u8; 48]);
    let pinned = attest(&["policy", "--from", &m, "--bundle-header-sha384", &header]);
    assert_eq!(code(&pinned), 0, "{}", stderr(&pinned));
    let p = chrysalis_verify::Policy::from_toml(&stdout(&pinned)).unwrap();
    assert_eq!(p.runtime.bundle_header_sha384.as_deref().map(|l| hex::encode(&l[0].0)), Some(header));
    assert_eq!(p.measurements.tdx_rtmr1.as_deref().map(<[_]>::len), Some(1));
    assert_eq!(p.measurements.tdx_rtmr2.as_deref().map(<[_]>::len), Some(1));

    // The sourced minimum-TCB table, per product; Turin (no sourced minimum) is not listed.
    let table = p.snp.product_min_tcb.as_ref().unwrap();
    for row in chrysalis_verify::snp::minimums::MIN_TCB_TABLE {
        let got = table.for_product(row.product).unwrap();
        assert_eq!((got.bootloader, got.tee, got.snp, got.microcode), (row.bootloader, row.tee, row.snp, row.microcode));
    }
    assert!(table.turin.is_none());
    assert!(!p.snp.allow_alias_check_incomplete && p.snp.max_vmpl == 0);
    assert!(stdout(&pinned).contains("linux-firmware amd-ucode/README"), "{}", stdout(&pinned));

    let any = attest(&["policy", "--from", &m, "--any-model"]);
    assert_eq!(code(&any), 0, "{}", stderr(&any));
    assert!(stdout(&any).contains("NO MODEL PINNED"));
    assert!(chrysalis_verify::Policy::from_toml(&stdout(&any)).unwrap().runtime.bundle_header_sha384.is_none());
}

/// A GPU image's measurements (`cargo xtask measure --gpu`) give a policy that requires GPU
/// evidence from the image's driver; a CPU image's do not.
#[test]
fn a_gpu_image_policy_requires_gpu_evidence_from_its_driver() {
    let dir = scratch("policy-from-gpu");
    let m = measurements_json(&dir);
    let cpu = attest(&["policy", "--from", &m, "--any-model"]);
    assert!(!chrysalis_verify::Policy::from_toml(&stdout(&cpu)).unwrap().gpu.require_gpu);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    v["gpu"] = serde_json::json!({"runtime_features": "cuda", "driver": "550.163.01", "require_gpu": true});
    std::fs::write(&m, v.to_string()).unwrap();
    let gpu = attest(&["policy", "--from", &m, "--any-model"]);
    assert_eq!(code(&gpu), 0, "{}", stderr(&gpu));
    let p = chrysalis_verify::Policy::from_toml(&stdout(&gpu)).unwrap();
    assert!(p.gpu.require_gpu);
    assert_eq!(p.gpu.allowed_driver_versions, Some(vec!["550.163.01".to_owned()]));
    assert!(p.gpu.rim_bundle.is_none() && !p.gpu.allow_rim_not_available, "without RIMs every GPU is refused");
}

/// The proxy refuses a policy that pins no model (a provider could serve its own model
/// through the genuine runtime) unless told --any-model; it says what to add.
#[test]
fn proxy_refuses_a_policy_that_pins_no_model() {
    let dir = scratch("proxy-model");
    let policy = virtee_policy(&dir, &"00".repeat(48));
    let o = attest(&["proxy", "--url", "http://127.0.0.1:9", "--listen", "127.0.0.1:0", "--policy", &policy]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("pins no model") && stderr(&o).contains("bundle_header_sha384"), "{}", stderr(&o));
}

/// The proxy needs one runtime (`--url`) or a list (`--upstreams FILE`), not both; a list
/// that does not parse is refused naming the file and line.
#[test]
fn proxy_takes_a_url_or_an_upstreams_file() {
    let dir = scratch("proxy-upstreams");
    let policy = virtee_policy(&dir, &"00".repeat(48));
    let base = ["proxy", "--listen", "127.0.0.1:0", "--any-model", "--policy", &policy];
    let o = attest(&base);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--url") && stderr(&o).contains("--upstreams"), "{}", stderr(&o));
    let list = dir.join("upstreams");
    std::fs::write(&list, "# fleet\nhttp://127.0.0.1:9\nhttps://127.0.0.1:10\n").unwrap();
    let list = list.display().to_string();
    let o = attest(&[&base[..], &["--url", "http://127.0.0.1:9", "--upstreams", &list]].concat());
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot be used with"), "{}", stderr(&o));
    let o = attest(&[&base[..], &["--upstreams", &list]].concat());
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("upstreams line 3") && stderr(&o).contains("use http://"), "{}", stderr(&o));
}

/// `attest verify … | head -1`: the reader closes the pipe before the table is written; the
/// tool ends as a SIGPIPE would (status 141), without a panic on stderr.
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let dir = scratch("pipe");
    let policy = virtee_policy(&dir, VIRTEE_MEASUREMENT);
    let report = snp_data("virtee-sev-milan/report_milan.bin").display().to_string();
    let certs = snp_data("virtee-sev-milan").display().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_attest"))
        .args(["verify", "--policy", &policy, "--snp-report", &report, "--certs", &certs, "--time", "2026-01-01T00:00:00Z"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything was written
    let o = child.wait_with_output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_eq!(code(&o), 141, "{}", stderr(&o));
}
