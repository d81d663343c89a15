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

/// The RGB of one pixel (CSS pixel coordinates; headless Chromium draws at 1 device pixel each).
fn pixel(png: &[u8], x: f64, y: f64) -> [u8; 3] {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("screenshot is a PNG");
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).expect("PNG frame");
    let channels = info.color_type.samples();
    let i = ((y.round() as usize) * info.width as usize + x.round() as usize) * channels;
    [pixels[i], pixels[i + 1], pixels[i + 2]]
}

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
            "const out = fieldlineLive.drawn(); return Object.keys(out).length === 2 && out;",
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
    // Drawn for real: the screenshot has van-1's online green where its dot should be.
    browser
        .wait_for(
            "van-1 online",
            "const e = fieldlineLive.devices.get('van-1'); return e && e.state === 'online';",
            json!([]),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (x, y) = screen_point(&browser, 2.35, 48.85).await;
    let png = browser.screenshot("2-two-devices").await;
    let colour = pixel(&png, x, y);
    assert!(
        colour
            .iter()
            .zip([0x16, 0xa3, 0x4a])
            .all(|(c, want)| (i32::from(*c) - want).abs() < 40),
        "van-1's dot is online green at {x},{y}: {colour:?}"
    );

    // It moves when it publishes again.
    van.publish(
        "devices/van-1/location",
        json!({"lat": 48.86, "lon": 2.40}).to_string(),
    )
    .await;
    browser
        .wait_for(
            "van-1 moved",
            "const at = fieldlineLive.drawn()['van-1']; return !!at && Math.abs(at[0] - 2.40) < 0.01;",
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

    // Clicking a row opens its detail with what the API said, and a chart of its metric.
    van.publish(
        "devices/van-1/telemetry",
        json!({"metrics": {"temp_c": 21.5}}).to_string(),
    )
    .await;
    server
        .wait_for("/api/devices/van-1", |d| d["metrics"]["temp_c"].is_object())
        .await;
    browser.click("#list .row[data-id='van-1']").await;
    browser
        .wait_for("van-1 detail", "return !document.getElementById('detail').hidden && document.getElementById('detail-values').textContent.includes('48.86');", json!([]))
        .await;
    browser
        .wait_for(
            "the temp_c chart",
            "return document.getElementById('chart-metric').value === 'temp_c' && !!document.querySelector('#chart .uplot') && document.getElementById('chart-note').textContent === 'live';",
            json!([]),
        )
        .await;
    // A live reading lands on the chart.
    van.publish(
        "devices/van-1/telemetry",
        json!({"metrics": {"temp_c": 23.0}}).to_string(),
    )
    .await;
    browser
        .wait_for(
            "the live reading charted",
            "return document.getElementById('detail-values').textContent.includes('23');",
            json!([]),
        )
        .await;
    // Its track for the last 24 h: drawn, with its (too short to judge) trips and stops.
    browser.click("#track-show").await;
    browser
        .wait_for(
            "the track",
            "const t = document.getElementById('trips').textContent; return t && !t.includes('loading') && fieldlineMap.getSource('track')._data;",
            json!([]),
        )
        .await;
    browser.screenshot("6-detail").await;
    // Back out to the world: showing the track zoomed in on Paris, and a zoomed-in page only
    // streams what is in view.
    browser.click("#track-clear").await;
    browser
        .eval(
            "fieldlineMap.jumpTo({center: [0, 20], zoom: 1.5}); return true;",
            json!([]),
        )
        .await;
    map_still(&browser).await;

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
            "const at = fieldlineLive.drawn()['van-1']; return !!at && Math.abs(at[0] - 2.45) < 0.01;",
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
        .filter(|e| !e.contains("/api/ws") && !e.contains("ERR_CONNECTION_REFUSED"))
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

    // A viewer may read but not write: saving a rule says so.
    browser.click("[data-tool=rules]").await;
    browser.click("#rule-new").await;
    browser.type_into("#rule-form [name=name]", "Cold").await;
    browser
        .type_into("#rule-form [name=metric]", "temp_c")
        .await;
    browser.type_into("#rule-form [name=above]", "8").await;
    browser.click("#rule-form button[type=submit]").await;
    browser
        .wait_for(
            "the 403 said",
            "return document.getElementById('rule-error').textContent.includes('may not do that');",
            json!([]),
        )
        .await;
    browser.screenshot("4-viewer-refused").await;

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
            .filter(|e| !e.contains("401") && !e.contains("403"))
            .collect::<Vec<_>>(),
        Vec::<String>::new()
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Where a `[lon, lat]` is on screen (viewport CSS pixels), for clicks on the map.
async fn screen_point(browser: &Browser, lon: f64, lat: f64) -> (f64, f64) {
    let p = browser
        .eval(
            "const r = fieldlineMap.getCanvas().getBoundingClientRect(); const p = fieldlineMap.project(arguments[0]); return [r.left + p.x, r.top + p.y];",
            json!([[lon, lat]]),
        )
        .await;
    (
        p[0].as_f64().unwrap_or(f64::NAN),
        p[1].as_f64().unwrap_or(f64::NAN),
    )
}

/// The map still, so a click lands where it was aimed.
async fn map_still(browser: &Browser) {
    browser
        .wait_for(
            "the map still",
            "return !fieldlineMap.isMoving() && fieldlineMap.loaded();",
            json!([]),
        )
        .await;
}

async fn click_map(browser: &Browser, lon: f64, lat: f64) {
    let (x, y) = screen_point(browser, lon, lat).await;
    browser.click_at(x, y).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geofence_drawn_on_the_map_raises_its_event_in_the_page() {
    let dir = TempDir::new("web-fence");
    let db = database(Backend::Sqlite, &dir, "web-fence").await;
    let mut server = Server::start(&dir, &db).await;
    let browser = Browser::start(&shots("geofence")).await;
    let mut van = Device::connect(server.mqtt_port, "van-1").await;
    let now = now_ms();
    let fix = |ms: i64, lon: f64| json!({"ts": ms, "lat": 52.52, "lon": lon}).to_string();
    van.publish("devices/van-1/location", fix(now - 3_000, 13.400))
        .await;
    van.wait_acked(1).await;

    browser.goto(&server.url("/")).await;
    wait_loaded(&browser).await;
    browser
        .wait_for(
            "van-1 listed",
            &format!("return (() => {{ {LISTED} }})().includes('van-1');"),
            json!([]),
        )
        .await;
    browser
        .eval(
            "fieldlineMap.jumpTo({center: [13.41, 52.52], zoom: 14}); return true;",
            json!([]),
        )
        .await;
    browser.click("[data-tool=geofences]").await;
    map_still(&browser).await;
    browser
        .wait_for(
            "the empty fence list",
            "return document.getElementById('fence-list').textContent.includes('No geofences yet');",
            json!([]),
        )
        .await;

    // A polygon, clicked corner by corner and closed on its first corner.
    browser.click("[data-draw=polygon]").await;
    browser
        .wait_for(
            "the polygon tool ready",
            "return document.getElementById('draw-hint').textContent.startsWith('Click');",
            json!([]),
        )
        .await;
    let corners = [
        (13.405, 52.515),
        (13.415, 52.515),
        (13.415, 52.525),
        (13.405, 52.525),
        (13.405, 52.515),
    ];
    for (lon, lat) in corners {
        click_map(&browser, lon, lat).await;
    }
    browser
        .wait_for(
            "the fence form",
            "return !document.getElementById('fence-form').hidden;",
            json!([]),
        )
        .await;
    browser.screenshot("1-polygon-drawn").await;
    browser.type_into("#fence-form [name=name]", "Depot").await;
    browser.type_into("#fence-form [name=dwell_s]", "600").await;
    browser.click("#fence-form button[type=submit]").await;
    browser
        .wait_for(
            "Depot listed",
            "return document.getElementById('fence-form').hidden && document.getElementById('fence-list').textContent.includes('Depot');",
            json!([]),
        )
        .await;
    let stored = server.get_ok("/api/geofences").await;
    let features = stored["features"].as_array().cloned().unwrap_or_default();
    assert_eq!(features.len(), 1, "one fence stored: {stored}");
    let depot = &features[0];
    assert_eq!(depot["properties"]["name"], "Depot");
    assert_eq!(depot["properties"]["dwell_s"], 600);
    assert_eq!(depot["geometry"]["type"], "Polygon");
    let ring = depot["geometry"]["coordinates"][0]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(ring.len(), 5, "four corners and the closing one: {depot}");
    for (lon, lat) in &corners[..4] {
        assert!(
            ring.iter().any(|p| {
                (p[0].as_f64().unwrap_or(0.0) - lon).abs() < 2e-4
                    && (p[1].as_f64().unwrap_or(0.0) - lat).abs() < 2e-4
            }),
            "a corner near {lon},{lat} in {ring:?}"
        );
    }
    browser.screenshot("2-polygon-saved").await;

    // A circle: the API's reason for a radius of 0 is shown at the form; 150 m is stored.
    browser.click("[data-draw=circle]").await;
    browser
        .wait_for(
            "the circle tool ready",
            "return document.getElementById('draw-hint').textContent.startsWith('Click');",
            json!([]),
        )
        .await;
    click_map(&browser, 13.42, 52.52).await;
    click_map(&browser, 13.422, 52.52).await;
    browser
        .wait_for(
            "the circle form",
            "return !document.getElementById('fence-form').hidden && document.querySelector('#fence-form [name=radius_m]').value;",
            json!([]),
        )
        .await;
    browser.type_into("#fence-form [name=name]", "Yard").await;
    browser.type_into("#fence-form [name=radius_m]", "0").await;
    browser.click("#fence-form button[type=submit]").await;
    let reason = browser
        .wait_for(
            "the API's reason",
            "return document.getElementById('fence-error').textContent;",
            json!([]),
        )
        .await;
    assert!(
        reason.as_str().unwrap_or_default().contains("radius"),
        "the reason names the radius: {reason}"
    );
    browser.screenshot("3-circle-refused").await;
    browser
        .type_into("#fence-form [name=radius_m]", "150")
        .await;
    browser.click("#fence-form button[type=submit]").await;
    browser
        .wait_for(
            "Yard listed",
            "return document.getElementById('fence-list').textContent.includes('Yard');",
            json!([]),
        )
        .await;
    let stored = server.get_ok("/api/geofences").await;
    let yard = stored["features"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["properties"]["name"] == "Yard")
        .cloned()
        .unwrap_or_default();
    assert_eq!(yard["geometry"]["type"], "Point", "a circle: {yard}");
    assert_eq!(yard["properties"]["radius_m"], 150);
    let centre = &yard["geometry"]["coordinates"];
    assert!(
        (centre[0].as_f64().unwrap_or(0.0) - 13.42).abs() < 2e-4
            && (centre[1].as_f64().unwrap_or(0.0) - 52.52).abs() < 2e-4,
        "centred where clicked: {centre}"
    );

    // A corridor: clicked along its route, finished on its last point, 40 m wide.
    browser.click("[data-draw=corridor]").await;
    browser
        .wait_for(
            "the corridor tool ready",
            "return document.getElementById('draw-hint').textContent.startsWith('Click');",
            json!([]),
        )
        .await;
    for (lon, lat) in [
        (13.404, 52.5135),
        (13.410, 52.513),
        (13.416, 52.5135),
        (13.416, 52.5135),
    ] {
        click_map(&browser, lon, lat).await;
    }
    browser
        .wait_for(
            "the corridor form",
            "return !document.getElementById('fence-form').hidden && !document.querySelector('#fence-form [name=width_m]').closest('label').hidden;",
            json!([]),
        )
        .await;
    browser
        .type_into("#fence-form [name=name]", "Ring road")
        .await;
    browser.type_into("#fence-form [name=width_m]", "40").await;
    browser.click("#fence-form button[type=submit]").await;
    let road = server
        .wait_for("/api/geofences", |v| {
            v["features"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["properties"]["name"] == "Ring road"))
        })
        .await["features"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["properties"]["name"] == "Ring road")
        .cloned()
        .unwrap_or_default();
    assert_eq!(road["geometry"]["type"], "LineString", "a corridor: {road}");
    assert_eq!(road["properties"]["width_m"], 40);
    assert_eq!(
        road["geometry"]["coordinates"].as_array().map(Vec::len),
        Some(3),
        "three points clicked: {road}"
    );
    browser.screenshot("3b-corridor").await;

    // Driven into Depot: the enter event appears in the page as a notice and in the list.
    for (i, lon) in [13.401, 13.410, 13.411].into_iter().enumerate() {
        van.publish(
            "devices/van-1/location",
            fix(now - 2_000 + 500 * i as i64, lon),
        )
        .await;
    }
    van.wait_acked(4).await;
    browser
        .wait_for(
            "the enter notice",
            "return [...document.querySelectorAll('#notices .notice')].some(n => n.textContent.includes('entered Depot'));",
            json!([]),
        )
        .await;
    browser.screenshot("4-enter-notice").await;
    browser.click("[data-tool=events]").await;
    browser
        .wait_for(
            "the enter event listed",
            "return document.getElementById('event-list').textContent.includes('van-1 entered Depot');",
            json!([]),
        )
        .await;
    browser.screenshot("5-event-list").await;

    // History with filters: this device's geofence events are stored; another device has none.
    browser
        .type_into("#events-form [name=devices]", "van-1")
        .await;
    browser.click("#events-form button[type=submit]").await;
    browser
        .wait_for(
            "stored events",
            "return document.getElementById('events-note').textContent.startsWith('1 stored event') && document.getElementById('event-list').textContent.includes('entered Depot');",
            json!([]),
        )
        .await;
    browser
        .type_into("#events-form [name=devices]", "nobody")
        .await;
    browser.click("#events-form button[type=submit]").await;
    browser
        .wait_for(
            "no stored events",
            "return document.getElementById('event-list').textContent.includes('No stored events match');",
            json!([]),
        )
        .await;
    // A bad filter: the API's reason, not an empty list.
    browser
        .type_into("#events-form [name=devices]", "no spaces allowed")
        .await;
    browser.click("#events-form button[type=submit]").await;
    browser
        .wait_for(
            "the filter refused",
            "return document.getElementById('events-note').textContent.includes('Loading events failed');",
            json!([]),
        )
        .await;
    browser.screenshot("6-history").await;

    // Import a GeoJSON file: one with a bad corridor is refused whole, with the feature named.
    browser.click("[data-tool=geofences]").await;
    let garbage = dir.0.join("notes.geojson");
    std::fs::write(&garbage, "this is { not JSON").expect("write the garbage");
    browser.upload("#fence-import", &garbage).await;
    browser
        .wait_for(
            "not JSON said",
            "return [...document.querySelectorAll('#notices .notice')].some(n => n.textContent.includes('Importing notes.geojson failed: it is not JSON'));",
            json!([]),
        )
        .await;
    let bad = dir.0.join("bad.geojson");
    let corridor = json!({"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[13.40, 52.53], [13.42, 52.53]]}, "properties": {"name": "Route 1", "width_m": 40}});
    let mut zero_width = corridor.clone();
    zero_width["properties"]["width_m"] = json!(0);
    std::fs::write(
        &bad,
        json!({"type": "FeatureCollection", "features": [corridor.clone(), zero_width]})
            .to_string(),
    )
    .expect("write the bad import");
    browser.upload("#fence-import", &bad).await;
    browser
        .wait_for(
            "the import refused",
            "return [...document.querySelectorAll('#notices .notice')].some(n => n.textContent.includes('Importing bad.geojson failed') && n.textContent.includes('feature 1'));",
            json!([]),
        )
        .await;
    let good = dir.0.join("route.geojson");
    std::fs::write(
        &good,
        json!({"type": "FeatureCollection", "features": [corridor]}).to_string(),
    )
    .expect("write the import");
    browser.upload("#fence-import", &good).await;
    browser
        .wait_for(
            "the corridor imported",
            "return document.getElementById('fence-list').textContent.includes('Route 1');",
            json!([]),
        )
        .await;
    browser.screenshot("6b-imported").await;

    // Delete Depot (two clicks) from its edit form.
    browser
        .wait_for(
            "the fence list",
            "return [...document.querySelectorAll('#fence-list [data-fence]')].length === 4;",
            json!([]),
        )
        .await;
    browser
        .eval(
            "[...document.querySelectorAll('#fence-list [data-fence]')].find(b => b.textContent.includes('Depot')).click(); return true;",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the edit form",
            "return !document.getElementById('fence-form').hidden && !document.getElementById('fence-delete').hidden;",
            json!([]),
        )
        .await;
    browser.screenshot("7-editing").await;
    browser.click("#fence-delete").await;
    browser.click("#fence-delete").await;
    server
        .wait_for("/api/geofences", |v| {
            v["features"].as_array().map(Vec::len) == Some(3)
        })
        .await;
    let errors: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        // The refused radius and filter above: the browser logs every 400 it was answered.
        .filter(|e| !e.contains("400 (Bad Request)"))
        .collect();
    assert_eq!(errors, Vec::<String>::new());

    // A rule: the API's reason for a threshold rule without a metric, then one stored.
    browser.click("[data-tool=rules]").await;
    browser.click("#rule-new").await;
    browser
        .type_into("#rule-form [name=name]", "Cold chain")
        .await;
    browser.type_into("#rule-form [name=above]", "8").await;
    browser.click("#rule-form button[type=submit]").await;
    browser
        .wait_for(
            "the rule refused",
            "return document.getElementById('rule-error').textContent.includes('metric');",
            json!([]),
        )
        .await;
    browser
        .type_into("#rule-form [name=metric]", "temp_c")
        .await;
    browser
        .type_into("#rule-form [name=clear_below]", "7.5")
        .await;
    browser.click("#rule-form button[type=submit]").await;
    browser
        .wait_for(
            "the rule listed",
            "return document.getElementById('rule-form').hidden && document.getElementById('rule-list').textContent.includes('Cold chain');",
            json!([]),
        )
        .await;
    let rules = server.get_ok("/api/rules").await;
    assert_eq!(rules[0]["name"], "Cold chain", "{rules}");
    assert_eq!(rules[0]["above"], 8.0);
    assert_eq!(rules[0]["clear_below"], 7.5);
    // A stale rule: the form shows its own fields, and the list says what it watches.
    browser.click("#rule-new").await;
    browser
        .type_into("#rule-form [name=name]", "Quiet fridge")
        .await;
    browser.set_value("#rule-form [name=type]", "stale").await;
    let shown = browser
        .eval(
            "const f = document.getElementById('rule-form'); const visible = n => !f.querySelector(`[name=${n}]`).closest('label').hidden; return [visible('metric'), visible('stale_for_s'), visible('above'), visible('offline_for_s')];",
            json!([]),
        )
        .await;
    assert_eq!(shown, json!([true, true, false, false]));
    browser
        .type_into("#rule-form [name=metric]", "temp_c")
        .await;
    browser
        .type_into("#rule-form [name=stale_for_s]", "300")
        .await;
    browser.click("#rule-form button[type=submit]").await;
    browser
        .wait_for(
            "the stale rule listed",
            "return document.getElementById('rule-form').hidden && document.getElementById('rule-list').textContent.includes('no temp_c for 300 s');",
            json!([]),
        )
        .await;
    let rules = server.get_ok("/api/rules").await;
    assert_eq!(rules[1]["name"], "Quiet fridge", "{rules}");
    assert_eq!(rules[1]["stale_for_s"], 300.0);
    assert!(rules[1].get("above").is_none(), "{rules}");
    browser.screenshot("8-rule").await;
    browser.click("[data-tool=geofences]").await;

    // The server down: saving says so instead of failing silently.
    browser
        .eval(
            "[...document.querySelectorAll('#fence-list [data-fence]')].find(b => b.textContent.includes('Yard')).click(); return true;",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the Yard form",
            "return !document.getElementById('fence-form').hidden;",
            json!([]),
        )
        .await;
    server.kill().await;
    browser.click("#fence-form button[type=submit]").await;
    browser
        .wait_for(
            "server down said",
            "return document.getElementById('fence-error').textContent.includes('cannot be reached');",
            json!([]),
        )
        .await;
    browser.screenshot("9-server-down").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_a_stored_track_plays_pauses_and_seeks() {
    let dir = TempDir::new("web-replay");
    let db = database(Backend::Sqlite, &dir, "web-replay").await;
    let server = Server::start(&dir, &db).await;
    let browser = Browser::start(&shots("replay")).await;

    // A fence the track runs through (its enter and exit become the slider's marks), then two
    // minutes of one fix a second, eastwards, half an hour ago; a metric beside it; and a
    // second truck on the same clock.
    let (status, fence) = server
        .request(
            reqwest::Method::POST,
            "/api/geofences",
            None,
            Some(json!({"type": "Feature", "properties": {"name": "Gate"}, "geometry": {"type": "Polygon",
                "coordinates": [[[13.3050, 52.49], [13.3060, 52.49], [13.3060, 52.51], [13.3050, 52.51], [13.3050, 52.49]]]}})),
        )
        .await;
    assert_eq!(status, 201, "{fence}");
    let mut truck = Device::connect(server.mqtt_port, "truck-7").await;
    let t0 = (now_ms() - 1_800_000) / 1000 * 1000;
    let lon_at = |s: i64| 13.30 + 0.0001 * s as f64;
    let fixes: Vec<Value> = (0..120)
        .map(|s| json!({"ts": t0 + s * 1000, "seq": s + 1, "lat": 52.50, "lon": lon_at(s), "speed": 7.0}))
        .collect();
    let readings: Vec<Value> = (0..120)
        .map(|s| json!({"ts": t0 + s * 1000, "seq": s + 1, "metrics": {"temp_c": 20.0 + s as f64 / 10.0}}))
        .collect();
    truck
        .publish("devices/truck-7/location", json!(fixes).to_string())
        .await;
    truck
        .publish("devices/truck-7/telemetry", json!(readings).to_string())
        .await;
    let other: Vec<Value> = (0..120)
        .map(|s| json!({"ts": t0 + s * 1000, "seq": s + 1, "lat": 52.501, "lon": lon_at(s)}))
        .collect();
    truck
        .publish("devices/truck-8/location", json!(other).to_string())
        .await;
    truck.wait_acked(3).await;
    server
        .wait_for(&format!("/api/devices/truck-7/track?from={t0}"), |v| {
            v.as_array().map(Vec::len) == Some(120)
        })
        .await;
    server
        .wait_for("/api/events?devices=truck-7", |v| {
            v.as_array().map(Vec::len) == Some(2)
        })
        .await;

    browser.goto(&server.url("/")).await;
    wait_loaded(&browser).await;
    browser.click("[data-tool=replay]").await;
    browser
        .type_into("#replay-form [name=devices]", "truck-7, truck-8")
        .await;
    // The range as the page's datetime-local fields take it (the browser's own time zone).
    browser
        .eval(
            "const local = (ms) => new Date(ms - new Date(ms).getTimezoneOffset() * 60000).toISOString().slice(0, 19);
             const f = document.getElementById('replay-form').elements;
             f.from.value = local(arguments[0]); f.to.value = local(arguments[1]); return true;",
            json!([t0 - 5_000, t0 + 125_000]),
        )
        .await;
    browser.set_value("#replay-speed", "10").await;
    browser.click("#replay-form button[type=submit]").await;

    // It plays: the marker appears and moves east, the clock and slider advance, the chart's there.
    let clock = "return Number(document.getElementById('replay-clock').dataset.ts);";
    let marker = "const d = fieldlineReplay.devices.get('truck-7'); return d ? d.lon : null;";
    browser
        .wait_for(
            "the replay moving",
            &format!("const lon = (() => {{ {marker} }})(); return lon !== null && lon > {} && document.getElementById('replay-play').textContent === 'Pause';", lon_at(5)),
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the chart",
            "return !!document.querySelector('#replay-chart .uplot');",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the replayed marker drawn",
            "return fieldlineMap.queryRenderedFeatures({layers: ['replay']}).length === 2;",
            json!([]),
        )
        .await;
    // Both trucks on the map, their enters and exits marked on the slider.
    browser
        .wait_for(
            "both trucks replayed",
            "return fieldlineReplay.devices.size === 2;",
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "two event marks (both trucks in, both out, at the same moments)",
            "return document.querySelectorAll('#replay-marks .mark').length === 2 && document.querySelector('#replay-marks .mark').title.includes('truck-8: entered Gate');",
            json!([]),
        )
        .await;
    // A new speed while playing: the server's answer says it.
    browser.set_value("#replay-speed", "100").await;
    browser
        .wait_for(
            "speed 100",
            "return Number(fieldlineReplay.speed) === 100;",
            json!([]),
        )
        .await;
    browser.set_value("#replay-speed", "10").await;
    browser
        .wait_for(
            "speed 10",
            "return Number(fieldlineReplay.speed) === 10;",
            json!([]),
        )
        .await;
    browser.screenshot("1-playing").await;

    // Pause: the clock and the marker hold still.
    browser.click("#replay-play").await;
    browser
        .wait_for(
            "paused",
            "return document.getElementById('replay-play').textContent === 'Play';",
            json!([]),
        )
        .await;
    // Frames already on the wire and the page's next animation frame land first.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let held = browser.eval(clock, json!([])).await;
    let held_lon = browser.eval(marker, json!([])).await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(browser.eval(clock, json!([])).await, held, "the clock held");
    assert_eq!(
        browser.eval(marker, json!([])).await,
        held_lon,
        "the marker held"
    );
    assert!(
        held.as_f64().unwrap_or(0.0) < (t0 + 110_000) as f64,
        "paused before the seek point: {held}"
    );
    browser.screenshot("2-paused").await;

    // A mark seeks to its event.
    browser.click("#replay-marks .mark").await;
    browser
        .wait_for(
            "the clock at the mark",
            &format!("return (() => {{ {clock} }})() === Number(document.querySelector('#replay-marks .mark').dataset.ts);"),
            json!([]),
        )
        .await;

    // Seek with the slider to 100 s in, then play: the next fixes come from there on.
    browser
        .set_value("#replay-seek", &(t0 + 100_000).to_string())
        .await;
    browser
        .wait_for(
            "the clock at the seek point",
            &format!("return (() => {{ {clock} }})() >= {};", t0 + 100_000),
            json!([]),
        )
        .await;
    browser.click("#replay-play").await;
    browser
        .wait_for(
            "the marker past the seek point",
            &format!(
                "const lon = (() => {{ {marker} }})(); return lon !== null && lon >= {};",
                lon_at(100) - 1e-9
            ),
            json!([]),
        )
        .await;
    browser
        .wait_for(
            "the end",
            "return document.getElementById('replay-note').textContent === 'End of the range.';",
            json!([]),
        )
        .await;
    browser.screenshot("3-seeked-to-end").await;

    // Bad input: a range that ends before it starts is refused in the page.
    browser
        .eval(
            "const f = document.getElementById('replay-form').elements; [f.from.value, f.to.value] = [f.to.value, f.from.value]; return true;",
            json!([]),
        )
        .await;
    browser.click("#replay-form button[type=submit]").await;
    browser
        .wait_for(
            "the range refused",
            "return [...document.querySelectorAll('#notices .notice')].some(n => n.textContent.includes('must end after'));",
            json!([]),
        )
        .await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}

/// A command sent from the device detail reaches a real MQTT client, and the page shows it go
/// `sent → delivered → replied` with the reply; a bad payload is refused in the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_from_the_detail_is_followed_to_its_reply() {
    let dir = TempDir::new("web-commands");
    let db = database(Backend::Sqlite, &dir, "web_commands").await;
    let server = Server::start(&dir, &db).await;
    let browser = Browser::start(&shots("commands")).await;
    let mut device =
        support::commanded::Commanded::connect(server.mqtt_port, "van-9", 4, true, None).await;
    device
        .publish(
            "devices/van-9/location",
            json!({"lat": 52.52, "lon": 13.40}).to_string().as_bytes(),
        )
        .await;
    browser.goto(&server.url("/")).await;
    wait_loaded(&browser).await;
    browser
        .wait_for(
            "van-9 listed",
            "return !!document.querySelector(\"#list .row[data-id='van-9']\");",
            json!([]),
        )
        .await;
    browser.click("#list .row[data-id='van-9']").await;
    browser
        .wait_for(
            "the commands box",
            "return !document.getElementById('detail').hidden && document.getElementById('command-list').textContent.includes('No commands');",
            json!([]),
        )
        .await;

    // Not JSON: the page says so and sends nothing.
    browser.type_into("#command-name", "set_interval").await;
    browser.type_into("#command-payload", "{seconds: 5").await;
    browser.click("#command-send").await;
    browser
        .wait_for(
            "the payload refused",
            "return document.getElementById('command-error').textContent.includes('JSON');",
            json!([]),
        )
        .await;

    browser
        .type_into("#command-payload", r#"{"seconds": 5}"#)
        .await;
    browser.click("#command-send").await;
    let got = device.next().await;
    assert_eq!(got.topic, "devices/van-9/commands/set_interval");
    assert_eq!(got.body["payload"], json!({"seconds": 5}));
    let id = got.body["id"].as_str().expect("id").to_string();
    let state_is = |state: &'static str| {
        let id = id.clone();
        let browser = &browser;
        async move {
            browser
                .wait_for(
                    state,
                    "const el = document.querySelector(`[data-command='${arguments[0]}'] .state`); return el && el.dataset.state === arguments[1];",
                    json!([id, state]),
                )
                .await;
        }
    };
    state_is("sent").await;
    device.ack_next().await;
    state_is("delivered").await;
    device
        .publish(
            &format!("devices/van-9/replies/{id}"),
            br#"{"ok": true, "interval_ms": 5000}"#,
        )
        .await;
    state_is("replied").await;
    let shown = browser
        .eval(
            "return window.fieldlineCommands.shown.get(arguments[0]);",
            json!([id]),
        )
        .await;
    // `queued` may or may not be seen: the device can have it before the POST's answer.
    let shown: Vec<String> = serde_json::from_value(shown).expect("states");
    assert!(
        shown.ends_with(&["sent".into(), "delivered".into(), "replied".into()]),
        "{shown:?}"
    );
    let item = browser
        .eval(
            "return document.querySelector(`[data-command='${arguments[0]}']`).textContent;",
            json!([id]),
        )
        .await;
    assert!(item.to_string().contains("interval_ms"), "{item}");
    // The quick button sends it again.
    browser.click("#command-quick button[data-index='0']").await;
    let again = device.next().await;
    assert_eq!(again.body["name"], "set_interval");
    assert_ne!(again.body["id"], id.as_str());
    browser.screenshot("1-commands").await;
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_is_worked_from_the_alarms_panel() {
    let dir = TempDir::new("web-alarms");
    let db = database(Backend::Sqlite, &dir, "web_alarms").await;
    let server = Server::start(&dir, &db).await;
    let (status, rule) = server
        .request(
            reqwest::Method::POST,
            "/api/rules",
            None,
            Some(json!({"name": "Cold chain", "devices": ["fridge-*"], "metric": "temp_c", "above": 8.0, "severity": "critical"})),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    let mut fridge = Device::connect(server.mqtt_port, "fridge-1").await;
    fridge
        .publish(
            "devices/fridge-1/location",
            json!({"lat": 52.52, "lon": 13.40}).to_string(),
        )
        .await;
    fridge
        .publish(
            "devices/fridge-1/telemetry",
            json!({"metrics": {"temp_c": 9.5}}).to_string(),
        )
        .await;
    fridge.wait_acked(2).await;
    server
        .wait_for("/api/alarms?state=active", |a| {
            a.as_array().is_some_and(|a| a.len() == 1)
        })
        .await;

    let browser = Browser::start(&shots("alarms")).await;
    browser.goto(&server.url("/")).await;
    wait_loaded(&browser).await;
    // The count in the top bar, and the device marked in the list.
    browser
        .wait_for(
            "the alarm counted and its device marked",
            "const c = document.getElementById('alarms-count'); return !c.hidden && c.textContent === '1' && !!document.querySelector(\"#list .row[data-id='fridge-1'] .alarm-tag.critical\");",
            json!([]),
        )
        .await;
    browser.click("[data-tool=alarms]").await;
    browser
        .wait_for(
            "the alarm listed",
            "const li = document.querySelector('#alarm-list li.alarm.critical.active'); return !!li && li.textContent.includes('Cold chain') && li.textContent.includes('fridge-1');",
            json!([]),
        )
        .await;
    browser.screenshot("1-open").await;

    let stored = |field: &'static str, want: Value| {
        let server = &server;
        async move {
            server
                .wait_for("/api/alarms", |a| a[0][field] == want)
                .await
        }
    };
    browser.click("#alarm-list [data-action=acknowledge]").await;
    stored("state", json!("acknowledged")).await;
    browser
        .wait_for(
            "shown acknowledged",
            "const li = document.querySelector('#alarm-list li.alarm'); return li.classList.contains('acknowledged') && li.querySelector('[data-action=acknowledge]').hidden;",
            json!([]),
        )
        .await;
    browser.type_into("#alarm-list [name=text]", "alice").await;
    browser.click("#alarm-list [data-action=assign]").await;
    stored("assignee", json!("alice")).await;
    browser
        .type_into("#alarm-list [name=text]", "door left open")
        .await;
    browser.click("#alarm-list [data-action=notes]").await;
    let alarms = server
        .wait_for("/api/alarms", |a| {
            a[0]["notes"].as_array().is_some_and(|n| n.len() == 1)
        })
        .await;
    assert_eq!(alarms[0]["notes"][0]["text"], "door left open");
    browser
        .wait_for(
            "assignee and note shown",
            "const li = document.querySelector('#alarm-list li.alarm'); return li.textContent.includes('for alice') && li.textContent.includes('door left open');",
            json!([]),
        )
        .await;
    browser.screenshot("2-worked").await;

    // An empty assignee is refused with the API's reason, and nothing changes.
    browser.set_value("#alarm-list [name=text]", "").await;
    browser.click("#alarm-list [data-action=assign]").await;
    browser
        .wait_for(
            "the refusal said",
            "return document.body.textContent.includes('to must be 1 to 128 characters');",
            json!([]),
        )
        .await;

    browser.click("#alarm-list [data-action=clear]").await;
    stored("state", json!("cleared")).await;
    browser
        .wait_for(
            "no open alarms",
            "return document.getElementById('alarm-list').textContent.includes('No open alarms') && document.getElementById('alarms-count').hidden && !document.querySelector('#list .alarm-tag');",
            json!([]),
        )
        .await;

    // A new alarm arrives live while the page is open.
    let mut other = Device::connect(server.mqtt_port, "fridge-2").await;
    other
        .publish(
            "devices/fridge-2/telemetry",
            json!({"metrics": {"temp_c": 12.0}}).to_string(),
        )
        .await;
    other.wait_acked(1).await;
    browser
        .wait_for(
            "the new alarm live",
            "const li = document.querySelector('#alarm-list li.alarm.active'); return !!li && li.textContent.includes('fridge-2') && document.getElementById('alarms-count').textContent === '1';",
            json!([]),
        )
        .await;
    browser.screenshot("3-live").await;
    let errors: Vec<String> = browser
        .console_errors()
        .await
        .into_iter()
        // The refused assignee above: the browser logs every 400 it was answered.
        .filter(|e| !e.contains("400 (Bad Request)"))
        .collect();
    assert_eq!(errors, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_fits_the_fleet_and_reads_like_a_dispatchers() {
    let dir = TempDir::new("web-console");
    let db = database(Backend::Sqlite, &dir, "web_console").await;
    let server = Server::start(&dir, &db).await;
    // Three vans in Berlin, one with the raw values a tracker sends.
    let mut fleet = Vec::new();
    for (i, (lat, lon)) in [(52.52, 13.40), (52.50, 13.45), (52.54, 13.36)]
        .into_iter()
        .enumerate()
    {
        let id = format!("van-{}", i + 1);
        let mut van = Device::connect(server.mqtt_port, &id).await;
        let fix = json!({"lat": lat, "lon": lon, "speed": 11.43334681858378,
            "heading": 164.80218739198938, "alt": 41.263, "accuracy": 4.71});
        van.publish(&format!("devices/{id}/location"), fix.to_string())
            .await;
        van.wait_acked(1).await;
        fleet.push(van);
    }
    server
        .wait_for("/api/devices", |d| {
            d.as_array()
                .is_some_and(|a| a.len() == 3 && a.iter().all(|d| d["location"].is_object()))
        })
        .await;

    let browser = Browser::start(&shots("console")).await;
    browser.goto(&server.url("/")).await;
    wait_loaded(&browser).await;
    browser
        .wait_for(
            "van-1 listed",
            "return !!document.querySelector(\"#list .row[data-id='van-1']\");",
            json!([]),
        )
        .await;
    // The first view holds the fleet, not the whole world.
    let berlin = "const c = fieldlineMap.getCenter(); return Math.abs(c.lat - 52.52) < 0.2 && Math.abs(c.lng - 13.40) < 0.3 && fieldlineMap.getZoom() > 9;";
    browser
        .wait_for("the map on the fleet", berlin, json!([]))
        .await;
    browser.screenshot("1-fitted").await;

    // Away and back with the fit button.
    browser
        .eval(
            "fieldlineMap.jumpTo({center: [0, 20], zoom: 2}); return true;",
            json!([]),
        )
        .await;
    browser.click("#fit").await;
    browser
        .wait_for("the map on the fleet again", berlin, json!([]))
        .await;

    // The detail reads in km/h, a rounded heading, metres and local time with its age.
    browser.click("#list .row[data-id='van-1']").await;
    let values = "return document.getElementById('detail-values').textContent;";
    let text = browser
        .wait_for(
            "the detail",
            "const t = document.getElementById('detail-values').textContent; return t.includes('km/h') ? t : null;",
            json!([]),
        )
        .await;
    let text = text.as_str().unwrap_or_default().to_owned();
    for expected in [
        "41 km/h",
        "165° S",
        "41 m",
        "±5 m",
        "52.52000, 13.40000",
        "ago",
    ] {
        assert!(text.contains(expected), "{expected} in {text}");
    }
    assert!(!text.contains("11.4333"), "{text}");
    browser.set_value("#speed-unit", "mph").await;
    let text = browser.eval(values, json!([])).await;
    assert!(
        text.as_str().is_some_and(|t| t.contains("26 mph")),
        "{text}"
    );
    browser.screenshot("2-detail-mph").await;
    // The choice stays for the next visit.
    browser.refresh().await;
    wait_loaded(&browser).await;
    browser
        .wait_for(
            "van-2 listed",
            "return !!document.querySelector(\"#list .row[data-id='van-2']\");",
            json!([]),
        )
        .await;
    browser.click("#list .row[data-id='van-2']").await;
    browser
        .wait_for(
            "mph remembered",
            "return document.getElementById('detail-values').textContent.includes('mph');",
            json!([]),
        )
        .await;

    // Fields that ask for devices offer the known ones, entry by entry: typed in the replay
    // form, each entry of a comma list completes from the ids not chosen yet.
    browser.click("[data-tool=replay]").await;
    let options = "return [...document.querySelectorAll('#device-ids option')].map(o => o.value);";
    browser
        .type_into("#replay-form input[name=devices]", "v")
        .await;
    let offered = browser
        .wait_for(
            "device completion",
            &format!("const o = (() => {{ {options} }})(); return o.length === 3 ? o : null;"),
            json!([]),
        )
        .await;
    assert_eq!(offered, json!(["van-1", "van-2", "van-3"]));
    browser
        .type_into("#replay-form input[name=devices]", "van-2, 3")
        .await;
    let offered = browser
        .wait_for(
            "the second entry completed",
            &format!("const o = (() => {{ {options} }})(); return o.length === 1 ? o : null;"),
            json!([]),
        )
        .await;
    assert_eq!(offered, json!(["van-2, van-3"]));
    browser
        .type_into("#replay-form input[name=devices]", "van-2, ")
        .await;
    let offered = browser
        .wait_for(
            "the chosen one left out",
            &format!("const o = (() => {{ {options} }})(); return o.length === 2 ? o : null;"),
            json!([]),
        )
        .await;
    assert_eq!(offered, json!(["van-2, van-1", "van-2, van-3"]));
    let linked = browser
        .eval(
            "return [...document.querySelectorAll('input[name=devices]')].every(i => i.getAttribute('list') === 'device-ids');",
            json!([]),
        )
        .await;
    assert_eq!(linked, json!(true));
    assert_eq!(browser.console_errors().await, Vec::<String>::new());
}

/// An operator adds an email channel from the Alarms panel: the API's reason for a bad time
/// zone shows beside the form, the corrected channel is listed as stored, and it is deleted
/// with two clicks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_channels_are_added_and_deleted_from_the_alarms_panel() {
    let dir = TempDir::new("web-channels");
    let db = database(Backend::Sqlite, &dir, "web_channels").await;
    let smtp_url = format!("smtp://127.0.0.1:{}", support::free_port());
    let server = Server::start_with(&dir, &db, &["--smtp-url", &smtp_url]).await;
    let browser = Browser::start(&shots("channels")).await;
    browser.goto(&server.url("/")).await;
    wait_loaded(&browser).await;
    browser.click("[data-tool=alarms]").await;
    browser
        .wait_for(
            "no channel yet",
            "return document.getElementById('channel-list').textContent.includes('No notification channels');",
            json!([]),
        )
        .await;
    browser.click("#channel-new").await;
    browser
        .type_into(
            "#channel-form input[name=to]",
            "ops@example.com, Ana <ana@example.com>",
        )
        .await;
    browser
        .eval(
            "const f = document.getElementById('channel-form').elements; f.severity.value = 'critical'; f.quiet_from.value = '22:00'; f.quiet_to.value = '06:00'; return true;",
            json!([]),
        )
        .await;
    browser
        .type_into("#channel-form input[name=tz]", "Mars/Olympus")
        .await;
    browser.click("#channel-form button[type=submit]").await;
    browser
        .wait_for(
            "the API's reason shown",
            "return document.getElementById('channel-error').textContent.includes('not a known time zone');",
            json!([]),
        )
        .await;
    assert_eq!(server.get_ok("/api/channels").await, json!([]));

    browser
        .type_into("#channel-form input[name=tz]", "Europe/Berlin")
        .await;
    browser.click("#channel-form button[type=submit]").await;
    browser
        .wait_for(
            "the channel listed",
            "const t = document.getElementById('channel-list').textContent; return t.includes('ops@example.com, Ana <ana@example.com>') && t.includes('critical and worse') && t.includes('quiet 22:00–06:00 Europe/Berlin');",
            json!([]),
        )
        .await;
    browser.screenshot("1-listed").await;
    let stored = server.get_ok("/api/channels").await;
    assert_eq!(
        stored[0]["to"],
        json!(["ops@example.com", "Ana <ana@example.com>"])
    );
    assert_eq!(stored[0]["severity"], "critical");
    assert_eq!(
        stored[0]["quiet"],
        json!({"from": "22:00", "to": "06:00", "tz": "Europe/Berlin"})
    );

    browser.click("[data-channel-delete]").await;
    browser.click("[data-channel-delete]").await;
    browser
        .wait_for(
            "the channel gone",
            "return document.getElementById('channel-list').textContent.includes('No notification channels');",
            json!([]),
        )
        .await;
    assert_eq!(server.get_ok("/api/channels").await, json!([]));
    // The one error is the refused channel's answer, which the browser logs as a failed load.
    let errors = browser.console_errors().await;
    assert!(
        errors.len() == 1 && errors[0].contains("/api/channels") && errors[0].contains("400"),
        "{errors:?}"
    );
}
