//! The OpenAPI description against the running binary: it validates against the OpenAPI 3.1
//! schema (openapi-spec-validator from PyPI, installed by the test command); every path and
//! method it lists is one the router serves and every method the router serves on those paths
//! is listed (the router's own `Allow` header says which); it and the README's endpoint tables
//! name the same endpoints; real answers, over HTTP and HTTPS, carry only documented fields,
//! and bad input gets the documented error; and the reference page
//! at `/api/docs` renders every operation in a real browser.

#[macro_use]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{json, Value};
use support::browser::Browser;
use support::{database, Backend, Device, Server, TempDir};

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// (path, method) of every operation in the description, methods in upper case.
fn operations(spec: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        let methods: BTreeSet<String> = METHODS
            .iter()
            .filter(|m| item.get(**m).is_some())
            .map(|m| m.to_uppercase())
            .collect();
        out.insert(path.clone(), methods);
    }
    out
}

/// The description, fetched from a server and checked by the OpenAPI 3.1 validator.
async fn valid_description(server: &Server, dir: &TempDir) -> Value {
    let response = server
        .http
        .get(server.url("/api/openapi.json"))
        .send()
        .await
        .expect("GET /api/openapi.json");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let file = dir.0.join("openapi.json");
    std::fs::write(&file, &text).expect("write the description");
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 with openapi-spec-validator (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "the description is not valid OpenAPI 3.1:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let spec: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    spec
}

#[tokio::test]
async fn the_description_is_valid_openapi_and_matches_the_router_and_the_readme() {
    let dir = TempDir::new("openapi");
    let url = database(Backend::Sqlite, &dir, "openapi").await;
    let server = Server::start(&dir, &url).await;
    let spec = valid_description(&server, &dir).await;
    let documented = operations(&spec);
    assert!(documented.len() >= 30, "{documented:?}");

    // Each operation has a unique id, a summary and its answers described.
    let mut ids = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            let op = &item[*method];
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_owned()), "operationId {id} twice");
            assert!(
                op["summary"].as_str().is_some(),
                "{method} {path}: no summary"
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
        }
    }

    // The router serves exactly the documented methods on each documented path: a method it
    // does not serve gets 405 with the methods it does in `Allow` (never the 404 fallback).
    for (path, methods) in &documented {
        let concrete = path.replace("{id}", "1");
        let response = server
            .http
            .request(
                reqwest::Method::from_bytes(b"TRACE").expect("method"),
                server.url(&concrete),
            )
            .send()
            .await
            .expect("TRACE");
        assert_eq!(response.status(), 405, "TRACE {concrete}");
        let allow: BTreeSet<String> = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_owned())
            .filter(|m| !m.is_empty() && m != "HEAD")
            .collect();
        assert_eq!(
            &allow, methods,
            "{path}: served {allow:?}, described {methods:?}"
        );
    }
    // A path nobody serves falls through to the 404 the description's paths never get.
    let (status, body) = server.get("/api/no-such-thing").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no such endpoint");

    // The README's endpoint tables and the description name the same endpoints.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut listed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let endpoint = endpoints_in_rows(
        &readme
            .lines()
            .filter(|l| l.starts_with("| `"))
            .collect::<Vec<_>>(),
    );
    for (methods, path) in endpoint {
        listed.entry(path).or_default().extend(methods);
    }
    assert_eq!(
        listed, documented,
        "README endpoint tables (left) and the OpenAPI description (right) differ"
    );
}

/// `METHOD[/METHOD...] /path` inside backticks in table rows: (methods, path without query).
fn endpoints_in_rows(rows: &[&str]) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    for row in rows {
        for quoted in row.split('`').skip(1).step_by(2) {
            let Some((methods, rest)) = quoted.split_once(' ') else {
                continue;
            };
            let methods: Vec<String> = methods.split('/').map(str::to_owned).collect();
            if !methods
                .iter()
                .all(|m| ["GET", "PUT", "POST", "DELETE", "PATCH"].contains(&m.as_str()))
            {
                continue;
            }
            let path = rest.split(['?', ' ']).next().unwrap_or_default();
            if path.starts_with('/') {
                out.push((methods, path.to_owned()));
            }
        }
    }
    out
}

/// The properties a schema (or the schema it refers to, or an array's items) allows.
fn properties(spec: &Value, schema: &Value) -> BTreeSet<String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return properties(spec, &spec["components"]["schemas"][name]);
    }
    if schema["type"] == "array" {
        return properties(spec, &schema["items"]);
    }
    if let Some(parts) = schema["allOf"].as_array() {
        return parts
            .iter()
            .flat_map(|part| properties(spec, part))
            .collect();
    }
    schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The JSON schema of a GET's 200 answer.
fn answer_schema<'a>(spec: &'a Value, path: &str) -> &'a Value {
    &spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
}

