//! The channel's key schedule, in one place: the HPKE `info` that binds a request to one
//! runtime state and one route, the request AEAD, the response keys exported from the
//! request's HPKE context, and the record nonces (STREAM, as in the sealed-weights body).
//!
//! ```text
//! target      = method || " " || path-and-query                 e.g. "POST /v1/chat/completions"
//! info        = SHA-384("chrysalis/channel/v2/info" || D_n (48 B) || u16_be(len target) || target)
//! (enc, ctx)  = HPKE.SetupBaseS(pkR, info)   X25519-HKDF-SHA256 / HKDF-SHA256 / AES-256-GCM
//! inner       = request_id (16 B) || u64_be(issued, s since 1970) || padded(body)
//! request     = ctx.Seal(aad = "chrysalis/channel/v2/request", inner)       (HPKE sequence 0)
//! key || pfx  = ctx.Export("chrysalis/channel/v2/response", 39)            (32 B key, 7 B prefix)
//! aad_resp    = SHA-384("chrysalis/channel/v2/response" || u16_be(status) || u8 mode)
//! record_i    = u8 last || AES-256-GCM(key, pfx || u32_be(i) || last, aad_resp, padded(plaintext_i))
//! ```
//!
//! `padded` is [`super::pad`]: every body and record is padded to a bucket, so lengths on the
//! wire do not spell out token lengths. `mode` is 0 for a whole body and 1 for an event
//! stream; `last` is 1 only on the final record, which carries the receipt. The record cipher
//! is `crate::seal::cipher::ChunkCipher`. The request id and issue time feed the runtime's
//! replay window ([`super::replay`]) and the receipt.
//!
//! Trust: ciphertexts are untrusted; failures are opaque ([`ChannelError::RequestDecrypt`],
//! [`ChannelError::ResponseDecrypt`] with the record index only).

use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as KemTrait, OpModeS, Serializable};
use sha2::{Digest, Sha384};
use zeroize::Zeroizing;

use super::ChannelError;
use super::pad::{pad_into, padded_len, unpad};
use super::replay::{REQUEST_ID_LEN, RequestId};
use crate::eventlog::Digest384;
use crate::keyrelease::{Cipher, Kdf, PUBLIC_KEY_LEN, RuntimeKeyPair};
use crate::seal::cipher::ChunkCipher;
use crate::seal::format::{NONCE_PREFIX_LEN, TAG_LEN};
use crate::seal::key::{DATA_KEY_LEN, DataKey};

type Kem = X25519HkdfSha256;

/// Domain of the HPKE `info` hash.
pub const INFO_DOMAIN: &[u8] = b"chrysalis/channel/v2/info";
/// HPKE associated data of the request body.
pub const REQUEST_AAD: &[u8] = b"chrysalis/channel/v2/request";
/// HPKE exporter context of the response keys.
pub const RESPONSE_EXPORT: &[u8] = b"chrysalis/channel/v2/response";
/// Domain of the response associated data.
pub const RESPONSE_AAD_DOMAIN: &[u8] = b"chrysalis/channel/v2/response";
/// Bytes before the padded body in a request's plaintext: request id and issue time.
pub const REQUEST_META_LEN: usize = REQUEST_ID_LEN + 8;
/// Bytes a record adds to its padded plaintext (flag byte and tag).
pub const RECORD_OVERHEAD: usize = 1 + TAG_LEN;

/// The length of a sealed request whose body is `body_len` bytes.
pub fn sealed_request_len(body_len: usize) -> usize {
    REQUEST_META_LEN.saturating_add(padded_len(body_len)).saturating_add(TAG_LEN)
}

/// The length of a record carrying `len` bytes.
pub fn record_len(len: usize) -> usize {
    padded_len(len).saturating_add(RECORD_OVERHEAD)
}

/// What a sealed request carries besides its body, inside the ciphertext: a random id (the
/// runtime answers each id once and names it in the receipt) and the client's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestMeta {
    /// Random per request.
    pub id: RequestId,
    /// When the client sealed it (seconds since 1970).
    pub issued_unix_s: u64,
}

