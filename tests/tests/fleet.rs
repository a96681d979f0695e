//! The attested router in front of a fleet, against real images in QEMU (simulated TEE, the
//! tiny seeded Llama): three nodes booted from the published image with the model's key
//! released to each, and a fourth booted with another command line (so another launch
//! measurement), all listed in one upstreams file behind `attest proxy --upstreams`.
//!
//! (a) the node with the other measurement is kept out, and `/chrysalis/status` names its
//!     measurement;
//! (b) distinct prompts spread over the three nodes, and a repeated prompt stays on its node;
//! (c) a node killed while clients keep sending: every request is still answered (none had
//!     streamed anything), and the dead node gets no more traffic;
//! (d) a node restarted on the same address has new keys: the router notices (the runtime
//!     answers "key unknown" to the old pin), answers from another node meanwhile, and
//!     routes to the node again only after attesting its new key.
// Helper functions of this test file fail the test on error, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrysalis_attest::proxy::{self, HEADER_NODE, ProxyArgs};
use chrysalis_e2e::fleet::{BOOT, Fleet, write_upstreams};
use chrysalis_e2e::image::{out_dir, scratch};
use chrysalis_e2e::qemu::tail;
use chrysalis_e2e::{owner, sim};
use chrysalis_verify::{Policy, PolicyVerifier};
use serde_json::{Value, json};

fn start_proxy(policy: &Path, upstreams: &Path) -> proxy::RunningProxy {
    let args = ProxyArgs { upstreams: Some(upstreams.to_owned()), ..ProxyArgs::embedded(policy) };
    proxy::start(&args, Box::new(PolicyVerifier::new(Policy::load(policy).unwrap()))).unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(600))).build().into()
}

/// One chat completion through the router: (status, the node that answered, body).
fn chat(base: &str, prompt: &str) -> (u16, String, Value) {
    let body = json!({"model": "tiny-llama", "max_tokens": 4, "temperature": 0,
                      "messages": [{"role": "user", "content": prompt}]});
    let mut r = agent()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    let node = r.headers().get(HEADER_NODE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, node, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn status(base: &str) -> Value {
    let text = agent().get(format!("{base}/chrysalis/status")).call().unwrap().body_mut().read_to_string().unwrap();
    serde_json::from_str(&text).unwrap()
}

fn node_status<'a>(s: &'a Value, url: &str) -> &'a Value {
    s["nodes"].as_array().unwrap().iter().find(|n| n["url"] == url).unwrap_or_else(|| panic!("{url} not in {s:#}"))
}

