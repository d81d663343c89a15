//! Device secrets: making them, hashing them for storage, and checking a password against a
//! stored hash.
//!
//! Secrets are 32 random bytes shown once as hex. Only an Argon2id hash (PHC string, with its
//! own salt and parameters) is stored, so a leaked database does not let anyone connect as a
//! device. Checking costs tens of milliseconds of one core on purpose; the [`crate::Guard`]
//! decides when that cost is paid.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

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
    SecretChecker::default().verify(password, stored)
}

/// Checks passwords against stored hashes, reusing one Argon2 working memory (19 MiB with the
/// default parameters) for every check: a fresh one per check is what the `argon2` crate's
/// verifier allocates, and the allocator keeps much of it resident.
#[derive(Default)]
pub struct SecretChecker {
    memory: Vec<Block>,
}

impl SecretChecker {
    pub fn verify(&mut self, password: &[u8], stored: &str) -> bool {
        match self.try_verify(password, stored) {
            Ok(matches) => matches,
            Err(e) => {
                tracing::error!(error = %e, "a stored device secret hash is malformed");
                false
            }
        }
    }

    fn try_verify(&mut self, password: &[u8], stored: &str) -> Result<bool, String> {
        let hash = PasswordHash::new(stored).map_err(|e| e.to_string())?;
        let algorithm = Algorithm::try_from(hash.algorithm).map_err(|e| e.to_string())?;
        let version = match hash.version {
            Some(v) => Version::try_from(v).map_err(|e| e.to_string())?,
            None => Version::default(),
        };
        let params = Params::try_from(&hash).map_err(|e| e.to_string())?;
        let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
            return Err("no salt or no hash".into());
        };
        let mut salt_bytes = [0u8; 64];
        let salt = salt
            .decode_b64(&mut salt_bytes)
            .map_err(|e| e.to_string())?;
        if self.memory.len() != params.block_count() {
            self.memory = vec![Block::default(); params.block_count()];
        }
        let mut out = vec![0u8; expected.len()];
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password, salt, &mut out, &mut self.memory)
            .map_err(|e| e.to_string())?;
        Ok(bool::from(out.ct_eq(expected.as_bytes())))
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
        // One checker, many checks: the same answers with the memory reused.
        let mut checker = SecretChecker::default();
        for _ in 0..3 {
            assert!(checker.verify(secret.as_bytes(), &stored));
            assert!(!checker.verify(b"wrong", &stored));
        }
        // Same secret, new salt: a different hash.
        assert_ne!(stored, hash_secret(&secret).expect("hashing works"));
    }

    #[test]
    fn hex_is_lowercase_and_two_digits_a_byte() {
        assert_eq!(to_hex(&[0, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
