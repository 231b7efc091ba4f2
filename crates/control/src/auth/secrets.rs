//! The two primitives every credential module shares: random bytes from the operating system's
//! CSPRNG and SHA-256 (both from aws-lc-rs). They live apart from [`super::digest`],
//! [`super::oauth`] and [`super::provision`] so that none of those imports another to get them:
//! `provision` (which creates credentials) depends on `digest` (which verifies them), never the
//! reverse.

/// SHA-256, for service account secrets and access tokens.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    aws_lc_rs::rand::fill(&mut buf).expect("the operating system's random number generator failed");
    buf
}
