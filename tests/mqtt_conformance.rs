//! MQTT 3.1.1 and MQTT 5 conformance of the embedded broker, end to end against the real
//! binary (anonymous, on loopback): keep-alive 0, topic aliases, QoS downgrade, Maximum Packet
//! Size, Receive Maximum, session expiry and clean sessions, No Local, retain handling, and bad
//! input. Three independent clients: rumqttc (MQTT 3.1.1 and 5), Debian's `mosquitto_sub` and
//! `mosquitto_pub`, and paho-mqtt (Python, `tests/mqtt_conformance.py`); raw bytes where a
//! client library will not send what a test needs.

mod support;

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{
    ConnAck as ConnAck5, Filter, Packet as Packet5, Publish as Publish5, PublishProperties,
    RetainForwardRule, SubscribeReasonCode as SubscribeReasonCode5, UnsubAckReason,
};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::{AsyncClient as AsyncClient5, Event as Event5, MqttOptions as MqttOptions5};
use rumqttc::{
    AsyncClient, ConnAck, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode,
};
use support::raw_mqtt::{framed, string, Endpoint, RawMqtt, RawPacket};
use support::{database, Backend, Server, TempDir};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Longest wait for anything the broker should do.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(1500);

/// The server and its scratch directory, removed after the server is stopped.
struct Broker {
    server: Server,
    _dir: TempDir,
}

impl Broker {
    async fn start(name: &str) -> Broker {
        Broker::start_with(name, &[]).await
    }

    async fn start_with(name: &str, args: &[&str]) -> Broker {
        let dir = TempDir::new(name);
        let url = database(Backend::Sqlite, &dir, name).await;
        let server = Server::start_with(&dir, &url, args).await;
        Broker { server, _dir: dir }
    }

    fn port(&self) -> u16 {
        self.server.mqtt_port
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn topic5(publish: &Publish5) -> String {
    text(&publish.topic)
}

fn qos4(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn qos5(n: u8) -> QoS5 {
    match n {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        _ => QoS5::ExactlyOnce,
    }
}

/// payload → QoS, from pairs.
fn by_payload(pairs: &[(&str, u8)]) -> BTreeMap<String, u8> {
    pairs.iter().map(|(p, q)| (p.to_string(), *q)).collect()
}

/// The sum of a Prometheus counter over all its label sets.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_online(server: &Server, id: &str) {
    server
        .wait_for(&format!("/api/devices/{id}"), |d| d["online"] == true)
        .await;
}

async fn wait_offline(server: &Server, id: &str) {
    server
        .wait_for(&format!("/api/devices/{id}"), |d| d["online"] == false)
        .await;
}

// ---------------------------------------------------------------------------------------------
// rumqttc clients whose event loop runs in a task and reports every incoming packet.

/// An MQTT 5 connection made with rumqttc.
struct Client5 {
    client: AsyncClient5,
    id: String,
    connack: ConnAck5,
    rx: mpsc::UnboundedReceiver<Result<Packet5, String>>,
    /// Publishes read but not yet taken by the test.
    held: VecDeque<Publish5>,
    /// SUBACKs and UNSUBACKs read but not yet taken.
    replies: VecDeque<Packet5>,
    /// PUBACKs (QoS 1) and PUBCOMPs (QoS 2) received for this client's own publishes.
    acked: usize,
    closed: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Client5 {
    /// Connects (clean start, 30 s keep-alive unless `setup` changes them); panics unless the
    /// broker accepts.
    async fn connect(port: u16, id: &str, setup: impl FnOnce(&mut MqttOptions5)) -> Client5 {
        let mut options = MqttOptions5::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        setup(&mut options);
        let (client, mut eventloop) = AsyncClient5::new(options, 100);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event5::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event5::Outgoing(_)) => {}
                    // Polling again would reconnect: one connection per client here.
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let connack = match timeout(WAIT, rx.recv()).await {
            Ok(Some(Ok(Packet5::ConnAck(connack)))) => connack,
            other => panic!("{id}: expected a successful CONNACK, got {other:?}"),
        };
        Client5 {
            client,
            id: id.to_string(),
            connack,
            rx,
            held: VecDeque::new(),
            replies: VecDeque::new(),
            acked: 0,
            closed: None,
            task,
        }
    }

    /// Reads one packet before `deadline` into the books: Ok(false) when none came, Err when
    /// the connection has ended.
    async fn pump(&mut self, deadline: Instant) -> Result<bool, String> {
        if let Some(why) = &self.closed {
            return Err(why.clone());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let packet = match timeout(left, self.rx.recv()).await {
            Err(_) => return Ok(false),
            Ok(Some(Ok(packet))) => packet,
            Ok(Some(Err(why))) => {
                self.closed = Some(why.clone());
                return Err(why);
            }
            Ok(None) => {
                let why = "the event loop ended".to_string();
                self.closed = Some(why.clone());
                return Err(why);
            }
        };
        match packet {
            Packet5::Publish(publish) => self.held.push_back(publish),
            Packet5::PubAck(_) | Packet5::PubComp(_) => self.acked += 1,
            reply @ (Packet5::SubAck(_) | Packet5::UnsubAck(_)) => self.replies.push_back(reply),
            _ => {}
        }
        Ok(true)
    }

    /// The next PUBLISH within `wait`: Ok(None) when none came, Err when the connection ended.
    async fn publish_within(&mut self, wait: Duration) -> Result<Option<Publish5>, String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(publish) = self.held.pop_front() {
                return Ok(Some(publish));
            }
            if !self.pump(deadline).await? {
                return Ok(None);
            }
        }
    }

    async fn expect_publish(&mut self, what: &str) -> Publish5 {
        match self.publish_within(WAIT).await {
            Ok(Some(publish)) => publish,
            Ok(None) => panic!("{}: no PUBLISH ({what}) within {WAIT:?}", self.id),
            Err(why) => panic!("{}: connection ended waiting for {what}: {why}", self.id),
        }
    }

    /// Nothing is delivered for `wait`, and the connection stays up.
    async fn assert_quiet(&mut self, wait: Duration, what: &str) {
        match self.publish_within(wait).await {
            Ok(None) => {}
            Ok(Some(p)) => panic!(
                "{}: {what}, but got {} {:?} (retain {}, QoS {:?})",
                self.id,
                topic5(&p),
                text(&p.payload),
                p.retain,
                p.qos
            ),
            Err(why) => panic!("{}: connection ended ({what}): {why}", self.id),
        }
    }

    async fn reply(&mut self, what: &str) -> Packet5 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(reply) = self.replies.pop_front() {
                return reply;
            }
            match self.pump(deadline).await {
                Ok(true) => {}
                Ok(false) => panic!("{}: no {what} within {WAIT:?}", self.id),
                Err(why) => panic!("{}: connection ended waiting for {what}: {why}", self.id),
            }
        }
    }

    /// Subscribes and returns the SUBACK's reason codes.
    async fn subscribe(
        &mut self,
        filters: impl IntoIterator<Item = Filter>,
    ) -> Vec<SubscribeReasonCode5> {
        self.client
            .subscribe_many(filters)
            .await
            .expect("SUBSCRIBE queued");
        match self.reply("SUBACK").await {
            Packet5::SubAck(ack) => ack.return_codes,
            other => panic!("{}: expected a SUBACK, got {other:?}", self.id),
        }
    }

    /// Subscribes to one filter and checks that the QoS asked for is granted.
    async fn subscribe1(&mut self, path: &str, qos: QoS5) {
        let codes = self.subscribe([Filter::new(path, qos)]).await;
        assert_eq!(
            codes,
            [SubscribeReasonCode5::Success(qos)],
            "{}: SUBACK for {path}",
            self.id
        );
    }

    async fn publish(&self, topic: &str, qos: QoS5, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("PUBLISH queued");
    }

    /// Waits until `n` of this client's QoS 1 and 2 publishes are acknowledged in all.
    async fn wait_acked(&mut self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.acked < n {
            match self.pump(deadline).await {
                Ok(true) => {}
                Ok(false) => panic!(
                    "{}: only {} of {n} publishes acknowledged within {WAIT:?}",
                    self.id, self.acked
                ),
                Err(why) => panic!("{}: connection ended waiting for acks: {why}", self.id),
            }
        }
    }

    fn is_up(&self) -> bool {
        self.closed.is_none() && !self.task.is_finished()
    }

    /// Sends DISCONNECT and waits (briefly) for the broker to close the connection.
    async fn disconnect(&mut self) {
        self.client.disconnect().await.expect("DISCONNECT queued");
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Ok(true) = self.pump(deadline).await {}
        self.task.abort();
    }
}

