//! The `/api` endpoints.

pub mod admin;
pub mod alarms;
pub mod body;
pub(crate) mod buckets;
pub mod channels;
pub mod cluster;
pub mod commands;
mod definitions;
pub mod devices;
pub mod events;
mod export;
pub mod geofences;
pub mod history;
pub mod rejected;
pub mod replay;
pub mod rules;
pub mod schema;
pub mod stream;
pub mod webhooks;
pub mod ws;

use crate::ApiError;

/// A device in a path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeviceId {
    /// The device's id: 1 to 64 characters from `[A-Za-z0-9_.-]`.
    #[allow(dead_code)] // Read by the derive only: handlers take the path as a string.
    id: String,
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Device ids in paths follow the same rule as in topics.
fn checked_device_id(id: &str) -> Result<&str, ApiError> {
    if fieldline_ingest::document::is_valid_name(id) {
        Ok(id)
    } else {
        Err(ApiError::bad_request(
            "device id must be 1 to 64 characters from [A-Za-z0-9_.-]",
        ))
    }
}

/// A time query parameter (`from`, `to`): RFC 3339 or epoch ms, `default` when absent.
fn time_param(name: &str, value: Option<&str>, default: i64) -> Result<i64, ApiError> {
    match value {
        None => Ok(default),
        Some(t) => fieldline_store::time_format::parse_api_time(t).ok_or_else(|| {
            ApiError::bad_request(format!("{name} must be RFC 3339 or epoch milliseconds"))
        }),
    }
}

/// A list's `limit`: `default` when absent, else 1 to `max`.
fn checked_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(format!("limit must be 1 to {max}")))
    }
}
