//! The HTTP side of Fieldline: the REST API over the store, the [`live`] hub with its SSE and
//! WebSocket streams, health and readiness, and Prometheus metrics. Handlers are small and get
//! everything through [`AppState`].

mod api;

pub use api::cluster::{ClusterNode, ClusterPartition, ClusterState, ClusterView};
pub mod auth;
mod error;
mod health;
pub mod http_listener;
pub mod https_listener;
pub mod judging;
pub mod live;
mod live_clients;
mod openapi;
mod paging;
mod replay;
pub mod tracks;
pub mod web;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use fieldline_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// What people do with alarms.
    pub alarms: Arc<fieldline_ingest::alarms::AlarmDesk>,
    /// Whether storage's upkeep jobs (ours and the server's) are working.
    pub storage_jobs: Arc<fieldline_store::health::JobHealth>,
    /// Cluster mode's view of the other nodes; `None` for one node alone.
    pub cluster: Option<Arc<dyn ClusterView>>,
}

pub fn router(state: AppState) -> Router {
    let (public, guarded) = routes();
    let (public, _) = public.split_for_parts();
    let (guarded, _) = guarded.split_for_parts();
    public
        .merge(guarded.layer(axum::middleware::from_fn_with_state(
            state.access.clone(),
            auth::require_token,
        )))
        .with_state(state)
}

/// The API's OpenAPI description: what [`router`] serves, from the same registrations.
pub fn description() -> utoipa::openapi::OpenApi {
    let (public, guarded) = routes();
    public.merge(guarded).into_openapi()
}

/// Every route with its description, public and guarded (everything but the probes, the
/// pages and the description needs a token once API authentication is on). `routes!`
/// registers a handler's route and its `#[utoipa::path]` description together, so none is
/// served undescribed; the one plain `route` is the dashboard's static files.
fn routes() -> (OpenApiRouter<AppState>, OpenApiRouter<AppState>) {
    let public = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(web::index))
        .routes(routes!(web::docs))
        .routes(routes!(web::settings))
        .routes(routes!(openapi::description_json))
        .route("/assets/{*path}", get(web::assets));
    let bounded_bodies = OpenApiRouter::new()
        .routes(routes!(health::metrics))
        .routes(routes!(api::cluster::state))
        .routes(routes!(api::devices::list))
        .routes(routes!(api::devices::one))
        .routes(routes!(api::history::telemetry))
        .routes(routes!(api::history::track))
        .routes(routes!(api::history::statuses))
        .routes(routes!(api::history::trips))
        .routes(routes!(api::rejected::recent))
        .routes(routes!(api::geofences::of_device))
        .routes(routes!(api::geofences::list, api::geofences::create))
        .routes(routes!(
            api::geofences::one,
            api::geofences::replace,
            api::geofences::delete
        ))
        .routes(routes!(api::rules::list, api::rules::create))
        .routes(routes!(
            api::rules::one,
            api::rules::replace,
            api::rules::delete
        ))
        .routes(routes!(api::events::list_events))
        .routes(routes!(api::commands::list, api::commands::send))
        .routes(routes!(api::commands::one, api::commands::cancel))
        .routes(routes!(api::webhooks::list, api::webhooks::create))
        .routes(routes!(api::webhooks::one, api::webhooks::delete))
        .routes(routes!(api::alarms::list))
        .routes(routes!(api::alarms::one))
        .routes(routes!(api::alarms::acknowledge))
        .routes(routes!(api::alarms::clear))
        .routes(routes!(api::alarms::assign))
        .routes(routes!(api::alarms::note))
        .routes(routes!(api::channels::list, api::channels::create))
        .routes(routes!(api::channels::one, api::channels::delete))
        .layer(axum::extract::DefaultBodyLimit::max(
            api::body::MAX_BODY_BYTES,
        ));
    let guarded = bounded_bodies
        .routes(routes!(api::replay::replay))
        .routes(routes!(api::stream::stream))
        .routes(routes!(api::ws::ws))
        .routes(routes!(api::admin::devices, api::admin::add_device))
        .routes(routes!(api::admin::change_device))
        .routes(routes!(api::admin::rotate_secret))
        .routes(routes!(api::admin::tokens, api::admin::add_token))
        .routes(routes!(api::admin::revoke_token))
        .fallback(api::not_found);
    (public, guarded)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen for HTTP on {addr}")]
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
