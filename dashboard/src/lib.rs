//! The HTTP side of Fieldline: the REST API over the store, the [`live`] hub with its SSE and
//! WebSocket streams, health and readiness, and Prometheus metrics. Handlers are small and get
//! everything through [`AppState`].

mod api;
mod error;
mod health;
pub mod live;
mod live_clients;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use fieldline_ingest::Store;
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
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/devices", get(api::devices::list))
        .route("/api/devices/{id}", get(api::devices::one))
        .route("/api/devices/{id}/telemetry", get(api::history::telemetry))
        .route("/api/devices/{id}/track", get(api::history::track))
        .route("/api/devices/{id}/status", get(api::history::statuses))
        .route("/api/rejected", get(api::rejected::recent))
        .route("/api/stream", get(api::stream::stream))
        .route("/api/ws", get(api::ws::ws))
        .fallback(api::not_found)
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
