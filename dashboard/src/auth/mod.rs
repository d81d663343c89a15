//! HTTP API authentication: bearer tokens with roles, checked in memory.
//!
//! API authentication is on once a token has been created (a revoked one still counts, so
//! revoking the last token never opens the API). Then every `/api` call and `/metrics` needs
//! a token: `Authorization: Bearer <token>`, or `?access_token=` on the live streams, which
//! browsers open without custom headers. `/healthz` and `/readyz` stay open for probes and
//! say nothing about the data. No token or a bad one is 401; a viewer token on an admin
//! endpoint is 403.
//!
//! Tokens live in storage; the binary hands every change to [`ApiAccess::apply`]. A live
//! stream watches its token and ends when it is revoked.

pub mod token;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldline_store::ApiTokenRecord;
use subtle::ConstantTimeEq;
use tokio::sync::{watch, Notify};

pub use token::Role;

struct Entry {
    digest: String,
    name: String,
    role: Role,
    revoked: bool,
}

/// The caller a request was authenticated as.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    /// The token's name: who did something, in ledgers.
    pub name: String,
    pub role: Role,
}

/// The in-memory copy of the API tokens.
pub struct ApiAccess {
    tokens: RwLock<HashMap<String, Entry>>,
    configured: AtomicBool,
    /// Bumped on every change, so open streams re-check their token.
    changes: watch::Sender<u64>,
    /// Rung by the admin endpoints after they change the registry, so the binary reloads it
    /// now rather than at its next poll.
    registry_changed: Notify,
    /// The registry revision the binary has applied everywhere (broker and API).
    applied: watch::Sender<i64>,
}

impl Default for ApiAccess {
    fn default() -> Self {
        Self {
            tokens: RwLock::new(HashMap::new()),
            configured: AtomicBool::new(false),
            changes: watch::channel(0).0,
            registry_changed: Notify::new(),
            applied: watch::channel(0).0,
        }
    }
}

