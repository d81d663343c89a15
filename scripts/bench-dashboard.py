#!/usr/bin/env python3
"""Measures the web dashboard in headless Chromium while devices move: frames per second,
main-thread busy time per second (Chrome's TaskDuration), and publish-to-marker latency
(the fix's `ts`, set by the simulator as it publishes, to the first map render after the
page applied it), and of that the part until the page's script had the fix (arrival: the
server, the network, and any wait behind the page's own work on its main thread); then, on the
same load, what one draw of the dot layer costs (its canvas cleared and every dot drawn,
waited for with a one-pixel read-back: the time the software GPU takes, 3 rounds of 20).
Talks WebDriver to chromedriver; prints one JSON object.

Usage: bench-dashboard.py URL WARMUP_S MEASURE_S"""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

url, warmup, measure = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
PORT = 9516


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", method=method, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["value"]


# A session of its own, so the browser it starts ends with it (see the `finally`).
driver = subprocess.Popen(["chromedriver", f"--port={PORT}"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
try:
    for _ in range(100):
        try:
            call("GET", "/status")
            break
        except OSError:
            time.sleep(0.1)
    session = call("POST", "/session", {"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
            "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
            "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist",
            "--window-size=1400,900"]}}}})["sessionId"]
    s = f"/session/{session}"

    def js(script):
        return call("POST", f"{s}/execute/sync", {"script": script, "args": []})

    def cdp(cmd, params=None):
        return call("POST", f"{s}/goog/cdp/execute", {"cmd": cmd, "params": params or {}})

    def task_seconds():
        metrics = cdp("Performance.getMetrics")["metrics"]
        return next(m["value"] for m in metrics if m["name"] == "TaskDuration")

    def run():
        call("POST", f"{s}/url", {"url": url})
        deadline = time.time() + 120
        while not js("return !!(window.fieldlineLive && window.fieldlineTimings && fieldlineTimings.land)"):
            if time.time() > deadline:
                raise TimeoutError("the page did not finish loading within 2 minutes")
            time.sleep(0.1)
        timings = js("return fieldlineTimings")
        # The fleet drives around Berlin: look at it (zoomed in, so the stream is by bbox).
        js("fieldlineMap.jumpTo({center: [13.405, 52.52], zoom: 11}); return true")
        time.sleep(warmup)
        cdp("Performance.enable")
        js("fieldlineLive.measureReset(); return true")
        busy0, t0 = task_seconds(), time.time()
        time.sleep(measure)
        busy1, t1 = task_seconds(), time.time()
        stats = js("""const m = fieldlineLive.measure;
        const l = m.latencies.slice().sort((a, b) => a - b);
        const q = (p, l_ = l) => l_.length ? l_[Math.min(l_.length - 1, Math.floor(p * l_.length))] : null;
        const a = (m.arrivals || []).slice().sort((x, y) => x - y);
        return {frames: m.frames, map_renders: m.renders, applied: m.applied, latency_samples: l.length,
                latency_ms_p50: q(0.5), latency_ms_p99: q(0.99), latency_ms_max: l[l.length - 1] || null,
                arrival_ms_p50: q(0.5, a), arrival_ms_p99: q(0.99, a),
                devices: fieldlineLive.devices.size,
                rendered: Object.keys(fieldlineLive.drawn()).length,
                elapsed_s: (performance.now() - m.since) / 1000}""")
        stats["fps"] = stats["frames"] / stats["elapsed_s"]
        stats["map_renders_per_s"] = stats["map_renders"] / stats["elapsed_s"]
        stats["main_thread_busy_per_s"] = (busy1 - busy0) / (t1 - t0)
        stats["events_applied_per_s"] = stats["applied"] / stats["elapsed_s"]
        stats["time_to_map_ms"] = timings.get("map")
        stats["time_to_land_ms"] = timings.get("land")
        # Pages that draw the dots inside the map (`?in-map`) have no dot canvas of their own,
        # and `?full-setdata` has no dot layer at all.
        stats["dot_draw_ms"] = js("""const d = fieldlineLive.dots;
        if (!d || !d.gl) return null;
        const px = new Uint8Array(4);
        const round = (n) => {
          const t0 = performance.now();
          for (let i = 0; i < n; i++) {
            d.drawNow();
            d.gl.readPixels(0, 0, 1, 1, d.gl.RGBA, d.gl.UNSIGNED_BYTE, px);
          }
          return (performance.now() - t0) / n;
        };
        round(3);
        return [round(20), round(20), round(20)].map((ms) => Math.round(ms * 10) / 10);""")
        print(json.dumps(stats))

    try:
        run()
    except (OSError, TimeoutError) as e:
        # A page so busy it cannot answer WebDriver within a minute: that is the result.
        print(json.dumps({"unresponsive": True, "error": str(e)}))
    else:
        call("DELETE", s)
finally:
    os.killpg(driver.pid, signal.SIGKILL)
