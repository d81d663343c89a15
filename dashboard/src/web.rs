//! The web dashboard at `/`: the files `build.rs` built from `web/` and embedded, and the
//! few settings the page needs before it talks to the API.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::AppState;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// What the page is told before it signs in: nothing secret.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct WebSettings {
    /// A MapLibre style URL for real tiles; `None`: the built-in base map.
    pub map_style: Option<String>,
    /// `host:port` of the MQTT listener, for the first-fix hint of an empty map.
    pub mqtt: Option<String>,
}

fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(url, _, _)| *url == path)
        .map(|(_, kind, bytes)| (*kind, *bytes))
}

#[utoipa::path(get, path = "/", tag = "web", operation_id = "dashboard_page",
    summary = "The web dashboard", security(()),
    responses((status = 200, description = "Success", body = String, content_type = "text/html")))]
pub async fn index() -> Response {
    page("/index.html")
}

/// The API reference, Swagger UI over `/api/openapi.json`.
#[utoipa::path(get, path = "/api/docs", tag = "web", operation_id = "api_reference_page",
    summary = "The API reference: every endpoint, with calls to try", security(()),
    responses((status = 200, description = "Success", body = String, content_type = "text/html")))]
pub async fn docs() -> Response {
    page("/docs.html")
}

fn page(path: &str) -> Response {
    match asset(path) {
        // Not cached: it names the current build's hashed assets.
        Some((kind, bytes)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "the dashboard was not built").into_response(),
    }
}

/// Files under `/assets/`: their names carry a hash of their content, so they never change.
pub async fn assets(Path(path): Path<String>) -> Response {
    match asset(&format!("/assets/{path}")) {
        Some((kind, bytes)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            bytes,
        )
            .into_response(),
        None => crate::api::not_found().await.into_response(),
    }
}

#[utoipa::path(get, path = "/dashboard.json", tag = "web", operation_id = "dashboard_settings",
    summary = "What the dashboard needs before it signs in", security(()),
    responses((status = 200, description = "Success", body = WebSettings)))]
pub async fn settings(State(state): State<AppState>) -> Json<WebSettings> {
    Json(state.web.clone())
}