impl ApiAccess {
    /// Takes token changes (new and revoked tokens).
    pub fn apply(&self, records: impl IntoIterator<Item = ApiTokenRecord>) {
        let mut tokens = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        let mut any = false;
        for record in records {
            any = true;
            let Some(role) = Role::parse(&record.role) else {
                tracing::error!(token = %record.id, role = %record.role, "token with an unknown role ignored");
                continue;
            };
            tokens.insert(
                record.id,
                Entry {
                    digest: record.secret_hash,
                    name: record.name,
                    role,
                    revoked: record.revoked_at_ms.is_some(),
                },
            );
        }
        if !tokens.is_empty() {
            self.configured.store(true, Ordering::Release);
        }
        drop(tokens);
        if any {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// API authentication is on.
    pub fn configured(&self) -> bool {
        self.configured.load(Ordering::Acquire)
    }

    /// Who `token` is, if it is a valid, unrevoked token.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let (id, secret) = token::split(token)?;
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
        let entry = tokens.get(id)?;
        let matches: bool = token::digest(secret)
            .as_bytes()
            .ct_eq(entry.digest.as_bytes())
            .into();
        (matches && !entry.revoked).then(|| Principal {
            token_id: id.to_string(),
            name: entry.name.clone(),
            role: entry.role,
        })
    }

    fn is_valid(&self, token_id: &str) -> bool {
        let tokens = self.tokens.read().unwrap_or_else(PoisonError::into_inner);
        tokens.get(token_id).is_some_and(|e| !e.revoked)
    }

    /// Resolves once `principal`'s token is revoked; without a principal (a stream opened
    /// while API authentication was off), once authentication comes on.
    pub async fn revoked(self: Arc<Self>, principal: Option<Principal>) {
        let mut changes = self.changes.subscribe();
        loop {
            let ended = match &principal {
                Some(p) => !self.is_valid(&p.token_id),
                None => self.configured(),
            };
            if ended {
                return;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Tells the binary the registry changed in storage (to `revision`), and waits until the
    /// change is in force in the broker and the API, so an admin call that returned has
    /// taken effect. Gives up waiting after a few seconds (storage trouble), never failing:
    /// the change is stored and will be applied.
    pub async fn registry_changed(&self, revision: i64) {
        self.registry_changed.notify_one();
        let mut applied = self.applied.subscribe();
        let in_force = applied.wait_for(|&done| done >= revision);
        if tokio::time::timeout(std::time::Duration::from_secs(5), in_force)
            .await
            .is_err()
        {
            tracing::warn!(revision, "an access change is stored but not yet in force");
        }
    }

    /// The binary has applied the registry up to `revision`.
    pub fn applied(&self, revision: i64) {
        self.applied.send_if_modified(|done| {
            let newer = revision > *done;
            if newer {
                *done = revision;
            }
            newer
        });
    }

    /// Waits until an admin endpoint changed the registry.
    pub async fn wait_registry_changed(&self) {
        self.registry_changed.notified().await;
    }
}

/// Middleware: lets a request through when authentication is off or its token covers the
/// role the path needs, and records the [`Principal`] for handlers.
pub async fn require_token(
    State(access): State<Arc<ApiAccess>>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    // Changing what raises events, or where they are sent, is an administrator's call.
    let configures = [
        "/api/geofences",
        "/api/rules",
        "/api/webhooks",
        "/api/channels",
    ]
    .iter()
    .any(|p| path.starts_with(p))
        && request.method() != axum::http::Method::GET;
    // Sending and cancelling commands, and working alarms, is an operator's work.
    let commands = (path.starts_with("/api/commands")
        || path.ends_with("/commands")
        || path.starts_with("/api/alarms"))
        && request.method() != axum::http::Method::GET;
    let needed = if path.starts_with("/api/admin/") || path == "/api/admin" || configures {
        Role::Admin
    } else if commands {
        Role::Operator
    } else {
        Role::Viewer
    };
    if !access.configured() {
        // Without tokens the API is open, but only a local caller may change who gets in:
        // otherwise anyone who reaches an exposed (--allow-anonymous) listener could mint the
        // first admin token and lock the operator out.
        let local = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
        if needed == Role::Admin && !local {
            return refuse(
                StatusCode::FORBIDDEN,
                "the admin API takes calls from this host only until an API token exists \
                 (fieldline token add NAME --role admin)",
            );
        }
        return next.run(request).await;
    }
    // Query tokens only where browsers cannot send headers: URLs end up in logs.
    let query_allowed = path == "/api/stream" || path == "/api/ws";
    let presented = bearer(&request).or_else(|| {
        query_allowed
            .then(|| query_token(request.uri().query()))
            .flatten()
    });
    let Some(presented) = presented else {
        return refuse(StatusCode::UNAUTHORIZED, "an API token is required");
    };
    let Some(principal) = access.authenticate(&presented) else {
        metrics::counter!("fieldline_http_auth_refused_total", "status" => "401").increment(1);
        return refuse(StatusCode::UNAUTHORIZED, "the API token is not valid");
    };
    if !principal.role.covers(needed) {
        metrics::counter!("fieldline_http_auth_refused_total", "status" => "403").increment(1);
        return refuse(StatusCode::FORBIDDEN, "this token's role may not do that");
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn bearer(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn query_token(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "access_token").then(|| value.to_string())
    })
}

fn refuse(status: StatusCode, message: &str) -> Response {
    let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"fieldline\""),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revoked_token_stops_working_and_ends_its_streams() {
        let access = Arc::new(ApiAccess::default());
        assert!(!access.configured());
        let made = token::new_token("ops", Role::Admin, 1);
        access.apply([made.record.clone()]);
        assert!(access.configured());
        let principal = access.authenticate(&made.token).expect("valid token");
        assert_eq!(principal.role, Role::Admin);
        assert!(access.authenticate("fl_nonsense").is_none());
        let forged = format!("fl_{}_{}", made.record.id, "0".repeat(64));
        assert!(access.authenticate(&forged).is_none());

        let revoked = tokio::spawn(access.clone().revoked(Some(principal)));
        let mut record = made.record;
        record.revoked_at_ms = Some(2);
        access.apply([record]);
        revoked
            .await
            .expect("the watch ends when the token is revoked");
        assert!(access.authenticate(&made.token).is_none());
        assert!(access.configured(), "revoking the last token keeps auth on");
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        assert_eq!(
            query_token(Some("kinds=location&access_token=abc")),
            Some("abc".into())
        );
        assert_eq!(query_token(Some("access_tokenx=abc")), None);
        assert_eq!(query_token(None), None);
    }
}
