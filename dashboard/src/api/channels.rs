//! `/api/channels`: notification channels, where alarm changes are emailed to people. A
//! channel's view shows its position, backlog, last error and whether quiet hours hold it
//! now; an SMTP password is never shown.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldline_ingest::channels::{self, email, Channel, EmailSettings};
use fieldline_store::time_format::{format_ms, now_ms};
use fieldline_store::ChannelRecord;
use serde::Serialize;
use utoipa::ToSchema;

use super::body::{checked_id, json_body, store_error};
use super::webhooks::backlog;
use crate::judging::Touches;
use crate::{ApiError, AppState};

#[derive(Serialize, ToSchema)]
pub struct ChannelView {
    id: i64,
    /// `email`.
    kind: String,
    #[serde(flatten)]
    settings: EmailSettings,
    /// The seq of the last event it took.
    delivered_seq: u64,
    last_error: Option<String>,
    last_error_at: Option<String>,
    created_at: String,
    /// Alarm changes it will send and has not sent yet (one channel only).
    #[serde(skip_serializing_if = "Option::is_none")]
    backlog: Option<u64>,
    /// While quiet hours hold its messages: when they end.
    #[serde(skip_serializing_if = "Option::is_none")]
    quiet_until: Option<String>,
}

/// A new channel (`kind`, `to`, and optionally `severity`, `quiet`, `digest_over`,
/// `smtp_url`).
#[derive(ToSchema)]
#[allow(dead_code)] // Read by the schema derive: the body is checked by `channels::from_json`.
pub struct NewChannel {
    /// `email`.
    kind: String,
    /// Recipients, each an address or `Name <address>`; 1 to 50.
    to: Vec<String>,
    /// The least severe alarm it sends [default: `warning`, every alarm].
    severity: Option<String>,
    quiet: Option<channels::QuietSpec>,
    /// More alarm changes than this in a minute go out as one digest [default: 10].
    digest_over: Option<u32>,
    /// Its own SMTP server, `smtp://` or `smtps://` [default: the server's `--smtp-url`].
    smtp_url: Option<String>,
}

fn view(record: &ChannelRecord, backlog: Option<u64>) -> ChannelView {
    let channel = Channel::from_record(record).ok();
    let mut settings = channel
        .as_ref()
        .map(|c| c.settings.clone())
        .unwrap_or(EmailSettings {
            to: Vec::new(),
            severity: String::new(),
            quiet: None,
            digest_over: 0,
            smtp_url: None,
        });
    settings.smtp_url = settings.smtp_url.as_deref().map(email::redacted);
    let quiet_until = channel
        .as_ref()
        .and_then(|c| c.quiet.as_ref())
        .and_then(|q| q.ends_after(now_ms()))
        .map(format_ms);
    ChannelView {
        id: record.id,
        kind: record.kind.clone(),
        settings,
        delivered_seq: record.delivered_seq,
        last_error: record.last_error.clone(),
        last_error_at: record.last_error_at_ms.map(format_ms),
        created_at: format_ms(record.created_at_ms),
        backlog,
        quiet_until,
    }
}

#[utoipa::path(get, path = "/api/channels", tag = "alarms", operation_id = "list_channels",
    summary = "Every notification channel with its position and last error",
    responses((status = 200, description = "Success", body = Vec<ChannelView>), super::schema::Unavailable))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<ChannelView>>, ApiError> {
    let records = state.store.channels().await?;
    Ok(Json(records.iter().map(|r| view(r, None)).collect()))
}

/// One channel with its backlog: the alarm changes it will send and has not sent yet
/// (counted over the next 10,000 events).
#[utoipa::path(get, path = "/api/channels/{id}", tag = "alarms", operation_id = "get_channel",
    summary = "One notification channel with its backlog", params(("id" = i64, Path, description = "The channel's id")),
    responses((status = 200, description = "Success", body = ChannelView), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ChannelView>, ApiError> {
    let id = checked_id(&id, "channel")?;
    let records = state.store.channels().await?;
    let record = records
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no such channel {id}")))?;
    let backlog = match Channel::from_record(record) {
        Ok(channel) => Some(backlog(&state, record.delivered_seq, |e| channel.wants(e)).await?),
        Err(_) => None,
    };
    Ok(Json(view(record, backlog)))
}

#[utoipa::path(post, path = "/api/channels", tag = "alarms", operation_id = "create_channel",
    summary = "Adds a notification channel: alarm changes are sent to it from the next one on",
    request_body = NewChannel,
    responses((status = 201, description = "Created", body = ChannelView), super::schema::BadRequest, super::schema::Unavailable))]
pub async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let has_default = state.judging.channels.has_default_smtp();
    let channel = channels::from_json(&json_body(body)?, has_default)
        .map_err(|e| ApiError::bad_request(e.0))?;
    let settings = serde_json::to_string(&channel.settings)
        .map_err(|e| ApiError::bad_request(format!("cannot store the channel: {e}")))?;
    let store = state.store.as_ref();
    let stored = state
        .judging
        .change(
            store,
            Touches::Channels,
            store.add_channel(channels::EMAIL, &settings, now_ms()),
        )
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(view(&stored, Some(0)))).into_response())
}

#[utoipa::path(delete, path = "/api/channels/{id}", tag = "alarms", operation_id = "delete_channel",
    summary = "Deletes a notification channel", params(("id" = i64, Path, description = "The channel's id")),
    responses((status = 204, description = "Deleted"), super::schema::BadRequest, super::schema::NotFound,
        super::schema::Unavailable))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = checked_id(&id, "channel")?;
    let store = state.store.as_ref();
    state
        .judging
        .change(store, Touches::Channels, store.delete_channel(id))
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}
