//! Shared harness for the end-to-end tests: the real `fieldline` binary on free ports, a fresh
//! database per test (SQLite file or PostgreSQL database), real MQTT clients, real HTTP.

#![allow(dead_code, unused_macros)]

/// Runs a test body once per backend: `mod name { sqlite, postgres }`. The test file
/// imports `Backend`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(Backend::Postgres).await
            }
        }
    )*};
}

pub mod browser;
pub mod commanded;
pub mod geo;
pub mod live;
pub mod nats;
pub mod nats_auth;
pub mod raw_mqtt;
pub mod smtp;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use serde_json::Value;
use sqlx::Connection;

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

pub fn unique(name: &str) -> String {
    format!(
        "{name}_{}_{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS gives out a free port")
}

/// Which store a test runs against.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("fieldline-test-{}", unique(name)));
        std::fs::create_dir_all(&path).expect("temp dir is writable");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // FIELDLINE_TEST_KEEP=1 keeps logs and data to look at after a failure.
        if std::env::var_os("FIELDLINE_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A database URL for one test: a new SQLite file, or a new PostgreSQL database on the server
/// the test command started.
pub async fn database(backend: Backend, dir: &TempDir, name: &str) -> String {
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.0.join("fieldline.db").display()),
        Backend::Postgres => {
            let admin = std::env::var("FIELDLINE_TEST_DATABASE_URL").expect(
                "FIELDLINE_TEST_DATABASE_URL is not set: run the tests with ./scripts/test.sh, \
                 which starts PostgreSQL (PostgreSQL tests never skip)",
            );
            let db = unique(name).to_lowercase();
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is not reachable: {e}"));
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .execute(&mut conn)
                .await
                .expect("can create a test database");
            let (base, _) = admin.rsplit_once('/').expect("admin URL has a database");
            format!("{base}/{db}")
        }
    }
}

/// Runs SQL on the PostgreSQL server the test command started, as its superuser.
pub async fn pg_admin(sql: &str) {
    let admin = std::env::var("FIELDLINE_TEST_DATABASE_URL")
        .expect("FIELDLINE_TEST_DATABASE_URL is set by ./scripts/test.sh");
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL is reachable");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .expect("admin SQL runs");
}

/// The database of the PostgreSQL URL `url` refuses new connections and ends the open ones:
/// an outage as Fieldline sees it, while the server itself stays up.
pub async fn take_postgres_away(url: &str) {
    let db = db_name(url);
    pg_admin(&format!(
        "ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false;
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}';"
    ))
    .await;
}

pub async fn bring_postgres_back(url: &str) {
    pg_admin(&format!(
        "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true;",
        db_name(url)
    ))
    .await;
}

fn db_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .expect("URL names a database")
        .to_owned()
}

/// The real binary, running.
pub struct Server {
    pub child: Option<Child>,
    pub mqtt_port: u16,
    pub http_port: u16,
    pub database_url: String,
    pub log: PathBuf,
    pub http: reqwest::Client,
    /// Sent as a bearer token by `get` and `metrics_text` when set (API authentication on).
    pub token: Option<String>,
    /// The test CA's certificate when the server speaks HTTPS only (`start_https`).
    pub ca: Option<String>,
    /// The flags that make it so, kept for restarts.
    tls_args: Vec<String>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_fieldline")
}

impl Server {
    pub async fn start(dir: &TempDir, database_url: &str) -> Server {
        Self::start_with(dir, database_url, &[]).await
    }

    pub async fn start_with(dir: &TempDir, database_url: &str, extra: &[&str]) -> Server {
        // A port found free can be taken by a parallel test before the binary binds it.
        for _ in 0..3 {
            match Self::try_start(dir, database_url, extra).await {
                Ok(server) => return server,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("fieldline exited during start-up:\n{log}"),
            }
        }
        panic!("no free ports after three attempts");
    }

    /// As `start_with`, serving the API over HTTPS only, with a certificate of a test CA
    /// that `http` (and the live clients) trust: the same tests then run over TLS.
    pub async fn start_https(dir: &TempDir, database_url: &str, extra: &[&str]) -> Server {
        let ca = raw_mqtt::make_certificates(&dir.0);
        for _ in 0..3 {
            match Self::try_start_over(dir, database_url, extra, Some(&ca), &[]).await {
                Ok(server) => return server,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("fieldline exited during start-up:\n{log}"),
            }
        }
        panic!("no free ports after three attempts");
    }

