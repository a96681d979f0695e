//! `attest serve-keys`: pull mode. A small HTTP service a runtime contacts at boot:
//!
//! * `GET /v1/challenge` → 200, body = a fresh 32-byte nonce as 64 lowercase hex digits;
//!   each is valid once, for `--nonce-ttl-s` seconds. `GET /v1/challenge?bind=<64 hex>` (a
//!   runtime renewing its lease) → `<nonce hex> <salt hex>` with the nonce
//!   `renewal_nonce(salt, bind)`, so that the runtime knows the challenge is new too.
//! * `POST /v1/release`, body = postcard `Evidence` for such a nonce → 200 with a postcard
//!   `KeyRelease`; otherwise a text body `refused: <why>` with 400 (malformed evidence or a
//!   nonce of the wrong length), 403 (unknown nonce, verification or policy refusal, wrong
//!   bundle), 409 (nonce already used), 410 (nonce expired).
//!
//! Leases and revocation: a runtime whose measured config sets `chrysalis.lease_s` asks
//! again every third of its lease and stops serving when a renewal is refused or the lease
//! runs out. `--revoked FILE` lists runtime keys and launch measurements to refuse (read at
//! every release, so editing the file revokes without a restart); see [`Revocations`].
//!
//! Trust: request bodies are untrusted (size-capped at the evidence limit, decoded totally);
//! each challenge gets exactly one verification attempt.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use chrysalis_proto::evidence::{Evidence, MAX_EVIDENCE_LEN};
use chrysalis_proto::keyrelease::{KeyReleaseError, Nonce, OnceNonces, fresh_nonce, renewal_nonce};
use chrysalis_proto::routes;
use chrysalis_proto::seal::KeyFile;
use chrysalis_verify::attested::EvidenceVerifier;
use chrysalis_verify::grant::grant_key;

/// Arguments of `attest serve-keys`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeKeysArgs {
    /// Address to listen on, e.g. 127.0.0.1:7000 (plain HTTP: the key is HPKE-wrapped).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Policy file the evidence must satisfy.
    #[arg(long)]
    pub policy: PathBuf,
    /// Key file written by `attest seal`.
    #[arg(long)]
    pub key: PathBuf,
    /// Seconds a challenge nonce stays valid.
    #[arg(long, default_value_t = 120)]
    pub nonce_ttl_s: u64,
    /// Revocation list, read at every release: lines `key <runtime public key, 64 hex>`,
    /// `measurement <launch measurement, 96 hex>` or `all`; `#` starts a comment. A runtime
    /// on a lease stops serving at its next renewal once it is listed. An unreadable or
    /// malformed file refuses every release (fail closed).
    #[arg(long)]
    pub revoked: Option<PathBuf>,
    /// Certificates and collateral the evidence may lack.
    #[command(flatten)]
    pub inputs: super::EvidenceInputs,
    /// Log every key granted to a transparency log.
    #[command(flatten)]
    pub release_log: crate::transparency::ReleaseLogArgs,
}

/// The service state: the key, the verifier and the open challenges.
pub struct KeyService {
    verifier: Box<dyn EvidenceVerifier>,
    key: KeyFile,
    challenges: Mutex<OnceNonces<()>>,
    nonce_ttl: Duration,
    revoked: Option<PathBuf>,
    hook: Option<crate::transparency::GrantHook>,
}

impl KeyService {
    /// A service releasing `key` to runtimes that `verifier` accepts and that loaded the
    /// bundle the key file names.
    pub fn new(verifier: Box<dyn EvidenceVerifier>, key: KeyFile, nonce_ttl: Duration) -> Self {
        KeyService { verifier, key, challenges: Mutex::new(OnceNonces::new(nonce_ttl)), nonce_ttl, revoked: None, hook: None }
    }

    /// Refuse the runtimes listed in `file` (re-read at every release).
    pub fn with_revocations(mut self, file: PathBuf) -> Self {
        self.revoked = Some(file);
        self
    }

    /// Run `hook` (transparency check, release log) after every grant, before the key is sent.
    pub fn with_grant_hook(mut self, hook: crate::transparency::GrantHook) -> Self {
        self.hook = Some(hook);
        self
    }
}

/// What `--revoked` lists. The owner revokes one node (its runtime key, which changes at
/// every boot) or a whole image (its launch measurement), or stops every release (`all`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Revocations {
    keys: Vec<[u8; 32]>,
    measurements: Vec<Vec<u8>>,
    all: bool,
}