impl Drop for Client5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An MQTT 3.1.1 connection made with rumqttc.
struct Client4 {
    client: AsyncClient,
    id: String,
    connack: ConnAck,
    rx: mpsc::UnboundedReceiver<Result<Packet, String>>,
    held: VecDeque<Publish>,
    replies: VecDeque<Packet>,
    acked: usize,
    closed: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Client4 {
    /// Connects (clean session, 30 s keep-alive unless `setup` changes them); panics unless
    /// the broker accepts.
    async fn connect(port: u16, id: &str, setup: impl FnOnce(&mut MqttOptions)) -> Client4 {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        setup(&mut options);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let connack = match timeout(WAIT, rx.recv()).await {
            Ok(Some(Ok(Packet::ConnAck(connack)))) => connack,
            other => panic!("{id}: expected a successful CONNACK, got {other:?}"),
        };
        Client4 {
            client,
            id: id.to_string(),
            connack,
            rx,
            held: VecDeque::new(),
            replies: VecDeque::new(),
            acked: 0,
            closed: None,
            task,
        }
    }

    async fn pump(&mut self, deadline: Instant) -> Result<bool, String> {
        if let Some(why) = &self.closed {
            return Err(why.clone());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let packet = match timeout(left, self.rx.recv()).await {
            Err(_) => return Ok(false),
            Ok(Some(Ok(packet))) => packet,
            Ok(Some(Err(why))) => {
                self.closed = Some(why.clone());
                return Err(why);
            }
            Ok(None) => {
                let why = "the event loop ended".to_string();
                self.closed = Some(why.clone());
                return Err(why);
            }
        };
        match packet {
            Packet::Publish(publish) => self.held.push_back(publish),
            Packet::PubAck(_) | Packet::PubComp(_) => self.acked += 1,
            reply @ (Packet::SubAck(_) | Packet::UnsubAck(_)) => self.replies.push_back(reply),
            _ => {}
        }
        Ok(true)
    }

    async fn publish_within(&mut self, wait: Duration) -> Result<Option<Publish>, String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(publish) = self.held.pop_front() {
                return Ok(Some(publish));
            }
            if !self.pump(deadline).await? {
                return Ok(None);
            }
        }
    }

    async fn expect_publish(&mut self, what: &str) -> Publish {
        match self.publish_within(WAIT).await {
            Ok(Some(publish)) => publish,
            Ok(None) => panic!("{}: no PUBLISH ({what}) within {WAIT:?}", self.id),
            Err(why) => panic!("{}: connection ended waiting for {what}: {why}", self.id),
        }
    }

    async fn assert_quiet(&mut self, wait: Duration, what: &str) {
        match self.publish_within(wait).await {
            Ok(None) => {}
            Ok(Some(p)) => panic!(
                "{}: {what}, but got {} {:?} (retain {}, QoS {:?})",
                self.id,
                p.topic,
                text(&p.payload),
                p.retain,
                p.qos
            ),
            Err(why) => panic!("{}: connection ended ({what}): {why}", self.id),
        }
    }

    async fn reply(&mut self, what: &str) -> Packet {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(reply) = self.replies.pop_front() {
                return reply;
            }
            match self.pump(deadline).await {
                Ok(true) => {}
                Ok(false) => panic!("{}: no {what} within {WAIT:?}", self.id),
                Err(why) => panic!("{}: connection ended waiting for {what}: {why}", self.id),
            }
        }
    }

    /// Subscribes to one filter and checks that the QoS asked for is granted.
    async fn subscribe1(&mut self, path: &str, qos: QoS) {
        self.client
            .subscribe(path, qos)
            .await
            .expect("SUBSCRIBE queued");
        match self.reply("SUBACK").await {
            Packet::SubAck(ack) => assert_eq!(
                ack.return_codes,
                [SubscribeReasonCode::Success(qos)],
                "{}: SUBACK for {path}",
                self.id
            ),
            other => panic!("{}: expected a SUBACK, got {other:?}", self.id),
        }
    }

    async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("PUBLISH queued");
    }

    async fn wait_acked(&mut self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.acked < n {
            match self.pump(deadline).await {
                Ok(true) => {}
                Ok(false) => panic!(
                    "{}: only {} of {n} publishes acknowledged within {WAIT:?}",
                    self.id, self.acked
                ),
                Err(why) => panic!("{}: connection ended waiting for acks: {why}", self.id),
            }
        }
    }

    async fn disconnect(&mut self) {
        self.client.disconnect().await.expect("DISCONNECT queued");
        let deadline = Instant::now() + Duration::from_secs(3);
        while let Ok(true) = self.pump(deadline).await {}
        self.task.abort();
    }
}

impl Drop for Client4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The QoS each of `n` publishes arrived with, by payload.
async fn qos_by_payload4(client: &mut Client4, n: usize) -> BTreeMap<String, u8> {
    let mut got = BTreeMap::new();
    for _ in 0..n {
        let p = client.expect_publish("one of the test's publishes").await;
        let payload = text(&p.payload);
        assert!(
            got.insert(payload.clone(), p.qos as u8).is_none(),
            "{}: {payload} delivered twice",
            client.id
        );
    }
    got
}

async fn qos_by_payload5(client: &mut Client5, n: usize) -> BTreeMap<String, u8> {
    let mut got = BTreeMap::new();
    for _ in 0..n {
        let p = client.expect_publish("one of the test's publishes").await;
        let payload = text(&p.payload);
        assert!(
            got.insert(payload.clone(), p.qos as u8).is_none(),
            "{}: {payload} delivered twice",
            client.id
        );
    }
    got
}

// ---------------------------------------------------------------------------------------------
// Raw packets, for what client libraries will not send.

/// A variable byte integer at `pos`: its value and the position after it.
fn read_varint(buf: &[u8], mut pos: usize) -> (usize, usize) {
    let mut value = 0usize;
    let mut shift = 0;
    loop {
        let byte = *buf
            .get(pos)
            .unwrap_or_else(|| panic!("truncated variable byte integer in {buf:?}"));
        pos += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 || shift >= 21 {
            return (value, pos);
        }
        shift += 7;
    }
}

/// CONNECT with the given protocol name and level, clean session/start, no will or login;
/// an empty property list when the level is 5.
fn raw_connect_named(name: &[u8], level: u8, client_id: &str, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string(name, &mut body);
    body.extend_from_slice(&[level, 0x02]);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0);
    }
    string(client_id.as_bytes(), &mut body);
    framed(0x10, body)
}

/// CONNECT at `level` (4: MQTT 3.1.1, 5: MQTT 5).
fn raw_connect(level: u8, client_id: &str, keep_alive: u16) -> Vec<u8> {
    raw_connect_named(b"MQTT", level, client_id, keep_alive)
}

fn raw_publish(level: u8, topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if level == 5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    framed(0x30 | (qos << 1), body)
}

fn raw_subscribe(level: u8, pkid: u16, filter: &str, options: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    string(filter.as_bytes(), &mut body);
    body.push(options);
    framed(0x82, body)
}

const PINGREQ: [u8; 2] = [0xC0, 0];

/// The next packet, which must come within [`WAIT`].
async fn next_raw(conn: &mut RawMqtt, what: &str) -> RawPacket {
    match conn.next(WAIT).await {
        Ok(Some(packet)) => packet,
        Ok(None) => panic!("no {what} within {WAIT:?}"),
        Err(e) => panic!("connection closed waiting for {what}: {e}"),
    }
}

/// Opens a connection at `level` and checks that CONNACK accepts it; the CONNACK's body.
async fn raw_session(port: u16, level: u8, client_id: &str, keep_alive: u16) -> (RawMqtt, Vec<u8>) {
    let mut conn = RawMqtt::open(&Endpoint::Tcp(port))
        .await
        .expect("TCP connection");
    conn.send(&raw_connect(level, client_id, keep_alive))
        .await
        .expect("CONNECT sent");
    let (kind, connack) = next_raw(&mut conn, "CONNACK").await;
    assert_eq!(kind, 0x20, "CONNACK first, got {kind:#x} {connack:?}");
    assert_eq!(
        connack.get(1),
        Some(&0),
        "{client_id}: CONNECT level {level}, keep-alive {keep_alive} accepted: {connack:?}"
    );
    (conn, connack)
}

/// The Server Keep Alive property (0x13) of an MQTT 5 CONNACK's body, if it has one.
fn server_keep_alive(connack: &[u8]) -> Option<u16> {
    assert!(
        connack.len() >= 3,
        "an MQTT 5 CONNACK has a property length: {connack:?}"
    );
    let (len, mut pos) = read_varint(connack, 2);
    let end = pos + len;
    let u16_at = |pos: usize| -> usize {
        match connack.get(pos..pos + 2) {
            Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
            None => panic!("truncated CONNACK properties: {connack:?}"),
        }
    };
    while pos < end {
        let id = connack[pos];
        pos += 1;
        match id {
            0x13 => return Some(u16_at(pos) as u16),
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => pos += 1,
            0x21 | 0x22 => pos += 2,
            0x11 | 0x27 => pos += 4,
            0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => pos += 2 + u16_at(pos),
            0x26 => {
                pos += 2 + u16_at(pos);
                pos += 2 + u16_at(pos);
            }
            other => panic!("unknown CONNACK property {other:#x}: {connack:?}"),
        }
    }
    None
}

/// The first reason code of a SUBACK's body.
fn suback_code(level: u8, body: &[u8]) -> u8 {
    let at = if level == 5 {
        let (len, pos) = read_varint(body, 2);
        pos + len
    } else {
        2
    };
    *body
        .get(at)
        .unwrap_or_else(|| panic!("SUBACK without a reason code: {body:?}"))
}

// ---------------------------------------------------------------------------------------------
// Debian's mosquitto clients.

/// `mosquitto_sub` running, its output read line by line.
struct MosquittoSub {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    stderr: Arc<Mutex<String>>,
    what: String,
}

