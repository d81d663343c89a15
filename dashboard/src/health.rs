//! Liveness, readiness and metrics for operators and orchestrators.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    status: &'static str,
}

/// Whether this node takes traffic, and why not.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    ready: bool,
    /// The MQTT and HTTP listeners are up (false once shutdown starts).
    listeners: bool,
    /// Storage answered within 2 s.
    storage: bool,
    /// `sqlite` or `postgres`.
    backend: &'static str,
    /// Storage is behind: new data waits in the write-ahead log on disk.
    storage_behind: bool,
    /// The log is full (the write-ahead log, or in cluster mode the shared stream): devices
    /// are not acknowledged until storage catches up.
    log_full: bool,
    /// Cluster mode: this node reaches a JetStream quorum (always true for one node alone).
    quorum: bool,
    /// Upkeep jobs failing now (ours and TimescaleDB's); they do not make the node unready.
    storage_jobs_failing: Vec<FailingJob>,
}

#[derive(Serialize, ToSchema)]
pub struct FailingJob {
    job: String,
    error: String,
    /// Failing since (RFC 3339).
    since: String,
}

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz",
    summary = "Liveness: the process serves HTTP", security(()),
    responses((status = 200, description = "Success", body = Health)))]
pub async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// Ready to take traffic: listeners are up, storage answers, and the write-ahead log has
/// room (when it is full, devices are being slowed down until storage catches up). Also says
/// which storage upkeep jobs are failing.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz",
    summary = "Readiness: listeners up, storage answering, log not full", security(()),
    responses((status = 200, description = "Success", body = Readiness), (status = 503, description = "Not ready", body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let listeners = state.listeners_up.load(Ordering::Acquire);
    // A probe must answer promptly even when the database does not.
    let storage = matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await,
        Ok(Ok(()))
    );
    let spool_full =
        state.spill.is_spool_full() || state.cluster.as_ref().is_some_and(|c| c.is_log_full());
    // Upkeep that fails does not stop traffic, so it is reported, not made a refusal.
    let storage_jobs_failing = state
        .storage_jobs
        .failing()
        .into_iter()
        .map(|f| FailingJob {
            job: f.job,
            error: f.error,
            since: fieldline_store::time_format::format_ms(f.since),
        })
        .collect();
    let quorum = state.cluster.as_ref().is_none_or(|c| c.has_quorum());
    let ready = listeners && storage && !spool_full && quorum;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            listeners,
            storage,
            backend: state.store.backend(),
            storage_behind: state.spill.is_spilled(),
            log_full: spool_full,
            quorum,
            storage_jobs_failing,
        }),
    )
}

#[utoipa::path(get, path = "/metrics", tag = "operations", operation_id = "metrics",
    summary = "Prometheus metrics (text exposition format)",
    responses((status = 200, description = "Success", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
