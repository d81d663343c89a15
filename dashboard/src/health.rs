//! Liveness, readiness and metrics for operators and orchestrators.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use crate::AppState;

/// The process is up and serving HTTP.
pub async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready to take traffic: listeners are up, storage answers, and the write-ahead log has
/// room (when it is full, devices are being slowed down until storage catches up). Also says
/// which storage upkeep jobs are failing.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let listeners = state.listeners_up.load(Ordering::Acquire);
    // A probe must answer promptly even when the database does not.
    let storage = matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await,
        Ok(Ok(()))
    );
    let spool_full = state.spill.is_spool_full();
    // Upkeep that fails does not stop traffic, so it is reported, not made a refusal.
    let jobs_failing: Vec<_> = state
        .storage_jobs
        .failing()
        .into_iter()
        .map(|f| {
            serde_json::json!({
                "job": f.job,
                "error": f.error,
                "since": fieldline_store::time_format::format_ms(f.since),
            })
        })
        .collect();
    let ready = listeners && storage && !spool_full;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "ready": ready,
            "listeners": listeners,
            "storage": storage,
            "backend": state.store.backend(),
            // Storage is behind: new data waits in the write-ahead log on disk.
            "storage_behind": state.spill.is_spilled(),
            "log_full": spool_full,
            "storage_jobs_failing": jobs_failing,
        })),
    )
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
