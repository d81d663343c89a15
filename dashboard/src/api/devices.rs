//! `GET /api/devices` and `GET /api/devices/{id}`: each device's latest state.

use axum::extract::{Path, State};
use axum::Json;
use fieldline_store::DeviceSummary;

use super::checked_device_id;
use crate::{ApiError, AppState};

pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<DeviceSummary>>, ApiError> {
    Ok(Json(state.store.devices().await?))
}

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
