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
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::checked_device_id;
use crate::auth::token::{new_token, Role};
use crate::{ApiError, AppState};

#[derive(Deserialize, ToSchema)]
pub struct NewDevice {
    /// 1 to 64 characters from `[A-Za-z0-9_.-]`.
    id: String,
}

#[derive(Deserialize, ToSchema)]
pub struct DeviceChange {
    /// A disabled device cannot connect; one connected now is cut off.
    enabled: bool,
}

#[derive(Deserialize, ToSchema)]
pub struct NewToken {
    /// Who or what uses it: recorded with what it does.
    name: String,
    /// `admin`, `operator` or `viewer`.
    role: String,
}

/// A registered device (never its secret).
#[derive(Serialize, ToSchema)]
pub struct RegisteredDevice {
    id: String,
    enabled: bool,
    created_at: String,
    updated_at: String,
}

/// A device's MQTT password: shown once, stored only as a hash.
#[derive(Serialize, ToSchema)]
pub struct DeviceSecret {
    id: String,
    secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct DeviceEnabled {
    id: String,
    enabled: bool,
}

/// An API token's record (never the token).
#[derive(Serialize, ToSchema)]
pub struct TokenRecord {
    id: String,
    name: String,
    role: String,
    created_at: String,
    revoked_at: Option<String>,
}

/// A new API token: shown once, stored only as a hash.
#[derive(Serialize, ToSchema)]
pub struct NewTokenIssued {
    id: String,
    name: String,
    role: String,
    /// Send as `Authorization: Bearer <token>`.
    token: String,
}

#[utoipa::path(get, path = "/api/admin/devices", tag = "admin", operation_id = "admin_list_devices",
    summary = "The device registry",
    responses((status = 200, description = "Success", body = Vec<RegisteredDevice>), super::schema::Forbidden, super::schema::Unavailable))]
pub async fn devices(
    State(state): State<AppState>,
) -> Result<Json<Vec<RegisteredDevice>>, ApiError> {
    let changes = state.store.access_changes(0).await?;
    Ok(Json(changes.devices.iter().map(registered).collect()))
}

fn registered(d: &DeviceCredential) -> RegisteredDevice {
    RegisteredDevice {
        id: d.device.clone(),
        enabled: d.enabled,
        created_at: format_ms(d.created_at_ms),
        updated_at: format_ms(d.updated_at_ms),
    }
}

fn token_record(t: &ApiTokenRecord) -> TokenRecord {
    TokenRecord {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.clone(),
        created_at: format_ms(t.created_at_ms),
        revoked_at: t.revoked_at_ms.map(format_ms),
    }
}

#[utoipa::path(post, path = "/api/admin/devices", tag = "admin", operation_id = "admin_add_device",
    summary = "Registers a device and returns its secret, once",
    request_body = NewDevice,
    responses((status = 201, description = "Created", body = DeviceSecret), super::schema::BadRequest, super::schema::Forbidden,
        super::schema::Conflict, super::schema::Unavailable))]
pub async fn add_device(
    State(state): State<AppState>,
    body: Result<Json<NewDevice>, JsonRejection>,
) -> Result<(StatusCode, Json<DeviceSecret>), ApiError> {
    let Json(body) = body?;
    let id = checked_device_id(&body.id)?;
    let secret = new_secret();
    let hash = hashed(&secret).await?;
    in_force(&state, state.store.add_device(id, &hash, now_ms()).await).await?;
    tracing::info!(device = id, "device registered over the API");
    Ok((
        StatusCode::CREATED,
        Json(DeviceSecret {
            id: id.to_string(),
            secret,
        }),
    ))
}

#[utoipa::path(patch, path = "/api/admin/devices/{id}", tag = "admin", operation_id = "admin_change_device",
    summary = "Enables or disables a device",
    params(super::DeviceId), request_body = DeviceChange,
    responses((status = 200, description = "Success", body = DeviceEnabled), super::schema::BadRequest, super::schema::Forbidden, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn change_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<DeviceChange>, JsonRejection>,
) -> Result<Json<DeviceEnabled>, ApiError> {
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
    Ok(Json(DeviceEnabled {
        id: id.to_string(),
        enabled: body.enabled,
    }))
}

#[utoipa::path(post, path = "/api/admin/devices/{id}/secret", tag = "admin", operation_id = "admin_rotate_secret",
    summary = "Gives a device a new secret; the old one stops working",
    params(super::DeviceId),
    responses((status = 200, description = "Success", body = DeviceSecret), super::schema::BadRequest, super::schema::Forbidden, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceSecret>, ApiError> {
    let id = checked_device_id(&id)?;
    let secret = new_secret();
    let hash = hashed(&secret).await?;
    in_force(
        &state,
        state.store.set_device_secret(id, &hash, now_ms()).await,
    )
    .await?;
    tracing::info!(device = id, "device secret rotated over the API");
    Ok(Json(DeviceSecret {
        id: id.to_string(),
        secret,
    }))
}

#[utoipa::path(get, path = "/api/admin/tokens", tag = "admin", operation_id = "admin_list_tokens",
    summary = "The API tokens, revoked ones included",
    responses((status = 200, description = "Success", body = Vec<TokenRecord>), super::schema::Forbidden, super::schema::Unavailable))]
pub async fn tokens(State(state): State<AppState>) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    let changes = state.store.access_changes(0).await?;
    Ok(Json(changes.tokens.iter().map(token_record).collect()))
}

#[utoipa::path(post, path = "/api/admin/tokens", tag = "admin", operation_id = "admin_add_token",
    summary = "Creates an API token and returns it, once",
    request_body = NewToken,
    responses((status = 201, description = "Created", body = NewTokenIssued), super::schema::BadRequest, super::schema::Forbidden, super::schema::Unavailable))]
pub async fn add_token(
    State(state): State<AppState>,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<NewTokenIssued>), ApiError> {
    let Json(body) = body?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::bad_request("role must be \"admin\", \"operator\" or \"viewer\"")
    })?;
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
        Json(NewTokenIssued {
            id: made.record.id,
            name: name.to_string(),
            role: role.as_str().to_string(),
            token: made.token,
        }),
    ))
}

#[utoipa::path(delete, path = "/api/admin/tokens/{id}", tag = "admin", operation_id = "admin_revoke_token",
    summary = "Revokes an API token; streams opened with it close",
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 204, description = "Revoked"), super::schema::Forbidden, super::schema::NotFound, super::schema::Unavailable))]
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