impl MosquittoSub {
    fn start(port: u16, args: &[&str]) -> MosquittoSub {
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub is installed (scripts/test.sh installs mosquitto-clients)");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                let mut buffer = sink.lock().expect("stderr buffer");
                buffer.push_str(&line);
                buffer.push('\n');
            }
        });
        MosquittoSub {
            child,
            lines,
            stderr,
            what: args.join(" "),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr buffer").clone()
    }

    /// The next line of output before `deadline`: Ok(None) when none came, Err when
    /// `mosquitto_sub` has exited.
    async fn line(&mut self, deadline: Instant) -> Result<Option<String>, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, self.lines.recv()).await {
            Err(_) => Ok(None),
            Ok(Some(line)) => Ok(Some(line)),
            Ok(None) => Err(format!(
                "mosquitto_sub {} exited ({:?}): {}",
                self.what,
                self.child.try_wait(),
                self.stderr()
            )),
        }
    }

    /// Publishes probes to `topic` (which the subscription must match) until one is printed:
    /// from then on the subscription is in place.
    async fn wait_subscribed(&mut self, publisher: &Client4, topic: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            publisher
                .publish(topic, QoS::AtLeastOnce, false, "probe")
                .await;
            let until = (Instant::now() + Duration::from_millis(300)).min(deadline);
            loop {
                match self.line(until).await {
                    Ok(Some(line)) if line.contains(topic) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub {} printed no probe within {WAIT:?}; stderr: {}",
                self.what,
                self.stderr()
            );
        }
    }

    /// Reads lines "<qos> <topic> <payload>" (`-F "%q %t %p"`) until `n` of them are on
    /// `topic`; payload → QoS.
    async fn qos_by_payload(&mut self, topic: &str, n: usize) -> BTreeMap<String, u8> {
        let deadline = Instant::now() + WAIT;
        let mut got = BTreeMap::new();
        while got.len() < n {
            let line = match self.line(deadline).await {
                Ok(Some(line)) => line,
                Ok(None) => panic!(
                    "mosquitto_sub {}: only {got:?} of {n} messages on {topic} within {WAIT:?}",
                    self.what
                ),
                Err(e) => panic!("{e}"),
            };
            let mut parts = line.splitn(3, ' ');
            let (Some(qos), Some(on), Some(payload)) = (parts.next(), parts.next(), parts.next())
            else {
                panic!("unexpected mosquitto_sub output {line:?}");
            };
            if on != topic {
                continue;
            }
            let qos: u8 = qos
                .parse()
                .unwrap_or_else(|_| panic!("no QoS in mosquitto_sub output {line:?}"));
            assert!(
                got.insert(payload.to_string(), qos).is_none(),
                "mosquitto_sub {}: {payload} delivered twice",
                self.what
            );
        }
        got
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to its end, at most `limit`; its output.
async fn run_bounded(mut command: Command, what: &str, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(None) => {
                let _ = child.kill();
                let output = child.wait_with_output();
                panic!("{what} did not finish within {limit:?}: {output:?}");
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    child
        .wait_with_output()
        .expect("output of a finished process")
}

async fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    let mut command = Command::new("mosquitto_pub");
    command
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    run_bounded(command, "mosquitto_pub", WAIT).await
}

// ---------------------------------------------------------------------------------------------
// a. Keep-alive 0.

/// Keep-alive 0 turns the keep-alive mechanism off (MQTT 3.1.1 §3.1.2.10, MQTT 5 §3.1.2.10):
/// the CONNECT is accepted, the broker neither closes nor disturbs a silent connection, it
/// answers PINGREQ, acknowledges and stores a QoS 1 publish, and the device goes offline
/// (`dropped`) when the socket closes.
async fn keep_alive_zero(level: u8, id: &str) {
    let broker = Broker::start("keepalive0").await;
    let server = &broker.server;
    let (mut conn, connack) = raw_session(broker.port(), level, id, 0).await;
    // MQTT 5 §3.2.2.3.14 lets a broker answer with its own keep-alive; none is expected here,
    // but say so when there is one.
    let imposed = if level == 5 {
        server_keep_alive(&connack)
    } else {
        None
    };
    if let Some(secs) = imposed {
        println!("note: the broker answered keep-alive 0 with Server Keep Alive {secs}");
    }
    wait_online(server, id).await;

    // Complete silence, longer than any short keep-alive (1.5 × 1 s) would allow.
    assert_eq!(
        conn.next(Duration::from_secs(3)).await,
        Ok(None),
        "with keep-alive 0 (Server Keep Alive {imposed:?}) the broker neither closes a silent \
         connection nor sends anything on it"
    );
    conn.send(&PINGREQ).await.expect("PINGREQ sent");
    let (kind, body) = next_raw(&mut conn, "PINGRESP").await;
    assert_eq!((kind, body.len()), (0xD0, 0), "PINGRESP: {body:?}");

    let topic = format!("devices/{id}/telemetry");
    let payload = br#"{"seq": 1, "metrics": {"temp_c": 21.5}}"#;
    conn.send(&raw_publish(level, &topic, 1, 7, payload))
        .await
        .expect("PUBLISH sent");
    let (kind, body) = next_raw(&mut conn, "PUBACK").await;
    assert_eq!(kind, 0x40, "PUBACK, got {kind:#x} {body:?}");
    assert_eq!(
        body.get(..2),
        Some(&7u16.to_be_bytes()[..]),
        "PUBACK's packet id"
    );
    // MQTT 5 §3.4.2.1: 0x00 Success or 0x10 No matching subscribers.
    assert!(
        matches!(body.get(2), None | Some(0x00) | Some(0x10)),
        "PUBACK reason is a success: {body:?}"
    );
    let rows = server
        .wait_for(
            &format!("/api/devices/{id}/telemetry?from=0&limit=100"),
            |b| b.as_array().is_some_and(|a| !a.is_empty()),
        )
        .await;
    assert_eq!(rows[0]["metric"], "temp_c", "{rows}");
    assert_eq!(rows[0]["value"], 21.5, "{rows}");

    // Still online after all that silence; offline once the socket closes.
    let device = server.get_ok(&format!("/api/devices/{id}")).await;
    assert_eq!(device["online"], true, "{device}");
    drop(conn);
    wait_offline(server, id).await;
    let reasons = server.status_reasons(id, 2).await;
    assert_eq!(reasons, ["connect", "dropped"]);
}

/// MQTT 3.1.1 §3.1.2.10: a CONNECT with keep-alive 0 is accepted and never timed out.
#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_zero_mqtt_311() {
    keep_alive_zero(4, "ka0-v4").await;
}

/// MQTT 5 §3.1.2.10: a CONNECT with keep-alive 0 is accepted (reason 0) and never timed out.
#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_zero_mqtt_5() {
    keep_alive_zero(5, "ka0-v5").await;
}

// ---------------------------------------------------------------------------------------------
// b. Topic aliases.

/// MQTT 5 §3.3.2.3.4 (Topic Alias), §3.1.2.11.8 and §3.2.2.3.8 (Topic Alias Maximum): a
/// subscriber that allows 10 aliases gets every message with its own full topic and no alias
/// (the broker offers none to clients); a publisher may use the aliases the broker advertises.
#[tokio::test(flavor = "multi_thread")]
async fn topic_aliases_never_cost_a_message_its_topic() {
    let broker = Broker::start("alias").await;
    let port = broker.port();
    let mut sub = Client5::connect(port, "alias-sub", |o| {
        o.set_topic_alias_max(Some(10));
    })
    .await;
    sub.subscribe1("x/+", QoS5::AtLeastOnce).await;
    let mut publisher = Client5::connect(port, "alias-pub", |_| {}).await;

    let mut sent = Vec::new();
    for round in 0..4 {
        for leaf in ["a", "b", "c"] {
            let payload = format!("{leaf}-{round}");
            publisher
                .publish(
                    &format!("x/{leaf}"),
                    QoS5::AtLeastOnce,
                    false,
                    payload.clone(),
                )
                .await;
            sent.push(payload);
        }
    }
    publisher.wait_acked(sent.len()).await;

    let advertised = publisher
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.topic_alias_max)
        .unwrap_or(0);
    if advertised > 0 {
        // Topic and alias 1, then the alias alone.
        let alias = PublishProperties {
            topic_alias: Some(1),
            ..Default::default()
        };
        publisher
            .client
            .publish_with_properties(
                "x/alias",
                QoS5::AtLeastOnce,
                false,
                "alias-0",
                alias.clone(),
            )
            .await
            .expect("PUBLISH queued");
        publisher
            .client
            .publish_with_properties("", QoS5::AtLeastOnce, false, "alias-1", alias)
            .await
            .expect("PUBLISH queued");
        publisher.wait_acked(sent.len() + 2).await;
        sent.extend(["alias-0".to_string(), "alias-1".to_string()]);
    } else {
        println!("note: the broker advertises no client-to-server topic aliases");
    }

    let mut received = Vec::new();
    for _ in 0..sent.len() {
        let p = sub.expect_publish("a message on x/+").await;
        let topic = topic5(&p);
        let payload = text(&p.payload);
        let leaf = payload.split('-').next().unwrap_or_default();
        assert!(
            !topic.is_empty(),
            "{payload} arrived without a topic: {p:?}"
        );
        assert_eq!(
            topic,
            format!("x/{leaf}"),
            "{payload} arrived on another topic: {p:?}"
        );
        assert_eq!(
            p.properties.as_ref().and_then(|props| props.topic_alias),
            None,
            "the broker sends no topic alias to clients: {p:?}"
        );
        received.push(payload);
    }
    sub.assert_quiet(QUIET, "nothing beyond what was sent")
        .await;
    received.sort();
    sent.sort();
    assert_eq!(received, sent);
    assert!(publisher.is_up(), "the publisher is still connected");
}

// ---------------------------------------------------------------------------------------------
// c. QoS downgrade.

