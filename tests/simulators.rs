//! The simulators against the real server: what they publish is stored, plausible, and the
//! load client's report agrees with the rows.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::{database, Backend, Server, TempDir};

/// `fieldline-sim` sits beside the test's own build; ./scripts/test.sh builds it first.
fn sim() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile dir");
    let sim = dir.join("fieldline-sim");
    assert!(
        sim.exists(),
        "{} is missing: run the tests with ./scripts/test.sh",
        sim.display()
    );
    sim
}

fn run_sim(server: &Server, args: &[&str]) -> (i32, String, String) {
    let port = server.mqtt_port.to_string();
    let out = Command::new(sim())
        .args(args)
        .args(["--port", &port])
        .output()
        .expect("fieldline-sim runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn rows(server: &Server, path: &str) -> Vec<Value> {
    server.get_ok(path).await.as_array().expect("array").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_what_was_acknowledged_and_stored() {
    let dir = TempDir::new("sim-load");
    let url = database(Backend::Sqlite, &dir, "sim_load").await;
    let server = Server::start(&dir, &url).await;
    let (code, stdout, stderr) = run_sim(
        &server,
        &[
            "load",
            "--devices",
            "4",
            "--rate",
            "2000",
            "--duration",
            "2",
            "--batch",
            "3",
            "--encoding",
            "msgpack",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    let sent = report["sent"].as_u64().expect("sent");
    assert!(sent > 0);
    assert_eq!(report["acked"].as_u64(), Some(sent));
    assert_eq!(report["unacked"], 0);
    assert_eq!(report["documents_acked"].as_u64(), Some(sent * 3));
    // Every acknowledged fix becomes a row: wait for the writer, then count over HTTP.
    let expected = sent * 3;
    server
        .wait_for("/metrics", |m| {
            let text = m.as_str().unwrap_or_default();
            server.metric(
                text,
                "fieldline_storage_rows_written_total{table=\"positions\"}",
            ) >= expected as f64
        })
        .await;
    let mut stored = 0;
    for d in 0..4 {
        stored += rows(
            &server,
            &format!("/api/devices/load-{d}/track?from=0&limit=100000"),
        )
        .await
        .len() as u64;
    }
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_vehicles_drive_plausible_tracks() {
    let dir = TempDir::new("sim-fleet");
    let url = database(Backend::Sqlite, &dir, "sim_fleet").await;
    let server = Server::start(&dir, &url).await;
    let (code, _, stderr) = run_sim(
        &server,
        &[
            "fleet",
            "--vehicles",
            "3",
            "--interval-ms",
            "100",
            "--duration",
            "2",
            "--center",
            "48.85,2.35",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    for v in 0..3 {
        let path = format!("/api/devices/vehicle-{v}/track?from=0");
        let track = server
            .wait_for(&path, |b| b.as_array().is_some_and(|a| a.len() >= 3))
            .await;
        let track = track.as_array().expect("array");
        for fix in track {
            let (lat, lon) = (
                fix["lat"].as_f64().expect("lat"),
                fix["lon"].as_f64().expect("lon"),
            );
            assert!(
                (lat - 48.85).abs() < 0.2 && (lon - 2.35).abs() < 0.3,
                "stays near the centre: {fix}"
            );
            let heading = fix["heading"].as_f64().expect("heading");
            assert!((0.0..360.0).contains(&heading));
            assert!((0.0..=30.0).contains(&fix["speed"].as_f64().expect("speed")));
        }
        // Consecutive fixes 100 ms apart at most 30 m/s: well under 50 m apart.
        for pair in track.windows(2) {
            let dlat = (pair[1]["lat"].as_f64().unwrap_or(0.0)
                - pair[0]["lat"].as_f64().unwrap_or(0.0))
                * 111_000.0;
            let dlon = (pair[1]["lon"].as_f64().unwrap_or(0.0)
                - pair[0]["lon"].as_f64().unwrap_or(0.0))
                * 73_000.0;
            assert!(dlat.hypot(dlon) < 50.0, "a vehicle does not jump: {pair:?}");
        }
        let seqs: Vec<u64> = track.iter().filter_map(|f| f["seq"].as_u64()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensors_report_plausible_readings() {
    let dir = TempDir::new("sim-sensors");
    let url = database(Backend::Sqlite, &dir, "sim_sensors").await;
    let server = Server::start(&dir, &url).await;
    let (code, _, stderr) = run_sim(
        &server,
        &[
            "sensors",
            "--sensors",
            "2",
            "--interval-ms",
            "100",
            "--duration",
            "2",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    for s in 0..2 {
        let device = server
            .wait_for(&format!("/api/devices/sensor-{s}"), |d| {
                d["metrics"].as_object().is_some_and(|m| m.len() == 4)
            })
            .await;
        let value = |name: &str| {
            device["metrics"][name]["value"]
                .as_f64()
                .expect("metric value")
        };
        assert!((-10.0..40.0).contains(&value("temp_c")));
        assert!((0.05..=0.6).contains(&value("moisture")));
        assert!((3.3..=4.2).contains(&value("battery_v")));
        assert!([0.0, 1.0].contains(&value("pump_on")));
        assert!(!rows(
            &server,
            &format!("/api/devices/sensor-{s}/telemetry?metric=temp_c&from=0")
        )
        .await
        .is_empty());
    }
}

#[test]
fn refuses_bad_arguments() {
    for args in [
        &["load", "--qos", "2"][..],
        &["load", "--batch", "0"],
        &["load", "--batch", "1001"],
        &["load", "--encoding", "xml"],
        &["fleet", "--center", "north"],
        &["teleport"],
    ] {
        let out = Command::new(sim())
            .args(args)
            .output()
            .expect("fieldline-sim runs");
        assert_eq!(out.status.code(), Some(2), "{args:?} is a usage error");
        assert!(!out.stderr.is_empty());
    }
    let out = Command::new(sim())
        .args(["load", "--devices", "0"])
        .output()
        .expect("runs");
    assert_ne!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_geofence_scenario_and_setup_load_fences_and_raise_events() {
    let dir = TempDir::new("sim-geofences");
    let url = database(Backend::Sqlite, &dir, "sim_geofences").await;
    let server = Server::start(&dir, &url).await;
    let http = server.url("");
    let setup = Command::new(sim())
        .args([
            "geofence-setup",
            "--http",
            &http,
            "--fences",
            "30",
            "--vertices",
            "12",
            "--rules",
            "5",
        ])
        .output()
        .expect("fieldline-sim runs");
    assert!(
        setup.status.success(),
        "{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let fences = server.get_ok("/api/geofences").await;
    assert_eq!(fences["features"].as_array().map(Vec::len), Some(30));
    assert_eq!(
        server.get_ok("/api/rules").await.as_array().map(Vec::len),
        Some(5)
    );
    let (code, stdout, stderr) = run_sim(
        &server,
        &[
            "geofences",
            "--http",
            &http,
            "--parked",
            "5",
            "--drivers",
            "5",
            "--interval-ms",
            "100",
            "--duration",
            "4",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    // Ten devices, a fix every 100 ms for 4 s (the first at once).
    let sent = report["fixes_sent"].as_u64().unwrap_or(0);
    assert!((400..=420).contains(&sent), "{report}");
    let track_rows = (0..5)
        .map(|i| format!("/api/devices/driver-{}/track?from=0&limit=100000", 5 + i))
        .collect::<Vec<_>>();
    let mut stored = 0;
    for path in &track_rows {
        stored += server
            .wait_for(path, |b| b.as_array().is_some_and(|a| !a.is_empty()))
            .await
            .as_array()
            .map_or(0, Vec::len);
    }
    assert!(stored >= 200, "the drivers' fixes are stored: {stored}");
    // The parked devices stand on the depot's boundary: each enters it once, and every event
    // read live was stored.
    let events = rows(&server, "/api/events?kinds=geofence&limit=100000").await;
    let parked_enters = events
        .iter()
        .filter(|e| e["name"] == "depot" && e["event"] == "enter")
        .filter(|e| {
            e["device"]
                .as_str()
                .is_some_and(|d| d.starts_with("parked-"))
        })
        .count();
    assert!((1..=5).contains(&parked_enters), "{events:?}");
    assert_eq!(
        report["geofence_events"].as_u64(),
        Some(events.len() as u64),
        "{report}"
    );
}

/// Fleet vehicles take commands: `ping` is answered, `set_interval` changes the pace of the
/// vehicle it was sent to (compared with a vehicle that was not told, over the same span),
/// and an unknown command is answered `"ok": false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_vehicles_answer_commands_and_set_interval_changes_their_pace() {
    let dir = TempDir::new("sim-commands");
    let url = database(Backend::Sqlite, &dir, "sim_commands").await;
    let server = Server::start(&dir, &url).await;
    let mut fleet = Command::new(sim())
        .args(["fleet", "--vehicles", "2", "--interval-ms", "1000"])
        .args(["--port", &server.mqtt_port.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("fieldline-sim runs");
    for v in 0..2 {
        server
            .wait_for(&format!("/api/devices/vehicle-{v}"), |d| {
                d["online"] == true
            })
            .await;
    }
    let send = |name: &str, payload: Value| {
        let server = &server;
        let body = serde_json::json!({"name": name, "payload": payload});
        async move {
            let (status, command) = server
                .request(
                    reqwest::Method::POST,
                    "/api/devices/vehicle-0/commands",
                    None,
                    Some(body),
                )
                .await;
            assert_eq!(status, 201, "{command}");
            let id = command["id"].as_str().expect("id").to_string();
            server
                .wait_for(&format!("/api/commands/{id}"), |c| {
                    c["state"] == "replied" || c["state"] == "failed"
                })
                .await
        }
    };
    let pong = send("ping", Value::Null).await;
    assert_eq!(pong["state"], "replied");
    assert_eq!(pong["reply"]["interval_ms"], 1000);
    let unknown = send("fly", Value::Null).await;
    assert_eq!(unknown["state"], "failed");

    let fixes = |v: u32| {
        let server = &server;
        async move {
            rows(server, &format!("/api/devices/vehicle-{v}/track?from=0"))
                .await
                .len()
        }
    };
    let set = send("set_interval", serde_json::json!({"interval_ms": 50})).await;
    assert_eq!(
        set["reply"],
        serde_json::json!({"ok": true, "interval_ms": 50})
    );
    let (fast_before, slow_before) = (fixes(0).await, fixes(1).await);
    server
        .wait_for("/api/devices/vehicle-0/track?from=0", |t| {
            t.as_array().is_some_and(|a| a.len() >= fast_before + 60)
        })
        .await;
    let slow_gained = fixes(1).await - slow_before;
    assert!(
        slow_gained * 4 < 60,
        "vehicle-0 gained 60 fixes while vehicle-1, at 1 s, gained {slow_gained}"
    );
    let _ = fleet.kill();
    let _ = fleet.wait();
}
