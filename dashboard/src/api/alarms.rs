//! `/api/alarms`: the alarms alert rules open, and what people do with them. Reading needs a
//! viewer's token; acknowledging, clearing, assigning and notes an operator's (or admin's),
//! recorded with the token's name.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use fieldline_store::alarms::SEVERITIES;
use fieldline_store::alarms::{AlarmAction, AlarmQuery, AlarmRecord, AlarmRefused, AlarmState};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::checked_device_id;
use crate::auth::Principal;
use crate::{ApiError, AppState};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;
const MAX_NAME: usize = 128;
const MAX_NOTE: usize = 2_000;
/// Who did it when API authentication is off (no token, no name).
const ANONYMOUS: &str = "anonymous";

impl From<AlarmRefused> for ApiError {
    fn from(e: AlarmRefused) -> Self {
        match e {
            AlarmRefused::NotFound => ApiError::not_found("no such alarm"),
            AlarmRefused::Cleared => {
                ApiError::conflict("the alarm is cleared: nothing more can be done to it")
            }
            AlarmRefused::Store(e) => e.into(),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// `active`, `acknowledged` or `cleared`.
    state: Option<String>,
    /// Device ids, comma-separated.
    devices: Option<String>,
    /// `critical`, `major`, `minor` or `warning`.
    severity: Option<String>,
    /// 1 to 10,000 (default 100).
    limit: Option<u32>,
}

/// `POST /api/alarms/{id}/assign`.
#[derive(Deserialize, ToSchema)]
pub struct Assignment {
    /// Who is to handle it: 1 to 128 characters.
    to: String,
}

/// `POST /api/alarms/{id}/notes`.
#[derive(Deserialize, ToSchema)]
pub struct Note {
    /// 1 to 2,000 characters.
    text: String,
}

#[utoipa::path(get, path = "/api/alarms", tag = "alarms", operation_id = "list_alarms",
    summary = "Alarms, newest first",
    params(ListParams),
    responses((status = 200, description = "Success", body = Vec<super::schema::Alarm>),
        super::schema::BadRequest, super::schema::Unavailable))]
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Vec<AlarmRecord>>, ApiError> {
    let Query(params) = params?;
    let alarm_state = match params.state.as_deref() {
        None => None,
        Some(s) => Some(AlarmState::parse(s).ok_or_else(|| {
            ApiError::bad_request("state must be active, acknowledged or cleared")
        })?),
    };
    if let Some(severity) = &params.severity {
        if !SEVERITIES.contains(&severity.as_str()) {
            return Err(ApiError::bad_request(
                "severity must be critical, major, minor or warning",
            ));
        }
    }
    let devices = params
        .devices
        .as_deref()
        .map(|d| {
            d.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(|d| checked_device_id(d).map(str::to_owned))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?
        .unwrap_or_default();
    let query = AlarmQuery {
        state: alarm_state,
        devices,
        severity: params.severity,
        limit: super::checked_limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?,
    };
    Ok(Json(state.store.alarms(&query).await?))
}

fn alarm_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request("an alarm id is a positive number"))
}

#[utoipa::path(get, path = "/api/alarms/{id}", tag = "alarms", operation_id = "get_alarm",
    summary = "One alarm", params(("id" = i64, Path, description = "The alarm's id")),
    responses((status = 200, description = "Success", body = super::schema::Alarm),
        super::schema::BadRequest, super::schema::NotFound, super::schema::Unavailable))]
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AlarmRecord>, ApiError> {
    let id = alarm_id(&id)?;
    state
        .store
        .alarm(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no such alarm"))
}

/// Takes `action` for whoever called.
async fn act(
    state: &AppState,
    id: &str,
    principal: Option<Extension<Principal>>,
    action: AlarmAction,
) -> Result<Json<AlarmRecord>, ApiError> {
    let id = alarm_id(id)?;
    let by = principal.map_or_else(|| ANONYMOUS.to_owned(), |Extension(p)| p.name);
    Ok(Json(state.alarms.act(id, action, &by).await?))
}

#[utoipa::path(post, path = "/api/alarms/{id}/acknowledge", tag = "alarms", operation_id = "acknowledge_alarm",
    summary = "Says someone is on it (operator or admin); again changes nothing",
    params(("id" = i64, Path, description = "The alarm's id")),
    responses((status = 200, description = "Acknowledged", body = super::schema::Alarm), super::schema::BadRequest,
        super::schema::Forbidden, super::schema::NotFound, super::schema::Conflict, super::schema::Unavailable))]
