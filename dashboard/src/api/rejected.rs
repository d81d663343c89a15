//! `GET /api/rejected`: the newest rejected messages with their reasons.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use fieldline_store::RejectedMessage;
use serde::Deserialize;

use crate::{ApiError, AppState};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// How many, newest first: 1 to 1000 (default 100).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/rejected", tag = "devices", operation_id = "list_rejected",
    summary = "The newest messages refused at ingest, with the reason and a preview",
    params(Params),
    responses((status = 200, description = "Success", body = Vec<RejectedMessage>), super::schema::BadRequest, super::schema::Unavailable))]
pub async fn recent(
    State(state): State<AppState>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Vec<RejectedMessage>>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1_000);
    Ok(Json(state.store.rejected(limit).await?))
}