    async fn try_start(
        dir: &TempDir,
        database_url: &str,
        extra: &[&str],
    ) -> Result<Server, String> {
        Self::try_start_over(dir, database_url, extra, None, &[]).await
    }

    /// As `start_with`, with environment variables for the binary (its test failpoints).
    pub async fn start_with_env(
        dir: &TempDir,
        database_url: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        for _ in 0..3 {
            match Self::try_start_over(dir, database_url, extra, None, env).await {
                Ok(server) => return server,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("fieldline exited during start-up:\n{log}"),
            }
        }
        panic!("no free ports after three attempts");
    }

    /// Starts the binary with `extra`, which it must refuse during start-up; its log.
    pub async fn refused(dir: &TempDir, database_url: &str, extra: &[&str]) -> String {
        match Self::try_start(dir, database_url, extra).await {
            Ok(_) => panic!("fieldline started with {extra:?}"),
            Err(log) => log,
        }
    }

    async fn try_start_over(
        dir: &TempDir,
        database_url: &str,
        extra: &[&str],
        ca: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        let mqtt_port = free_port();
        let http_port = free_port();
        let log = dir.0.join(format!("server-{}.log", unique("log")));
        let (tls_args, http) = match ca {
            Some(ca) => {
                let file = |name: &str| dir.0.join(name).display().to_string();
                let args = vec![
                    "--https-listen".to_owned(),
                    format!("127.0.0.1:{http_port}"),
                    "--https-cert".to_owned(),
                    file("server.pem"),
                    "--https-key".to_owned(),
                    file("server.key"),
                    "--https-only".to_owned(),
                ];
                let client = reqwest::Client::builder()
                    .add_root_certificate(
                        reqwest::Certificate::from_pem(ca.as_bytes()).expect("CA"),
                    )
                    .tls_built_in_root_certs(false)
                    .build()
                    .expect("HTTPS client");
                (args, client)
            }
            None => (Vec::new(), reqwest::Client::new()),
        };
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(tls_args.iter().map(String::as_str));
        let child =
            spawn_server_with_env(dir, database_url, mqtt_port, http_port, &log, &args, env);
        let mut server = Server {
            child: Some(child),
            mqtt_port,
            http_port,
            database_url: database_url.to_owned(),
            log,
            http,
            token: None,
            ca: ca.map(str::to_owned),
            tls_args,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Waits for `/readyz`; gives the log back when the binary exits first.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("({status})\n{}", self.log_text()));
                }
            }
            if let Ok(resp) = self.http.get(self.url("/readyz")).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            assert!(
                Instant::now() < deadline,
                "fieldline not ready after 60 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.http_port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, self.token.as_deref(), None)
            .await
    }

    /// Any request, with an optional bearer token and JSON body; the status and JSON reply.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("HTTP body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Polls `path` until `done` holds for its JSON body (the writer flushes every 200 ms).
    pub async fn wait_for(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.get(path).await;
            if status == 200 && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "GET {path} never matched; last: {status} {body}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the metrics text satisfies `done`; returns it.
    /// The reasons of a device's status history, once it has at least `count` entries.
    pub async fn status_reasons(&self, id: &str, count: usize) -> Vec<String> {
        let history = self
            .wait_for(&format!("/api/devices/{id}/status"), |h| {
                h.as_array().is_some_and(|a| a.len() >= count)
            })
            .await;
        history
            .as_array()
            .expect("array")
            .iter()
            .map(|h| h["reason"].as_str().unwrap_or("").to_string())
            .collect()
    }

    pub async fn wait_for_metrics(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.metrics_text().await;
            if done(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "metrics never matched:\n{text}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("server is running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// SIGKILL, as a crash: nothing is flushed or closed.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(&mut child, &self.database_url).await;
        }
    }

    /// Stops the server (SIGTERM) and starts it again on the same ports and database, as a
    /// client that keeps its URL sees a restart.
    pub async fn restart(&mut self, dir: &TempDir, extra: &[&str]) {
        let status = self.stop();
        assert!(status.success(), "fieldline stopped with {status}");
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(self.tls_args.iter().map(String::as_str));
        self.child = Some(spawn_server(
            dir,
            &self.database_url,
            self.mqtt_port,
            self.http_port,
            &self.log,
            &args,
        ));
        if let Err(log) = self.wait_ready().await {
            panic!("fieldline did not come back on its ports: {log}");
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("server is running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait on child") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "fieldline did not stop within 60 s of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metric(&self, text: &str, name: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn metrics_text(&self) -> String {
        let mut request = self.http.get(self.url("/metrics"));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A device connected with rumqttc (MQTT 3.1.1), publishing at QoS 1 and counting PUBACKs.
pub struct Device {
    pub client: AsyncClient,
    pub client_id: String,
    acks: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Device {
    pub async fn connect(port: u16, client_id: &str) -> Device {
        Self::try_connect(port, client_id, None)
            .await
            .unwrap_or_else(|e| panic!("{client_id} cannot connect: {e}"))
    }

    /// Connects with an optional username and password; Err when the broker refuses.
    pub async fn try_connect(
        port: u16,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> Result<Device, String> {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        if let Some((user, pass)) = login {
            options.set_credentials(user, pass);
        }
        options.set_keep_alive(Duration::from_secs(30));
        // rumqttc's default 10 KiB cap would stop our oversized-payload tests at the client.
        options.set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024);
        options.set_inflight(100);
        let (client, eventloop) = AsyncClient::new(options, 1000);
        let (ack_tx, acks) = tokio::sync::watch::channel(0usize);
        let task = tokio::spawn(drive(eventloop, ack_tx));
        let mut device = Device {
            client,
            client_id: client_id.to_string(),
            acks,
            task,
        };
        device.wait_connected().await?;
        Ok(device)
    }

    async fn wait_connected(&mut self) -> Result<(), String> {
        // The event loop sends CONNECT on its first poll and stops at the first error.
        let deadline = Instant::now() + Duration::from_secs(10);
        while *self.acks.borrow() == 0 {
            if Instant::now() > deadline {
                return Err("no CONNACK within 10 s".into());
            }
            match tokio::time::timeout(Duration::from_millis(100), self.acks.changed()).await {
                Ok(Err(_)) => return Err("the broker closed the connection".into()),
                _ => continue,
            }
        }
        Ok(())
    }

    /// Whether the connection is still up (the event loop stops at the first error).
    pub fn is_connected(&self) -> bool {
        !self.task.is_finished()
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.try_publish(topic, payload)
            .await
            .expect("publish queued");
    }

    /// Queues a publish; fails once the connection's event loop has ended (the server died).
    pub async fn try_publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), rumqttc::ClientError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
    }

    /// Waits until `n` publishes are acknowledged in total.
    pub async fn wait_acked(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acked() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} PUBACKs within 30 s",
                self.acked()
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), self.acks.changed()).await;
        }
    }

    pub fn acked(&self) -> usize {
        // The first count is the CONNACK.
        self.acks.borrow().saturating_sub(1)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(mut eventloop: EventLoop, acks: tokio::sync::watch::Sender<usize>) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) | Ok(Event::Incoming(Packet::PubAck(_))) => {
                acks.send_modify(|n| *n += 1);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// The write-ahead log directories under a test's `fieldline-data/` (one per database).
pub fn wal_dirs(dir: &TempDir) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir.0.join("fieldline-data"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("wal"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The one write-ahead log directory of a test that used one database.
pub fn wal_dir(dir: &TempDir) -> PathBuf {
    let dirs = wal_dirs(dir);
    assert_eq!(dirs.len(), 1, "one log directory: {dirs:?}");
    dirs[0].clone()
}

/// Runs the `fieldline` CLI against a database; its exit status, stdout and stderr.
pub fn cli(database_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .args(["--database-url", database_url])
        .args(args)
        .output()
        .expect("the fieldline binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Registers a device with the CLI; returns its secret.
pub fn register_device(database_url: &str, id: &str) -> String {
    let (ok, secret, stderr) = cli(database_url, &["device", "add", id]);
    assert!(ok && secret.len() == 64, "device add {id}: {stderr}");
    secret
}

/// Creates an API token with the CLI; returns it.
pub fn create_token(database_url: &str, name: &str, role: &str) -> String {
    let (ok, token, stderr) = cli(database_url, &["token", "add", name, "--role", role]);
    assert!(ok && token.starts_with("fl_"), "token add {name}: {stderr}");
    token
}

/// Publishes with Debian's `mosquitto_pub`, a third-party client.
pub fn mosquitto_pub(port: u16, topic: &str, payload: &[u8], extra: &[&str]) {
    let status = mosquitto_pub_status(port, topic, payload, extra);
    assert!(status.success(), "mosquitto_pub failed: {status}");
}

/// Runs `mosquitto_pub` (QoS 1, payload on stdin) and returns how it exited.
pub fn mosquitto_pub_status(port: u16, topic: &str, payload: &[u8], extra: &[&str]) -> ExitStatus {
    use std::io::Write;
    let mut child = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            topic,
            "-q",
            "1",
            "-s",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_pub is installed (scripts/test.sh installs mosquitto-clients)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(payload)
        .expect("payload written");
    child.wait().expect("mosquitto_pub ran")
}

/// One device publishing `{"metrics": {"n": N}}` at QoS 1 with N counting up, recording which
/// N the broker acknowledged. rumqttc sends publishes in the order they are queued, and says
/// which packet id each got as it writes it, so each PUBACK maps back to its N.
pub struct AckedPublisher {
    acked: Arc<Mutex<Vec<u64>>>,
    /// Every N handed to the client so far is below this.
    next: Arc<AtomicU64>,
    first: u64,
    publisher: tokio::task::JoinHandle<()>,
    poller: tokio::task::JoinHandle<()>,
}

impl AckedPublisher {
    /// Publishes about `per_second` a second, from N = `first` on.
    pub fn start(port: u16, device: &str, first: u64, per_second: u64) -> AckedPublisher {
        let device = device.to_owned();
        let mut options = MqttOptions::new(device.clone(), "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_inflight(100);
        let (client, mut eventloop) = AsyncClient::new(options, 200);
        let queued = Arc::new(Mutex::new(VecDeque::<u64>::new()));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let poller = {
            let (queued, acked) = (queued.clone(), acked.clone());
            tokio::spawn(async move {
                let mut in_flight = HashMap::new();
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            if let Some(n) = queued.lock().expect("queue").pop_front() {
                                in_flight.insert(pkid, n);
                            }
                        }
                        Ok(Event::Incoming(Packet::PubAck(ack))) => {
                            if let Some(n) = in_flight.remove(&ack.pkid) {
                                acked.lock().expect("acks").push(n);
                            }
                        }
                        Ok(_) => {}
                        // The server was killed: this connection is over.
                        Err(_) => return,
                    }
                }
            })
        };
        let next = Arc::new(AtomicU64::new(first));
        let counter = next.clone();
        let publisher = tokio::spawn(async move {
            let topic = format!("devices/{device}/telemetry");
            let mut n = first;
            loop {
                counter.store(n + 1, Ordering::SeqCst);
                queued.lock().expect("queue").push_back(n);
                let payload = format!(r#"{{"metrics":{{"n":{n}}}}}"#);
                if client
                    .publish(&topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
                n += 1;
                // In steps of 10 ms.
                let step = (per_second / 100).max(1);
                if n.is_multiple_of(step) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        AckedPublisher {
            acked,
            next,
            first,
            publisher,
            poller,
        }
    }

    /// Publishes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().expect("acks").len()
    }

    /// Stops publishing, waits (up to 60 s) for every publish handed to the client to be
    /// acknowledged, and gives back the acknowledged numbers and the next unused one.
    pub async fn stop(self) -> (Vec<u64>, u64) {
        self.publisher.abort();
        let _ = (&mut { self.publisher }).await;
        let handed = self.next.load(Ordering::SeqCst) - self.first;
        let deadline = Instant::now() + Duration::from_secs(60);
        while (self.acked.lock().expect("acks").len() as u64) < handed.saturating_sub(1) {
            assert!(
                Instant::now() < deadline,
                "publishes still unacknowledged after 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The last N may have been queued when the publisher stopped, or not.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.poller.abort();
        let acked = std::mem::take(&mut *self.acked.lock().expect("acks"));
        (acked, self.next.load(Ordering::SeqCst))
    }

    /// Stops publishing once the server is gone, and gives back the acknowledged numbers
    /// and the next unused one.
    pub async fn finish(self) -> (Vec<u64>, u64) {
        // The poller ends when the connection does (the server is gone by now).
        let _ = tokio::time::timeout(Duration::from_secs(10), self.poller).await;
        self.publisher.abort();
        let _ = self.publisher.await;
        let acked = std::mem::take(&mut *self.acked.lock().expect("acks"));
        (acked, self.next.load(Ordering::SeqCst))
    }
}

/// The server process without the harness' readiness wait (tests that kill it before it is
/// ready, or expect it to refuse to start).
pub fn spawn_server(
    dir: &TempDir,
    url: &str,
    mqtt: u16,
    http: u16,
    log: &std::path::Path,
    extra: &[&str],
) -> Child {
    spawn_server_with_env(dir, url, mqtt, http, log, extra, &[])
}

pub fn spawn_server_with_env(
    dir: &TempDir,
    url: &str,
    mqtt: u16,
    http: u16,
    log: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Child {
    let out = std::fs::File::create(log).expect("log file");
    Command::new(binary())
        .envs(env.iter().copied())
        .current_dir(&dir.0)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "info,fieldline_ingest=debug,rumqttd=off")
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--database-url", url])
        .args(extra)
        .stdout(out.try_clone().expect("log file"))
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .expect("the fieldline binary starts")
}

/// SIGKILL. On PostgreSQL the dead process's sessions are ended too: a backend waiting on a
/// lock does not notice its client is gone, and would hold its own row locks meanwhile.
pub async fn kill(child: &mut Child, url: &str) {
    let _ = child.kill();
    let _ = child.wait();
    if let Some(db) = url
        .strip_prefix("postgres")
        .and_then(|u| u.rsplit('/').next())
    {
        pg_admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{db}' AND application_name = 'fieldline'"
        ))
        .await;
    }
}

pub async fn wait_for_log(log: &std::path::Path, text: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let content = std::fs::read_to_string(log).unwrap_or_default();
        if content.contains(text) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("fieldline exited ({status}) before logging {text:?}:\n{content}");
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} within 60 s:\n{content}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// (device, n) → how many rows storage holds for the telemetry metric `n` (what
/// [`AckedPublisher`] sends).
pub async fn stored_counts(url: &str) -> HashMap<(String, u64), u64> {
    let sql = "SELECT device_id, value, count(*) FROM telemetry WHERE metric = 'n' GROUP BY device_id, value";
    let rows: Vec<(String, f64, i64)> = if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::query_as(sql)
            .fetch_all(&mut conn)
            .await
            .expect("query")
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::query_as(sql)
            .fetch_all(&mut conn)
            .await
            .expect("query")
    };
    rows.into_iter()
        .map(|(device, value, count)| ((device, value as u64), count as u64))
        .collect()
}

/// Every acknowledged (device, n) is stored, and nothing twice; prints the counts.
pub async fn assert_stored_once(url: &str, acked: &[(String, u64)]) {
    let stored = stored_counts(url).await;
    let lost = acked
        .iter()
        .filter(|(d, n)| !stored.contains_key(&(d.clone(), *n)))
        .count();
    let duplicates: u64 = stored.values().map(|&c| c.saturating_sub(1)).sum();
    println!(
        "{} acknowledged, {} stored; lost {lost}, duplicates {duplicates}",
        acked.len(),
        stored.len()
    );
    assert_eq!(lost, 0, "acknowledged publishes missing from storage");
    assert_eq!(duplicates, 0, "publishes stored more than once");
}

/// A local webhook receiver: the bodies it was sent, in arrival order.
pub async fn webhook_receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = bodies.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let event = serde_json::from_slice(&body).unwrap_or(Value::Null);
                seen.lock().expect("lock").push(event);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}
