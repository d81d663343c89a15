//! `GET /api/devices` and `GET /api/devices/{id}`: each device's latest state.

use axum::extract::{Path, State};
use axum::Json;
use fieldline_store::DeviceSummary;

use super::checked_device_id;
use crate::{ApiError, AppState};

#[utoipa::path(get, path = "/api/devices", tag = "devices", operation_id = "list_devices",
    summary = "Every device with its newest state: online, position, metrics",
    responses((status = 200, description = "Success", body = Vec<DeviceSummary>), super::schema::Unavailable))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<DeviceSummary>>, ApiError> {
    Ok(Json(state.store.devices().await?))
}

#[utoipa::path(get, path = "/api/devices/{id}", tag = "devices", operation_id = "get_device",
    summary = "One device's newest state",
    params(super::DeviceId),
    responses((status = 200, description = "Success", body = DeviceSummary), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeviceSummary>, ApiError> {
    let id = checked_device_id(&id)?;
    state
        .store
        .device(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no device {id}")))
}