impl RequestMeta {
    /// A fresh random id, issued now by this machine's clock.
    pub fn fresh() -> Result<Self, ChannelError> {
        let mut id = [0u8; REQUEST_ID_LEN];
        getrandom::fill(&mut id).map_err(|_| ChannelError::Random)?;
        let issued_unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(RequestMeta { id, issued_unix_s })
    }
}

/// A request as the runtime opened it.
#[derive(Debug)]
pub struct OpenedRequest {
    /// Its id and issue time.
    pub meta: RequestMeta,
    /// The body (the inner handler's request body).
    pub body: Zeroizing<Vec<u8>>,
}

/// The route a request is bound to: its method and path-and-query as the runtime sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
}

impl Target {
    /// A target.
    pub fn new(method: impl Into<String>, path: impl Into<String>) -> Self {
        Target { method: method.into(), path: path.into() }
    }

    /// `method SP path`: the bytes bound into `info` and shown in receipts.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// The HPKE `info` of a request to `target` of the runtime whose event log has digest
/// `log_digest`.
pub fn channel_info(log_digest: &Digest384, target: &Target) -> Digest384 {
    let line = target.line();
    let mut h = Sha384::new();
    h.update(INFO_DOMAIN);
    h.update(log_digest);
    h.update(u16::try_from(line.len()).unwrap_or(u16::MAX).to_be_bytes());
    h.update(line.as_bytes());
    h.finalize().into()
}

/// How the response body travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseMode {
    /// One data record with the whole body, then the final record.
    Whole,
    /// One data record per event-stream frame, then the final record.
    Stream,
}

impl ResponseMode {
    fn byte(self) -> u8 {
        match self {
            ResponseMode::Whole => 0,
            ResponseMode::Stream => 1,
        }
    }
}

fn response_aad(status: u16, mode: ResponseMode) -> Digest384 {
    let mut h = Sha384::new();
    h.update(RESPONSE_AAD_DOMAIN);
    h.update(status.to_be_bytes());
    h.update([mode.byte()]);
    h.finalize().into()
}

/// A request body sealed to the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRequest {
    /// HPKE encapsulated key (sent in the `chrysalis-enc` header).
    pub enc: [u8; PUBLIC_KEY_LEN],
    /// AES-256-GCM(body) || tag (the HTTP body).
    pub ciphertext: Vec<u8>,
}

/// The response keys of one request, exported from its HPKE context.
struct ResponseKeys {
    key: DataKey,
    prefix: [u8; NONCE_PREFIX_LEN],
}

impl ResponseKeys {
    fn export(export: impl FnOnce(&mut [u8]) -> Result<(), hpke::HpkeError>) -> Result<Self, ChannelError> {
        let mut out = Zeroizing::new([0u8; DATA_KEY_LEN + NONCE_PREFIX_LEN]);
        // 39 bytes is far below HKDF-SHA256's 255 * 32 limit: export cannot fail.
        export(&mut out[..]).map_err(|_| ChannelError::RequestDecrypt)?;
        let (k, p) = out.split_at(DATA_KEY_LEN);
        let mut key = Zeroizing::new([0u8; DATA_KEY_LEN]);
        key.copy_from_slice(k);
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        prefix.copy_from_slice(p);
        Ok(ResponseKeys { key: DataKey::from_zeroizing(key), prefix })
    }

    fn cipher(&self, status: u16, mode: ResponseMode) -> ChunkCipher {
        ChunkCipher::new(&self.key, self.prefix, response_aad(status, mode))
    }
}

/// Client side: seal `body` for `target` to the runtime key `runtime_public_key` of the
/// runtime state `log_digest`, with a fresh request id issued now; returns the request and
/// what opens its response.
pub fn seal_request(
    runtime_public_key: &[u8; PUBLIC_KEY_LEN],
    log_digest: &Digest384,
    target: &Target,
    body: &[u8],
) -> Result<(SealedRequest, ResponseOpener), ChannelError> {
    seal_request_with(runtime_public_key, log_digest, target, RequestMeta::fresh()?, body)
}

