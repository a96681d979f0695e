//! Length hiding for channel plaintexts: every request body and every response record is
//! padded to a bucket before it is encrypted, so a ciphertext's length says little about what
//! it holds.
//!
//! Why: with one record per streamed token, record lengths spell out token lengths, and
//! published attacks (Weiss et al., "What Was Your Prompt? A Remote Keylogging Attack on AI
//! Assistants", USENIX Security 2024) reconstruct answers from exactly that sequence.
//!
//! ```text
//! padded(data) = u32_be(len(data)) || data || 0x00 * (bucket(4 + len(data)) - 4 - len(data))
//! bucket(n)    = 512                       n <= 512
//!              = next power of two of n    512 < n <= 4096
//!              = Padmé(n)                  n > 4096   (at most 12 % larger; leaks O(log log n) bits)
//! ```
//!
//! Padmé: Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication
//! with PURBs", PETS 2019, §4. A receiver refuses a plaintext whose length is not exactly the
//! bucket of its declared length or whose padding is not all zero, so a sender that skips the
//! padding is refused rather than silently leaking.
//!
//! Trust: [`unpad`] parses authenticated but otherwise untrusted bytes; it is total.

use super::ChannelError;

/// Every padded plaintext is at least this long (an OpenAI stream chunk with a typical
/// token and model name is 200–350 bytes, so all of a stream's records share this bucket).
pub const MIN_BUCKET: usize = 512;
/// Up to this length buckets are powers of two; above, Padmé.
pub const POW2_LIMIT: usize = 4096;
/// The length prefix of a padded plaintext.
pub const LEN_PREFIX: usize = 4;

/// The padded length of a plaintext of `n` bytes (length prefix included), saturating at
/// `usize::MAX`.
pub fn bucket(n: usize) -> usize {
    if n <= MIN_BUCKET {
        MIN_BUCKET
    } else if n <= POW2_LIMIT {
        n.next_power_of_two()
    } else {
        padme(n)
    }
}

/// Padmé rounding: keep the top `floor(log2 E) + 1` bits of the length, where `E` is its
/// exponent; defined for `n >= 2`.
fn padme(n: usize) -> usize {
    let e = n.ilog2();
    let s = e.ilog2().saturating_add(1);
    let low_bits = e.saturating_sub(s);
    let mask = 1usize.checked_shl(low_bits).map_or(usize::MAX, |m| m.saturating_sub(1));
    n.checked_add(mask).map_or(usize::MAX, |v| v & !mask)
}

/// The padded length of `len` data bytes.
pub fn padded_len(len: usize) -> usize {
    bucket(len.saturating_add(LEN_PREFIX))
}

/// Append `data`, padded, to `out`.
pub fn pad_into(out: &mut Vec<u8>, data: &[u8]) -> Result<(), ChannelError> {
    let len = u32::try_from(data.len()).map_err(|_| ChannelError::Framing(format!("{} bytes cannot be padded", data.len())))?;
    let total = padded_len(data.len());
    let start = out.len();
    out.reserve(total);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    out.resize(start.saturating_add(total), 0);
    Ok(())
}

/// The data inside a padded plaintext. Refused: shorter than the prefix, a declared length
/// beyond the bytes, a total that is not the declared length's bucket, non-zero padding.
pub fn unpad(padded: &[u8]) -> Result<&[u8], ChannelError> {
    let (len, rest) = padded
        .split_first_chunk::<LEN_PREFIX>()
        .ok_or_else(|| ChannelError::Padding(format!("{} bytes, shorter than the length prefix", padded.len())))?;
    let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
    let (data, padding) =
        rest.split_at_checked(len).ok_or_else(|| ChannelError::Padding(format!("declares {len} bytes, holds {}", rest.len())))?;
    let want = padded_len(len);
    if padded.len() != want {
        return Err(ChannelError::Padding(format!("{} bytes long, the bucket of {len} bytes is {want}", padded.len())));
    }
    // Constant-time is not needed: the padding is not secret, only its length, which is public.
    if padding.iter().any(|&b| b != 0) {
        return Err(ChannelError::Padding("padding bytes are not zero".into()));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets() {
        assert_eq!(bucket(0), 512);
        assert_eq!(bucket(512), 512);
        assert_eq!(bucket(513), 1024);
        assert_eq!(bucket(4096), 4096);
        assert_eq!(bucket(4097), 4352, "Padmé: E = 12, S = 4, 8 low bits cleared");
        assert_eq!(bucket(1 << 20), 1 << 20);
        assert_eq!(bucket((1 << 20) + 1), (1 << 20) + (1 << 15), "E = 20, S = 5, 15 low bits");
        assert_eq!(bucket(usize::MAX), usize::MAX);
        // Padmé's overhead stays under 12 % above the power-of-two range.
        for n in [4097usize, 5000, 65_537, 1_000_001, 14 << 20, (16 << 20) - 1] {
            let b = bucket(n);
            assert!(b >= n && (b - n) * 100 < n * 12, "{n} -> {b}");
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        for n in [0usize, 1, 7, 508, 509, 4092, 4093, 70_000] {
            let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8 + 1).collect();
            let mut out = vec![9, 9];
            pad_into(&mut out, &data).unwrap();
            assert_eq!(out.len(), 2 + padded_len(n));
            assert_eq!(unpad(&out[2..]).unwrap(), &data[..], "{n}");
        }
        let mut p = Vec::new();
        pad_into(&mut p, b"token").unwrap();
        assert!(unpad(&p[..3]).is_err(), "shorter than the prefix");
        assert!(unpad(&p[..p.len() - 1]).is_err(), "not the bucket");
        let mut longer = p.clone();
        longer.push(0);
        assert!(unpad(&longer).is_err(), "not the bucket");
        let mut dirty = p.clone();
        *dirty.last_mut().unwrap() = 1;
        assert!(unpad(&dirty).unwrap_err().to_string().contains("not zero"));
        let mut lying = p.clone();
        lying[..4].copy_from_slice(&600u32.to_be_bytes());
        assert!(unpad(&lying).unwrap_err().to_string().contains("declares 600 bytes, holds 508"));
        // An unpadded plaintext (a sender that skipped padding) is refused.
        let mut bare = 5u32.to_be_bytes().to_vec();
        bare.extend_from_slice(b"token");
        assert!(unpad(&bare).is_err());
    }

    proptest! {
        #[test]
        fn unpad_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = unpad(&bytes);
        }

        #[test]
        fn lengths_in_one_bucket_pad_alike(a in 0usize..508, b in 0usize..508) {
            prop_assert_eq!(padded_len(a), padded_len(b));
        }
    }
}
