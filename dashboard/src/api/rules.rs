//! `/api/rules`: alert rules as JSON objects, each returned with its `id`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldline_ingest::alerts::AlertRule;
use fieldline_store::time_format::now_ms;
use fieldline_store::Definitions;
use serde_json::{json, Value};

use super::body::{checked_id, json_body, store_error, with_id, without_id};
use super::definitions;
use crate::judging::Touches;
use crate::{ApiError, AppState};

fn checked(body: &Value) -> Result<(String, Value), ApiError> {
    let rule = AlertRule::from_json(0, body).map_err(|e| ApiError::bad_request(e.0))?;
    Ok((rule.name, without_id(body)))
}

#[utoipa::path(get, path = "/api/rules", tag = "rules", operation_id = "list_rules",
    summary = "Every alert rule",
    responses((status = 200, description = "Success", body = Vec<super::schema::AlertRule>), super::schema::Unavailable))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stored = state.store.definitions(Definitions::AlertRules).await?;
    Ok(Json(json!(stored
        .iter()
        .map(|d| with_id(d.id, &d.body))
        .collect::<Vec<_>>())))
}

#[utoipa::path(get, path = "/api/rules/{id}", tag = "rules", operation_id = "get_rule",
    summary = "One alert rule", params(("id" = i64, Path, description = "The rule's id")),
    responses((status = 200, description = "Success", body = super::schema::AlertRule), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    definitions::one(&state, Definitions::AlertRules, &id).await
}

#[utoipa::path(post, path = "/api/rules", tag = "rules", operation_id = "create_rule",
    summary = "Stores an alert rule", request_body = super::schema::AlertRule,
    responses((status = 201, description = "Created", body = super::schema::AlertRule), super::schema::BadRequest, super::schema::Unavailable))]
pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let item = checked(&json_body(body)?)?;
    let store = state.store.as_ref();
    let items = [item];
    let ids = state
        .judging
        .change(
            store,
            Touches::Rules,
            store.add_definitions(Definitions::AlertRules, &items, now_ms()),
        )
        .await
        .map_err(store_error)?;
    let [(_, rule)] = items;
    let id = ids.first().copied().unwrap_or(0);
    Ok((StatusCode::CREATED, Json(with_id(id, &rule.to_string()))).into_response())
}

#[utoipa::path(put, path = "/api/rules/{id}", tag = "rules", operation_id = "replace_rule",
    summary = "Replaces an alert rule", params(("id" = i64, Path, description = "The rule's id")),
    request_body = super::schema::AlertRule,
    responses((status = 200, description = "Success", body = super::schema::AlertRule), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn replace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = checked_id(&id, "rule")?;
    let (name, rule) = checked(&json_body(body)?)?;
    definitions::replace(&state, Definitions::AlertRules, id, &name, &rule).await
}

#[utoipa::path(delete, path = "/api/rules/{id}", tag = "rules", operation_id = "delete_rule",
    summary = "Deletes an alert rule", params(("id" = i64, Path, description = "The rule's id")),
    responses((status = 204, description = "Deleted"), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    definitions::delete(&state, Definitions::AlertRules, &id).await
}
