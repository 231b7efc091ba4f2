//! 256-bit key material that never leaves memory in clear.

use std::fmt;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// A 256-bit key (the node master key or a data key). Zeroized on drop; `Debug` prints nothing
/// of it. There is deliberately no `Clone`, `Serialize` or `Display`: the only ways out are
/// [`KeyBytes::expose`] for the cipher that needs it and the sealing functions of `keystore`.
pub struct KeyBytes(Zeroizing<[u8; 32]>);

impl KeyBytes {
    /// A fresh key from the operating system's CSPRNG (through aws-lc).
    pub fn random() -> Result<Self, aws_lc_rs::error::Unspecified> {
        let mut key = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(&mut key[..])?;
        Ok(Self(key))
    }

    /// Takes a key from a decrypted buffer; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(Self(Zeroizing::new(array)))
    }

    /// The bytes, for the cipher that uses them. Do not copy them anywhere that outlives the call.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality (a check compares what Key Vault decrypted with the key in memory).
    pub fn ct_eq(&self, other: &Self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0[..], &other.0[..]).is_ok()
    }

    /// Whether `haystack` contains these bytes, for the plaintext tests.
    pub fn occurs_in(&self, haystack: &[u8]) -> bool {
        haystack.windows(32).any(|w| w == &self.0[..])
    }
}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_keys_differ_and_debug_redacts() {
        let a = KeyBytes::random().unwrap();
        let b = KeyBytes::random().unwrap();
        assert!(!a.ct_eq(&b));
        assert!(a.ct_eq(&KeyBytes::from_slice(a.expose()).unwrap()));
        let shown = format!("{a:?}");
        assert_eq!(shown, "KeyBytes(<redacted>)");
        assert!(!shown.contains(&hex::encode(a.expose())));
    }

    #[test]
    fn from_slice_takes_exactly_32_bytes() {
        assert!(KeyBytes::from_slice(&[0u8; 31]).is_none());
        assert!(KeyBytes::from_slice(&[0u8; 33]).is_none());
        assert!(KeyBytes::from_slice(&[7u8; 32]).is_some());
    }
}