/// Poll the router's status until `ok` holds.
fn wait_status(base: &str, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(base);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; status:\n{s:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn router_spreads_load_survives_dead_nodes_excludes_other_images_and_re_attests_new_keys() {
    // The router's decisions (node taken out and why, re-attested, request retried
    // elsewhere) in the captured output, so that a failure shows them.
    let _ = env_logger::Builder::new().is_test(true).parse_filters("info").try_init();
    let out = out_dir().unwrap();
    let work = scratch("fleet").unwrap();
    let fleet = Fleet::new(&out, &work, &owner::tiny_llama().unwrap(), "tiny-llama", "").unwrap();
    let mut nodes = fleet.boot(3).unwrap();
    // Same kernel and initramfs, one more (valid) command-line setting: another measurement.
    let other_more = "chrysalis.max_seqs=4";
    let other_measurement = hex::encode(sim::measurement(&fleet.config("other", other_more).unwrap()).unwrap());
    let mut other = fleet.start("other", other_more, None).unwrap();
    other.vm.wait_for("READY", BOOT).unwrap();

    let upstreams = work.join("upstreams.txt");
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).chain([other.url.clone()]).collect();
    write_upstreams(&upstreams, &urls.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let p = start_proxy(&fleet.policy, &upstreams);
    let base = format!("http://{}", p.addr);

    // (a) Three in rotation; the fourth out, with its measurement named.
    let s = wait_status(&base, "three nodes attested", Duration::from_secs(120), |s| {
        s["in_rotation"] == 3 && node_status(s, &other.url)["state"] == "out"
    });
    let o = node_status(&s, &other.url);
    let why = format!("{} {}", o["last_error"], o["launch_measurement"]);
    assert!(why.contains(&other_measurement), "the other image's measurement is not named: {o:#}");

    // (b) Distinct prompts spread; the same prompt stays where it went. A node that fails one
    // request is out until it is attested again (a second or two), which under KVM can be all
    // of a round: a round that misses a node is reported (with the router's reason) and
    // followed by another, up to three.
    let mut served: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unserved: Vec<String> = Vec::new();
    for round in 0..3 {
        for i in 24 * round..24 * (round + 1) {
            let prompt = format!("Question {i}: what is a confidential VM?");
            let (code, node, body) = chat(&base, &prompt);
            assert_eq!(code, 200, "{body}");
            served.entry(node).or_default().push(prompt);
        }
        unserved = nodes
            .iter_mut()
            .filter(|n| !served.contains_key(&n.url))
            .map(|n| {
                // Why a node got nothing: the router's view of it, and whether its VM still runs.
                let router = node_status(&status(&base), &n.url).clone();
                let exited = n.vm.try_exit().ok().flatten();
                format!("{}: router says {router:#}; QEMU exited: {exited:?}; console tail:\n{}", n.url, tail(&n.vm.serial(), 15))
            })
            .collect();
        if unserved.is_empty() {
            break;
        }
        println!("round {round} of 24 distinct prompts reached only {served:?}:\n{}", unserved.join("\n"));
    }
    assert!(unserved.is_empty(), "3 rounds of 24 distinct prompts reached only {served:?}:\n{}", unserved.join("\n"));
    println!("spread of the distinct prompts: {:?}", served.iter().map(|(n, p)| (n, p.len())).collect::<Vec<_>>());
    let (_, first, _) = chat(&base, "You are a helpful assistant. Hello!");
    for _ in 0..3 {
        assert_eq!(chat(&base, "You are a helpful assistant. Hello!").1, first, "a repeated prompt moved");
    }

    // (c) Node 0 dies while three clients keep sending: every request is answered.
    let dead = nodes.remove(0);
    let dead_url = dead.url.clone();
    let clients: Vec<_> = (0..3)
        .map(|c| {
            let base = base.clone();
            std::thread::spawn(move || (0..6).map(|i| chat(&base, &format!("client {c} request {i}"))).collect::<Vec<_>>())
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    drop(dead);
    for c in clients {
        for (code, node, body) in c.join().unwrap() {
            assert_eq!(code, 200, "a request was lost when a node died: {body}");
            assert!(!node.is_empty());
        }
    }
    // The router learns of a death from the traffic that meets it: the prompts that went to
    // the dead node are answered by others, and the node is out from then on.
    for prompt in &served[&dead_url] {
        let (code, node, body) = chat(&base, prompt);
        assert_eq!(code, 200, "{body}");
        assert_ne!(node, dead_url, "a dead node answered");
    }
    let s = status(&base);
    assert_ne!(node_status(&s, &dead_url)["state"], "in_rotation", "{s:#}");
    for i in 0..9 {
        let (code, node, body) = chat(&base, &format!("after the crash {i}"));
        assert_eq!(code, 200, "{body}");
        assert_ne!(node, dead_url, "a dead node got traffic");
    }

    // (d) Node 1 restarts on its address with new keys while the router still pins the old.
    let port: u16 = nodes[0].url.rsplit(':').next().unwrap().parse().unwrap();
    let restarted_url = nodes[0].url.clone();
    let old_key = node_status(&status(&base), &restarted_url)["public_key"].as_str().unwrap().to_owned();
    drop(nodes.remove(0));
    let mut again = fleet.start("node1-again", "", Some(port)).unwrap();
    fleet.ready_and_released(&mut again).unwrap();
    // Requests keep being answered while the router finds out (from the traffic: the node
    // answers "key unknown" to the old pin, which the router acts on at most once every
    // 10 s); whichever node answers.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut sent = 0;
    let s = loop {
        let (code, _, body) = chat(&base, &format!("while node 1 restarts {sent}"));
        assert_eq!(code, 200, "{body}");
        sent += 1;
        let s = status(&base);
        let n = node_status(&s, &restarted_url);
        if sent >= 12 && n["state"] == "in_rotation" && n["public_key"].as_str().is_some_and(|k| k != old_key) {
            break s;
        }
        assert!(Instant::now() < deadline, "the restarted node was not re-attested with its new key; status:\n{s:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let new_key = node_status(&s, &restarted_url)["public_key"].clone();
    let mut reached = false;
    for i in 0..40 {
        let (code, node, body) = chat(&base, &format!("after the restart {i}"));
        assert_eq!(code, 200, "{body}");
        reached |= node == restarted_url;
    }
    assert!(reached, "the re-attested node (key {new_key}) got no traffic");
    let serial = format!("{}{}", again.vm.serial(), nodes.iter().map(|n| n.vm.serial()).collect::<String>());
    assert!(!serial.contains("panicked"), "{serial}");
}
