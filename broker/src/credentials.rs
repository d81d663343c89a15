//! Device secrets: making them, hashing them for storage, and checking a password against a
//! stored hash.
//!
//! Secrets are 32 random bytes shown once as hex. Only an Argon2id hash (PHC string, with its
//! own salt and parameters) is stored, so a leaked database does not let anyone connect as a
//! device. Checking costs tens of milliseconds of one core on purpose; the [`crate::Guard`]
//! decides when that cost is paid.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot hash the secret: {0}")]
    Hash(String),
}

/// A new random secret: 32 bytes from the operating system, as 64 hex characters.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    to_hex(&bytes)
}

/// The Argon2id PHC string to store for `secret` (default parameters: 19 MiB, 2 passes).
pub fn hash_secret(secret: &str) -> Result<String, CredentialError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| CredentialError::Hash(e.to_string()))
}

/// Whether `password` matches a stored PHC string. A malformed stored hash matches nothing.
/// Slow by design: call it off the async threads.
pub fn verify_secret(password: &[u8], stored: &str) -> bool {
    match PasswordHash::new(stored) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "a stored device secret hash is malformed");
            false
        }
    }
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_secret_only() {
        let secret = new_secret();
        assert_eq!(secret.len(), 64);
        let stored = hash_secret(&secret).expect("hashing works");
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains(&secret));
        assert!(verify_secret(secret.as_bytes(), &stored));
        assert!(!verify_secret(b"wrong", &stored));
        assert!(!verify_secret(secret.as_bytes(), "not a phc string"));
        // Same secret, new salt: a different hash.
        assert_ne!(stored, hash_secret(&secret).expect("hashing works"));
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(to_hex(&[0, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
