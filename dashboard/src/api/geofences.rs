//! `/api/geofences`: fences as GeoJSON. A POST takes one Feature or a FeatureCollection,
//! stored all or none; `GET /api/devices/{id}/geofences` says which a device is inside now.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldline_ingest::geofence::Fence;
use fieldline_store::time_format::{format_ms, now_ms};
use fieldline_store::Definitions;
use serde_json::{json, Value};

use super::body::{checked_id, json_body, store_error, with_id, without_id};
use super::checked_device_id;
use super::definitions;
use crate::judging::Touches;
use crate::{ApiError, AppState};

/// Most features one import may hold.
const MAX_FEATURES: usize = 10_000;

/// The stored form: the Feature as given, without an id of its own.
fn checked(feature: &Value) -> Result<(String, Value), String> {
    let fence = Fence::from_feature(0, feature).map_err(|e| e.0)?;
    Ok((fence.name, without_id(feature)))
}

#[utoipa::path(get, path = "/api/geofences", tag = "geofences", operation_id = "list_geofences",
    summary = "Every geofence, as a GeoJSON FeatureCollection",
    responses((status = 200, description = "Success", body = super::schema::GeofenceCollection), super::schema::Unavailable))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stored = state.store.definitions(Definitions::Geofences).await?;
    let features: Vec<Value> = stored.iter().map(|d| with_id(d.id, &d.body)).collect();
    Ok(Json(
        json!({"type": "FeatureCollection", "features": features}),
    ))
}

#[utoipa::path(get, path = "/api/geofences/{id}", tag = "geofences", operation_id = "get_geofence",
    summary = "One geofence", params(("id" = i64, Path, description = "The geofence's id")),
    responses((status = 200, description = "Success", body = super::schema::Geofence), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    definitions::one(&state, Definitions::Geofences, &id).await
}

#[utoipa::path(post, path = "/api/geofences", tag = "geofences", operation_id = "create_geofences",
    summary = "Stores one Feature, or a FeatureCollection all or none",
    request_body(content((super::schema::Geofence), (super::schema::GeofenceCollection)),
        description = "A Feature, or a FeatureCollection of up to 10,000"),
    responses((status = 201, description = "Stored, with ids: a Feature or a FeatureCollection as sent",
            body = super::schema::Geofence),
        (status = 400, description = "Not stored: every invalid feature is named", body = super::schema::ErrorBody),
        super::schema::Unavailable))]
pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let collection = body.get("type").and_then(Value::as_str) == Some("FeatureCollection");
    let features: Vec<&Value> = if collection {
        match body.get("features").and_then(Value::as_array) {
            Some(f) if !f.is_empty() && f.len() <= MAX_FEATURES => f.iter().collect(),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "a FeatureCollection needs 1 to {MAX_FEATURES} features"
                )))
            }
        }
    } else {
        vec![&body]
    };
    // The self-intersection test is quadratic in a ring's vertices: off the async workers.
    let owned: Vec<Value> = features.into_iter().cloned().collect();
    let checked_all = tokio::task::spawn_blocking(move || {
        let mut items = Vec::with_capacity(owned.len());
        let mut errors = Vec::new();
        for (i, feature) in owned.iter().enumerate() {
            match checked(feature) {
                Ok(item) => items.push(item),
                Err(e) if collection => errors.push(format!("feature {i}: {e}")),
                Err(e) => errors.push(e),
            }
        }
        (items, errors)
    })
    .await
    .map_err(|_| ApiError::internal("the geofence check did not finish"))?;
    let (items, errors) = checked_all;
    if !errors.is_empty() {
        let mut message = errors.join("; ");
        if collection {
            message = format!("nothing was stored: {message}");
        }
        return Err(ApiError::bad_request(message));
    }
    let store = state.store.as_ref();
    let ids = state
        .judging
        .change(
            store,
            Touches::Geofences,
            store.add_definitions(Definitions::Geofences, &items, now_ms()),
        )
        .await
        .map_err(store_error)?;
    let created: Vec<Value> = ids
        .iter()
        .zip(&items)
        .map(|(id, (_, feature))| with_id(*id, &feature.to_string()))
        .collect();
    let body = if collection {
        json!({"type": "FeatureCollection", "features": created})
    } else {
        created.into_iter().next().unwrap_or(Value::Null)
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(put, path = "/api/geofences/{id}", tag = "geofences", operation_id = "replace_geofence",
    summary = "Replaces a geofence; devices inside are judged against the new shape",
    params(("id" = i64, Path, description = "The geofence's id")), request_body = super::schema::Geofence,
    responses((status = 200, description = "Success", body = super::schema::Geofence), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn replace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = checked_id(&id, "geofence")?;
    let body = json_body(body)?;
    let (name, feature) = tokio::task::spawn_blocking(move || checked(&body))
        .await
        .map_err(|_| ApiError::internal("the geofence check did not finish"))?
        .map_err(ApiError::bad_request)?;
    definitions::replace(&state, Definitions::Geofences, id, &name, &feature).await
}

#[utoipa::path(delete, path = "/api/geofences/{id}", tag = "geofences", operation_id = "delete_geofence",
    summary = "Deletes a geofence", params(("id" = i64, Path, description = "The geofence's id")),
    responses((status = 204, description = "Deleted"), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    definitions::delete(&state, Definitions::Geofences, &id).await
}

/// `GET /api/devices/{id}/geofences`: the fences the device is inside now, with `since`.
#[utoipa::path(get, path = "/api/devices/{id}/geofences", tag = "geofences", operation_id = "device_geofences",
    summary = "The geofences a device is inside now", params(super::DeviceId),
    responses((status = 200, description = "Success", body = Vec<super::schema::Inside>), super::schema::BadRequest, super::schema::Unavailable))]
pub async fn of_device(
    State(state): State<AppState>,
    Path(device): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let device = checked_device_id(&device)?;
    let states = state
        .store
        .device_states(device, Definitions::Geofences)
        .await?;
    let (_, fences) = state.judging.fences.snapshot();
    let inside: Vec<Value> = states
        .iter()
        .filter(|s| s.active)
        .filter_map(|s| {
            let fence = fences.get(s.subject.id())?;
            Some(json!({"geofence": fence.id, "name": fence.name, "since": format_ms(s.since_ms)}))
        })
        .collect();
    Ok(Json(json!(inside)))
}