impl Revocations {
    /// Parse the file's text; a line that is not one of the three forms is an error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut r = Revocations::default();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            let bad = |why: &str| format!("line {}: {why}: {:?}", i + 1, raw.trim());
            match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                [] => {}
                ["all"] => r.all = true,
                ["key", hex_key] => {
                    let bytes = hex::decode(hex_key).map_err(|_| bad("not hex"))?;
                    r.keys.push(bytes.try_into().map_err(|_| bad("a runtime key is 32 bytes (64 hex digits)"))?);
                }
                ["measurement", hex_m] => {
                    let bytes = hex::decode(hex_m).map_err(|_| bad("not hex"))?;
                    if bytes.len() != 48 {
                        return Err(bad("a launch measurement is 48 bytes (96 hex digits)"));
                    }
                    r.measurements.push(bytes);
                }
                _ => return Err(bad("expected `key <hex>`, `measurement <hex>` or `all`")),
            }
        }
        Ok(r)
    }

    /// Why a runtime with `key` and launch `measurement` is revoked, if it is.
    pub fn check(&self, key: &[u8; 32], measurement: Option<&[u8]>) -> Option<String> {
        if self.all {
            return Some("every release is revoked (`all`)".into());
        }
        if self.keys.iter().any(|k| k == key) {
            return Some(format!("runtime key {} is revoked", hex::encode(key)));
        }
        match measurement {
            Some(m) if self.measurements.iter().any(|r| r == m) => {
                Some(format!("launch measurement {} is revoked", hex::encode(m)))
            }
            _ => None,
        }
    }
}

/// Why the runtime behind `evidence` (wrapped to `key`) may not have the key, per `file`.
fn revoked(file: &std::path::Path, key: &[u8; 32], evidence: &Evidence) -> Option<String> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return Some(format!("revocation list {} unreadable ({e}): refusing every release", file.display())),
    };
    match Revocations::parse(&text) {
        Ok(r) => {
            let measurement = chrysalis_proto::channel::receipt::launch_measurement(&evidence.platform);
            r.check(key, measurement.as_ref().map(|m| m.as_slice())).map(|why| format!("{why} in {}", file.display()))
        }
        Err(e) => Some(format!("revocation list {}: {e}: refusing every release", file.display())),
    }
}

fn refuse(status: StatusCode, why: impl std::fmt::Display) -> Response {
    eprintln!("serve-keys: {status}: {why}");
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("refused: {why}\n")).into_response()
}

/// `?bind=<64 hex>`: a runtime renewing its lease.
#[derive(serde::Deserialize)]
struct ChallengeQuery {
    bind: Option<String>,
}

async fn challenge(State(svc): State<Arc<KeyService>>, Query(q): Query<ChallengeQuery>) -> Response {
    let salt = match fresh_nonce() {
        Ok(n) => n,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let (nonce, body) = match q.bind.as_deref() {
        None => (salt, hex::encode(salt)),
        Some(b) => match hex::decode(b).ok().and_then(|v| Nonce::try_from(v.as_slice()).ok()) {
            Some(bind) => {
                let nonce = renewal_nonce(&salt, &bind);
                (nonce, format!("{} {}", hex::encode(nonce), hex::encode(salt)))
            }
            None => return refuse(StatusCode::BAD_REQUEST, "bind must be 32 bytes as 64 hex digits"),
        },
    };
    match svc.challenges.lock() {
        Ok(mut c) => {
            if let Err(e) = c.insert(nonce, Instant::now(), ()) {
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, e);
            }
        }
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "challenge store unavailable"),
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

async fn release(State(svc): State<Arc<KeyService>>, body: Bytes) -> Response {
    let evidence = match Evidence::from_bytes(&body) {
        Ok(e) => e,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e),
    };
    let Ok(nonce) = Nonce::try_from(evidence.nonce.as_slice()) else {
        return refuse(StatusCode::BAD_REQUEST, KeyReleaseError::NonceLength(evidence.nonce.len()));
    };
    let redeemed = match svc.challenges.lock() {
        Ok(mut c) => c.redeem(&nonce, Instant::now()),
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "challenge store unavailable"),
    };
    if let Err(e) = redeemed {
        let status = match e {
            KeyReleaseError::ReplayedNonce(_) => StatusCode::CONFLICT,
            KeyReleaseError::StaleNonce { .. } => StatusCode::GONE,
            _ => StatusCode::FORBIDDEN,
        };
        return refuse(status, e);
    }
    // A redeemed challenge is at most `nonce_ttl` old, so it was issued no earlier than this
    // (for a policy's `[freshness]`, which then passes only if its bound covers the TTL).
    let issued_at = std::time::SystemTime::now().checked_sub(svc.nonce_ttl);
    match grant_key(&evidence, &nonce, issued_at, svc.verifier.as_ref(), &svc.key.key, Some(&svc.key.header_digest)) {
        Ok(r) => {
            // Revocation first, so that a refused renewal is never logged as a key release.
            if let Some(why) = svc.revoked.as_deref().and_then(|f| revoked(f, &r.runtime_public_key, &evidence)) {
                return refuse(StatusCode::FORBIDDEN, format!("revoked: {why}"));
            }
            let r = match svc.hook.as_ref().map(|h| h.after_grant(&evidence, r.clone(), &svc.key.header_digest)) {
                None => r,
                Some(Ok(r)) => r,
                Some(Err(e)) => return refuse(StatusCode::FORBIDDEN, format!("{e:#}")),
            };
            eprintln!(
                "serve-keys: released {:?} to runtime key {} (nonce {})",
                svc.key.model_name,
                hex::encode(r.runtime_public_key),
                hex::encode(&nonce[..8])
            );
            (StatusCode::OK, [(header::CONTENT_TYPE, routes::KEY_RELEASE_MEDIA_TYPE)], r.message.to_bytes()).into_response()
        }
        Err(e) => refuse(StatusCode::FORBIDDEN, e),
    }
}

