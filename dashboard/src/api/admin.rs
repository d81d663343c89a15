//! `/api/admin`: the device registry and API tokens (admin role).
//!
//! - `GET /api/admin/devices`, `POST /api/admin/devices` `{"id"}` → `{"id", "secret"}` (201)
//! - `PATCH /api/admin/devices/{id}` `{"enabled": bool}`
//! - `POST /api/admin/devices/{id}/secret` → a new secret; the old one stops working
//! - `GET /api/admin/tokens`, `POST /api/admin/tokens` `{"name", "role"}` → `{"id", "token"}`
//! - `DELETE /api/admin/tokens/{id}`: revoke
//!
//! Secrets and tokens appear in a response once and are never stored in the clear.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use fieldline_broker::credentials::{hash_secret, new_secret};
use fieldline_store::time_format::{format_ms, now_ms};
use fieldline_store::StoreError;
use fieldline_store::{ApiTokenRecord, DeviceCredential};
use serde::Deserialize;
use serde_json::{json, Value};

use super::checked_device_id;
use crate::auth::token::{new_token, Role};
use crate::{ApiError, AppState};

#[derive(Deserialize)]
pub struct NewDevice {
    id: String,
}

#[derive(Deserialize)]
pub struct DeviceChange {
    enabled: bool,
}

#[derive(Deserialize)]
pub struct NewToken {
    name: String,
    role: String,
}

pub async fn devices(State(state): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    let changes = state.store.access_changes(0).await?;
    Ok(Json(changes.devices.iter().map(device_json).collect()))
}

fn device_json(d: &DeviceCredential) -> Value {
    json!({
        "id": d.device,
        "enabled": d.enabled,
        "created_at": format_ms(d.created_at_ms),
        "updated_at": format_ms(d.updated_at_ms),
    })
}

fn token_json(t: &ApiTokenRecord) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "created_at": format_ms(t.created_at_ms),
        "revoked_at": t.revoked_at_ms.map(format_ms),
    })
}

pub async fn add_device(
    State(state): State<AppState>,
    body: Result<Json<NewDevice>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let id = checked_device_id(&body.id)?;
    let secret = new_secret();
    let hash = hashed(&secret).await?;
    in_force(&state, state.store.add_device(id, &hash, now_ms()).await).await?;
    tracing::info!(device = id, "device registered over the API");
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "secret": secret })),
    ))
}

pub async fn change_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<DeviceChange>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body?;
    let id = checked_device_id(&id)?;
    in_force(
        &state,
        state
            .store
            .set_device_enabled(id, body.enabled, now_ms())
            .await,
    )
    .await?;
    tracing::info!(
        device = id,
        enabled = body.enabled,
        "device changed over the API"
    );
    Ok(Json(json!({ "id": id, "enabled": body.enabled })))
}

pub async fn rotate_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = checked_device_id(&id)?;
    let secret = new_secret();
    let hash = hashed(&secret).await?;
    in_force(
        &state,
        state.store.set_device_secret(id, &hash, now_ms()).await,
    )
    .await?;
    tracing::info!(device = id, "device secret rotated over the API");
    Ok(Json(json!({ "id": id, "secret": secret })))
}

pub async fn tokens(State(state): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    let changes = state.store.access_changes(0).await?;
    Ok(Json(changes.tokens.iter().map(token_json).collect()))
}

pub async fn add_token(
    State(state): State<AppState>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body?;
    let role = Role::parse(&body.role)
        .ok_or_else(|| ApiError::bad_request("role must be \"admin\" or \"viewer\""))?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 128 || name.contains(char::is_control) {
        return Err(ApiError::bad_request(
            "name must be 1 to 128 characters without control characters",
        ));
    }
    let made = new_token(name, role, now_ms());
    in_force(&state, state.store.add_token(&made.record).await).await?;
    tracing::info!(token = %made.record.id, role = role.as_str(), "API token created over the API");
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "id": made.record.id, "name": name, "role": role.as_str(), "token": made.token }),
        ),
    ))
}

pub async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    in_force(&state, state.store.revoke_token(&id, now_ms()).await).await?;
    tracing::info!(token = %id, "API token revoked over the API");
    Ok(StatusCode::NO_CONTENT)
}

/// Hashing takes tens of milliseconds of a core: off the async threads.
async fn hashed(secret: &str) -> Result<String, ApiError> {
    let secret = secret.to_string();
    tokio::task::spawn_blocking(move || hash_secret(&secret))
        .await
        .map_err(|_| ApiError::internal("hashing the secret failed"))?
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Waits until a stored registry change is in force in the broker and the API; a store
/// error becomes the fitting status.
async fn in_force(state: &AppState, stored: Result<i64, StoreError>) -> Result<(), ApiError> {
    let revision = stored.map_err(conflict)?;
    state.access.registry_changed(revision).await;
    Ok(())
}

fn conflict(e: StoreError) -> ApiError {
    match e {
        StoreError::AlreadyExists(what) => ApiError::conflict(format!("{what} already exists")),
        StoreError::NotFound(what) => ApiError::not_found(format!("no such {what}")),
        other => other.into(),
    }
}