/// [`seal_request`] with a given id and issue time (tests, replays of one's own requests).
pub fn seal_request_with(
    runtime_public_key: &[u8; PUBLIC_KEY_LEN],
    log_digest: &Digest384,
    target: &Target,
    meta: RequestMeta,
    body: &[u8],
) -> Result<(SealedRequest, ResponseOpener), ChannelError> {
    let pk = <Kem as KemTrait>::PublicKey::from_bytes(runtime_public_key).map_err(|_| ChannelError::InvalidPublicKey)?;
    let info = channel_info(log_digest, target);
    let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
    let (enc, mut ctx) = hpke::setup_sender_with_rng::<Cipher, Kdf, Kem>(&OpModeS::Base, &pk, &info, &mut rng)
        .map_err(|_| ChannelError::InvalidPublicKey)?;
    let mut inner = Zeroizing::new(Vec::with_capacity(sealed_request_len(body.len())));
    inner.extend_from_slice(&meta.id);
    inner.extend_from_slice(&meta.issued_unix_s.to_be_bytes());
    pad_into(&mut inner, body)?;
    let ciphertext = ctx.seal(&inner, REQUEST_AAD).map_err(|_| ChannelError::InvalidPublicKey)?;
    let keys = ResponseKeys::export(|out| ctx.export(RESPONSE_EXPORT, out))?;
    let mut e = [0u8; PUBLIC_KEY_LEN];
    e.copy_from_slice(&enc.to_bytes());
    Ok((SealedRequest { enc: e, ciphertext }, ResponseOpener { keys, meta }))
}

/// Runtime side: open a sealed request to `target` with the runtime's key, for its own
/// event-log digest; returns the request (id, issue time, body) and what seals the response.
/// The caller still has to admit the id to its replay window.
pub fn open_request(
    keys: &RuntimeKeyPair,
    log_digest: &Digest384,
    target: &Target,
    enc: &[u8; PUBLIC_KEY_LEN],
    ciphertext: &[u8],
) -> Result<(OpenedRequest, ResponseSealer), ChannelError> {
    let info = channel_info(log_digest, target);
    let mut ctx = keys.setup_receiver(enc, &info).map_err(|_| ChannelError::RequestDecrypt)?;
    let inner = Zeroizing::new(ctx.open(ciphertext, REQUEST_AAD).map_err(|_| ChannelError::RequestDecrypt)?);
    let (id, rest) =
        inner.split_first_chunk::<REQUEST_ID_LEN>().ok_or_else(|| ChannelError::Padding("request shorter than its id".into()))?;
    let (issued, padded) =
        rest.split_first_chunk::<8>().ok_or_else(|| ChannelError::Padding("request shorter than its issue time".into()))?;
    let meta = RequestMeta { id: *id, issued_unix_s: u64::from_be_bytes(*issued) };
    let body = Zeroizing::new(unpad(padded)?.to_vec());
    let keys = ResponseKeys::export(|out| ctx.export(RESPONSE_EXPORT, out))?;
    Ok((OpenedRequest { meta, body }, ResponseSealer { keys }))
}

/// Runtime side: the response keys of one opened request.
pub struct ResponseSealer {
    keys: ResponseKeys,
}

impl std::fmt::Debug for ResponseSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseSealer(<redacted>)")
    }
}

impl ResponseSealer {
    /// Start the response with HTTP `status` in `mode`.
    pub fn response(self, status: u16, mode: ResponseMode) -> RecordSealer {
        RecordSealer { cipher: self.keys.cipher(status, mode), next: 0, done: false }
    }
}

/// Client side: the response keys of one sealed request.
pub struct ResponseOpener {
    keys: ResponseKeys,
    meta: RequestMeta,
}

impl std::fmt::Debug for ResponseOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseOpener(<redacted>)")
    }
}

impl ResponseOpener {
    /// The id and issue time the request was sealed with (the receipt must name this id).
    pub fn meta(&self) -> RequestMeta {
        self.meta
    }

    /// Expect a response with HTTP `status` in `mode` (both are bound: a changed status or a
    /// stream passed off as a whole body does not open).
    pub fn response(self, status: u16, mode: ResponseMode) -> RecordOpener {
        RecordOpener { cipher: self.keys.cipher(status, mode), next: 0, done: false }
    }
}

/// Encrypts a response's records in order.
pub struct RecordSealer {
    cipher: ChunkCipher,
    next: u32,
    done: bool,
}

impl std::fmt::Debug for RecordSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSealer").field("next", &self.next).field("done", &self.done).finish_non_exhaustive()
    }
}

