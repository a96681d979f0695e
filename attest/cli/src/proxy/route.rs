//! Which node answers a request: rendezvous (highest-random-weight) hashing on the start of
//! the prompt, bounded by load.
//!
//! The rule, for the routable nodes of the fleet:
//! 1. Every node scores `SHA-256(len(url) ‖ url ‖ key)`, where `key` is the first
//!    [`AFFINITY_PREFIX_BYTES`] of the request's serialized `messages` (chat) or `prompt`
//!    (completions); the highest score is the *preferred* node. Requests that start alike —
//!    the same system prompt — prefer the same node, whose prompt cache is then warm; when a
//!    node leaves, only the keys it preferred move (each to its runner-up), and when one
//!    joins it takes only the keys it now scores highest on.
//! 2. The preferred node is taken unless its in-flight count exceeds the least-loaded node's
//!    by more than [`LOAD_SLACK`]; then the least-loaded nodes are chosen from, by the same
//!    score (so ties still spread by prompt rather than all landing on the first node).
//!
//! Nothing here is a security decision: every node the rule may pick has been attested under
//! the same policy.

use sha2::{Digest, Sha256};

/// How many bytes of the serialized prompt choose the preferred node. Long enough to cover a
/// typical system prompt (what prompt caches share), short enough that the user's own turn
/// rarely decides it.
pub const AFFINITY_PREFIX_BYTES: usize = 1024;

/// How much busier than the least-loaded node the preferred node may be and still be chosen.
pub const LOAD_SLACK: usize = 2;

/// The affinity key of a request body: the first [`AFFINITY_PREFIX_BYTES`] of its `messages`
/// or `prompt`, serialized. Empty (no affinity: least-in-flight decides) for bodies without
/// either, e.g. `GET /v1/models` or non-JSON.
pub fn affinity_key(body: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(v)) = serde_json::from_slice::<serde_json::Value>(body) else { return Vec::new() };
    let Some(prompt) = v.get("messages").or_else(|| v.get("prompt")) else { return Vec::new() };
    let mut key = serde_json::to_vec(prompt).unwrap_or_default();
    key.truncate(AFFINITY_PREFIX_BYTES);
    key
}

/// Node `url`'s rendezvous score for `key`.
pub fn score(url: &str, key: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((url.len() as u64).to_be_bytes());
    h.update(url.as_bytes());
    h.update(key);
    h.finalize().into()
}

/// One routable node, as the rule sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The node's URL (its identity in the hash).
    pub url: &'a str,
    /// Requests it is answering now.
    pub in_flight: usize,
}

/// The index in `nodes` of the node that answers a request with affinity `key` (the rule in
/// the module documentation); `None` when `nodes` is empty.
pub fn choose(nodes: &[Candidate<'_>], key: &[u8]) -> Option<usize> {
    let least = nodes.iter().map(|n| n.in_flight).min()?;
    let best = |admit: &dyn Fn(&Candidate<'_>) -> bool| {
        nodes.iter().enumerate().filter(|(_, n)| admit(n)).max_by_key(|(_, n)| score(n.url, key)).map(|(i, _)| i)
    };
    let preferred = best(&|_| true)?;
    if nodes[preferred].in_flight <= least + LOAD_SLACK { Some(preferred) } else { best(&|n| n.in_flight == least) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(urls: &[&'static str]) -> Vec<Candidate<'static>> {
        urls.iter().map(|url| Candidate { url, in_flight: 0 }).collect()
    }

    const NODES: [&str; 3] = ["http://10.0.0.1:8000", "http://10.0.0.2:8000", "http://10.0.0.3:8000"];

    fn key(i: usize) -> Vec<u8> {
        affinity_key(format!(r#"{{"messages":[{{"role":"system","content":"prompt {i}"}}]}}"#).as_bytes())
    }

    #[test]
    fn the_same_prefix_reaches_the_same_node() {
        let nodes = idle(&NODES);
        let system = "You are a careful assistant. ".repeat(60);
        let ask = |user: &str| {
            let body = serde_json::json!({"model": "m", "messages": [
                {"role": "system", "content": system}, {"role": "user", "content": user}]});
            choose(&nodes, &affinity_key(body.to_string().as_bytes()))
        };
        let first = ask("what is 2+2?");
        assert!(first.is_some());
        for q in ["hello", "tell me a story", "x"] {
            assert_eq!(ask(q), first, "a shared system prompt longer than the prefix picks one node");
        }
        // `prompt` (completions) counts too, and the order in nodes does not matter.
        let k = affinity_key(br#"{"prompt":"Once upon a time","max_tokens":5}"#);
        assert!(!k.is_empty());
        let mut reversed = nodes.clone();
        reversed.reverse();
        assert_eq!(nodes[choose(&nodes, &k).unwrap()].url, reversed[choose(&reversed, &k).unwrap()].url);
        assert!(affinity_key(b"").is_empty() && affinity_key(b"{\"model\":\"m\"}").is_empty());
    }

    #[test]
    fn distinct_prefixes_spread_over_the_nodes() {
        let nodes = idle(&NODES);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[choose(&nodes, &key(i)).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn load_overrides_affinity_beyond_the_slack() {
        let k = key(7);
        let mut nodes = idle(&NODES);
        let preferred = choose(&nodes, &k).unwrap();
        nodes[preferred].in_flight = LOAD_SLACK;
        assert_eq!(choose(&nodes, &k), Some(preferred), "within the slack the warm node keeps it");
        nodes[preferred].in_flight = LOAD_SLACK + 1;
        let other = choose(&nodes, &k).unwrap();
        assert_ne!(other, preferred, "beyond the slack the least-loaded node takes it");
        assert_eq!(nodes[other].in_flight, 0);
        // Every node busy alike: affinity again.
        for n in &mut nodes {
            n.in_flight = 5;
        }
        assert_eq!(choose(&nodes, &k), Some(preferred));
        assert_eq!(choose(&[], &k), None);
    }

    #[test]
    fn a_node_leaving_moves_only_its_own_keys() {
        let all = idle(&NODES);
        let without: Vec<Candidate<'_>> = all.iter().copied().filter(|n| n.url != NODES[1]).collect();
        let mut moved = 0;
        for i in 0..1000 {
            let k = key(i);
            let before = all[choose(&all, &k).unwrap()].url;
            let after = without[choose(&without, &k).unwrap()].url;
            if before == NODES[1] {
                moved += 1;
                assert_ne!(after, NODES[1]);
            } else {
                assert_eq!(before, after, "key {i} moved although its node stayed");
            }
        }
        assert!(moved > 200, "the leaving node had {moved} keys");
    }
}
