//! The inference API against the official `openai` Python client and under load, with the
//! dev server (`chrysalis-infer-dev`, feature `dev-server`) on 127.0.0.1:0 serving real
//! weights. Needs CHRYSALIS_PYTHON / CHRYSALIS_MODELS and `--features dev-server`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        let exe = option_env!("CARGO_BIN_EXE_chrysalis-infer-dev").unwrap_or_else(|| {
            panic!("chrysalis-infer-dev is not built: run `cargo test -p chrysalis-runtime --features dev-server`")
        });
        let mut child = Command::new(exe)
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {exe}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take();
        let sink = log.clone();
        std::thread::spawn(move || {
            if let Some(s) = stderr {
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    if let Ok(mut l) = sink.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            }
        });
        let mut first = String::new();
        if let Some(out) = child.stdout.as_mut() {
            let _ = BufReader::new(out).read_line(&mut first);
        }
        let addr = first.trim().strip_prefix("listening on ").map(str::to_owned).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("server did not start: {first:?}\n{}", log.lock().map(|l| l.clone()).unwrap_or_default())
        });
        Self { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn peak_rss_kib(&self) -> u64 {
        chrysalis_runtime::sys::peak_rss_of(self.child.id()).unwrap_or(0) / 1024
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openai_client(mode: &str, server: &Server, model: &str) -> String {
    let (python, _) = common::env();
    let out = Command::new(python)
        .arg(common::script("openai_client.py"))
        .args([mode, &format!("http://{}/v1", server.addr), model])
        .output()
        .unwrap_or_else(|e| panic!("running openai_client.py: {e}: {}", common::SETUP));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "openai client checks failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    stdout
}

/// Real client, real weights (SmolLM2-135M-Instruct, the image's default GGUF policy).
#[test]
fn openai_client_against_smollm2() {
    let model = common::smollm2_path();
    let server =
        Server::start(&["--model", model.to_str().unwrap_or_default(), "--id", "smollm2", "--queue", "2", "--max-seqs", "2"]);
    openai_client("api", &server, "smollm2");
    // The client hung up on a long stream: generation stopped early.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains(" cancelled)") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = server.log();
    assert!(log.contains(" cancelled)"), "no cancelled generation in the server log:\n{log}");
    assert!(!log.contains("MARKER-PROMPT"), "a prompt reached the server log");
}

/// Before unsealing every inference endpoint answers 503 with a clear message.
/// Eight concurrent streaming chat requests through the real `openai` client are batched
/// together and each gets exactly the answer it gets alone.
#[test]
fn openai_client_eight_concurrent_streams() {
    let model = common::smollm2_path();
    let server = Server::start(&["--model", model.to_str().unwrap_or_default(), "--id", "smollm2"]);
    openai_client("batch", &server, "smollm2");
}

#[test]
fn openai_client_before_unsealing() {
    common::ensure_models();
    let server = Server::start(&["--no-model", "--id", "smollm2"]);
    openai_client("unsealed", &server, "smollm2");
}

/// Sends one request over a fresh connection; returns the status code (0 on I/O failure).
fn post(addr: &str, path: &str, body: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(addr) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let head = String::from_utf8_lossy(&resp[..resp.len().min(32)]).into_owned();
    head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Bounded load on loopback: 10× the queue size in concurrent clients, several waves. The
/// server must answer every request with 200 or 429, stay up, and keep its peak RSS under
/// a fixed bound.
#[test]
fn load_at_ten_times_queue_stays_up_with_bounded_memory() {
    const QUEUE: usize = 4;
    const CLIENTS: usize = 10 * QUEUE;
    const WAVES: usize = 5;
    /// Tiny model (~1 MB of weights): everything above a few tens of MiB would be per-request
    /// state leaking or unbounded buffering.
    const RSS_BOUND_KIB: u64 = 256 * 1024;
    let dir = common::ensure_models().join("tiny-llama");
    let mut server = Server::start(&["--model", dir.to_str().unwrap_or_default(), "--id", "tiny", "--queue", &QUEUE.to_string()]);
    let idle = server.peak_rss_kib();
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for wave in 0..WAVES {
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let handles: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (addr, barrier) = (server.addr.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let stream = i % 2 == 0;
                    let body = format!(
                        r#"{{"model":"tiny","prompt":"The enclave {wave} {i}","max_tokens":200,"temperature":0.7,"seed":{i},"stream":{stream},"ignore_eos":true}}"#
                    );
                    barrier.wait();
                    post(&addr, "/v1/completions", &body)
                })
            })
            .collect();
        for h in handles {
            *counts.entry(h.join().unwrap_or(0)).or_default() += 1;
        }
        assert!(server.alive(), "server exited during wave {wave}:\n{}", server.log());
    }
    let peak = server.peak_rss_kib();
    println!("load: {counts:?}, idle peak RSS {idle} KiB, peak RSS after load {peak} KiB (bound {RSS_BOUND_KIB} KiB)");
    assert_eq!(counts.keys().copied().filter(|c| *c != 200 && *c != 429).count(), 0, "unexpected statuses {counts:?}");
    assert!(counts.get(&429).copied().unwrap_or(0) > 0, "no request was turned away: {counts:?}");
    assert!(counts.get(&200).copied().unwrap_or(0) >= WAVES, "too few requests served: {counts:?}");
    assert_eq!(post(&server.addr, "/v1/completions", r#"{"model":"tiny","prompt":"ok","max_tokens":2}"#), 200);
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB exceeds {RSS_BOUND_KIB} KiB");
}

/// A connection with a small receive buffer, so that a client that does not read makes the
/// server's writes block after a few KiB (the whole stream is ~28 KiB). The buffer is set
/// before connecting: the receive window is negotiated in the handshake, and on some kernels
/// a buffer shrunk afterwards still lets the whole stream in.
fn connect_small(addr: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let addr: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap_or_else(|e| panic!("socket: {e}"));
    s.set_recv_buffer_size(4096).unwrap_or_else(|e| panic!("SO_RCVBUF: {e}"));
    s.connect(&addr.into()).unwrap_or_else(|e| panic!("connect: {e}"));
    s.into()
}

/// A client that stops reading a stream, one that trickles its body and one that never
/// sends its headers are each cut off after the deadline, while other requests are served.
#[test]
fn stalled_clients_are_cut_off_and_others_keep_going() {
    let dir = common::ensure_models().join("tiny-llama");
    let server = Server::start(&[
        "--model",
        dir.to_str().unwrap_or_default(),
        "--id",
        "tiny",
        "--client-timeout-s",
        "2",
        "--send-buffer",
        "4096",
    ]);
    // 1. Stops reading: a long stream it never reads.
    let mut stalled = connect_small(&server.addr);
    let body = r#"{"model":"tiny","prompt":"The enclave","max_tokens":230,"temperature":0,"stream":true,"ignore_eos":true}"#;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stalled.write_all(req.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    // 2. Never sends headers.
    let mut silent = TcpStream::connect(&server.addr).unwrap_or_else(|e| panic!("{e}"));
    // 3. Trickles its body: 1 byte every 300 ms of a 100-byte body.
    let addr = server.addr.clone();
    let trickle = std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("{e}"));
        let _ = s.write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        );
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(300));
            if s.write_all(b" ").is_err() {
                break;
            }
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        String::from_utf8_lossy(&resp).into_owned()
    });
    // Meanwhile everyone else is served.
    let start = Instant::now();
    for i in 0..3 {
        let body = format!(r#"{{"model":"tiny","prompt":"ok {i}","max_tokens":16,"stream":true}}"#);
        assert_eq!(post(&server.addr, "/v1/completions", &body), 200, "request {i} during the stall");
    }
    println!("3 requests served in {} ms during the stall", start.elapsed().as_millis());
    let trickled = trickle.join().unwrap_or_default();
    assert!(trickled.starts_with("HTTP/1.1 408"), "trickled body: {trickled}");
    assert!(trickled.contains("did not arrive within 2 s"), "{trickled}");
    // The silent client is disconnected by the header deadline.
    let _ = silent.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let t = Instant::now();
    let _ = silent.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(9), "the silent connection was not closed");
    // The stalled reader's connection is closed and its generation cancelled.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.log().contains("read nothing for 2 s") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = server.log();
    assert!(log.contains("read nothing for 2 s"), "no write deadline in the log:\n{log}");
    let _ = stalled.set_read_timeout(Some(Duration::from_secs(10)));
    let mut got = Vec::new();
    let _ = stalled.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("[DONE]"), "the stalled stream was not cut");
}
