//! `GET /api/events`: stored geofence and alert events, oldest first, as JSON or CSV.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldline_store::derived::{Event, EventKind};
use fieldline_store::time_format::format_ms;
use fieldline_store::EventQuery;
use serde::Deserialize;
use serde_json::Value;

use std::sync::Arc;

use bytes::Bytes;
use fieldline_store::{Store, StoreError};

use super::{checked_device_id, export};
use crate::{ApiError, AppState};

const DEFAULT_LIMIT: u32 = 10_000;
const MAX_LIMIT: u32 = 100_000;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// Device ids, comma-separated (at most 1000); absent: every device.
    devices: Option<String>,
    /// `geofence`, `alert`, `command`, comma-separated; absent: all.
    kinds: Option<String>,
    /// Device time from (RFC 3339 or epoch ms).
    from: Option<String>,
    /// Device time to, exclusive.
    to: Option<String>,
    /// Only events after this seq: for paging through a long range.
    after: Option<u64>,
    /// 1 to 100,000 (default 10,000); CSV without a limit streams every event.
    limit: Option<u32>,
    /// `json` (default) or `csv`.
    format: Option<String>,
}

fn list(text: &Option<String>) -> Vec<&str> {
    text.as_deref()
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[utoipa::path(get, path = "/api/events", tag = "events", operation_id = "list_events",
    summary = "Stored geofence, alert and command events, oldest first",
    params(Params),
    responses((status = 200, description = "JSON, or CSV with `format=csv`",
            content((Vec<super::schema::StoredEvent> = "application/json"), (String = "text/csv"))),
        super::schema::BadRequest, super::schema::Unavailable))]
pub async fn list_events(
    State(state): State<AppState>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let from_ms = super::time_param("from", params.from.as_deref(), i64::MIN)?;
    let to_ms = super::time_param("to", params.to.as_deref(), i64::MAX)?;
    if from_ms > to_ms {
        return Err(ApiError::bad_request("from must not be after to"));
    }
    let format = params.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv") {
        return Err(ApiError::bad_request("format must be json or csv"));
    }
    // CSV streams every matching event unless a limit is given; JSON answers one page.
    let limit = match (format, params.limit) {
        ("csv", None) => u32::MAX,
        _ => super::checked_limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?,
    };
    let devices = list(&params.devices)
        .into_iter()
        .map(|d| checked_device_id(d).map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()?;
    if devices.len() > 1_000 {
        return Err(ApiError::bad_request("at most 1000 devices per query"));
    }
    let kinds = list(&params.kinds)
        .into_iter()
        .map(|k| {
            EventKind::parse(k).ok_or_else(|| {
                ApiError::bad_request("kinds must be among geofence, alert, alarm and command")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let query = EventQuery {
        devices,
        kinds,
        from_ms,
        to_ms,
        after_seq: params.after.unwrap_or(0),
        limit,
    };
    if format == "csv" {
        let name = export::filename("events", from_ms, to_ms, "csv");
        let pages = EventPages {
            store: state.store.clone(),
            query,
            remaining: u64::from(limit),
            started: false,
        };
        return Ok(export::download(pages, "text/csv", name));
    }
    let events = state.store.events(&query).await?;
    Ok(Json(events).into_response())
}

/// Events in seq order, a page at a time (keyset on seq), as CSV.
struct EventPages {
    store: Arc<dyn Store>,
    query: EventQuery,
    /// Rows still to send: the request's limit, or all.
    remaining: u64,
    started: bool,
}

impl export::Pages for EventPages {
    async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        let mut out = String::new();
        if !self.started {
            self.started = true;
            out.push_str(CSV_HEAD);
        }
        if self.remaining == 0 {
            return Ok((!out.is_empty()).then(|| Bytes::from(out)));
        }
        let mut page_query = self.query.clone();
        page_query.limit = self.remaining.min(u64::from(crate::paging::PAGE_ROWS)) as u32;
        let page = self.store.events(&page_query).await?;
        if (page.len() as u32) < page_query.limit {
            self.remaining = 0;
        } else {
            self.remaining -= page.len() as u64;
        }
        if let Some(last) = page.last() {
            self.query.after_seq = last.seq;
        }
        csv_rows(&mut out, &page);
        Ok((!out.is_empty()).then(|| Bytes::from(out)))
    }
}

const CSV_HEAD: &str = "seq,kind,device,ts,geofence,rule,name,event,state,lat,lon,metric,value\n";

/// One row per event; the columns of both kinds, empty where they do not apply.
fn csv_rows(out: &mut String, events: &[Event]) {
    let field = |e: &Event, key: &str| -> String {
        match e.fields.get(key) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => quoted(s),
            Some(v) => v.to_string(),
        }
    };
    for e in events {
        let row = [
            e.seq.to_string(),
            e.kind.as_str().to_owned(),
            e.device.to_string(),
            format_ms(e.ts_ms),
            field(e, "geofence"),
            field(e, "rule"),
            field(e, "name"),
            field(e, "event"),
            field(e, "state"),
            field(e, "lat"),
            field(e, "lon"),
            field(e, "metric"),
            field(e, "value"),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
}

/// Names are free text: quoted when they hold a comma, quote or line break.
fn quoted(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
