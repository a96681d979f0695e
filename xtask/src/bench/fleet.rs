//! `cargo xtask bench fleet`: what the attested router gives and costs. Three VMs
//! (simulated TEE, the tiny seeded Llama sealed on each one's disk, the key released to each,
//! `chrysalis.plaintext=1` so that a node can also be asked directly) behind
//! `attest proxy --upstreams`:
//!
//! - aggregate throughput (completion tokens/s over all clients) with 1, 2 and 3 nodes in the
//!   upstreams file, the same clients and requests each time (distinct prompts, so the router
//!   spreads them); the ratio is against 1 node;
//! - the router's added latency: one-token requests one after another, taking turns between
//!   node 0's plain API, a router of node 0 alone and the router of all three; medians and
//!   the differences.
//!
//! Under TCG the three guests share this machine's cores, so aggregate throughput measures
//! the host's CPU, not the fleet's: on a 2-core host it cannot scale, and the table says so.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrysalis_attest::proxy::{self, ProxyArgs};
use chrysalis_e2e::fleet::{Fleet, write_upstreams};
use chrysalis_e2e::owner;
use chrysalis_proto::routes;
use chrysalis_verify::PolicyVerifier;
use chrysalis_verify::policy::Policy;
use serde_json::json;

use super::{median, write_result};
use crate::util::say;

/// Benchmark settings.
pub struct FleetBench {
    /// Concurrent clients in the throughput runs.
    pub clients: usize,
    /// Requests per client per run.
    pub per_client: usize,
    /// Tokens generated per throughput request.
    pub max_tokens: u32,
    /// One-token requests per latency path.
    pub latency_runs: usize,
}

/// One throughput run: how many nodes, wall seconds, completion tokens, tokens/s.
struct Throughput {
    nodes: usize,
    seconds: f64,
    tokens: u64,
}

impl Throughput {
    fn per_s(&self) -> f64 {
        if self.seconds > 0.0 { self.tokens as f64 / self.seconds } else { 0.0 }
    }
}

