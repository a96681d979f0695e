//! One request through the channel, client side, without any HTTP: seal the body to a
//! verified runtime, then open its answer — a whole body, or an event stream fed as it
//! arrives — and check the receipt at its end against the same verified runtime. `attest
//! proxy` wraps this in HTTP; tests drive it directly.
//!
//! Streams: plaintext is released as soon as each record opens, except a frame carrying
//! `data: [DONE]`, which is held back until the final record (the receipt) has opened and
//! checked, so a client never sees a normal end of a stream that was cut or forged.
//!
//! Trust: the runtime must come from [`crate::attested::attest_runtime`]; response bytes are
//! untrusted.

use super::receipt::{ReceiptExpectations, check_receipt};
use crate::attested::AttestedRuntime;
use chrysalis_proto::channel::ChannelError;
use chrysalis_proto::channel::crypto::{Opened, RecordOpener, ResponseMode, ResponseOpener, SealedRequest, Target, seal_request};
use chrysalis_proto::channel::frame::{SseDecoder, split_length_prefixed};
use chrysalis_proto::channel::receipt::{Hasher, Receipt, ReceiptError, request_hash};
use chrysalis_proto::channel::replay::RequestId;
use chrysalis_proto::eventlog::Digest384;

/// Why a response is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// Records did not open, were out of order, or the response was cut.
    #[error("{0}")]
    Channel(#[from] ChannelError),
    /// The final record is not a receipt.
    #[error("{0}")]
    Receipt(#[from] ReceiptError),
    /// The receipt does not match the verified runtime or this exchange.
    #[error("receipt checks failed: {0}")]
    ReceiptChecks(String),
}

/// The HTTP headers of a sealed request (name, value).
pub fn request_headers(runtime: &AttestedRuntime, sealed: &SealedRequest) -> [(&'static str, String); 4] {
    [
        (chrysalis_proto::channel::HEADER_CHANNEL, chrysalis_proto::channel::CHANNEL_VERSION.to_owned()),
        (chrysalis_proto::channel::HEADER_ENC, hex::encode(sealed.enc)),
        (chrysalis_proto::channel::HEADER_LOG_DIGEST, hex::encode(runtime.log_digest)),
        ("content-type", chrysalis_proto::routes::SEALED_REQUEST_MEDIA_TYPE.to_owned()),
    ]
}

/// A request sealed to a verified runtime, waiting for its answer.
#[derive(Debug)]
pub struct SealedCall {
    /// The route it is bound to.
    pub target: Target,
    /// What to send.
    pub request: SealedRequest,
    opener: ResponseOpener,
    request_sha384: Digest384,
}

/// Seal `body` for `target` to `runtime`, with a fresh request id.
pub fn seal_call(runtime: &AttestedRuntime, target: Target, body: &[u8]) -> Result<SealedCall, ChannelError> {
    let (request, opener) = seal_request(&runtime.public_key, &runtime.log_digest, &target, body)?;
    Ok(SealedCall { request_sha384: request_hash(body), target, request, opener })
}

impl SealedCall {
    /// The id sealed into the request; the receipt must name it.
    pub fn request_id(&self) -> RequestId {
        self.opener.meta().id
    }
}

/// What one exchange must match in its receipt.
#[derive(Debug)]
struct Exchange {
    target: Target,
    request_id: RequestId,
    request_sha384: Digest384,
    status: u16,
}

fn check(runtime: &AttestedRuntime, receipt: &Receipt, x: &Exchange, response_sha384: Digest384) -> Result<(), ClientError> {
    let (target, request_sha384, status) = (&x.target, x.request_sha384, x.status);
    let expect = ReceiptExpectations {
        target: Some(target.line()),
        request_id: Some(x.request_id),
        request_sha384: Some(request_sha384),
        status: Some(status),
        response_sha384: Some(response_sha384),
    };
    let failed: Vec<String> = check_receipt(receipt, runtime, &expect)
        .into_iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: found {}, expected {}", c.name, c.found, c.expected))
        .collect();
    if failed.is_empty() { Ok(()) } else { Err(ClientError::ReceiptChecks(failed.join("; "))) }
}

impl SealedCall {
    /// Open a whole (non-streaming) sealed response with HTTP `status`; returns the body and
    /// the checked receipt.
    pub fn open_whole(self, runtime: &AttestedRuntime, status: u16, body: &[u8]) -> Result<(Vec<u8>, Receipt), ClientError> {
        let records = split_length_prefixed(body)?;
        let exchange =
            Exchange { request_id: self.request_id(), target: self.target, request_sha384: self.request_sha384, status };
        let mut opener = self.opener.response(status, ResponseMode::Whole);
        let mut plain = Vec::new();
        let mut receipt = None;
        for r in records {
            match opener.open(r)? {
                Opened::Data(d) => plain.extend_from_slice(&d),
                Opened::Final(r) => receipt = Some(r),
            }
        }
        opener.finish()?;
        let receipt = Receipt::from_bytes(&receipt.unwrap_or_default())?;
        let mut h = Hasher::response();
        h.update(&plain);
        check(runtime, &receipt, &exchange, h.finish())?;
        Ok((plain, receipt))
    }

    /// Start opening a streamed response with HTTP `status`.
    pub fn open_stream(self, status: u16) -> StreamReader {
        let exchange =
            Exchange { request_id: self.request_id(), target: self.target, request_sha384: self.request_sha384, status };
        StreamReader {
            decoder: SseDecoder::new(),
            records: self.opener.response(status, ResponseMode::Stream),
            hasher: Some(Hasher::response()),
            held: Vec::new(),
            receipt: None,
            exchange,
        }
    }
}

/// Opens a sealed event stream as it arrives.
#[derive(Debug)]
pub struct StreamReader {
    decoder: SseDecoder,
    records: RecordOpener,
    hasher: Option<Hasher>,
    held: Vec<u8>,
    receipt: Option<Vec<u8>>,
    exchange: Exchange,
}

const DONE: &[u8] = b"data: [DONE]";

impl StreamReader {
    /// Feed bytes from the runtime; returns plaintext that may be passed on now.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        for record in self.decoder.push(bytes)? {
            match self.records.open(&record)? {
                Opened::Data(d) => {
                    if let Some(h) = self.hasher.as_mut() {
                        h.update(&d);
                    }
                    if !self.held.is_empty() || d.windows(DONE.len()).any(|w| w == DONE) {
                        self.held.extend_from_slice(&d);
                    } else {
                        out.extend_from_slice(&d);
                    }
                }
                Opened::Final(r) => self.receipt = Some(r),
            }
        }
        Ok(out)
    }

    /// The runtime's stream ended: check that it was complete and its receipt; returns the
    /// held-back tail (the `[DONE]` frame) and the receipt.
    pub fn finish(mut self, runtime: &AttestedRuntime) -> Result<(Vec<u8>, Receipt), ClientError> {
        self.decoder.finish()?;
        self.records.finish()?;
        let receipt = Receipt::from_bytes(&self.receipt.take().unwrap_or_default())?;
        let hash = self.hasher.take().map_or([0; 48], Hasher::finish);
        check(runtime, &receipt, &self.exchange, hash)?;
        Ok((std::mem::take(&mut self.held), receipt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrysalis_proto::channel::crypto::open_request;
    use chrysalis_proto::channel::frame::{push_length_prefixed, sse_event};
    use chrysalis_proto::channel::receipt::{RECEIPT_VERSION, ReceiptBody, ReceiptSigner, response_hash};
    use chrysalis_proto::eventlog::EventLog;
    use chrysalis_proto::keyrelease::RuntimeKeyPair;

    struct Fake {
        keys: RuntimeKeyPair,
        signer: ReceiptSigner,
        runtime: AttestedRuntime,
    }

    fn fake() -> Fake {
        let keys = RuntimeKeyPair::generate().unwrap();
        let signer = ReceiptSigner::from_seed(&[7; 32]).unwrap();
        let mut log = EventLog::default();
        log.extend(keys.public_key_event());
        log.extend(signer.public_key_event());
        let runtime = AttestedRuntime {
            nonce: vec![1; 32],
            evidence: chrysalis_proto::evidence::Evidence {
                version: chrysalis_proto::evidence::EVIDENCE_VERSION,
                nonce: vec![1; 32],
                platform: chrysalis_proto::evidence::PlatformEvidence::Simulated { report: vec![] },
                event_log: log.clone(),
                gpus: vec![],
            },
            log_digest: log.digest(),
            report_data: log.report_data(&[1; 32]),
            public_key: keys.public_key(),
            receipt_key: signer.public_key(),
            launch_measurement: Some([3; 48]),
            bundle_header: None,
            steps: vec![],
            warnings: vec![],
        };
        Fake { keys, signer, runtime }
    }

    impl Fake {
        /// The runtime's side: open the call and answer with `frames` (stream) or one body.
        fn answer(&self, call: &SealedCall, status: u16, mode: ResponseMode, frames: &[&[u8]]) -> Vec<Vec<u8>> {
            let (opened, sealer) =
                open_request(&self.keys, &self.runtime.log_digest, &call.target, &call.request.enc, &call.request.ciphertext)
                    .unwrap();
            let body = opened.body;
            let mut s = sealer.response(status, mode);
            let mut recs: Vec<Vec<u8>> = frames.iter().map(|f| s.seal(f).unwrap()).collect();
            let receipt = self.signer.sign(ReceiptBody {
                version: RECEIPT_VERSION,
                target: call.target.line(),
                request_id: opened.meta.id,
                request_sha384: request_hash(&body),
                status,
                response_sha384: response_hash(&frames.concat()),
                model: "m".into(),
                bundle_header_sha384: None,
                event_log_digest: self.runtime.log_digest,
                launch_measurement: vec![3; 48],
                runtime_time_unix_s: 0,
            });
            recs.push(s.seal_final(&receipt.to_bytes()).unwrap());
            recs
        }
    }

    fn chat() -> Target {
        Target::new("POST", "/v1/chat/completions")
    }

    #[test]
    fn whole_round_trip_and_tampering() {
        let f = fake();
        let call = seal_call(&f.runtime, chat(), b"{}").unwrap();
        let recs = f.answer(&call, 200, ResponseMode::Whole, &[b"{\"ok\":1}"]);
        let mut body = Vec::new();
        for r in &recs {
            push_length_prefixed(&mut body, r).unwrap();
        }
        let (plain, receipt) = call.open_whole(&f.runtime, 200, &body).unwrap();
        assert_eq!(plain, b"{\"ok\":1}");
        assert_eq!(receipt.body.model, "m");
        // A flipped byte anywhere, or a changed status, is refused.
        for i in [4, 10, body.len() - 1] {
            let call = seal_call(&f.runtime, chat(), b"{}").unwrap();
            let recs = f.answer(&call, 200, ResponseMode::Whole, &[b"{\"ok\":1}"]);
            let mut body = Vec::new();
            for r in &recs {
                push_length_prefixed(&mut body, r).unwrap();
            }
            body[i] ^= 1;
            assert!(call.open_whole(&f.runtime, 200, &body).is_err(), "byte {i}");
        }
        let call = seal_call(&f.runtime, chat(), b"{}").unwrap();
        let recs = f.answer(&call, 200, ResponseMode::Whole, &[b"{}"]);
        let mut body = Vec::new();
        push_length_prefixed(&mut body, &recs[0]).unwrap();
        push_length_prefixed(&mut body, &recs[1]).unwrap();
        assert!(matches!(call.open_whole(&f.runtime, 500, &body), Err(ClientError::Channel(ChannelError::ResponseDecrypt(0)))));
        // Without the final record.
        let call = seal_call(&f.runtime, chat(), b"{}").unwrap();
        let recs = f.answer(&call, 200, ResponseMode::Whole, &[b"{}"]);
        let mut body = Vec::new();
        push_length_prefixed(&mut body, &recs[0]).unwrap();
        assert_eq!(call.open_whole(&f.runtime, 200, &body).err(), Some(ClientError::Channel(ChannelError::Truncated(1))));
    }

    #[test]
    fn stream_holds_done_until_the_receipt() {
        let f = fake();
        let frames: [&[u8]; 3] = [b"data: {\"a\":1}\n\n", b"data: {\"b\":2}\n\n", b"data: [DONE]\n\n"];
        let call = seal_call(&f.runtime, chat(), b"{}").unwrap();
        let recs = f.answer(&call, 200, ResponseMode::Stream, &frames);
        let mut r = call.open_stream(200);
        let mut shown = Vec::new();
        for rec in &recs[..3] {
            shown.extend(r.push(sse_event(rec).as_bytes()).unwrap());
        }
        assert_eq!(shown, b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n", "[DONE] is held back");
        assert!(r.push(sse_event(&recs[3]).as_bytes()).unwrap().is_empty());
        let (tail, receipt) = r.finish(&f.runtime).unwrap();
        assert_eq!(tail, b"data: [DONE]\n\n");
        assert_eq!(receipt.body.response_sha384, response_hash(&frames.concat()));

        // Cut before the receipt: [DONE] never shows.
        let call = seal_call(&f.runtime, chat(), b"{}").unwrap();
        let recs = f.answer(&call, 200, ResponseMode::Stream, &frames);
        let mut r = call.open_stream(200);
        for rec in &recs[..3] {
            assert!(!r.push(sse_event(rec).as_bytes()).unwrap().windows(6).any(|w| w == b"[DONE]"));
        }
        assert_eq!(r.finish(&f.runtime).err(), Some(ClientError::Channel(ChannelError::Truncated(3))));

        // Reordered and dropped events.
        let call = seal_call(&f.runtime, chat(), b"{}").unwrap();
        let recs = f.answer(&call, 200, ResponseMode::Stream, &frames);
        let mut r = call.open_stream(200);
        r.push(sse_event(&recs[0]).as_bytes()).unwrap();
        assert_eq!(r.push(sse_event(&recs[2]).as_bytes()).err(), Some(ClientError::Channel(ChannelError::ResponseDecrypt(1))));

        // A receipt signed by someone else.
        let mallory = Fake { signer: ReceiptSigner::from_seed(&[9; 32]).unwrap(), ..fake() };
        let f2 = Fake {
            keys: mallory.keys,
            signer: mallory.signer,
            runtime: AttestedRuntime { receipt_key: f.signer.public_key(), ..mallory.runtime },
        };
        let call = seal_call(&f2.runtime, chat(), b"{}").unwrap();
        let recs = f2.answer(&call, 200, ResponseMode::Stream, &frames);
        let mut r = call.open_stream(200);
        for rec in &recs {
            r.push(sse_event(rec).as_bytes()).unwrap();
        }
        let e = r.finish(&f2.runtime).unwrap_err();
        assert!(matches!(&e, ClientError::ReceiptChecks(s) if s.contains("receipt.signature")), "{e}");
    }
}
