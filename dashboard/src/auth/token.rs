//! API token strings: `fl_{id}_{secret}`.
//!
//! The id (12 hex digits) is public: it names the token in lists and in revocation. The
//! secret (64 hex digits, 256 random bits) is shown once; storage keeps its SHA-256 digest,
//! which is enough for a random secret of that size (a slow hash protects guessable
//! passwords, and no one guesses 256 bits).

use fieldline_broker::credentials::new_secret;
use fieldline_store::ApiTokenRecord;
use sha2::{Digest, Sha256};

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything: devices, tokens, definitions, and all an operator may do.
    Admin,
    /// Working the fleet: sending and cancelling commands, and all a viewer may do; not
    /// managing devices, tokens, fences, rules or webhooks.
    Operator,
    /// Reading: devices, history, live streams, metrics.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn covers(self, needed: Role) -> bool {
        self.rank() >= needed.rank()
    }

    fn rank(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::Operator => 1,
            Role::Admin => 2,
        }
    }
}

/// A token just made: the record to store and the string to show once.
pub struct NewToken {
    pub record: ApiTokenRecord,
    pub token: String,
}

/// Makes a token for `name` with `role`, created at `now_ms`.
pub fn new_token(name: &str, role: Role, now_ms: i64) -> NewToken {
    let id = new_secret()[..12].to_string();
    let secret = new_secret();
    NewToken {
        token: format!("fl_{id}_{secret}"),
        record: ApiTokenRecord {
            id,
            name: name.to_string(),
            role: role.as_str().to_string(),
            secret_hash: digest(&secret),
            created_at_ms: now_ms,
            revoked_at_ms: None,
            revision: 0,
        },
    }
}

/// Splits a presented token into its id and secret; `None` when it is not shaped like one.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("fl_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 12) && hex(secret, 64)).then_some((id, secret))
}

/// Hex SHA-256 of a token's secret part, as stored.
pub fn digest(secret: &str) -> String {
    let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_splits_back_into_its_record() {
        let made = new_token("grafana", Role::Viewer, 1);
        let (id, secret) = split(&made.token).expect("well formed");
        assert_eq!(id, made.record.id);
        assert_eq!(digest(secret), made.record.secret_hash);
        assert_eq!(made.record.role, "viewer");
    }

    #[test]
    fn malformed_tokens_do_not_split() {
        for bad in [
            "",
            "fl_",
            "fl_abc_def",
            "xx_0123456789ab_0000000000000000000000000000000000000000000000000000000000000000",
            "fl_0123456789ab_000000000000000000000000000000000000000000000000000000000000000",
            "fl_0123456789ag_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(split(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn roles_cover_what_they_should() {
        assert!(Role::Admin.covers(Role::Admin));
        assert!(Role::Admin.covers(Role::Viewer));
        assert!(Role::Viewer.covers(Role::Viewer));
        assert!(!Role::Viewer.covers(Role::Admin));
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }
}