impl RecordSealer {
    fn record(&mut self, plaintext: &[u8], last: bool) -> Result<Vec<u8>, ChannelError> {
        if self.done {
            return Err(ChannelError::AfterFinal);
        }
        // Index u32::MAX is never used, so the counter cannot wrap.
        let following = self.next.checked_add(1).ok_or(ChannelError::TooManyRecords)?;
        let mut out = Vec::with_capacity(record_len(plaintext.len()));
        out.push(u8::from(last));
        pad_into(&mut out, plaintext)?;
        let body = out.get_mut(1..).ok_or(ChannelError::ResponseDecrypt(self.next))?;
        let tag = self.cipher.seal(self.next, last, body).map_err(|_| ChannelError::ResponseDecrypt(self.next))?;
        out.extend_from_slice(&tag);
        self.next = following;
        self.done = last;
        Ok(out)
    }

    /// The next data record.
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, ChannelError> {
        self.record(plaintext, false)
    }

    /// The final record (the receipt); nothing can follow it.
    pub fn seal_final(&mut self, receipt: &[u8]) -> Result<Vec<u8>, ChannelError> {
        self.record(receipt, true)
    }

    /// Records sealed so far.
    pub fn count(&self) -> u32 {
        self.next
    }
}

/// What one record carried.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// Response bytes.
    Data(Zeroizing<Vec<u8>>),
    /// The final record's payload (the receipt).
    Final(Vec<u8>),
}

impl Opened {
    /// The response bytes of a data record.
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            Opened::Data(d) => Some(d),
            Opened::Final(_) => None,
        }
    }

    /// The payload of the final record.
    pub fn receipt(&self) -> Option<&[u8]> {
        match self {
            Opened::Final(r) => Some(r),
            Opened::Data(_) => None,
        }
    }
}

/// Decrypts a response's records, enforcing their order and the final record.
pub struct RecordOpener {
    cipher: ChunkCipher,
    next: u32,
    done: bool,
}

impl std::fmt::Debug for RecordOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordOpener").field("next", &self.next).field("done", &self.done).finish_non_exhaustive()
    }
}

