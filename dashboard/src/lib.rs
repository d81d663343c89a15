//! The HTTP side of Fieldline: the REST API over the store, the [`live`] hub with its SSE and
//! WebSocket streams, health and readiness, and Prometheus metrics. Handlers are small and get
//! everything through [`AppState`].

mod api;
pub mod auth;
mod error;
mod health;
pub mod http_listener;
pub mod https_listener;
pub mod judging;
pub mod live;
mod live_clients;
mod paging;
mod replay;
pub mod tracks;
pub mod web;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::routing::{get, patch, post};
use axum::Router;
use fieldline_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::ApiError;

/// What every handler may use.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub hub: Arc<live::Hub>,
    pub metrics: PrometheusHandle,
    /// Set by the binary once every listener is up; cleared when shutdown starts.
    pub listeners_up: Arc<AtomicBool>,
    pub access: Arc<auth::ApiAccess>,
    /// One permit per open live stream (SSE or WebSocket); when none is left, new streams
    /// get 503.
    pub live_slots: Arc<tokio::sync::Semaphore>,
    /// Whether storage is behind the write-ahead log, and whether the log is full.
    pub spill: Arc<fieldline_ingest::spill::SpillState>,
    /// The fences, rules and webhooks in force, which the configuration endpoints change.
    pub judging: Arc<judging::Judging>,
    /// What the web dashboard is told before it signs in.
    pub web: web::WebSettings,
    /// Commands to devices.
    pub commands: Arc<fieldline_ingest::commands::CommandDesk>,
    /// Whether storage's upkeep jobs (ours and the server's) are working.
    pub storage_jobs: Arc<fieldline_store::health::JobHealth>,
}

pub fn router(state: AppState) -> Router {
    // Everything but the probes needs a token once API authentication is on.
    let guarded = Router::new()
        .route("/metrics", get(health::metrics))
        .route("/api/devices", get(api::devices::list))
        .route("/api/devices/{id}", get(api::devices::one))
        .route("/api/devices/{id}/telemetry", get(api::history::telemetry))
        .route("/api/devices/{id}/track", get(api::history::track))
        .route("/api/devices/{id}/status", get(api::history::statuses))
        .route("/api/devices/{id}/trips", get(api::history::trips))
        .route("/api/rejected", get(api::rejected::recent))
        .route(
            "/api/devices/{id}/geofences",
            get(api::geofences::of_device),
        )
        .route(
            "/api/geofences",
            get(api::geofences::list).post(api::geofences::create),
        )
        .route(
            "/api/geofences/{id}",
            get(api::geofences::one)
                .put(api::geofences::replace)
                .delete(api::geofences::delete),
        )
        .route("/api/rules", get(api::rules::list).post(api::rules::create))
        .route(
            "/api/rules/{id}",
            get(api::rules::one)
                .put(api::rules::replace)
                .delete(api::rules::delete),
        )
        .route("/api/events", get(api::events::list_events))
        .route(
            "/api/devices/{id}/commands",
            get(api::commands::list).post(api::commands::send),
        )
        .route(
            "/api/commands/{id}",
            get(api::commands::one).delete(api::commands::cancel),
        )
        .route(
            "/api/webhooks",
            get(api::webhooks::list).post(api::webhooks::create),
        )
        .route(
            "/api/webhooks/{id}",
            get(api::webhooks::one).delete(api::webhooks::delete),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            api::body::MAX_BODY_BYTES,
        ))
        .route("/api/replay", get(api::replay::replay))
        .route("/api/stream", get(api::stream::stream))
        .route("/api/ws", get(api::ws::ws))
        .route(
            "/api/admin/devices",
            get(api::admin::devices).post(api::admin::add_device),
        )
        .route("/api/admin/devices/{id}", patch(api::admin::change_device))
        .route(
            "/api/admin/devices/{id}/secret",
            post(api::admin::rotate_secret),
        )
        .route(
            "/api/admin/tokens",
            get(api::admin::tokens).post(api::admin::add_token),
        )
        .route(
            "/api/admin/tokens/{id}",
            axum::routing::delete(api::admin::revoke_token),
        )
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        // The page and its settings are public: the page itself asks for a token.
        .route("/", get(web::index))
        .route("/assets/{*path}", get(web::assets))
        .route("/dashboard.json", get(web::settings))
        .merge(guarded)
        .with_state(state)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for HTTP on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the HTTP listener; an error names the address.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}
