//! `/api/webhooks`: event notifications over HTTP. Secrets are write-only; a webhook's view
//! shows its position, backlog and last error.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldline_ingest::webhook;
use fieldline_store::time_format::{format_ms, now_ms};
use fieldline_store::{EventQuery, WebhookRecord};
use serde_json::{json, Value};

use super::body::{checked_id, json_body, store_error};
use crate::judging::Touches;
use crate::{ApiError, AppState};

/// Matching events counted for the backlog, at most.
const BACKLOG_COUNTED: u32 = 10_000;

fn view(hook: &WebhookRecord, backlog: Option<u64>) -> Value {
    let mut v = json!({
        "id": hook.id,
        "url": hook.url,
        "kinds": hook.kinds,
        "devices": hook.devices,
        "delivered_seq": hook.delivered_seq,
        "last_error": hook.last_error,
        "last_error_at": hook.last_error_at_ms.map(format_ms),
        "created_at": format_ms(hook.created_at_ms),
    });
    if let Some(backlog) = backlog {
        v["backlog"] = json!(backlog);
    }
    v
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let hooks = state.store.webhooks().await?;
    Ok(Json(json!(hooks
        .iter()
        .map(|h| view(h, None))
        .collect::<Vec<_>>())))
}

/// One webhook with its backlog: the stored events it wants and has not had yet (counted up
/// to 10,000).
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = checked_id(&id, "webhook")?;
    let hooks = state.store.webhooks().await?;
    let hook = hooks
        .iter()
        .find(|h| h.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no such webhook {id}")))?;
    let pending = state
        .store
        .events(&EventQuery {
            after_seq: hook.delivered_seq,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            limit: BACKLOG_COUNTED,
            ..EventQuery::default()
        })
        .await?;
    let backlog = pending.iter().filter(|e| webhook::wants(hook, e)).count() as u64;
    Ok(Json(view(hook, Some(backlog))))
}

pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let record =
        webhook::from_json(&json_body(body)?, now_ms()).map_err(|e| ApiError::bad_request(e.0))?;
    let store = state.store.as_ref();
    let stored = state
        .judging
        .change(store, Touches::Webhooks, store.add_webhook(&record))
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(view(&stored, Some(0)))).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = checked_id(&id, "webhook")?;
    let store = state.store.as_ref();
    state
        .judging
        .change(store, Touches::Webhooks, store.delete_webhook(id))
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}
