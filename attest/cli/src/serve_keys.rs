//! `attest serve-keys`: pull mode. A small HTTP service a runtime contacts at boot:
//!
//! * `GET /v1/challenge` → 200, body = a fresh 32-byte nonce as 64 lowercase hex digits;
//!   each is valid once, for `--nonce-ttl-s` seconds.
//! * `POST /v1/release`, body = postcard `Evidence` for such a nonce → 200 with a postcard
//!   `KeyRelease`; otherwise a text body `refused: <why>` with 400 (malformed evidence or a
//!   nonce of the wrong length), 403 (unknown nonce, verification or policy refusal, wrong
//!   bundle), 409 (nonce already used), 410 (nonce expired).
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
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use chrysalis_proto::evidence::{Evidence, MAX_EVIDENCE_LEN};
use chrysalis_proto::keyrelease::{KeyReleaseError, Nonce, OnceNonces, fresh_nonce};
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
    hook: Option<crate::transparency::GrantHook>,
}

impl KeyService {
    /// A service releasing `key` to runtimes that `verifier` accepts and that loaded the
    /// bundle the key file names.
    pub fn new(verifier: Box<dyn EvidenceVerifier>, key: KeyFile, nonce_ttl: Duration) -> Self {
        KeyService { verifier, key, challenges: Mutex::new(OnceNonces::new(nonce_ttl)), nonce_ttl, hook: None }
    }

    /// Run `hook` (transparency check, release log) after every grant, before the key is sent.
    pub fn with_grant_hook(mut self, hook: crate::transparency::GrantHook) -> Self {
        self.hook = Some(hook);
        self
    }
}

fn refuse(status: StatusCode, why: impl std::fmt::Display) -> Response {
    eprintln!("serve-keys: {status}: {why}");
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], format!("refused: {why}\n")).into_response()
}

async fn challenge(State(svc): State<Arc<KeyService>>) -> Response {
    let nonce = match fresh_nonce() {
        Ok(n) => n,
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    match svc.challenges.lock() {
        Ok(mut c) => {
            if let Err(e) = c.insert(nonce, Instant::now(), ()) {
                return refuse(StatusCode::INTERNAL_SERVER_ERROR, e);
            }
        }
        Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, "challenge store unavailable"),
    }
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], hex::encode(nonce)).into_response()
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
    let svc = Arc::new(KeyService::new(verifier, key, Duration::from_secs(args.nonce_ttl_s)).with_grant_hook(hook));
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
