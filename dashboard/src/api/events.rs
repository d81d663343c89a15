//! `GET /api/events`: stored geofence and alert events, oldest first, as JSON or CSV.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fieldline_ingest::events::{Event, EventKind};
use fieldline_ingest::store::EventQuery;
use fieldline_ingest::time_format::{format_ms, parse_api_time};
use serde::Deserialize;
use serde_json::Value;

use super::checked_device_id;
use crate::{ApiError, AppState};

const DEFAULT_LIMIT: u32 = 10_000;
const MAX_LIMIT: u32 = 100_000;

#[derive(Deserialize)]
pub struct Params {
    devices: Option<String>,
    kinds: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// Only events after this seq: for paging through a long range.
    after: Option<u64>,
    limit: Option<u32>,
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

pub async fn list_events(
    State(state): State<AppState>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let time = |name: &str, v: &Option<String>, default: i64| -> Result<i64, ApiError> {
        match v.as_deref() {
            None => Ok(default),
            Some(t) => parse_api_time(t).ok_or_else(|| {
                ApiError::bad_request(format!("{name} must be RFC 3339 or epoch milliseconds"))
            }),
        }
    };
    let from_ms = time("from", &params.from, i64::MIN)?;
    let to_ms = time("to", &params.to, i64::MAX)?;
    if from_ms > to_ms {
        return Err(ApiError::bad_request("from must not be after to"));
    }
    let limit = super::checked_limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
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
            EventKind::parse(k)
                .ok_or_else(|| ApiError::bad_request("kinds must be geofence and/or alert"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let format = params.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv") {
        return Err(ApiError::bad_request("format must be json or csv"));
    }
    let events = state
        .store
        .events(&EventQuery {
            devices,
            kinds,
            from_ms,
            to_ms,
            after_seq: params.after.unwrap_or(0),
            limit,
        })
        .await?;
    Ok(match format {
        "csv" => ([(header::CONTENT_TYPE, "text/csv")], csv(&events)).into_response(),
        _ => Json(events).into_response(),
    })
}

/// One row per event; the columns of both kinds, empty where they do not apply.
fn csv(events: &[Event]) -> String {
    let mut out =
        String::from("seq,kind,device,ts,geofence,rule,name,event,state,lat,lon,metric,value\n");
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
    out
}

/// Names are free text: quoted when they hold a comma, quote or line break.
fn quoted(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