/// MQTT 3.1.1 §3.8.4: a message is delivered at the lower of its QoS and the subscription's
/// (rumqttc, MQTT 3.1.1).
#[tokio::test(flavor = "multi_thread")]
async fn qos_is_the_lower_of_publish_and_subscription_mqtt_311() {
    let broker = Broker::start("qos4").await;
    let port = broker.port();
    let mut subs = Vec::new();
    for (sub_qos, topic) in [(2u8, "q/two"), (1, "q/one"), (0, "q/zero")] {
        let mut sub = Client4::connect(port, &format!("qos4-sub{sub_qos}"), |_| {}).await;
        sub.subscribe1(topic, qos4(sub_qos)).await;
        subs.push((sub, sub_qos, topic));
    }
    let mut publisher = Client4::connect(port, "qos4-pub", |_| {}).await;
    for qos in [0u8, 1, 2] {
        for (_, _, topic) in &subs {
            publisher
                .publish(topic, qos4(qos), false, qos.to_string())
                .await;
        }
    }
    publisher.wait_acked(2 * subs.len()).await;
    for (sub, sub_qos, topic) in &mut subs {
        let expected: BTreeMap<String, u8> = (0u8..=2)
            .map(|qos| (qos.to_string(), qos.min(*sub_qos)))
            .collect();
        assert_eq!(
            qos_by_payload4(sub, 3).await,
            expected,
            "published QoS → delivered QoS for a QoS {sub_qos} subscription to {topic}"
        );
        sub.assert_quiet(QUIET, "no duplicates").await;
    }
}

/// MQTT 5 §3.8.4: a message is delivered at the lower of its QoS and the subscription's
/// (rumqttc, MQTT 5).
#[tokio::test(flavor = "multi_thread")]
async fn qos_is_the_lower_of_publish_and_subscription_mqtt_5() {
    let broker = Broker::start("qos5").await;
    let port = broker.port();
    let mut subs = Vec::new();
    for (sub_qos, topic) in [(2u8, "q/two"), (1, "q/one"), (0, "q/zero")] {
        let mut sub = Client5::connect(port, &format!("qos5-sub{sub_qos}"), |_| {}).await;
        sub.subscribe1(topic, qos5(sub_qos)).await;
        subs.push((sub, sub_qos, topic));
    }
    let mut publisher = Client5::connect(port, "qos5-pub", |_| {}).await;
    for qos in [0u8, 1, 2] {
        for (_, _, topic) in &subs {
            publisher
                .publish(topic, qos5(qos), false, qos.to_string())
                .await;
        }
    }
    publisher.wait_acked(2 * subs.len()).await;
    for (sub, sub_qos, topic) in &mut subs {
        let expected: BTreeMap<String, u8> = (0u8..=2)
            .map(|qos| (qos.to_string(), qos.min(*sub_qos)))
            .collect();
        assert_eq!(
            qos_by_payload5(sub, 3).await,
            expected,
            "published QoS → delivered QoS for a QoS {sub_qos} subscription to {topic}"
        );
        sub.assert_quiet(QUIET, "no duplicates").await;
    }
}

