//! The API's OpenAPI 3.1 description: built from the handlers' own annotations as the router
//! registers them (so a route cannot be served without being described), served at
//! `/api/openapi.json` and read by the reference page at `/api/docs`.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa::Modify;

use crate::api::schema;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Fieldline",
        description = "IoT telemetry broker: devices publish over MQTT; this API reads what they \
            sent, streams it live, and manages geofences, alert rules, webhooks, commands and \
            access.\n\nWith API authentication on (any token registered, or a non-loopback \
            listener), every endpoint but the probes, the web pages and this description needs \
            `Authorization: Bearer <token>` (or `?access_token=` where a header cannot be sent); \
            no token or a bad one is 401. Roles: viewer reads, operator also sends commands, \
            admin also changes configuration and access.\n\nTimes are RFC 3339 in answers; \
            parameters take RFC 3339 or epoch milliseconds.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&BearerToken),
    security(("token" = [])),
    components(schemas(
        schema::LiveEvent,
        crate::api::ws::Control,
        schema::WsServerMessage,
        schema::StoredEvent,
        crate::api::buckets::BucketJson
    )),
    tags(
        (name = "devices", description = "Devices and their newest state"),
        (name = "history", description = "What devices sent over time"),
        (name = "live", description = "Live events and replays: Server-Sent Events and WebSocket"),
        (name = "geofences", description = "Areas judged against every fix"),
        (name = "rules", description = "Alert rules on metrics and silence"),
        (name = "events", description = "Stored geofence, alert, alarm and command events, and webhooks"),
        (name = "alarms", description = "Alarms opened by alert rules, and the work on them"),
        (name = "commands", description = "Commands to devices and their ledger"),
        (name = "admin", description = "The device registry and API tokens (admin role)"),
        (name = "operations", description = "Probes and metrics"),
        (name = "web", description = "The web dashboard and this reference")
    )
)]
pub struct ApiDoc;

/// The bearer token every guarded endpoint takes.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token: `fieldline token add` or `POST /api/admin/tokens`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The description as JSON, built once.
fn json() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| {
        // Serializing plain data types cannot fail; an empty body would show it if it did.
        serde_json::to_vec(&crate::description()).unwrap_or_default()
    })
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "web", operation_id = "openapi_description",
    summary = "This description (OpenAPI 3.1)", security(()),
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")))]
pub async fn description_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}