/// Every key of `value` (an object, or each object of an array) is documented.
fn assert_documented(spec: &Value, path: &str, value: &Value) {
    let allowed = properties(spec, answer_schema(spec, path));
    assert!(!allowed.is_empty(), "{path}: no documented properties");
    let objects: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    assert!(!objects.is_empty(), "{path}: nothing to compare");
    for object in objects {
        for key in object.as_object().expect("an object").keys() {
            assert!(
                allowed.contains(key),
                "{path}: answer field {key} is not in the description ({allowed:?})"
            );
        }
    }
}

#[tokio::test]
async fn answers_carry_only_documented_fields_on_both_backends() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let dir = TempDir::new("openapi-fields");
        let url = database(backend, &dir, "openapi_fields").await;
        // The REST calls go over HTTPS (a test CA, `--https-only`) on one of the two.
        let server = match backend {
            Backend::Sqlite => Server::start(&dir, &url).await,
            Backend::Postgres => Server::start_https(&dir, &url, &[]).await,
        };
        let spec = valid_description(&server, &dir).await;

        let mut device = Device::connect(server.mqtt_port, "van-9").await;
        device
            .publish(
                "devices/van-9/location",
                json!({"seq": 1, "lat": 52.5, "lon": 13.4, "speed": 3.0}).to_string(),
            )
            .await;
        device
            .publish(
                "devices/van-9/telemetry",
                json!({"seq": 2, "metrics": {"temp_c": 21.5}}).to_string(),
            )
            .await;
        device.wait_acked(2).await;
        let devices = server
            .wait_for("/api/devices", |d| {
                d[0]["location"].is_object() && d[0]["metrics"]["temp_c"].is_object()
            })
            .await;
        assert_documented(&spec, "/api/devices", &devices);
        assert_documented(&spec, "/readyz", &server.get_ok("/readyz").await);
        let track = server.get_ok("/api/devices/van-9/track").await;
        assert_documented(&spec, "/api/devices/{id}/track", &track);
        let telemetry = server.get_ok("/api/devices/van-9/telemetry").await;
        assert_documented(&spec, "/api/devices/{id}/telemetry", &telemetry);
        let status = server.get_ok("/api/devices/van-9/status").await;
        assert_documented(&spec, "/api/devices/{id}/status", &status);

        let (code, hook) = server
            .request(
                reqwest::Method::POST,
                "/api/webhooks",
                None,
                Some(json!({"url": "http://127.0.0.1:9/hook", "secret": "s"})),
            )
            .await;
        assert_eq!(code, 201, "{hook}");
        let id = hook["id"].as_i64().expect("webhook id");
        assert_documented(
            &spec,
            "/api/webhooks/{id}",
            &server.get_ok(&format!("/api/webhooks/{id}")).await,
        );

        let (code, command) = server
            .request(
                reqwest::Method::POST,
                "/api/devices/van-9/commands",
                None,
                Some(json!({"name": "ping", "payload": {"n": 1}})),
            )
            .await;
        assert_eq!(code, 201, "{command}");
        let id = command["id"].as_str().expect("command id");
        assert_documented(
            &spec,
            "/api/commands/{id}",
            &server.get_ok(&format!("/api/commands/{id}")).await,
        );
        let events = server
            .wait_for("/api/events?kinds=command", |e| {
                e.as_array().is_some_and(|a| !a.is_empty())
            })
            .await;
        assert_documented(&spec, "/api/events", &events);

        let (code, created) = server
            .request(
                reqwest::Method::POST,
                "/api/admin/devices",
                None,
                Some(json!({"id": "van-10"})),
            )
            .await;
        assert_eq!(code, 201, "{created}");
        assert_documented(
            &spec,
            "/api/admin/devices",
            &server.get_ok("/api/admin/devices").await,
        );

        // Bad input gets the documented error shape.
        let (code, error) = server.get("/api/devices/bad%20id").await;
        assert_eq!(code, 400);
        assert_eq!(
            error
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["error".to_owned()])
        );
    }
}

#[tokio::test]
async fn the_reference_page_renders_every_operation_offline() {
    let dir = TempDir::new("openapi-docs");
    let url = database(Backend::Sqlite, &dir, "openapi_docs").await;
    let server = Server::start(&dir, &url).await;
    let spec = valid_description(&server, &dir).await;
    let count: usize = operations(&spec).values().map(BTreeSet::len).sum();

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("browser-shots")
        .join("api_docs");
    let browser = Browser::start(&shots).await;
    browser.goto(&server.url("/api/docs")).await;
    let rendered = browser
        .wait_for(
            "every operation of the reference",
            "const n = document.querySelectorAll('.opblock').length; return n >= arguments[0] ? n : null;",
            json!([count]),
        )
        .await;
    assert_eq!(rendered.as_u64(), Some(count as u64));
    let title = browser
        .eval(
            "return document.querySelector('.info .title')?.textContent || '';",
            json!([]),
        )
        .await;
    assert!(
        title.as_str().is_some_and(|t| t.contains("Fieldline")),
        "{title}"
    );
    // Everything the page loads comes from the binary itself.
    let foreign = browser
        .eval(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin));",
            json!([]),
        )
        .await;
    assert_eq!(foreign, json!([]), "the reference loaded from elsewhere");
    browser.screenshot("reference").await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}