/// Run the benchmark.
pub fn run(root: &Path, b: &FleetBench) -> Result<()> {
    crate::deps::ensure_qemu()?;
    crate::image::build(root, &crate::image::Options::defaults(root))?;
    let out = root.join("out");
    let dir = out.join("bench/fleet");
    let _ = std::fs::remove_dir_all(&dir);
    let fleet = Fleet::new(&out, &dir, &owner::model("tiny-llama")?, "tiny-llama", "chrysalis.plaintext=1")?;
    say("booting 3 nodes and releasing the key to each");
    let nodes = fleet.boot(3)?;
    let accel = nodes.first().map(|n| n.vm.accel.name()).unwrap_or("none").to_owned();
    let urls: Vec<&str> = nodes.iter().map(|n| n.url.as_str()).collect();
    let upstreams = dir.join("upstreams.txt");
    let policy = Policy::load(&fleet.policy).map_err(|e| anyhow::anyhow!("{e}"))?;

    // Throughput with 1, 2, 3 nodes: one router whose upstreams file grows.
    write_upstreams(&upstreams, &urls[..1])?;
    let router = proxy::start(&args(&fleet.policy, &upstreams), Box::new(PolicyVerifier::new(policy.clone())))?;
    let base = format!("http://{}", router.addr);
    let mut runs = Vec::new();
    for n in 1..=urls.len() {
        write_upstreams(&upstreams, &urls[..n])?;
        wait_in_rotation(&base, n)?;
        chat(&base, "warm up", 1)?;
        let t = throughput(&base, n, b)?;
        say(format!("{n} node(s): {} tokens in {:.1} s = {:.1} tokens/s", t.tokens, t.seconds, t.per_s()));
        runs.push(t);
    }

    // Latency: direct, a router of node 0 alone (`--url`), the router of three; the three
    // paths take turns, so drift in this shared machine's speed hits them alike.
    let mut one_args = args(&fleet.policy, &upstreams);
    (one_args.url, one_args.upstreams) = (nodes[0].url.clone(), None);
    let router_one = proxy::start(&one_args, Box::new(PolicyVerifier::new(policy)))?;
    let paths = [nodes[0].url.clone(), format!("http://{}", router_one.addr), base.clone()];
    let mut samples: [Vec<f64>; 3] = Default::default();
    for p in &paths {
        chat(p, "latency warm up", 1)?;
    }
    for i in 0..b.latency_runs {
        for (p, v) in paths.iter().zip(samples.iter_mut()) {
            let t = Instant::now();
            chat(p, &format!("latency {i}"), 1)?;
            v.push(t.elapsed().as_secs_f64());
        }
    }
    let [direct, through_one, through_three] = samples;
    drop((router, router_one));
    for n in nodes {
        n.vm.press_power_button()?;
        let mut vm = n.vm;
        vm.wait_exit(Duration::from_secs(60))?;
    }

    let one = runs.first().map_or(0.0, Throughput::per_s);
    println!(
        "\nattested router, {accel}, tiny-llama, {} clients × {} requests × {} tokens ({} host cores)",
        b.clients,
        b.per_client,
        b.max_tokens,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  {:<8} {:>10} {:>10} {:>8}", "nodes", "tokens/s", "seconds", "vs 1");
    for t in &runs {
        println!(
            "  {:<8} {:>10.1} {:>10.1} {:>7.2}x",
            t.nodes,
            t.per_s(),
            t.seconds,
            if one > 0.0 { t.per_s() / one } else { 0.0 }
        );
    }
    let (d, r1, r3) = (median(&direct), median(&through_one), median(&through_three));
    println!("\n  one-token request, median of {} (s)", b.latency_runs);
    println!("  {:<28} {:>8.3}", "direct to a node (plain)", d);
    println!("  {:<28} {:>8.3}   (+{:.3} s: attested channel and routing)", "router, 1 node", r1, r1 - d);
    println!("  {:<28} {:>8.3}   (+{:.3} s vs 1 node: choosing among 3)", "router, 3 nodes", r3, r3 - r1);
    write_result(
        root,
        "fleet",
        &json!({
            "accelerator": accel,
            "host_cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "clients": b.clients, "per_client": b.per_client, "max_tokens": b.max_tokens,
            "throughput": runs.iter().map(|t| json!({
                "nodes": t.nodes, "tokens": t.tokens, "seconds": t.seconds, "tokens_per_s": t.per_s(),
                "ratio_vs_1": if one > 0.0 { t.per_s() / one } else { 0.0 },
            })).collect::<Vec<_>>(),
            "latency_s": {
                "direct_median": d, "router_1_node_median": r1, "router_3_nodes_median": r3,
                "direct": direct, "router_1_node": through_one, "router_3_nodes": through_three,
            },
        }),
    )
}

fn args(policy: &Path, upstreams: &Path) -> ProxyArgs {
    ProxyArgs { upstreams: Some(upstreams.to_path_buf()), reattest_secs: 3600, ..ProxyArgs::embedded(policy) }
}

/// Wait until the router has exactly `n` nodes in rotation.
fn wait_in_rotation(base: &str, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status: serde_json::Value = ureq::get(format!("{base}/chrysalis/status")).call()?.body_mut().read_json()?;
        if status["in_rotation"] == n && status["nodes"].as_array().is_some_and(|a| a.len() == n) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the router did not get {n} nodes in rotation: {status:#}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One chat completion; returns its completion tokens.
fn chat(base: &str, prompt: &str, max_tokens: u32) -> Result<u64> {
    let body = json!({"model": "tiny-llama", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true,
                      "messages": [{"role": "user", "content": prompt}]});
    let v: serde_json::Value = ureq::post(format!("{base}{}", routes::CHAT_COMPLETIONS))
        .send_json(body)
        .context(routes::CHAT_COMPLETIONS)?
        .body_mut()
        .read_json()?;
    v["usage"]["completion_tokens"].as_u64().with_context(|| format!("{base}: no usage in {v}"))
}

/// `b.clients` threads each sending `b.per_client` requests with prompts of their own.
fn throughput(base: &str, nodes: usize, b: &FleetBench) -> Result<Throughput> {
    let start = Instant::now();
    let tokens = std::thread::scope(|s| {
        let handles: Vec<_> = (0..b.clients)
            .map(|c| {
                s.spawn(move || -> Result<u64> {
                    (0..b.per_client).map(|i| chat(base, &format!("run {nodes}, client {c}, question {i}"), b.max_tokens)).sum()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?).sum::<Result<u64>>()
    })?;
    Ok(Throughput { nodes, seconds: start.elapsed().as_secs_f64(), tokens })
}
