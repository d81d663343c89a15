//! JSON request bodies for the configuration endpoints, with their size limit: anything that
//! is not a JSON value within the limit is a 400 with the reason.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::Value;

use crate::ApiError;

/// Largest configuration body: a FeatureCollection of many detailed fences fits; a larger
/// import goes in several requests.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

pub fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::bad_request(format!(
                "the body is larger than {} MiB; send fewer features per request",
                MAX_BODY_BYTES / (1024 * 1024)
            ))
        } else {
            ApiError::bad_request(e.body_text())
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// A path id: a positive integer.
pub fn checked_id(text: &str, what: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_request(format!("{what} id must be a positive integer")))
}

/// Store errors of configuration calls: a missing id is a 404.
pub fn store_error(e: fieldline_store::StoreError) -> ApiError {
    match e {
        fieldline_store::StoreError::NotFound(what) => {
            ApiError::not_found(format!("no such {what}"))
        }
        e => e.into(),
    }
}

/// A stored JSON object (a Feature or a rule) with its `id` put in, as the API returns it.
pub fn with_id(id: i64, body: &str) -> serde_json::Value {
    let mut object: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if let Some(fields) = object.as_object_mut() {
        fields.insert("id".into(), serde_json::json!(id));
    }
    object
}

/// The JSON form to store: as given, without an `id` of its own.
pub fn without_id(body: &Value) -> Value {
    let mut stored = body.clone();
    if let Some(fields) = stored.as_object_mut() {
        fields.remove("id");
    }
    stored
}
