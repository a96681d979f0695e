//! The 256-bit data key of one sealed bundle.
//!
//! Trust: the key is the secret that the whole key-release protocol protects. It lives only
//! in zeroize-on-drop storage, has no `Clone`, and its `Debug` is redacted.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Length of a data key in bytes.
pub const DATA_KEY_LEN: usize = 32;

/// A fresh random AES-256 key per bundle, so that one bundle's key never opens another.
pub struct DataKey(Zeroizing<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// Draw a new key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut k = Zeroizing::new([0u8; DATA_KEY_LEN]);
        getrandom::fill(k.as_mut())?;
        Ok(DataKey(k))
    }

    /// Wrap existing key bytes (key files, unwrapped key releases).
    pub fn from_bytes(bytes: [u8; DATA_KEY_LEN]) -> Self {
        DataKey(Zeroizing::new(bytes))
    }

    /// Take the key out of a zeroizing buffer without leaving a copy behind.
    pub fn from_zeroizing(bytes: Zeroizing<[u8; DATA_KEY_LEN]>) -> Self {
        DataKey(bytes)
    }

    /// The key bytes, for the AEAD and for key wrapping only.
    pub fn as_bytes(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

impl PartialEq for DataKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&*other.0).into()
    }
}

impl Eq for DataKey {}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_keys_differ_and_debug_is_redacted() {
        let a = DataKey::generate().expect("rng");
        let b = DataKey::generate().expect("rng");
        assert_ne!(a, b);
        assert_eq!(a, DataKey::from_bytes(*a.as_bytes()));
        let dbg = format!("{a:?}");
        assert_eq!(dbg, "DataKey(<redacted>)");
        assert!(!dbg.contains(&hex::encode(a.as_bytes())));
    }
}