/// MQTT 3.1.1 §3.8.4 and MQTT 5 §3.8.4 with Debian's `mosquitto_sub` as the subscriber:
/// at QoS 2 it gets QoS 0, 1, 2 publishes as 0, 1, 2; at QoS 1 a QoS 2 publish arrives as 1.
#[tokio::test(flavor = "multi_thread")]
async fn qos_downgrade_seen_by_mosquitto_sub() {
    let broker = Broker::start("qos-mosquitto").await;
    let port = broker.port();
    let publisher = Client4::connect(port, "qos-mosq-pub", |_| {}).await;
    for version in ["mqttv311", "mqttv5"] {
        for (sub_qos, expected) in [
            (2u8, by_payload(&[("0", 0), ("1", 1), ("2", 2)])),
            (1, by_payload(&[("0", 0), ("1", 1), ("2", 1)])),
        ] {
            let base = format!("qm/{version}/{sub_qos}");
            let filter = format!("{base}/#");
            let qos = sub_qos.to_string();
            let mut sub = MosquittoSub::start(
                port,
                &["-V", version, "-q", &qos, "-t", &filter, "-F", "%q %t %p"],
            );
            sub.wait_subscribed(&publisher, &format!("{base}/probe"))
                .await;
            let data = format!("{base}/data");
            for qos in [0u8, 1, 2] {
                publisher
                    .publish(&data, qos4(qos), false, qos.to_string())
                    .await;
            }
            assert_eq!(
                sub.qos_by_payload(&data, 3).await,
                expected,
                "mosquitto_sub -V {version} -q {sub_qos}: published QoS → delivered QoS"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// d. Maximum Packet Size, and what CONNACK tells an MQTT 5 client.

/// MQTT 5 §3.1.2.11.4 (Maximum Packet Size): the broker never sends a client a packet larger
/// than the client's maximum; it drops that message for that client alone (counted in
/// `fieldline_broker_oversize_dropped_total`) and the connection goes on. §3.2.2.3: the
/// CONNACK states Maximum Packet Size and Receive Maximum, and nothing it says contradicts what
/// these tests use (retained messages, wildcards, QoS 2).
#[tokio::test(flavor = "multi_thread")]
async fn maximum_packet_size_of_the_client_is_respected() {
    let broker = Broker::start("max-packet").await;
    let port = broker.port();
    let mut sub = Client5::connect(port, "mps-sub", |o| {
        o.set_max_packet_size(Some(200));
    })
    .await;
    let props = sub
        .connack
        .properties
        .clone()
        .expect("an MQTT 5 CONNACK carries properties");
    println!("CONNACK properties: {props:?}");
    assert!(
        props.max_packet_size.is_some_and(|n| n > 0),
        "CONNACK states the broker's Maximum Packet Size: {props:?}"
    );
    assert!(
        props.receive_max.is_some_and(|n| n > 0),
        "CONNACK states the broker's Receive Maximum: {props:?}"
    );
    assert!(
        matches!(props.retain_available, None | Some(1)),
        "retained messages are available (absent or 1): {props:?}"
    );
    assert!(
        matches!(props.wildcard_subscription_available, None | Some(1)),
        "wildcard subscriptions are available (absent or 1): {props:?}"
    );
    assert_eq!(props.max_qos, None, "QoS 2 is supported: no Maximum QoS");
    assert!(
        matches!(
            props.shared_subscription_available,
            None | Some(0) | Some(1)
        ),
        "Shared Subscription Available is 0 or 1: {props:?}"
    );
    assert!(
        matches!(
            props.subscription_identifiers_available,
            None | Some(0) | Some(1)
        ),
        "Subscription Identifiers Available is 0 or 1: {props:?}"
    );

    sub.subscribe1("big/#", QoS5::AtLeastOnce).await;
    let mut publisher = Client5::connect(port, "mps-pub", |_| {}).await;
    publisher
        .publish("big/1", QoS5::AtLeastOnce, false, vec![b'x'; 1000])
        .await;
    publisher.wait_acked(1).await;
    publisher
        .publish("big/2", QoS5::AtLeastOnce, false, "small")
        .await;
    publisher.wait_acked(2).await;
    // rumqttc ends the connection when a packet exceeds the maximum it announced, so the
    // 1000-byte publish shows up here as a connection error.
    let p = sub.expect_publish("the small publish").await;
    assert_eq!(
        (topic5(&p), text(&p.payload)),
        ("big/2".to_string(), "small".to_string()),
        "the 1000-byte publish is not sent to a client whose maximum is 200 bytes"
    );
    sub.assert_quiet(QUIET, "nothing but the small publish")
        .await;
    publisher
        .publish("big/3", QoS5::AtLeastOnce, false, "after")
        .await;
    let p = sub.expect_publish("a publish after the dropped one").await;
    assert_eq!(text(&p.payload), "after");
    assert!(sub.is_up(), "the subscriber is still connected");

    let metrics = broker
        .server
        .wait_for_metrics(|t| metric_sum(t, "fieldline_broker_oversize_dropped_total") >= 1.0)
        .await;
    assert!(metric_sum(&metrics, "fieldline_broker_oversize_dropped_total") >= 1.0);
}

// ---------------------------------------------------------------------------------------------
// e. Receive Maximum.

/// MQTT 5 §3.1.2.11.3 and §4.9 (flow control): with Receive Maximum 2 the broker has at most two
/// unacknowledged QoS 1 publishes out to the client; each PUBACK lets exactly one more go, and
/// the rest wait in order rather than being dropped.
#[tokio::test(flavor = "multi_thread")]
async fn receive_maximum_limits_unacknowledged_publishes() {
    let broker = Broker::start("receive-max").await;
    let port = broker.port();
    let mut sub = Client5::connect(port, "rm-sub", |o| {
        o.set_receive_maximum(Some(2));
        o.set_manual_acks(true);
    })
    .await;
    sub.subscribe1("rm/t", QoS5::AtLeastOnce).await;
    let mut publisher = Client5::connect(port, "rm-pub", |_| {}).await;
    for n in 0..10 {
        publisher
            .publish("rm/t", QoS5::AtLeastOnce, false, n.to_string())
            .await;
    }
    publisher.wait_acked(10).await;

    let mut order = Vec::new();
    let mut unacked = VecDeque::new();
    for _ in 0..2 {
        let p = sub.expect_publish("one of the first two").await;
        assert_eq!(p.qos, QoS5::AtLeastOnce);
        order.push(text(&p.payload));
        unacked.push_back(p);
    }
    sub.assert_quiet(QUIET, "no third publish while two are unacknowledged")
        .await;
    let oldest = unacked.pop_front().expect("two unacknowledged");
    sub.client.ack(&oldest).await.expect("PUBACK queued");
    let p = sub.expect_publish("one more after one PUBACK").await;
    order.push(text(&p.payload));
    unacked.push_back(p);
    sub.assert_quiet(QUIET, "again no more than two unacknowledged")
        .await;

    // Acknowledging one at a time, the rest arrive one at a time, in order.
    while order.len() < 10 {
        let oldest = unacked.pop_front().expect("unacknowledged publishes");
        sub.client.ack(&oldest).await.expect("PUBACK queued");
        let p = sub.expect_publish("the next queued publish").await;
        order.push(text(&p.payload));
        unacked.push_back(p);
        sub.assert_quiet(
            Duration::from_millis(300),
            "one PUBACK lets exactly one more publish go",
        )
        .await;
    }
    let expected: Vec<String> = (0..10).map(|n: i32| n.to_string()).collect();
    assert_eq!(order, expected, "every publish, once, in order");
    while let Some(p) = unacked.pop_front() {
        sub.client.ack(&p).await.expect("PUBACK queued");
    }
    sub.assert_quiet(QUIET, "nothing after the tenth").await;
}

// ---------------------------------------------------------------------------------------------
// f. Sessions.

/// MQTT 5 §3.1.2.11.2 (Session Expiry Interval), §3.1.2.4 (Clean Start) and §3.2.2.1.1 (Session
/// Present): a session with a 30 s expiry outlives its connection; resumed with clean start 0,
/// CONNACK says session present, the QoS 1 message queued meanwhile is delivered, and the
/// subscription is still there.
#[tokio::test(flavor = "multi_thread")]
async fn session_with_expiry_is_resumed_with_its_queued_messages() {
    let broker = Broker::start("session-kept").await;
    let (server, port) = (&broker.server, broker.port());
    let mut first = Client5::connect(port, "sess-1", |o| {
        o.set_clean_start(true);
        o.set_session_expiry_interval(Some(30));
    })
    .await;
    assert!(
        !first.connack.session_present,
        "a new session: {:?}",
        first.connack
    );
    first.subscribe1("cmd/sess-1", QoS5::AtLeastOnce).await;
    wait_online(server, "sess-1").await;
    first.disconnect().await;
    wait_offline(server, "sess-1").await;

    let mut publisher = Client5::connect(port, "sess-pub", |_| {}).await;
    publisher
        .publish("cmd/sess-1", QoS5::AtLeastOnce, false, "queued-1")
        .await;
    publisher.wait_acked(1).await;

    let mut again = Client5::connect(port, "sess-1", |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(30));
    })
    .await;
    assert!(
        again.connack.session_present,
        "the session is resumed: {:?}",
        again.connack
    );
    let p = again.expect_publish("the message queued while away").await;
    assert_eq!(
        (topic5(&p), text(&p.payload), p.qos),
        (
            "cmd/sess-1".to_string(),
            "queued-1".to_string(),
            QoS5::AtLeastOnce
        )
    );
    again
        .assert_quiet(QUIET, "exactly the one queued message")
        .await;
    publisher
        .publish("cmd/sess-1", QoS5::AtLeastOnce, false, "live-1")
        .await;
    let p = again
        .expect_publish("a live message on the kept subscription")
        .await;
    assert_eq!(text(&p.payload), "live-1");
}

/// What the broker holds for subscribers has one bound for the whole broker: a kept session's
/// queue fills up to it and no further (the device's publishes are still acknowledged), a
/// retained message that does not fit is not kept, and both are counted.
#[tokio::test(flavor = "multi_thread")]
async fn what_subscribers_are_held_is_bounded_for_the_whole_broker() {
    // Each message below holds its topic (10 bytes) and payload (1,000): 19 fit in 20,000.
    let broker = Broker::start_with("held-bytes", &["--mqtt-max-subscriber-bytes", "20000"]).await;
    let (server, port) = (&broker.server, broker.port());
    let mut away = Client5::connect(port, "held-1", |o| {
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    away.subscribe1("cmd/held-1", QoS5::AtLeastOnce).await;
    wait_online(server, "held-1").await;
    away.disconnect().await;
    wait_offline(server, "held-1").await;

    let mut publisher = Client5::connect(port, "held-pub", |_| {}).await;
    for n in 0..40 {
        let payload = format!("{n:04}").repeat(250);
        publisher
            .publish("cmd/held-1", QoS5::AtLeastOnce, false, payload)
            .await;
    }
    publisher.wait_acked(40).await;
    // Retained messages count too: this one no longer fits.
    publisher
        .publish("state/held", QoS5::AtLeastOnce, true, vec![b'r'; 1000])
        .await;
    publisher.wait_acked(41).await;

    let metrics = server.metrics_text().await;
    let held = metric_sum(&metrics, "fieldline_broker_subscriber_held_bytes");
    assert_eq!(held, 19.0 * 1010.0, "{metrics}");
    assert_eq!(
        metric_sum(&metrics, "fieldline_broker_subscriber_refused_total"),
        22.0,
        "21 queued messages and the retained one were refused"
    );

    let mut back = Client5::connect(port, "held-1", |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    assert!(back.connack.session_present);
    for n in 0..19 {
        let p = back.expect_publish("a message that fit").await;
        assert_eq!(&p.payload[..4], format!("{n:04}").as_bytes(), "in order");
    }
    back.assert_quiet(QUIET, "nothing past the bound").await;
    let mut late = Client5::connect(port, "held-late", |_| {}).await;
    late.subscribe1("state/#", QoS5::AtLeastOnce).await;
    late.assert_quiet(QUIET, "the retained message was not kept")
        .await;
}

/// MQTT 5 §3.1.2.11.2: with Session Expiry Interval 0 (stated, or absent) the session ends with
/// the connection: after reconnecting with clean start 0, session present is 0 and nothing
/// published in between arrives.
#[tokio::test(flavor = "multi_thread")]
async fn session_with_expiry_zero_ends_with_its_connection() {
    let broker = Broker::start("session-zero").await;
    let (server, port) = (&broker.server, broker.port());
    let mut publisher = Client5::connect(port, "sess0-pub", |_| {}).await;
    for (id, expiry) in [("sess-2a", None), ("sess-2b", Some(0))] {
        let topic = format!("cmd/{id}");
        let mut first = Client5::connect(port, id, |o| {
            o.set_clean_start(true);
            o.set_session_expiry_interval(expiry);
        })
        .await;
        first.subscribe1(&topic, QoS5::AtLeastOnce).await;
        wait_online(server, id).await;
        first.disconnect().await;
        wait_offline(server, id).await;
        publisher
            .publish(&topic, QoS5::AtLeastOnce, false, "lost")
            .await;
        let acked = publisher.acked;
        publisher.wait_acked(acked + 1).await;
        let mut again = Client5::connect(port, id, |o| {
            o.set_clean_start(false);
            o.set_session_expiry_interval(expiry);
        })
        .await;
        assert!(
            !again.connack.session_present,
            "{id} (expiry {expiry:?}): no session was kept: {:?}",
            again.connack
        );
        again
            .assert_quiet(QUIET, "nothing of a session that was not kept")
            .await;
    }
}

/// MQTT 5 §3.1.2.11.2: a session whose 2 s expiry has passed is gone: session present 0 on
/// reconnect, and the message queued for it before it expired is not delivered.
#[tokio::test(flavor = "multi_thread")]
async fn session_is_gone_after_its_expiry_interval() {
    let broker = Broker::start("session-expired").await;
    let (server, port) = (&broker.server, broker.port());
    let mut first = Client5::connect(port, "sess-3", |o| {
        o.set_clean_start(true);
        o.set_session_expiry_interval(Some(2));
    })
    .await;
    first.subscribe1("cmd/sess-3", QoS5::AtLeastOnce).await;
    wait_online(server, "sess-3").await;
    first.disconnect().await;
    wait_offline(server, "sess-3").await;
    let gone = Instant::now();
    let mut publisher = Client5::connect(port, "sess3-pub", |_| {}).await;
    publisher
        .publish("cmd/sess-3", QoS5::AtLeastOnce, false, "expired")
        .await;
    publisher.wait_acked(1).await;
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(gone.elapsed())).await;
    let mut again = Client5::connect(port, "sess-3", |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(2));
    })
    .await;
    assert!(
        !again.connack.session_present,
        "the session expired 2 s after the disconnect: {:?}",
        again.connack
    );
    again
        .assert_quiet(QUIET, "nothing of the expired session")
        .await;
}

/// MQTT §4.3.3: a QoS 2 publish acknowledged with PUBREC is forwarded once, also when its
/// sender reconnects to its kept session and sends it again (DUP) before the PUBREL.
#[tokio::test(flavor = "multi_thread")]
async fn a_qos2_publish_resent_to_a_resumed_session_is_forwarded_once() {
    let broker = Broker::start("qos2-resumed").await;
    let port = broker.port();
    let mut watcher = Client4::connect(port, "q2-watch", |_| {}).await;
    watcher.subscribe1("q2/#", QoS::ExactlyOnce).await;

    // MQTT 3.1.1 with clean session 0: the session outlives the connection.
    let connect = |client_id: &str| {
        let mut body = Vec::new();
        string(b"MQTT", &mut body);
        body.extend_from_slice(&[4, 0x00, 0, 60]);
        string(client_id.as_bytes(), &mut body);
        framed(0x10, body)
    };
    let mut first = RawMqtt::open(&Endpoint::Tcp(port)).await.expect("TCP");
    first.send(&connect("q2-sender")).await.expect("CONNECT");
    assert_eq!(next_raw(&mut first, "CONNACK").await.0, 0x20);
    first
        .send(&raw_publish(4, "q2/a", 2, 7, b"once"))
        .await
        .expect("PUBLISH");
    let (kind, body) = next_raw(&mut first, "PUBREC").await;
    assert_eq!((kind, body), (0x50, vec![0, 7]));
    let p = watcher.expect_publish("the publish, forwarded").await;
    assert_eq!(&p.payload[..], b"once");
    drop(first); // gone before its PUBREL

    let mut again = RawMqtt::open(&Endpoint::Tcp(port)).await.expect("TCP");
    again.send(&connect("q2-sender")).await.expect("CONNECT");
    let (kind, connack) = next_raw(&mut again, "CONNACK").await;
    assert_eq!((kind, connack), (0x20, vec![1, 0]), "session present");
    let mut dup = raw_publish(4, "q2/a", 2, 7, b"once");
    dup[0] |= 0x08;
    again.send(&dup).await.expect("PUBLISH again");
    let (kind, body) = next_raw(&mut again, "PUBREC").await;
    assert_eq!((kind, body), (0x50, vec![0, 7]));
    again.send(&framed(0x62, vec![0, 7])).await.expect("PUBREL");
    let (kind, body) = next_raw(&mut again, "PUBCOMP").await;
    assert_eq!((kind, body), (0x70, vec![0, 7]));
    watcher
        .assert_quiet(QUIET, "the resent publish is not forwarded again")
        .await;
}

/// MQTT 3.1.1 §3.1.2.4 (Clean Session) and §3.2.2.2 (Session Present): with clean session 0 the
/// session is kept across connections (session present 1, the queued QoS 1 message delivered);
/// a clean session 1 connection discards it, and nothing of it is there afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn clean_session_decides_whether_a_session_is_kept_mqtt_311() {
    let broker = Broker::start("session-311").await;
    let (server, port) = (&broker.server, broker.port());
    let mut publisher = Client4::connect(port, "sess4-pub", |_| {}).await;

    let mut first = Client4::connect(port, "sess-4", |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(
        !first.connack.session_present,
        "a new session: {:?}",
        first.connack
    );
    first.subscribe1("cmd/sess-4", QoS::AtLeastOnce).await;
    wait_online(server, "sess-4").await;
    first.disconnect().await;
    wait_offline(server, "sess-4").await;
    publisher
        .publish("cmd/sess-4", QoS::AtLeastOnce, false, "queued-4")
        .await;
    publisher.wait_acked(1).await;

    let mut again = Client4::connect(port, "sess-4", |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(
        again.connack.session_present,
        "the session is kept: {:?}",
        again.connack
    );
    let p = again.expect_publish("the message queued while away").await;
    assert_eq!(
        (p.topic.as_str(), text(&p.payload).as_str(), p.qos),
        ("cmd/sess-4", "queued-4", QoS::AtLeastOnce)
    );
    again
        .assert_quiet(QUIET, "exactly the one queued message")
        .await;
    wait_online(server, "sess-4").await;
    again.disconnect().await;
    wait_offline(server, "sess-4").await;

    // Clean session 1: session present is 0, and the kept session is discarded.
    let mut clean = Client4::connect(port, "sess-4", |o| {
        o.set_clean_session(true);
    })
    .await;
    assert!(
        !clean.connack.session_present,
        "clean session 1: session present is 0: {:?}",
        clean.connack
    );
    clean
        .assert_quiet(QUIET, "nothing of the discarded session")
        .await;
    wait_online(server, "sess-4").await;
    clean.disconnect().await;
    wait_offline(server, "sess-4").await;
    publisher
        .publish("cmd/sess-4", QoS::AtLeastOnce, false, "lost-4")
        .await;
    publisher.wait_acked(2).await;
    let mut last = Client4::connect(port, "sess-4", |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(
        !last.connack.session_present,
        "the session ended with the clean session 1 connection: {:?}",
        last.connack
    );
    last.assert_quiet(QUIET, "no subscription, no queued message")
        .await;
}

// ---------------------------------------------------------------------------------------------
// g. No Local.

/// MQTT 5 §3.8.3.1 (No Local option): a client subscribed with No Local does not get its own
/// publishes back, but does get everyone else's; without No Local it gets its own too.
#[tokio::test(flavor = "multi_thread")]
async fn no_local_keeps_a_clients_own_publishes_from_it() {
    let broker = Broker::start("no-local").await;
    let port = broker.port();
    let mut own = Client5::connect(port, "nl-self", |_| {}).await;
    let mut filter = Filter::new("nl/t", QoS5::AtLeastOnce);
    filter.nolocal = true;
    assert_eq!(
        own.subscribe([filter]).await,
        [SubscribeReasonCode5::Success(QoS5::AtLeastOnce)]
    );
    let mut other = Client5::connect(port, "nl-other", |_| {}).await;
    own.publish("nl/t", QoS5::AtLeastOnce, false, "own").await;
    own.wait_acked(1).await;
    other
        .publish("nl/t", QoS5::AtLeastOnce, false, "other")
        .await;
    other.wait_acked(1).await;
    let p = own.expect_publish("the other client's message").await;
    assert_eq!(
        text(&p.payload),
        "other",
        "with No Local a client's own message is not sent back to it"
    );
    own.assert_quiet(QUIET, "no own message with No Local")
        .await;

    own.subscribe1("nl/u", QoS5::AtLeastOnce).await;
    own.publish("nl/u", QoS5::AtLeastOnce, false, "own again")
        .await;
    let p = own
        .expect_publish("its own message, without No Local")
        .await;
    assert_eq!(
        (topic5(&p), text(&p.payload)),
        ("nl/u".to_string(), "own again".to_string())
    );
}

// ---------------------------------------------------------------------------------------------
// h. Retain Handling and Retain As Published.

fn retain_filter(path: &str, rule: RetainForwardRule, retain_as_published: bool) -> Filter {
    Filter {
        path: path.to_string(),
        qos: QoS5::AtLeastOnce,
        nolocal: false,
        preserve_retain: retain_as_published,
        retain_forward_rule: rule,
    }
}

/// MQTT 5 §3.8.3.1 (Retain Handling): 0 sends the retained message at every subscribe, 1 only
/// when the subscription is new, 2 never; a retained message sent at subscribe has RETAIN 1
/// (MQTT 5 §3.3.1.3, MQTT 3.1.1 §3.3.1.3 too).
#[tokio::test(flavor = "multi_thread")]
async fn retain_handling_decides_when_retained_messages_are_sent() {
    let broker = Broker::start("retain-handling").await;
    let port = broker.port();
    let mut publisher = Client5::connect(port, "ret-pub", |_| {}).await;
    publisher
        .publish("ret/a", QoS5::AtLeastOnce, true, "kept")
        .await;
    publisher.wait_acked(1).await;

    let mut every = Client5::connect(port, "ret-every", |_| {}).await;
    for round in 0..2 {
        every
            .subscribe([retain_filter(
                "ret/a",
                RetainForwardRule::OnEverySubscribe,
                false,
            )])
            .await;
        let p = every.expect_publish("the retained message").await;
        assert_eq!(
            (topic5(&p), text(&p.payload), p.retain),
            ("ret/a".to_string(), "kept".to_string(), true),
            "Retain Handling 0, subscribe #{round}"
        );
        every
            .assert_quiet(QUIET, "the retained message once per subscribe")
            .await;
    }

    let mut never = Client5::connect(port, "ret-never", |_| {}).await;
    never
        .subscribe([retain_filter("ret/a", RetainForwardRule::Never, false)])
        .await;
    never
        .assert_quiet(QUIET, "Retain Handling 2: no retained message")
        .await;

    let mut new = Client5::connect(port, "ret-new", |_| {}).await;
    new.subscribe([retain_filter(
        "ret/a",
        RetainForwardRule::OnNewSubscribe,
        false,
    )])
    .await;
    let p = new
        .expect_publish("the retained message on a new subscription")
        .await;
    assert!(p.retain && text(&p.payload) == "kept", "{p:?}");
    new.subscribe([retain_filter(
        "ret/a",
        RetainForwardRule::OnNewSubscribe,
        false,
    )])
    .await;
    new.assert_quiet(
        QUIET,
        "Retain Handling 1: nothing when the subscription already existed",
    )
    .await;

    let mut v311 = Client4::connect(port, "ret-v311", |_| {}).await;
    v311.subscribe1("ret/a", QoS::AtLeastOnce).await;
    let p = v311
        .expect_publish("the retained message, MQTT 3.1.1")
        .await;
    assert!(p.retain && text(&p.payload) == "kept", "{p:?}");
}

/// MQTT 5 §3.8.3.1 (Retain As Published) and §3.3.1.3: a message published with RETAIN 1 and
/// delivered to an existing subscription keeps RETAIN 1 only where the subscription asked for
/// Retain As Published; MQTT 3.1.1 §3.3.1.3 always clears it.
#[tokio::test(flavor = "multi_thread")]
async fn retain_as_published_keeps_the_flag_on_live_messages() {
    let broker = Broker::start("retain-as-published").await;
    let port = broker.port();
    let mut rap = Client5::connect(port, "rap-on", |_| {}).await;
    rap.subscribe([retain_filter(
        "ret/live",
        RetainForwardRule::OnEverySubscribe,
        true,
    )])
    .await;
    let mut plain = Client5::connect(port, "rap-off", |_| {}).await;
    plain
        .subscribe([retain_filter(
            "ret/live",
            RetainForwardRule::OnEverySubscribe,
            false,
        )])
        .await;
    let mut v311 = Client4::connect(port, "rap-v311", |_| {}).await;
    v311.subscribe1("ret/live", QoS::AtLeastOnce).await;

    let mut publisher = Client5::connect(port, "rap-pub", |_| {}).await;
    publisher
        .publish("ret/live", QoS5::AtLeastOnce, true, "live")
        .await;
    publisher.wait_acked(1).await;

    let p = rap.expect_publish("the live message").await;
    assert!(p.retain, "Retain As Published 1: RETAIN stays 1: {p:?}");
    let p = plain.expect_publish("the live message").await;
    assert!(!p.retain, "Retain As Published 0: RETAIN is 0: {p:?}");
    let p = v311.expect_publish("the live message").await;
    assert!(!p.retain, "MQTT 3.1.1: RETAIN is 0 on live delivery: {p:?}");
}

// ---------------------------------------------------------------------------------------------
// i. Bad input.

/// Bad input ends the offending connection and nothing else (MQTT 3.1.1 §3.1.2.1-2, §3.1.0,
/// §3.3.2.1, §4.7.1, §4.8.0; MQTT 5 §3.1.2.1-2, §3.1.0, §3.3.2.1, §4.7.1, §4.13): an unknown
/// protocol name or level (at most a refusing CONNACK, then the close), a second CONNECT, a
/// first packet that is not CONNECT, a PUBLISH to a topic with wildcards, a SUBSCRIBE with an
/// invalid filter (the close, or a SUBACK failure code). Other clients are served throughout.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_ends_only_the_offending_connection() {
    let broker = Broker::start("bad-input").await;
    let port = broker.port();
    let endpoint = Endpoint::Tcp(port);
    let mut watcher = Client4::connect(port, "bad-watcher", |_| {}).await;
    watcher.subscribe1("ok/#", QoS::AtLeastOnce).await;
    let publisher = Client4::connect(port, "bad-pub", |_| {}).await;

    // Unknown protocol levels, and a protocol name that is not MQTT.
    let attempts = [
        (b"MQTT".as_slice(), 0u8),
        (b"MQTT".as_slice(), 6),
        (b"MQTT".as_slice(), 7),
        (b"MQTX".as_slice(), 4),
    ];
    for (name, level) in attempts {
        let what = format!("CONNECT {:?} level {level}", text(name));
        let mut conn = RawMqtt::open(&endpoint).await.expect("TCP connection");
        conn.send(&raw_connect_named(name, level, "bad-level", 30))
            .await
            .expect("CONNECT sent");
        let seen = conn
            .closed_within(WAIT)
            .await
            .unwrap_or_else(|seen| panic!("{what}: connection left open; saw {seen:?}"));
        assert!(
            seen.iter()
                .all(|(kind, body)| *kind == 0x20 && body.get(1).is_some_and(|code| *code != 0)),
            "{what}: at most a refusing CONNACK (0x01 / 0x84) before the close: {seen:?}"
        );
    }

    // A first packet that is not CONNECT.
    let mut conn = RawMqtt::open(&endpoint).await.expect("TCP connection");
    conn.send(&PINGREQ).await.expect("PINGREQ sent");
    let seen = conn.closed_within(WAIT).await.unwrap_or_else(|seen| {
        panic!("PINGREQ before CONNECT: connection left open; saw {seen:?}")
    });
    assert!(
        seen.is_empty(),
        "nothing answers a PINGREQ before CONNECT: {seen:?}"
    );

    for level in [4u8, 5] {
        // A second CONNECT on the same connection.
        let (mut conn, _) = raw_session(port, level, &format!("twice-{level}"), 30).await;
        conn.send(&raw_connect(level, &format!("twice-{level}"), 30))
            .await
            .expect("second CONNECT sent");
        let seen = conn.closed_within(WAIT).await.unwrap_or_else(|seen| {
            panic!("level {level}: a second CONNECT left the connection open; saw {seen:?}")
        });
        assert!(
            seen.iter().all(|(kind, _)| *kind == 0xE0),
            "level {level}: nothing but (MQTT 5) a DISCONNECT after a second CONNECT: {seen:?}"
        );

        // A PUBLISH whose topic has a wildcard.
        let (mut conn, _) = raw_session(port, level, &format!("wild-{level}"), 30).await;
        conn.send(&raw_publish(level, "ok/+", 1, 3, b"wild"))
            .await
            .expect("PUBLISH sent");
        let seen = conn.closed_within(WAIT).await.unwrap_or_else(|seen| {
            panic!("level {level}: a PUBLISH to ok/+ left the connection open; saw {seen:?}")
        });
        assert!(
            seen.iter().all(|(kind, _)| *kind == 0xE0),
            "level {level}: no PUBACK for a PUBLISH to a wildcard topic: {seen:?}"
        );

        // SUBSCRIBE with invalid filters: the connection is closed, or the SUBACK refuses.
        for (i, filter) in ["a/#/b", "a/b#", "a+/b", ""].into_iter().enumerate() {
            let (mut conn, _) = raw_session(port, level, &format!("filter-{level}-{i}"), 30).await;
            conn.send(&raw_subscribe(level, 5, filter, 1))
                .await
                .expect("SUBSCRIBE sent");
            let what = format!("level {level}, filter {filter:?}");
            match conn.closed_within(QUIET).await {
                Ok(seen) => assert!(
                    !seen
                        .iter()
                        .any(|(kind, body)| *kind == 0x90 && suback_code(level, body) < 0x80),
                    "{what}: closed, but only after granting the subscription: {seen:?}"
                ),
                Err(seen) => {
                    assert!(
                        seen.iter()
                            .any(|(kind, body)| *kind == 0x90 && suback_code(level, body) >= 0x80),
                        "{what}: neither closed nor refused in a SUBACK: {seen:?}"
                    );
                    // Refused, and the connection goes on.
                    conn.send(&PINGREQ).await.expect("PINGREQ sent");
                    let (kind, _) = next_raw(&mut conn, "PINGRESP").await;
                    assert_eq!(kind, 0xD0, "{what}: PINGRESP after the refused SUBSCRIBE");
                }
            }
        }
    }

    // Nothing of the bad input was delivered, and the broker still serves everyone else.
    publisher
        .publish("ok/after", QoS::AtLeastOnce, false, "still served")
        .await;
    let p = watcher
        .expect_publish("a publish after the bad input")
        .await;
    assert_eq!(
        (p.topic.as_str(), text(&p.payload).as_str()),
        ("ok/after", "still served")
    );
    watcher.assert_quiet(QUIET, "nothing else").await;
    let fresh = Client5::connect(port, "bad-after-v5", |_| {}).await;
    assert!(fresh.is_up());
}

/// MQTT 3.1.1 §3.10.4 and MQTT 5 §3.11.3: UNSUBSCRIBE of a filter the client never subscribed to
/// is answered with UNSUBACK (MQTT 5: reason 0x11 No subscription existed), and the connection
/// goes on; a real subscription is removed with reason 0x00.
#[tokio::test(flavor = "multi_thread")]
async fn unsubscribing_what_was_never_subscribed_is_acknowledged() {
    let broker = Broker::start("unsubscribe").await;
    let port = broker.port();

    let mut v311 = Client4::connect(port, "unsub-v311", |_| {}).await;
    v311.client
        .unsubscribe("never/subscribed")
        .await
        .expect("UNSUBSCRIBE queued");
    match v311.reply("UNSUBACK").await {
        Packet::UnsubAck(_) => {}
        other => panic!("expected an UNSUBACK, got {other:?}"),
    }
    v311.assert_quiet(Duration::from_millis(500), "the connection goes on")
        .await;

    let mut v5 = Client5::connect(port, "unsub-v5", |_| {}).await;
    v5.client
        .unsubscribe("never/subscribed")
        .await
        .expect("UNSUBSCRIBE queued");
    match v5.reply("UNSUBACK").await {
        Packet5::UnsubAck(ack) => assert_eq!(
            ack.reasons,
            [UnsubAckReason::NoSubscriptionExisted],
            "{ack:?}"
        ),
        other => panic!("expected an UNSUBACK, got {other:?}"),
    }
    v5.subscribe1("was/subscribed", QoS5::AtLeastOnce).await;
    v5.client
        .unsubscribe("was/subscribed")
        .await
        .expect("UNSUBSCRIBE queued");
    match v5.reply("UNSUBACK").await {
        Packet5::UnsubAck(ack) => assert_eq!(ack.reasons, [UnsubAckReason::Success], "{ack:?}"),
        other => panic!("expected an UNSUBACK, got {other:?}"),
    }
    v5.assert_quiet(Duration::from_millis(500), "the connection goes on")
        .await;
}

// ---------------------------------------------------------------------------------------------
// j. mosquitto clients with keep-alive 0.

/// MQTT 5 §3.1.2.10 with Debian's mosquitto clients: `mosquitto_sub -V mqttv5 -k 0` stays
/// connected through silence and receives what `mosquitto_pub -V mqttv5 -k 0 -q 1` publishes.
/// (mosquitto's clients before 2.0.12 refuse `-k` below 5 themselves, before connecting; with
/// those, this runs with `-k 5` and says so, and keep-alive 0 is covered by the raw and paho
/// tests.)
#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_clients_with_keep_alive_zero() {
    let broker = Broker::start("mosquitto-ka0").await;
    let (server, port) = (&broker.server, broker.port());
    let probe = mosquitto_pub(
        port,
        &[
            "-V",
            "mqttv5",
            "-k",
            "0",
            "-q",
            "1",
            "-t",
            "ka0/first",
            "-m",
            "first",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&probe.stderr).into_owned();
    let keep_alive = if probe.status.success() {
        "0"
    } else if stderr.contains("Invalid keepalive") {
        println!(
            "note: this mosquitto_pub refuses -k 0 itself ({}); using -k 5",
            stderr.trim()
        );
        "5"
    } else {
        panic!(
            "mosquitto_pub -V mqttv5 -k 0 failed ({}): {stderr}",
            probe.status
        );
    };

    let mut sub = MosquittoSub::start(
        port,
        &[
            "-V", "mqttv5", "-k", keep_alive, "-q", "1", "-i", "mosq-ka0", "-t", "ka0/#", "-F",
            "%q %t %p",
        ],
    );
    let prober = Client4::connect(port, "ka0-prober", |_| {}).await;
    sub.wait_subscribed(&prober, "ka0/probe").await;
    wait_online(server, "mosq-ka0").await;
    // The subscriber's connection is silent for longer than a short keep-alive would allow.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = mosquitto_pub(
        port,
        &[
            "-V", "mqttv5", "-k", keep_alive, "-q", "1", "-t", "ka0/data", "-m", "hello",
        ],
    )
    .await;
    assert!(
        sent.status.success(),
        "mosquitto_pub -k {keep_alive} failed: {}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert_eq!(
        sub.qos_by_payload("ka0/data", 1).await,
        by_payload(&[("hello", 1)])
    );
    // One connection all along: mosquitto_sub reconnects silently, presence would show it.
    let history = server.get_ok("/api/devices/mosq-ka0/status").await;
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(1),
        "mosquitto_sub was never disconnected: {history}"
    );
}

// ---------------------------------------------------------------------------------------------
// k. paho-mqtt.

/// paho-mqtt 2.x (Python), MQTT 5 and 3.1.1: keep-alive 0, QoS downgrade, topic aliases, No
/// Local, and session resume, as `tests/mqtt_conformance.py` checks them.
#[tokio::test(flavor = "multi_thread")]
async fn paho_mqtt_client_checks() {
    let broker = Broker::start("paho").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt_conformance.py");
    let mut command = Command::new("python3");
    command.args([
        script,
        "--host",
        "127.0.0.1",
        "--port",
        &broker.port().to_string(),
    ]);
    let out = run_bounded(
        command,
        "python3 tests/mqtt_conformance.py",
        Duration::from_secs(200),
    )
    .await;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{output}");
    assert!(
        out.status.success(),
        "the paho-mqtt checks failed ({}); paho-mqtt 2.x is installed by scripts/test.sh:\n{output}",
        out.status
    );
}

// ---------------------------------------------------------------------------------------------
// k. What a client sends before its CONNACK, and topics and ids the router cannot take as is.

/// MQTT 3.1.1 §3.1.4: a client may send packets right after CONNECT without waiting for the
/// CONNACK. CONNECT, SUBSCRIBE and a QoS 1 PUBLISH in one write are all answered, with no
/// further traffic (keep-alive 0: nothing else would ever wake the connection).
#[tokio::test(flavor = "multi_thread")]
async fn packets_sent_with_the_connect_are_answered() {
    let broker = Broker::start("pipelined").await;
    for level in [4u8, 5] {
        let mut conn = RawMqtt::open(&Endpoint::Tcp(broker.port()))
            .await
            .expect("TCP connection");
        let mut bytes = raw_connect(level, &format!("pipelined-{level}"), 0);
        bytes.extend(raw_subscribe(level, 7, "piped/#", 1));
        bytes.extend(raw_publish(level, "piped/x", 1, 8, b"first"));
        conn.send(&bytes).await.expect("all sent in one write");
        let mut kinds = Vec::new();
        while kinds.len() < 4 {
            let (kind, _) = next_raw(&mut conn, "the answers").await;
            kinds.push(kind & 0xF0);
        }
        // CONNACK, SUBACK, then the PUBACK and the message itself (as the subscriber), in
        // either order.
        assert_eq!(&kinds[..2], &[0x20, 0x90], "level {level}: {kinds:?}");
        let mut rest = kinds[2..].to_vec();
        rest.sort_unstable();
        assert_eq!(
            rest,
            [0x30, 0x40],
            "level {level}: PUBLISH and PUBACK: {kinds:?}"
        );
    }
}

/// Topics the router cannot take (a first character beyond ASCII makes rumqttd's matcher
/// panic its thread) still reach the pipeline; they are not forwarded, and everyone else goes
/// on being served. A topic that is not UTF-8 closes its connection (MQTT §1.5.4).
#[tokio::test(flavor = "multi_thread")]
async fn unroutable_topics_harm_no_one() {
    let broker = Broker::start("unroutable").await;
    let port = broker.port();
    let mut watcher = Client5::connect(port, "watcher", |_| {}).await;
    watcher.subscribe1("ok/#", QoS5::AtLeastOnce).await;
    let publisher = Client5::connect(port, "accents", |_| {}).await;
    publisher
        .publish("é/x", QoS5::AtLeastOnce, true, "retained, unroutable")
        .await;
    // A subscription to such a filter is refused rather than handed to the router.
    let (mut raw, _) = raw_session(port, 5, "accent-sub", 30).await;
    raw.send(&raw_subscribe(5, 3, "é/#", 1))
        .await
        .expect("SUBSCRIBE sent");
    let (kind, body) = next_raw(&mut raw, "SUBACK").await;
    assert_eq!(kind, 0x90);
    assert!(suback_code(5, &body) >= 0x80, "refused: {body:?}");

    // A topic that is not UTF-8: the connection is closed, nothing acknowledged.
    let (mut bad, _) = raw_session(port, 4, "not-utf8", 30).await;
    let mut topic = b"ok/".to_vec();
    topic.push(0xC3); // a lead byte with nothing after it
    let mut body = Vec::new();
    string(&topic, &mut body);
    body.extend_from_slice(&9u16.to_be_bytes());
    body.extend_from_slice(b"x");
    bad.send(&framed(0x32, body)).await.expect("PUBLISH sent");
    let seen = bad
        .closed_within(Duration::from_secs(5))
        .await
        .unwrap_or_else(|seen| panic!("left open after a non-UTF-8 topic; saw {seen:?}"));
    assert!(
        seen.iter().all(|(h, _)| h & 0xF0 != 0x40),
        "no PUBACK: {seen:?}"
    );

    // The router and everyone else are fine.
    let mut fresh = Client5::connect(port, "fresh", |_| {}).await;
    fresh.subscribe1("ok/#", QoS5::AtLeastOnce).await;
    publisher
        .publish("ok/1", QoS5::AtLeastOnce, false, "still routed")
        .await;
    assert_eq!(
        text(&watcher.expect_publish("ok/1").await.payload),
        "still routed"
    );
    assert_eq!(
        text(&fresh.expect_publish("ok/1").await.payload),
        "still routed"
    );
}

/// Client ids the router would refuse (`/ + # $`) or that look like the broker's own links
/// subscribe and receive like any other; `$` filters are refused in SUBACK (there is no
/// `$SYS`), and the connection goes on.
#[tokio::test(flavor = "multi_thread")]
async fn any_client_id_may_subscribe_and_dollar_filters_are_refused() {
    let broker = Broker::start("odd-ids").await;
    let port = broker.port();
    let mut publisher = Client4::connect(port, "odd-pub", |_| {}).await;
    for id in [
        "plant/7",
        "a+b",
        "fieldline-ingress",
        "fieldline:ingress",
        ":auto-1",
    ] {
        let mut client = Client4::connect(port, id, |_| {}).await;
        client.subscribe1("odd/#", QoS::AtLeastOnce).await;
        publisher
            .publish("odd/x", QoS::AtLeastOnce, false, id)
            .await;
        let p = client.expect_publish(id).await;
        assert_eq!(text(&p.payload), id);
        client.disconnect().await;
    }
    publisher.wait_acked(5).await;

    let (mut raw, _) = raw_session(port, 4, "dollar", 30).await;
    raw.send(&raw_subscribe(4, 5, "$SYS/#", 0))
        .await
        .expect("SUBSCRIBE sent");
    let (kind, body) = next_raw(&mut raw, "SUBACK").await;
    assert_eq!((kind, suback_code(4, &body)), (0x90, 0x80), "{body:?}");
    raw.send(&PINGREQ).await.expect("PINGREQ sent");
    assert_eq!(next_raw(&mut raw, "PINGRESP").await.0, 0xD0);
}

/// A resumed session's subscriptions behave like new ones: an UNSUBSCRIBE after the resume
/// stops delivery, and a publish to the filter then reaches nobody.
#[tokio::test(flavor = "multi_thread")]
async fn a_resumed_session_can_unsubscribe() {
    let broker = Broker::start("resume-unsub").await;
    let (server, port) = (&broker.server, broker.port());
    let mut first = Client5::connect(port, "resumer", |o| {
        o.set_clean_start(true);
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    first.subscribe1("resume/x", QoS5::AtLeastOnce).await;
    wait_online(server, "resumer").await;
    first.disconnect().await;
    wait_offline(server, "resumer").await;

    let mut again = Client5::connect(port, "resumer", |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    assert!(again.connack.session_present, "{:?}", again.connack);
    let mut publisher = Client5::connect(port, "resume-pub", |_| {}).await;
    publisher
        .publish("resume/x", QoS5::AtLeastOnce, false, "before")
        .await;
    assert_eq!(
        text(&again.expect_publish("before").await.payload),
        "before"
    );
    again
        .client
        .unsubscribe("resume/x")
        .await
        .expect("UNSUBSCRIBE queued");
    match again.reply("UNSUBACK").await {
        Packet5::UnsubAck(ack) => assert_eq!(ack.reasons, [UnsubAckReason::Success], "{ack:?}"),
        other => panic!("expected an UNSUBACK, got {other:?}"),
    }
    publisher
        .publish("resume/x", QoS5::AtLeastOnce, false, "after")
        .await;
    publisher.wait_acked(2).await;
    again
        .assert_quiet(QUIET, "nothing after the UNSUBSCRIBE")
        .await;
}
