//! What geofences and alert rules share over the API: both are stored JSON objects with an id,
//! read one at a time, replaced and deleted the same way.

use axum::http::StatusCode;
use axum::Json;
use fieldline_store::time_format::now_ms;
use fieldline_store::Definitions;
use serde_json::Value;

use super::body::{checked_id, store_error, with_id};
use crate::judging::Touches;
use crate::{ApiError, AppState};

fn touches(what: Definitions) -> Touches {
    match what {
        Definitions::Geofences => Touches::Geofences,
        Definitions::AlertRules => Touches::Rules,
    }
}

/// `GET …/{id}`.
pub(super) async fn one(
    state: &AppState,
    what: Definitions,
    id: &str,
) -> Result<Json<Value>, ApiError> {
    let id = checked_id(id, what.subject())?;
    let stored = state.store.definitions(what).await?;
    stored
        .iter()
        .find(|d| d.id == id)
        .map(|d| Json(with_id(d.id, &d.body)))
        .ok_or_else(|| ApiError::not_found(format!("no such {} {id}", what.subject())))
}

/// `PUT …/{id}` with a body already checked into its `name` and stored form.
pub(super) async fn replace(
    state: &AppState,
    what: Definitions,
    id: i64,
    name: &str,
    body: &Value,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.as_ref();
    state
        .judging
        .change(
            store,
            touches(what),
            store.replace_definition(what, id, name, body, now_ms()),
        )
        .await
        .map_err(store_error)?;
    Ok(Json(with_id(id, &body.to_string())))
}

/// `DELETE …/{id}`.
pub(super) async fn delete(
    state: &AppState,
    what: Definitions,
    id: &str,
) -> Result<StatusCode, ApiError> {
    let id = checked_id(id, what.subject())?;
    let store = state.store.as_ref();
    state
        .judging
        .change(store, touches(what), store.delete_definition(what, id))
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}