impl RecordOpener {
    /// Open the next record. A record out of order, repeated, from another response, or
    /// altered fails; so does anything after the final record.
    pub fn open(&mut self, record: &[u8]) -> Result<Opened, ChannelError> {
        let index = self.next;
        if self.done {
            return Err(ChannelError::AfterFinal);
        }
        // Index u32::MAX is never used, so the counter cannot wrap.
        let following = index.checked_add(1).ok_or(ChannelError::TooManyRecords)?;
        let (flag, rest) = record.split_first().ok_or(ChannelError::ResponseDecrypt(index))?;
        let last = match flag {
            0 => false,
            1 => true,
            _ => return Err(ChannelError::ResponseDecrypt(index)),
        };
        let split = rest.len().checked_sub(TAG_LEN).ok_or(ChannelError::ResponseDecrypt(index))?;
        let (ct, tag) = rest.split_at(split);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| ChannelError::ResponseDecrypt(index))?;
        let mut buf = Zeroizing::new(ct.to_vec());
        self.cipher.open(index, last, &mut buf, &tag).map_err(|_| ChannelError::ResponseDecrypt(index))?;
        let data = unpad(&buf)?;
        self.next = following;
        if last {
            self.done = true;
            Ok(Opened::Final(data.to_vec()))
        } else {
            Ok(Opened::Data(Zeroizing::new(data.to_vec())))
        }
    }

    /// `Ok` once the final record was opened; [`ChannelError::Truncated`] before.
    pub fn finish(&self) -> Result<(), ChannelError> {
        if self.done { Ok(()) } else { Err(ChannelError::Truncated(self.next)) }
    }

    /// Whether the final record was opened.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Digest384 = [5; 48];

    fn chat() -> Target {
        Target::new("POST", "/v1/chat/completions")
    }

    fn pair(keys: &RuntimeKeyPair, target: &Target, body: &[u8]) -> (Vec<u8>, ResponseSealer, ResponseOpener) {
        let (req, opener) = seal_request(&keys.public_key(), &D, target, body).expect("seals");
        let (pt, sealer) = open_request(keys, &D, target, &req.enc, &req.ciphertext).expect("opens");
        assert_eq!(pt.meta, opener.meta());
        (pt.body.to_vec(), sealer, opener)
    }

    #[test]
    fn round_trip_whole_and_stream() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let (pt, sealer, opener) = pair(&keys, &chat(), b"{\"messages\":[]}");
        assert_eq!(pt, b"{\"messages\":[]}");
        let mut s = sealer.response(200, ResponseMode::Stream);
        let mut recs: Vec<Vec<u8>> = (0..5).map(|i| s.seal(format!("data: {i}\n\n").as_bytes()).unwrap()).collect();
        recs.push(s.seal_final(b"R").unwrap());
        assert_eq!(s.seal(b"late"), Err(ChannelError::AfterFinal));
        let mut o = opener.response(200, ResponseMode::Stream);
        for (i, r) in recs.iter().enumerate().take(5) {
            assert_eq!(o.open(r).unwrap().data(), Some(format!("data: {i}\n\n").as_bytes()));
            assert!(o.finish().is_err());
        }
        assert_eq!(o.open(&recs[5]).unwrap().receipt(), Some(&b"R"[..]));
        assert!(o.finish().is_ok());
        assert_eq!(o.open(&recs[5]), Err(ChannelError::AfterFinal));
        // Empty request body and empty records work too.
        let (pt, sealer, opener) = pair(&keys, &Target::new("GET", "/v1/models"), b"");
        assert!(pt.is_empty());
        let mut s = sealer.response(404, ResponseMode::Whole);
        let r = [s.seal(b"").unwrap(), s.seal_final(b"").unwrap()];
        let mut o = opener.response(404, ResponseMode::Whole);
        assert_eq!(o.open(&r[0]).unwrap().data(), Some(&b""[..]));
        assert_eq!(o.open(&r[1]).unwrap().receipt(), Some(&b""[..]));
    }

    #[test]
    fn tampered_request_wrong_key_wrong_state_or_route() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let (req, _) = seal_request(&keys.public_key(), &D, &chat(), b"secret prompt").unwrap();
        assert_eq!(req.ciphertext.len(), sealed_request_len(b"secret prompt".len()));
        // Every bit of the ciphertext and of the encapsulated key matters.
        for i in 0..req.ciphertext.len() * 8 {
            let mut ct = req.ciphertext.clone();
            ct[i / 8] ^= 1 << (i % 8);
            assert_eq!(open_request(&keys, &D, &chat(), &req.enc, &ct).err(), Some(ChannelError::RequestDecrypt), "bit {i}");
        }
        for i in 0..PUBLIC_KEY_LEN * 8 {
            let mut enc = req.enc;
            enc[i / 8] ^= 1 << (i % 8);
            assert_eq!(open_request(&keys, &D, &chat(), &enc, &req.ciphertext).err(), Some(ChannelError::RequestDecrypt));
        }
        // Truncated ciphertext.
        for cut in 0..req.ciphertext.len() {
            let ct = &req.ciphertext[..cut];
            assert_eq!(open_request(&keys, &D, &chat(), &req.enc, ct).err(), Some(ChannelError::RequestDecrypt));
        }
        // Replayed to another route, another method, another runtime state, another runtime.
        for t in [
            Target::new("POST", "/v1/completions"),
            Target::new("PUT", "/v1/chat/completions"),
            Target::new("POST", "/v1/chat/completions?x=1"),
        ] {
            assert_eq!(open_request(&keys, &D, &t, &req.enc, &req.ciphertext).err(), Some(ChannelError::RequestDecrypt));
        }
        assert_eq!(open_request(&keys, &[6; 48], &chat(), &req.enc, &req.ciphertext).err(), Some(ChannelError::RequestDecrypt));
        let other = RuntimeKeyPair::generate().unwrap();
        assert_eq!(open_request(&other, &D, &chat(), &req.enc, &req.ciphertext).err(), Some(ChannelError::RequestDecrypt));
        // A low-order point is refused when sealing.
        assert_eq!(seal_request(&[0; 32], &D, &chat(), b"x").err(), Some(ChannelError::InvalidPublicKey));
    }

    #[test]
    fn tampered_response_records() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let (_, sealer, opener) = pair(&keys, &chat(), b"{}");
        let mut s = sealer.response(200, ResponseMode::Whole);
        let rec = s.seal(b"{\"choices\":[]}").unwrap();
        let opener_for = |o: &ResponseOpener| o.keys.cipher(200, ResponseMode::Whole);
        for i in 0..rec.len() * 8 {
            let mut bad = rec.clone();
            bad[i / 8] ^= 1 << (i % 8);
            let mut o = RecordOpener { cipher: opener_for(&opener), next: 0, done: false };
            assert_eq!(o.open(&bad), Err(ChannelError::ResponseDecrypt(0)), "bit {i}");
        }
        for cut in 0..rec.len() {
            let mut o = RecordOpener { cipher: opener_for(&opener), next: 0, done: false };
            assert_eq!(o.open(&rec[..cut]), Err(ChannelError::ResponseDecrypt(0)), "cut {cut}");
        }
        // Another status or mode does not open.
        let mut o = opener.response(500, ResponseMode::Whole);
        assert_eq!(o.open(&rec), Err(ChannelError::ResponseDecrypt(0)));
    }

    #[test]
    fn response_mode_and_other_request_are_bound() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let (_, sealer, opener) = pair(&keys, &chat(), b"{}");
        let mut s = sealer.response(200, ResponseMode::Stream);
        let rec = s.seal(b"data: x\n\n").unwrap();
        assert!(opener.response(200, ResponseMode::Whole).open(&rec).is_err());
        // A record of another request (same runtime, same route) does not open.
        let (_, sealer2, _) = pair(&keys, &chat(), b"{}");
        let rec2 = sealer2.response(200, ResponseMode::Stream).seal(b"data: x\n\n").unwrap();
        let (_, _, opener3) = pair(&keys, &chat(), b"{}");
        assert!(opener3.response(200, ResponseMode::Stream).open(&rec2).is_err());
    }

    /// Reordered, dropped, duplicated and truncated streams.
    #[test]
    fn stream_order_and_truncation() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let (_, sealer, opener) = pair(&keys, &chat(), b"{}");
        let mut s = sealer.response(200, ResponseMode::Stream);
        let mut recs: Vec<Vec<u8>> = (0..4).map(|i| s.seal(&[i]).unwrap()).collect();
        recs.push(s.seal_final(b"receipt").unwrap());
        let fresh = || RecordOpener { cipher: opener.keys.cipher(200, ResponseMode::Stream), next: 0, done: false };
        let play = |order: &[usize]| -> Result<(), ChannelError> {
            let mut o = fresh();
            for &i in order {
                o.open(&recs[i])?;
            }
            o.finish()
        };
        assert_eq!(play(&[0, 1, 2, 3, 4]), Ok(()));
        assert_eq!(play(&[1, 0, 2, 3, 4]), Err(ChannelError::ResponseDecrypt(0)), "reordered");
        assert_eq!(play(&[0, 2, 3, 4]), Err(ChannelError::ResponseDecrypt(1)), "dropped");
        assert_eq!(play(&[0, 1, 1, 2, 3, 4]), Err(ChannelError::ResponseDecrypt(2)), "duplicated");
        assert_eq!(play(&[0, 1, 2, 3]), Err(ChannelError::Truncated(4)), "truncated before the final record");
        assert_eq!(play(&[]), Err(ChannelError::Truncated(0)), "empty");
        assert_eq!(play(&[0, 1, 2, 3, 4, 4]), Err(ChannelError::AfterFinal), "replayed final");
        // The final flag cannot be set or cleared by an attacker: it is in the nonce.
        let mut early_final = recs[3].clone();
        early_final[0] = 1;
        let mut o = fresh();
        for r in &recs[..3] {
            o.open(r).unwrap();
        }
        assert_eq!(o.open(&early_final), Err(ChannelError::ResponseDecrypt(3)));
        let mut not_final = recs[4].clone();
        not_final[0] = 0;
        let mut o = fresh();
        for r in &recs[..4] {
            o.open(r).unwrap();
        }
        assert_eq!(o.open(&not_final), Err(ChannelError::ResponseDecrypt(4)));
    }

    /// Record and request lengths depend on the bucket, not on the token or prompt length:
    /// every OpenAI stream chunk of a typical token has the same length on the wire.
    #[test]
    fn lengths_do_not_depend_on_token_or_prompt_length() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let (_, sealer, opener) = pair(&keys, &chat(), b"{}");
        let mut s = sealer.response(200, ResponseMode::Stream);
        let tokens = ["a", " the", " confidential", " computing", "\\n", " supercalifragilisticexpialidocious"];
        let frame = |t: &str| {
            format!(
                "data: {{\"id\":\"chatcmpl-0123456789abcdef\",\"object\":\"chat.completion.chunk\",\"created\":1800000000,\
                 \"model\":\"HuggingFaceTB/SmolLM2-135M-Instruct\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}\"}},\
                 \"finish_reason\":null}}]}}\n\n"
            )
        };
        let recs: Vec<Vec<u8>> = tokens.iter().map(|t| s.seal(frame(t).as_bytes()).unwrap()).collect();
        let lens: Vec<usize> = recs.iter().map(Vec::len).collect();
        assert!(lens.iter().all(|&l| l == lens[0]), "record lengths {lens:?}");
        assert_eq!(lens[0], 512 + RECORD_OVERHEAD);
        // And they open to the exact frames.
        let mut o = opener.response(200, ResponseMode::Stream);
        for (t, r) in tokens.iter().zip(&recs) {
            assert_eq!(o.open(r).unwrap().data(), Some(frame(t).as_bytes()));
        }
        // Prompts of different lengths in one bucket seal to equal lengths.
        let a =
            seal_request(&keys.public_key(), &D, &chat(), b"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}").unwrap();
        let b = seal_request(&keys.public_key(), &D, &chat(), &[b' '; 400]).unwrap();
        assert_eq!(a.0.ciphertext.len(), b.0.ciphertext.len());
    }

    /// The request id and issue time travel inside the ciphertext, as sealed.
    #[test]
    fn request_meta_round_trips() {
        let keys = RuntimeKeyPair::generate().unwrap();
        let meta = RequestMeta { id: [0xab; 16], issued_unix_s: 1_800_000_123 };
        let (req, opener) = seal_request_with(&keys.public_key(), &D, &chat(), meta, b"{}").unwrap();
        assert_eq!(opener.meta(), meta);
        let (opened, _) = open_request(&keys, &D, &chat(), &req.enc, &req.ciphertext).unwrap();
        assert_eq!((opened.meta, opened.body.as_slice()), (meta, &b"{}"[..]));
        // Two fresh requests get different ids.
        let (x, y) = (RequestMeta::fresh().unwrap(), RequestMeta::fresh().unwrap());
        assert_ne!(x.id, y.id);
    }

    /// The fixed-input digests printed in CHANNEL_FORMAT.md §9.
    #[test]
    fn documented_vectors() {
        assert_eq!(
            hex::encode(channel_info(&D, &Target::new("GET", "/v1/models/x"))),
            "5b7e9f5ed258c1f506f4093ce0b1d2656d2b03c4c8de298b1f7291f943f47da1c42b184ad0fc7d3faefa853b0e0a0c1b"
        );
        assert_eq!(
            hex::encode(response_aad(200, ResponseMode::Whole)),
            "0f51a6dfafe0f559cd756a8c8336a98df6fe2de630deddf62d759c90cf59221dc1dc35bca8773244206fd447dc68a0d6"
        );
        assert_eq!(
            hex::encode(response_aad(200, ResponseMode::Stream)),
            "5ed225cc72e8c8db901de430283b3730e17e2659ab690cde1860b63742783e3e27c47c47d16b91a2a984e848e2373c71"
        );
        assert_eq!(
            hex::encode(crate::channel::receipt::request_hash(b"{}")),
            "6dcf164ab4d6f1b464def74ac0c76fb6d42be1bd5cd38d7bfd0f8282f9f4517e90e4591fe8264b8d79d944d85e773b27"
        );
    }

    #[test]
    fn info_layout_is_as_documented() {
        let mut raw = b"chrysalis/channel/v2/info".to_vec();
        raw.extend_from_slice(&D);
        raw.extend_from_slice(&[0, 16]);
        raw.extend_from_slice(b"GET /v1/models/x");
        let want: [u8; 48] = Sha384::digest(&raw).into();
        assert_eq!(channel_info(&D, &Target::new("GET", "/v1/models/x")), want);
    }
}
