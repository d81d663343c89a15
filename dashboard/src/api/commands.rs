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
#[utoipa::path(post, path = "/api/devices/{id}/commands", tag = "commands", operation_id = "send_command",
    summary = "Sends a device a command (operator or admin)",
    params(super::DeviceId,
        ("Idempotency-Key" = Option<String>, Header, description = "A retried request with the same key returns the same command")),
    request_body = CommandRequest,
    responses((status = 201, description = "Stored; delivered when the device is subscribed", body = super::schema::Command),
        (status = 200, description = "The command an earlier request with this Idempotency-Key created", body = super::schema::Command),
        super::schema::BadRequest, super::schema::Forbidden, super::schema::Unavailable))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only commands in this state.
    state: Option<String>,
    /// Created from (RFC 3339 or epoch ms).
    from: Option<String>,
    /// Created before.
    to: Option<String>,
    /// 1 to 10,000 (default 100).
    limit: Option<u32>,
}

/// `GET /api/devices/{id}/commands?state=&from=&to=&limit=`: newest first.
#[utoipa::path(get, path = "/api/devices/{id}/commands", tag = "commands", operation_id = "list_commands",
    summary = "A device's commands, newest first", params(super::DeviceId, ListParams),
    responses((status = 200, description = "Success", body = Vec<super::schema::Command>), super::schema::BadRequest, super::schema::Unavailable))]
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
#[utoipa::path(get, path = "/api/commands/{id}", tag = "commands", operation_id = "get_command",
    summary = "One command and where it stands", params(("id" = String, Path, description = "The command's id")),
    responses((status = 200, description = "Success", body = super::schema::Command), super::schema::NotFound, super::schema::Unavailable))]
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.commands.get(&id).await?).into_response())
}

/// `DELETE /api/commands/{id}`: cancels a command not yet delivered; 409 after.
#[utoipa::path(delete, path = "/api/commands/{id}", tag = "commands", operation_id = "cancel_command",
    summary = "Cancels a command not yet delivered (operator or admin)",
    params(("id" = String, Path, description = "The command's id")),
    responses((status = 200, description = "Cancelled", body = super::schema::Command), super::schema::Forbidden,
        super::schema::NotFound, super::schema::Conflict, super::schema::Unavailable))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.commands.cancel(&id).await?).into_response())
}
