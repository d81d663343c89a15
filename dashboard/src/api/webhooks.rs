//! `/api/webhooks`: event notifications over HTTP. Secrets are write-only; a webhook's view
//! shows its position, backlog and last error.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldline_ingest::webhook;
use fieldline_store::derived::Event;
use fieldline_store::time_format::{format_ms, now_ms};
use fieldline_store::{EventQuery, WebhookRecord};
use serde::Serialize;
use utoipa::ToSchema;

use super::body::{checked_id, json_body, store_error};
use crate::judging::Touches;
use crate::{ApiError, AppState};

/// Matching events counted for the backlog, at most.
const BACKLOG_COUNTED: u32 = 10_000;

/// A webhook as the API shows it: where it stands, never its secret.
#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    id: i64,
    url: String,
    kinds: Vec<String>,
    /// Device ids or prefixes ending in `*`; empty: every device.
    devices: Vec<String>,
    /// The seq of the last event it took.
    delivered_seq: u64,
    last_error: Option<String>,
    last_error_at: Option<String>,
    created_at: String,
    /// Stored events it wants and has not had yet (counted up to 10,000); one webhook only.
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<u64>,
}

/// A new webhook.
#[derive(ToSchema)]
#[allow(dead_code)] // Read by the schema derive: the body is checked by `webhook::from_json`.
pub struct NewWebhook {
    /// `http://` or `https://`.
    url: String,
    /// `geofence`, `alert`, `command`; absent: all.
    kinds: Option<Vec<String>>,
    /// Device ids or prefixes ending in `*`; absent: every device.
    devices: Option<Vec<String>>,
    /// Signs each body: `Fieldline-Signature: sha256=<HMAC>`; 1 to 256 bytes.
    secret: String,
}

fn view(hook: &WebhookRecord, backlog: Option<u64>) -> WebhookView {
    WebhookView {
        id: hook.id,
        url: hook.url.clone(),
        kinds: hook.kinds.clone(),
        devices: hook.devices.clone(),
        delivered_seq: hook.delivered_seq,
        last_error: hook.last_error.clone(),
        last_error_at: hook.last_error_at_ms.map(format_ms),
        created_at: format_ms(hook.created_at_ms),
        backlog,
    }
}

#[utoipa::path(get, path = "/api/webhooks", tag = "events", operation_id = "list_webhooks",
    summary = "Every webhook with its position and last error",
    responses((status = 200, description = "Success", body = Vec<WebhookView>), super::schema::Unavailable))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<WebhookView>>, ApiError> {
    let hooks = state.store.webhooks().await?;
    Ok(Json(hooks.iter().map(|h| view(h, None)).collect()))
}

/// One webhook with its backlog: the stored events it wants and has not had yet (counted up
/// to 10,000).
#[utoipa::path(get, path = "/api/webhooks/{id}", tag = "events", operation_id = "get_webhook",
    summary = "One webhook with its backlog", params(("id" = i64, Path, description = "The webhook's id")),
    responses((status = 200, description = "Success", body = WebhookView), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    let id = checked_id(&id, "webhook")?;
    let hooks = state.store.webhooks().await?;
    let hook = hooks
        .iter()
        .find(|h| h.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no such webhook {id}")))?;
    let backlog = backlog(&state, hook.delivered_seq, |e| webhook::wants(hook, e)).await?;
    Ok(Json(view(hook, Some(backlog))))
}

/// The stored events after `delivered_seq` that a delivery (webhook or channel) `wants`,
/// counted over the next 10,000.
pub(super) async fn backlog(
    state: &AppState,
    delivered_seq: u64,
    wants: impl Fn(&Event) -> bool,
) -> Result<u64, ApiError> {
    let pending = state
        .store
        .events(&EventQuery {
            after_seq: delivered_seq,
            from_ms: i64::MIN,
            to_ms: i64::MAX,
            limit: BACKLOG_COUNTED,
            ..EventQuery::default()
        })
        .await?;
    Ok(pending.iter().filter(|e| wants(e)).count() as u64)
}

#[utoipa::path(post, path = "/api/webhooks", tag = "events", operation_id = "create_webhook",
    summary = "Adds a webhook: matching events are POSTed to it from the next one on", request_body = NewWebhook,
    responses((status = 201, description = "Created", body = WebhookView), super::schema::BadRequest, super::schema::Unavailable))]
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

#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "events", operation_id = "delete_webhook",
    summary = "Deletes a webhook", params(("id" = i64, Path, description = "The webhook's id")),
    responses((status = 204, description = "Deleted"), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
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
