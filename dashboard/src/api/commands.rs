//! `/api/devices/{id}/commands` and `/api/commands/{id}`: commands to devices and their
//! ledger. Sending and cancelling need an operator (or admin) token; reading, a viewer's.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use fieldline_ingest::commands::{CommandError, CommandRequest};
use fieldline_store::commands::{CommandQuery, CommandState};
use serde::Deserialize;

use super::body::json_body;
use super::checked_device_id;
use crate::auth::Principal;
use crate::{ApiError, AppState};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Invalid(why) => ApiError::bad_request(why),
            CommandError::NotFound => ApiError::not_found("no such command"),
            CommandError::Conflict(why) => ApiError::conflict(why),
            CommandError::Store(e) => e.into(),
        }
    }
}

/// `POST /api/devices/{id}/commands`: 201 with the command, or 200 with the one an earlier
/// request with the same `Idempotency-Key` created.
pub async fn send(
    State(state): State<AppState>,
    Path(device): Path<String>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let device = checked_device_id(&device)?;
    let body = json_body(body)?;
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let request: CommandRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::bad_request(format!("the command is not valid: {e}")))?;
    let key = match headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    let by = principal.map(|Extension(p)| p.name);
    let (command, created) = state.commands.send(device, request, by, key).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(command)).into_response())
}

#[derive(Deserialize)]
pub struct ListParams {
    state: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
}

/// `GET /api/devices/{id}/commands?state=&from=&to=&limit=`: newest first.
pub async fn list(
    State(state): State<AppState>,
    Path(device): Path<String>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let device = checked_device_id(&device)?;
    let command_state = match params.state.as_deref() {
        None => None,
        Some(s) => Some(CommandState::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "state must be queued, sent, delivered, replied, failed, expired or cancelled",
            )
        })?),
    };
    let query = CommandQuery {
        device: device.to_string(),
        state: command_state,
        from_ms: super::time_param("from", params.from.as_deref(), i64::MIN)?,
        to_ms: super::time_param("to", params.to.as_deref(), i64::MAX)?,
        limit: super::checked_limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?,
    };
    Ok(Json(state.commands.list(&query).await?).into_response())
}

/// `GET /api/commands/{id}`.
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.commands.get(&id).await?).into_response())
}

/// `DELETE /api/commands/{id}`: cancels a command not yet delivered; 409 after.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.commands.cancel(&id).await?).into_response())
}
