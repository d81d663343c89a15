//! `GET /api/rejected`: the newest rejected messages with their reasons.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use fieldline_store::RejectedMessage;
use serde::Deserialize;

use crate::{ApiError, AppState};

#[derive(Deserialize)]
pub struct Params {
    limit: Option<u32>,
}

pub async fn recent(
    State(state): State<AppState>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Vec<RejectedMessage>>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100).clamp(1, 1_000);
    Ok(Json(state.store.rejected(limit).await?))
}
