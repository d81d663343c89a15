//! The web dashboard in a real browser (headless Chromium, WebGL through SwiftShader) against
//! the real binary: the page loads with no console errors and a drawn base map; devices
//! published over MQTT (rumqttc and Debian's mosquitto_pub) appear in the list and on the map
//! and move; search and the online filter; the token prompt under API authentication; and
//! recovery after a server restart. Screenshots of each step stay in
//! `target/browser-shots/<test>/`.

#[macro_use]
mod support;

use std::path::PathBuf;

use serde_json::{json, Value};
use support::browser::Browser;
use support::{create_token, database, mosquitto_pub, Backend, Device, Server, TempDir};

fn shots(test: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("browser-shots")
        .join(test)
}

/// The page is up: the map has loaded and the device layer exists.
async fn wait_loaded(browser: &Browser) {
    browser
        .wait_for(
            "the map",
            "return !!(window.fieldlineMap && window.fieldlineLive && fieldlineMap.loaded() && fieldlineMap.getLayer('land'));",
            json!([]),
        )
        .await;
}

/// Ids of the device list's rows, top to bottom.
const LISTED: &str = "return [...document.querySelectorAll('#list .row')].map(r => r.dataset.id);";

/// How many distinct colours the map area of a screenshot has (a blank canvas has one).
fn map_colours(png: &[u8], rect: &Value) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("screenshot is a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("PNG frame");
    let channels = info.color_type.samples();
    let (x0, y0) = (
        rect["x"].as_f64().unwrap_or(0.0) as usize,
        rect["y"].as_f64().unwrap_or(0.0) as usize,
    );
    let (w, h) = (
        rect["w"].as_f64().unwrap_or(0.0) as usize,
        rect["h"].as_f64().unwrap_or(0.0) as usize,
    );
    let mut colours = std::collections::HashSet::new();
    for y in (y0..(y0 + h).min(info.height as usize)).step_by(3) {
        for x in (x0..(x0 + w).min(info.width as usize)).step_by(3) {
            let i = (y * info.width as usize + x) * channels;
            colours.insert(pixels[i..i + 3].to_vec());
        }
    }
    colours.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_map_list_search_filter_and_restart() {
    let dir = TempDir::new("web");
    let db = database(Backend::Sqlite, &dir, "web").await;
    let mut server = Server::start(&dir, &db).await;
    let browser = Browser::start(&shots("live_map")).await;

    // An empty page says how to publish a first fix; the base map is drawn.
    browser.goto(&server.url("/")).await;
    wait_loaded(&browser).await;
    browser
        .wait_for("the empty state", "return !document.getElementById('empty').hidden && document.getElementById('first-fix').textContent;", json!([]))
        .await;
    let hint = browser
        .eval(
            "return document.getElementById('first-fix').textContent;",
            json!([]),
        )
        .await;
    assert!(
        hint.as_str()
            .unwrap_or_default()
            .contains(&format!("-p {}", server.mqtt_port)),
        "the hint names our MQTT port: {hint}"
    );
    // Let the land tiles render before looking at the pixels (the features are quantised to
    // tile units, so positions compare to 0.01 degrees at this zoom).
    browser
        .wait_for(
            "the land drawn",
            "return fieldlineMap.areTilesLoaded() && !fieldlineMap.isMoving();",
            json!([]),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let rect = browser
        .eval("const r = document.getElementById('map').getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height};", json!([]))
        .await;
    let png = browser.screenshot("1-empty").await;
    assert!(
        map_colours(&png, &rect) >= 3,
        "the map shows sea, land and borders"
    );
    assert_eq!(browser.console_errors().await, Vec::<String>::new());

    // A device that stays connected (rumqttc) and one that publishes and leaves (mosquitto_pub).
    let van = Device::connect(server.mqtt_port, "van-1").await;
    van.publish(
        "devices/van-1/location",
        json!({"lat": 48.85, "lon": 2.35, "heading": 90.0}).to_string(),
    )
    .await;
    mosquitto_pub(
        server.mqtt_port,
        "devices/truck-2/location",
        br#"{"lat": 40.71, "lon": -74.0}"#,
        &[],
    );
    let rendered = browser
        .wait_for(
            "both devices on the map",
            "const out = {}; for (const f of fieldlineMap.queryRenderedFeatures({layers: ['devices']})) out[f.properties.device] = f.geometry.coordinates; return Object.keys(out).length === 2 && out;",
            json!([]),
        )
        .await;
    let at = |v: &Value, id: &str| {
        (
            v[id][0].as_f64().unwrap_or(f64::NAN),
            v[id][1].as_f64().unwrap_or(f64::NAN),
        )
    };
    let (lon, lat) = at(&rendered, "van-1");
    assert!(
        (lon - 2.35).abs() < 0.01 && (lat - 48.85).abs() < 0.01,
        "van-1 at {lon},{lat}"
    );
    let listed = browser
        .wait_for(
            "both in the list",
            &format!(
                "const ids = (() => {{ {LISTED} }})(); return ids.length === 2 && ids.sort();"
            ),
            json!([]),
        )
        .await;
    assert_eq!(listed, json!(["truck-2", "van-1"]));
    browser
        .wait_for(
            "the empty state gone",
            "return document.getElementById('empty').hidden;",
            json!([]),
        )
        .await;
    browser.screenshot("2-two-devices").await;

    // It moves when it publishes again.
    van.publish(
        "devices/van-1/location",
        json!({"lat": 48.86, "lon": 2.40}).to_string(),
    )
    .await;
    browser
        .wait_for(
            "van-1 moved",
            "for (const f of fieldlineMap.queryRenderedFeatures({layers: ['devices']})) if (f.properties.device === 'van-1' && Math.abs(f.geometry.coordinates[0] - 2.40) < 0.01) return true; return false;",
            json!([]),
        )
        .await;
    browser.screenshot("3-moved").await;

    // Search, and the online filter with its counts (truck-2 disconnected after publishing).
    browser.type_into("#search", "truck").await;
    browser
        .wait_for("search narrows the list", &format!("const ids = (() => {{ {LISTED} }})(); return ids.length === 1 && ids[0] === 'truck-2';"), json!([]))
        .await;
    browser.screenshot("4-search").await;
    browser.type_into("#search", "").await;
    browser
        .wait_for(
            "truck-2 offline",
            "const e = fieldlineLive.devices.get('truck-2'); return e && !e.online;",
            json!([]),
        )
        .await;
    browser.click("[data-filter=online]").await;
    browser
        .wait_for("online filter", &format!("const ids = (() => {{ {LISTED} }})(); return ids.length === 1 && ids[0] === 'van-1';"), json!([]))
        .await;
    let counts = browser
        .eval("return ['all','online','offline'].map(k => document.querySelector(`[data-count=${k}]`).textContent);", json!([]))
        .await;
    assert_eq!(counts, json!(["2", "1", "1"]));
    browser.click("[data-filter=offline]").await;
    browser
        .wait_for("offline filter", &format!("const ids = (() => {{ {LISTED} }})(); return ids.length === 1 && ids[0] === 'truck-2';"), json!([]))
        .await;
    browser.screenshot("5-offline-filter").await;
    browser.click("[data-filter=all]").await;

    // Clicking a row opens its detail with what the API said.
    browser.click("#list .row[data-id='van-1']").await;
    browser
        .wait_for("van-1 detail", "return !document.getElementById('detail').hidden && document.getElementById('detail-values').textContent.includes('48.86');", json!([]))
        .await;
    browser.screenshot("6-detail").await;

    // The server restarts (a new stream epoch): the page reconnects and reloads by itself.
    drop(van);
    server.restart(&dir, &[]).await;
    let van = Device::connect(server.mqtt_port, "van-1").await;
    van.publish(
        "devices/van-1/location",
        json!({"lat": 48.87, "lon": 2.45}).to_string(),
    )
    .await;
    browser
        .wait_for(
            "van-1 after the restart",
            "for (const f of fieldlineMap.queryRenderedFeatures({layers: ['devices']})) if (f.properties.device === 'van-1' && Math.abs(f.geometry.coordinates[0] - 2.45) < 0.01) return true; return false;",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "live again",
            "return document.getElementById('connection').textContent === 'live';",
            json!([]),
        )
        .await;
    browser.screenshot("7-after-restart").await;
    let errors: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        // While the server was down the browser logged its failed reconnects: expected.
        .filter(|e| !e.contains("/api/stream") && !e.contains("ERR_CONNECTION_REFUSED"))
        .collect();
    assert_eq!(errors, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asks_for_a_token_under_api_authentication() {
    let dir = TempDir::new("web-auth");
    let db = database(Backend::Sqlite, &dir, "web-auth").await;
    let token = create_token(&db, "dispatch", "viewer");
    let server = Server::start(&dir, &db).await;
    let browser = Browser::start(&shots("token")).await;

    browser.goto(&server.url("/")).await;
    browser
        .wait_for(
            "the token prompt",
            "return document.getElementById('token-dialog').open;",
            json!([]),
        )
        .await;
    browser.screenshot("1-prompt").await;

    // A wrong token: asked again, with the server's reason.
    browser.type_into("#token-input", "fl_not-a-token").await;
    browser.click("#token-form button").await;
    browser
        .wait_for("asked again", "const d = document.getElementById('token-dialog'); return d.open && document.getElementById('token-reason').textContent.includes('not valid');", json!([]))
        .await;
    browser.screenshot("2-wrong-token").await;

    browser.type_into("#token-input", &token).await;
    browser.click("#token-form button").await;
    wait_loaded(&browser).await;
    browser
        .wait_for(
            "the live stream with the token",
            "return document.getElementById('connection').textContent === 'live';",
            json!([]),
        )
        .await;
    mosquitto_pub(
        server.mqtt_port,
        "devices/van-9/location",
        br#"{"lat": 1.5, "lon": 2.5}"#,
        &[],
    );
    browser
        .wait_for(
            "van-9 listed",
            &format!("return (() => {{ {LISTED} }})().includes('van-9');"),
            json!([]),
        )
        .await;
    browser.screenshot("3-signed-in").await;

    // The token is kept for the browser session: a reload does not ask again.
    browser.refresh().await;
    wait_loaded(&browser).await;
    assert_eq!(
        browser
            .eval(
                "return document.getElementById('token-dialog').open;",
                json!([])
            )
            .await,
        json!(false)
    );
    assert_eq!(
        browser
            .console_errors()
            .await
            .into_iter()
            .filter(|e| !e.contains("401"))
            .collect::<Vec<_>>(),
        Vec::<String>::new()
    );
}