pub async fn acknowledge(
    State(state): State<AppState>,
    Path(id): Path<String>,
    principal: Option<Extension<Principal>>,
) -> Result<Json<AlarmRecord>, ApiError> {
    act(&state, &id, principal, AlarmAction::Acknowledge).await
}

#[utoipa::path(post, path = "/api/alarms/{id}/clear", tag = "alarms", operation_id = "clear_alarm",
    summary = "Clears it by hand (operator or admin)",
    params(("id" = i64, Path, description = "The alarm's id")),
    responses((status = 200, description = "Cleared", body = super::schema::Alarm), super::schema::BadRequest,
        super::schema::Forbidden, super::schema::NotFound, super::schema::Conflict, super::schema::Unavailable))]
pub async fn clear(
    State(state): State<AppState>,
    Path(id): Path<String>,
    principal: Option<Extension<Principal>>,
) -> Result<Json<AlarmRecord>, ApiError> {
    act(&state, &id, principal, AlarmAction::Clear).await
}

/// A name or text from a body: trimmed, 1 to `max` characters, no control characters (a
/// note may have line breaks).
fn checked_text(text: &str, what: &str, max: usize, lines: bool) -> Result<String, ApiError> {
    let text = text.trim();
    let allowed = |c: char| !c.is_control() || (lines && (c == '\n' || c == '\t'));
    if text.is_empty() || text.chars().count() > max || !text.chars().all(allowed) {
        return Err(ApiError::bad_request(format!(
            "{what} must be 1 to {max} characters without control characters"
        )));
    }
    Ok(text.to_owned())
}

#[utoipa::path(post, path = "/api/alarms/{id}/assign", tag = "alarms", operation_id = "assign_alarm",
    summary = "Assigns it to someone (operator or admin)",
    params(("id" = i64, Path, description = "The alarm's id")), request_body = Assignment,
    responses((status = 200, description = "Assigned", body = super::schema::Alarm), super::schema::BadRequest,
        super::schema::Forbidden, super::schema::NotFound, super::schema::Conflict, super::schema::Unavailable))]
pub async fn assign(
    State(state): State<AppState>,
    Path(id): Path<String>,
    principal: Option<Extension<Principal>>,
    body: Result<Json<Assignment>, JsonRejection>,
) -> Result<Json<AlarmRecord>, ApiError> {
    let Json(body) = body?;
    let to = checked_text(&body.to, "to", MAX_NAME, false)?;
    act(&state, &id, principal, AlarmAction::Assign(to)).await
}

#[utoipa::path(post, path = "/api/alarms/{id}/notes", tag = "alarms", operation_id = "note_alarm",
    summary = "Adds a note (operator or admin)",
    params(("id" = i64, Path, description = "The alarm's id")), request_body = Note,
    responses((status = 200, description = "Noted", body = super::schema::Alarm), super::schema::BadRequest,
        super::schema::Forbidden, super::schema::NotFound, super::schema::Unavailable))]
pub async fn note(
    State(state): State<AppState>,
    Path(id): Path<String>,
    principal: Option<Extension<Principal>>,
    body: Result<Json<Note>, JsonRejection>,
) -> Result<Json<AlarmRecord>, ApiError> {
    let Json(body) = body?;
    let text = checked_text(&body.text, "text", MAX_NOTE, true)?;
    act(&state, &id, principal, AlarmAction::Note(text)).await
}
