//! A real browser for the web dashboard's tests: Debian's `chromium`, headless, WebGL through
//! SwiftShader, driven by `chromedriver` over the W3C WebDriver protocol (JSON over HTTP,
//! spoken here with reqwest). `scripts/test.sh` installs both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::free_port;

pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    session: String,
    shots: PathBuf,
}

impl Browser {
    /// A fresh browser (empty session storage); screenshots go to `shots`.
    pub async fn start(shots: &Path) -> Browser {
        std::fs::create_dir_all(shots).expect("screenshot folder");
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/test.sh installs chromium-driver)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                    "--ignore-gpu-blocklist", "--window-size=1400,900",
                ],
            },
        }}});
        let reply: Value = http
            .post(format!("{base}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("new WebDriver session")
            .json()
            .await
            .expect("session reply");
        let id = reply["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {reply}"))
            .to_owned();
        Browser {
            driver,
            http,
            session: format!("{base}/session/{id}"),
            shots: shots.to_path_buf(),
        }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.session));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request
            .send()
            .await
            .expect("WebDriver answers")
            .json()
            .await
            .expect("WebDriver JSON");
        if let Some(error) = reply["value"]["error"].as_str() {
            panic!("WebDriver {path}: {error}: {}", reply["value"]["message"]);
        }
        reply["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    pub async fn refresh(&self) {
        self.command(reqwest::Method::POST, "/refresh", Some(json!({})))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// Polls `script` until it returns something truthy, and returns that; `what` names it.
    pub async fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.eval(script, args.clone()).await;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-")))
                    .await;
                panic!("timed out waiting for {what} (last: {v})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_owned()
    }

    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// A mouse click at a point of the viewport (CSS pixels), as real pointer events: what
    /// a map's drawing tools listen to.
    pub async fn click_at(&self, x: f64, y: f64) {
        let actions = json!({"actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "duration": 50, "origin": "viewport", "x": x.round() as i64, "y": y.round() as i64},
                {"type": "pointerDown", "button": 0},
                {"type": "pause", "duration": 40},
                {"type": "pointerUp", "button": 0},
                {"type": "pause", "duration": 250}
            ]
        }]});
        self.command(reqwest::Method::POST, "/actions", Some(actions))
            .await;
        self.command(reqwest::Method::DELETE, "/actions", None)
            .await;
    }

    /// Sets a form field's value the way a picker does (input and change events): for
    /// fields such as `datetime-local` and `range` that typing does not fill portably.
    pub async fn set_value(&self, css: &str, value: &str) {
        self.eval(
            "const el = document.querySelector(arguments[0]); el.focus(); el.value = arguments[1];
             el.dispatchEvent(new Event('input', {bubbles: true}));
             el.dispatchEvent(new Event('change', {bubbles: true})); el.blur(); return true;",
            json!([css, value]),
        )
        .await;
    }

    /// Chooses a file in an `<input type=file>`, as the file picker would.
    pub async fn upload(&self, css: &str, path: &Path) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": path.display().to_string() })),
        )
        .await;
    }

    /// Types into a field as a user would (key events), after clearing it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.command(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// A PNG of the page, kept as `{n}.png` in the screenshot folder; its bytes.
    pub async fn screenshot(&self, name: &str) -> Vec<u8> {
        let data = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        std::fs::write(self.shots.join(format!("{name}.png")), &png).expect("screenshot saved");
        png
    }

    /// The browser console's errors since the last call (chromedriver's log of the page).
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self
            .command(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killing chromedriver alone leaves its Chromium running (and busy): end the session
        // first, which quits the browser. Drop cannot await, so it is one blocking request.
        end_session(&self.session);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE` of a WebDriver session over a plain blocking socket; waits for the answer (the
/// browser has quit by then), at most a few seconds.
fn end_session(session_url: &str) {
    use std::io::{Read as _, Write as _};
    let Some(rest) = session_url.strip_prefix("http://") else {
        return;
    };
    let Some((host, path)) = rest.split_once('/') else {
        return;
    };
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
    }
}