/// The HTTP routes of the service.
pub fn router(svc: Arc<KeyService>) -> Router {
    Router::new()
        .route(routes::CHALLENGE, get(challenge))
        .route(routes::RELEASE, post(release))
        .layer(DefaultBodyLimit::max(MAX_EVIDENCE_LEN))
        .with_state(svc)
}

/// Serve on an already bound listener until the process is stopped.
pub async fn serve(listener: tokio::net::TcpListener, svc: Arc<KeyService>) -> std::io::Result<()> {
    axum::serve(listener, router(svc)).await
}

/// Run `attest serve-keys` with `verifier` until Ctrl-C.
pub fn run(args: &ServeKeysArgs, verifier: Box<dyn EvidenceVerifier>) -> anyhow::Result<()> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&args.key).with_context(|| format!("reading key file {}", args.key.display()))?,
    );
    let key = KeyFile::parse(&text).with_context(|| format!("parsing key file {}", args.key.display()))?;
    let hook = crate::transparency::GrantHook::new(&args.policy, &args.release_log)?;
    let mut svc = KeyService::new(verifier, key, Duration::from_secs(args.nonce_ttl_s)).with_grant_hook(hook);
    if let Some(file) = &args.revoked {
        // Checked now so that a typo shows at start; it is read again at every release.
        let text = std::fs::read_to_string(file).with_context(|| format!("reading revocation list {}", file.display()))?;
        Revocations::parse(&text).map_err(|e| anyhow::anyhow!("revocation list {}: {e}", file.display()))?;
        svc = svc.with_revocations(file.clone());
    }
    let svc = Arc::new(svc);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        eprintln!("serve-keys: listening on http://{}", listener.local_addr().context("local address")?);
        tokio::select! {
            r = serve(listener, svc) => r.context("serving"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_lists_name_keys_measurements_or_all() {
        let (k, m) = ([0xab; 32], [0xcd; 48]);
        let r = Revocations::parse(&format!("# comment\n\nkey {}  # node 3\nmeasurement {}\n", hex::encode(k), hex::encode(m)))
            .expect("parses");
        assert_eq!(r.check(&k, None), Some(format!("runtime key {} is revoked", hex::encode(k))));
        assert_eq!(r.check(&[1; 32], Some(&m)), Some(format!("launch measurement {} is revoked", hex::encode(m))));
        assert_eq!(r.check(&[1; 32], Some(&[2; 48])), None);
        assert!(Revocations::parse("all").expect("parses").check(&[1; 32], None).is_some());
        for (bad, why) in [
            ("key 00", "line 1: a runtime key is 32 bytes"),
            ("\nmeasurement zz", "line 2: not hex"),
            ("measurement 00", "line 1: a launch measurement is 48 bytes"),
            ("revoke everything", "line 1: expected `key <hex>`"),
        ] {
            let e = Revocations::parse(bad).expect_err(bad);
            assert!(e.starts_with(why), "{bad}: {e}");
        }
    }
}
