//! NATS identities in operator mode, minted for tests as `nsc` would: an operator, its system
//! account, an account with JetStream, and users' `.creds` files signed by an account.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde_json::{json, Value};

/// An account: its key (it signs its users) and its JWT (signed by the operator).
pub struct Account {
    key: KeyPair,
    pub public: String,
    pub jwt: String,
}

/// An operator with a system account and one account that may use JetStream.
pub struct Operator {
    pub jwt: String,
    pub system: Account,
    pub app: Account,
}

/// Limits that leave an account or user unbounded (0 would mean none allowed).
fn unlimited() -> Value {
    json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
           "wildcards": true, "conn": -1, "leaf": -1})
}

/// A JWT over `nats` claims about `subject`, signed by `issuer` (NATS JWT v2: ed25519-nkey).
fn sign(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = json!({
        "jti": format!("{name}-{subject}"),
        "iat": issued,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer.sign(signed.as_bytes()).expect("an nkey signs");
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

impl Account {
    /// An account signed by `operator`; with JetStream storage when `jetstream`.
    fn new(operator: &KeyPair, name: &str, jetstream: bool) -> Account {
        let key = KeyPair::new_account();
        let public = key.public_key();
        let mut limits = unlimited();
        if jetstream {
            for field in ["mem_storage", "disk_storage", "streams", "consumer"] {
                limits[field] = json!(-1);
            }
        }
        let nats = json!({"limits": limits, "default_permissions": {"pub": {}, "sub": {}},
                          "type": "account", "version": 2});
        let jwt = sign(operator, &public, name, nats);
        Account { key, public, jwt }
    }

    /// An account no operator the servers know has signed.
    pub fn stranger() -> Account {
        Account::new(&KeyPair::new_operator(), "stranger", true)
    }

    /// A user of this account as a `.creds` file's text: its JWT, then its seed.
    pub fn user_creds(&self, name: &str) -> String {
        let user = KeyPair::new_user();
        let nats = json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                          "type": "user", "version": 2});
        let jwt = sign(&self.key, &user.public_key(), name, nats);
        let seed = user.seed().expect("a user key has a seed");
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    }
}

impl Operator {
    pub fn new() -> Operator {
        let key = KeyPair::new_operator();
        let system = Account::new(&key, "SYS", false);
        let app = Account::new(&key, "fieldline", true);
        let nats = json!({"system_account": system.public, "type": "operator", "version": 2});
        let jwt = sign(&key, &key.public_key(), "fieldline-test", nats);
        Operator { jwt, system, app }
    }

    /// The server configuration that trusts this operator and knows its two accounts.
    pub fn server_config(&self) -> String {
        format!(
            "operator: \"{}\"\nsystem_account: \"{}\"\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{}\"\n  {}: \"{}\"\n}}\n",
            self.jwt,
            self.system.public,
            self.system.public,
            self.system.jwt,
            self.app.public,
            self.app.jwt
        )
    }
}
