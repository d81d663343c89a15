//! Who may connect: the broker's copy of the device registry, the anonymous rules, and the
//! price of a password check.
//!
//! The registry lives in storage; the binary hands every change to [`Guard::apply`], so
//! connecting never waits for the database. Authentication is on once the registry has held a
//! device (a disabled one still counts): from then on every connection needs a registered,
//! enabled device id as its username and that device's secret as its password, except
//! connections without a username when the operator allowed anonymous clients. With an empty
//! registry, anonymous clients are accepted on loopback listeners only (or everywhere with
//! `allow_anonymous`).
//!
//! A password check is an Argon2id verification, tens of milliseconds of a core. Three things
//! keep that cost bounded:
//! - a successful check is remembered as a keyed digest of the password, so a device that
//!   reconnects with the same secret is let in at the cost of one SHA-256;
//! - checks run one at a time on a thread of their own, and when too many wait, more are refused
//!   at once;
//! - after repeated wrong passwords for one device, further uncached attempts for it are
//!   refused without checking for a growing while (up to a minute). The device itself, with
//!   its cached secret, still gets in: a flood of wrong passwords cannot lock it out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::credentials::{to_hex, SecretChecker};

/// What an operator tunes about admission and per-connection limits.
#[derive(Debug, Clone)]
pub struct GuardSettings {
    /// Accept clients without a username on any listener (with an empty registry, also on
    /// non-loopback listeners).
    pub allow_anonymous: bool,
    /// Publishes per second one connection may keep up; more wait (TCP backpressure).
    pub publish_rate: f64,
    /// Publishes one connection may send at once above that rate.
    pub publish_burst: f64,
    /// Wrong passwords in a row for one device before its uncached attempts are throttled.
    pub failures_before_throttle: u32,
    /// Password checks that may wait for their turn; further ones are refused at once.
    pub max_pending_checks: usize,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            publish_rate: 1_000.0,
            publish_burst: 2_000.0,
            failures_before_throttle: 5,
            max_pending_checks: 256,
        }
    }
}

/// One device of the registry, as the binary hands it over.
#[derive(Debug, Clone)]
pub struct DeviceAccess {
    pub device: String,
    pub secret_hash: String,
    pub enabled: bool,
}

struct Entry {
    secret_hash: Arc<str>,
    enabled: bool,
    /// Changes whenever the entry does; a connection admitted under another revision ends.
    revision: u64,
}

/// A password that passed its check: the entry's revision then, and its keyed digest.
type Passed = (u64, [u8; 32]);

#[derive(Default)]
struct Failures {
    in_a_row: u32,
    locked_until: Option<Instant>,
    /// A check of this device's password is queued or running.
    checking: bool,
}

/// A device's reserved password check; given back when dropped, also when the connection
/// goes away mid-check.
struct CheckSlot<'a> {
    guard: &'a Guard,
    id: Arc<str>,
}

impl Drop for CheckSlot<'_> {
    fn drop(&mut self) {
        self.guard.pending_checks.fetch_sub(1, Ordering::AcqRel);
        let mut failures = self
            .guard
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = failures.get_mut(&self.id) {
            entry.checking = false;
        }
    }
}

/// How a connection was admitted at its CONNECT, decided before the password is checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Admission {
    /// No identity: publishes anywhere, as before authentication existed.
    Anonymous,
    /// Speaks for this device, under the access rules, while the registry entry is unchanged.
    Device {
        id: Arc<str>,
        revision: u64,
    },
    Refused(&'static str),
}

pub struct Guard {
    settings: GuardSettings,
    devices: RwLock<HashMap<Arc<str>, Entry>>,
    /// The registry has held a device: authentication is on.
    configured: AtomicBool,
    /// Bumped on every registry change, so connections re-check only when something changed.
    generation: AtomicU64,
    next_revision: AtomicU64,
    /// Device → digest of the password that last passed, under the entry's revision.
    passed: Mutex<HashMap<Arc<str>, Passed>>,
    failures: Mutex<HashMap<Arc<str>, Failures>>,
    /// The one thread that runs password checks, in turn, with one Argon2 working memory
    /// (19 MiB) kept for all of them.
    checker: std::sync::mpsc::Sender<Check>,
    pending_checks: AtomicUsize,
    /// Keys the remembered digests, so they are worthless outside this process.
    digest_key: [u8; 32],
    /// The password of the login the codec gives anonymous connections for the
    /// authentication hook (which refuses connections without a login).
    anonymous_password: String,
    /// Connections waiting out their publish rate right now.
    pub(crate) paused: AtomicUsize,
    /// Open connections per device id, so one stolen secret cannot fill the broker.
    connections: Mutex<HashMap<Arc<str>, usize>>,
}

/// A password to check against a stored hash, and where the answer goes.
struct Check {
    password: Vec<u8>,
    secret_hash: Arc<str>,
    answer: oneshot::Sender<bool>,
}

fn spawn_checker() -> std::sync::mpsc::Sender<Check> {
    let (tx, rx) = std::sync::mpsc::channel::<Check>();
    let spawned = std::thread::Builder::new()
        .name("fieldline-password-check".into())
        .spawn(move || {
            let mut checker = SecretChecker::default();
            // Ends when the guard (and with it the sender) is dropped.
            for check in rx {
                let started = Instant::now();
                let passed = checker.verify(&check.password, &check.secret_hash);
                metrics::histogram!("fieldline_broker_password_check_seconds")
                    .record(started.elapsed().as_secs_f64());
                let _ = check.answer.send(passed);
            }
        });
    if let Err(e) = spawned {
        // Without the thread every check answers "no": logins fail, nothing else does.
        tracing::error!(error = %e, "cannot start the password-check thread; device logins will fail");
    }
    tx
}

/// Username of the login given to admitted anonymous connections: not a valid device id.
pub(crate) const ANONYMOUS_USER: &str = "\u{0}anonymous";
/// Connections that may wait out their publish rate at once; more are disconnected, because
/// each waiting connection holds a thread.
pub(crate) const MAX_PAUSED: usize = 256;
/// Connections one device may have open at once (its sessions under different client ids).
pub(crate) const MAX_CONNECTIONS_PER_DEVICE: usize = 16;

impl Guard {
    pub fn new(settings: GuardSettings) -> Arc<Self> {
        let mut digest_key = [0u8; 32];
        OsRng.fill_bytes(&mut digest_key);
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        Arc::new(Self {
            settings,
            devices: RwLock::new(HashMap::new()),
            configured: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            next_revision: AtomicU64::new(1),
            passed: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            checker: spawn_checker(),
            pending_checks: AtomicUsize::new(0),
            digest_key,
            anonymous_password: to_hex(&nonce),
            paused: AtomicUsize::new(0),
            connections: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> &GuardSettings {
        &self.settings
    }

    /// Takes registry changes (new, rotated, disabled or re-enabled devices). Connections of a
    /// changed device end at their next packet and must authenticate again.
    pub fn apply(&self, changes: impl IntoIterator<Item = DeviceAccess>) {
        let mut devices = self.devices.write().unwrap_or_else(PoisonError::into_inner);
        let mut passed = self.passed.lock().unwrap_or_else(PoisonError::into_inner);
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let mut any = false;
        for change in changes {
            let id: Arc<str> = Arc::from(change.device.as_str());
            let unchanged = devices.get(&id).is_some_and(|e| {
                e.enabled == change.enabled && *e.secret_hash == *change.secret_hash
            });
            if unchanged {
                continue;
            }
            passed.remove(&id);
            // A new secret or a re-enabled device starts with a clean slate.
            failures.remove(&id);
            devices.insert(
                id,
                Entry {
                    secret_hash: Arc::from(change.secret_hash.as_str()),
                    enabled: change.enabled,
                    revision: self.next_revision.fetch_add(1, Ordering::Relaxed),
                },
            );
            any = true;
        }
        if !devices.is_empty() {
            self.configured.store(true, Ordering::Release);
        }
        if any {
            self.generation.fetch_add(1, Ordering::Release);
        }
        metrics::gauge!("fieldline_broker_registered_devices").set(devices.len() as f64);
    }

    /// Whether the registry holds `device` (enabled or not).
    pub fn is_registered(&self, device: &str) -> bool {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        devices.contains_key(device)
    }

    /// Device authentication is on: the registry has held a device.
    pub fn auth_configured(&self) -> bool {
        self.configured.load(Ordering::Acquire)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The decision at CONNECT, from the listener and the username alone.
    pub(crate) fn admission(&self, loopback_listener: bool, username: Option<&str>) -> Admission {
        if !self.auth_configured() {
            return if loopback_listener || self.settings.allow_anonymous {
                Admission::Anonymous
            } else {
                Admission::Refused("anonymous clients are accepted on loopback listeners only")
            };
        }
        match username {
            None | Some("") if self.settings.allow_anonymous => Admission::Anonymous,
            None | Some("") => Admission::Refused("no username (device id) given"),
            Some(user) => {
                let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
                match devices.get_key_value(user) {
                    Some((id, entry)) => Admission::Device {
                        id: id.clone(),
                        revision: entry.revision,
                    },
                    // Refused by the password check, which counts and logs it.
                    None => Admission::Device {
                        id: Arc::from(user),
                        revision: 0,
                    },
                }
            }
        }
    }

    /// Counts a connection of `device`; false (and nothing counted) when it has the most it
    /// may have open.
    pub(crate) fn open_connection(&self, device: &Arc<str>) -> bool {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let open = connections.entry(device.clone()).or_default();
        if *open >= MAX_CONNECTIONS_PER_DEVICE {
            return false;
        }
        *open += 1;
        true
    }

    /// A connection counted by [`Guard::open_connection`] ended.
    pub(crate) fn close_connection(&self, device: &Arc<str>) {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = connections.get_mut(device) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                connections.remove(device);
            }
        }
    }

    /// Whether a connection admitted under `revision` may go on.
    pub(crate) fn still_valid(&self, device: &str, revision: u64) -> bool {
        let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
        devices
            .get(device)
            .is_some_and(|e| e.enabled && e.revision == revision)
    }

    /// The login the codec gives anonymous connections (only this process knows it).
    pub(crate) fn anonymous_login(&self) -> (String, String) {
        (ANONYMOUS_USER.to_string(), self.anonymous_password.clone())
    }

    /// The password check at CONNECT: the anonymous marker, or a device id and its secret.
    pub(crate) async fn authenticate(&self, username: &str, password: &str) -> bool {
        if username == ANONYMOUS_USER {
            // Only the codec knows this password; a client sending the name alone gets nothing.
            let ok: bool = password
                .as_bytes()
                .ct_eq(self.anonymous_password.as_bytes())
                .into();
            return ok;
        }
        let outcome = self.check_password(username, password).await;
        metrics::counter!("fieldline_broker_auth_total", "result" => outcome).increment(1);
        match outcome {
            "ok" | "cached" => true,
            refused => {
                tracing::warn!(device = %username.escape_debug(), reason = refused, "MQTT connection refused");
                false
            }
        }
    }

    async fn check_password(&self, username: &str, password: &str) -> &'static str {
        let (id, secret_hash, revision) = {
            let devices = self.devices.read().unwrap_or_else(PoisonError::into_inner);
            match devices.get_key_value(username) {
                None => return "unknown_device",
                Some((_, entry)) if !entry.enabled => return "disabled",
                Some((id, entry)) => (id.clone(), entry.secret_hash.clone(), entry.revision),
            }
        };
        let digest = self.digest(username, password);
        let remembered = self
            .passed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .is_some_and(|(rev, known)| *rev == revision && bool::from(known.ct_eq(&digest)));
        if remembered {
            return "cached";
        }
        // One uncached check per device at a time, reserved in the same step that reads the
        // throttle: a burst of wrong passwords for one device cannot fill the queue that
        // every other device's first login waits in.
        let Some(_slot) = self.reserve_check(&id) else {
            return if self.throttled(&id) {
                "throttled"
            } else {
                "busy"
            };
        };
        let passed = self.verify(password, secret_hash).await;
        if passed {
            self.passed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id.clone(), (revision, digest));
            self.failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            "ok"
        } else {
            self.count_failure(id);
            "bad_password"
        }
    }

    /// Takes the device's one check slot and a place in the queue, or `None` when the device
    /// is throttled, already being checked, or the queue is full.
    fn reserve_check(&self, id: &Arc<str>) -> Option<CheckSlot<'_>> {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = failures.entry(id.clone()).or_default();
        if entry.checking
            || entry
                .locked_until
                .is_some_and(|until| Instant::now() < until)
        {
            return None;
        }
        if self.pending_checks.fetch_add(1, Ordering::AcqRel) >= self.settings.max_pending_checks {
            self.pending_checks.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        entry.checking = true;
        Some(CheckSlot {
            guard: self,
            id: id.clone(),
        })
    }

    async fn verify(&self, password: &str, secret_hash: Arc<str>) -> bool {
        let (answer, answered) = oneshot::channel();
        let check = Check {
            password: password.as_bytes().to_vec(),
            secret_hash,
            answer,
        };
        if self.checker.send(check).is_err() {
            return false;
        }
        answered.await.unwrap_or(false)
    }

    fn throttled(&self, id: &Arc<str>) -> bool {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        failures
            .get(id)
            .and_then(|f| f.locked_until)
            .is_some_and(|until| Instant::now() < until)
    }

    fn count_failure(&self, id: Arc<str>) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = failures.entry(id).or_default();
        entry.in_a_row = entry.in_a_row.saturating_add(1);
        if let Some(over) = entry
            .in_a_row
            .checked_sub(self.settings.failures_before_throttle)
        {
            // 1 s, 2 s, 4 s, ... up to a minute.
            let pause = Duration::from_secs(1u64 << over.min(6)).min(Duration::from_secs(60));
            entry.locked_until = Some(Instant::now() + pause);
        }
    }

    fn digest(&self, username: &str, password: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.digest_key);
        hasher.update(username.as_bytes());
        hasher.update([0]);
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{hash_secret, new_secret};

    fn device(id: &str, secret: &str, enabled: bool) -> DeviceAccess {
        DeviceAccess {
            device: id.to_string(),
            secret_hash: hash_secret(secret).expect("hashing works"),
            enabled,
        }
    }

    #[test]
    fn an_empty_registry_admits_anonymous_clients_on_loopback_only() {
        let guard = Guard::new(GuardSettings::default());
        assert_eq!(guard.admission(true, None), Admission::Anonymous);
        assert_eq!(guard.admission(true, Some("d1")), Admission::Anonymous);
        assert!(matches!(
            guard.admission(false, None),
            Admission::Refused(_)
        ));
        let open = Guard::new(GuardSettings {
            allow_anonymous: true,
            ..GuardSettings::default()
        });
        assert_eq!(open.admission(false, None), Admission::Anonymous);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registered_device_needs_its_secret() {
        let guard = Guard::new(GuardSettings::default());
        let secret = new_secret();
        guard.apply([device("d1", &secret, true)]);
        assert!(guard.auth_configured());
        assert!(matches!(guard.admission(true, None), Admission::Refused(_)));
        let Admission::Device { id, revision } = guard.admission(true, Some("d1")) else {
            panic!("a username is a device");
        };
        assert_eq!(&*id, "d1");
        assert_eq!(guard.check_password("d1", &secret).await, "ok");
        assert_eq!(guard.check_password("d1", &secret).await, "cached");
        assert_eq!(guard.check_password("d1", "wrong").await, "bad_password");
        assert_eq!(guard.check_password("d2", &secret).await, "unknown_device");
        assert!(guard.still_valid("d1", revision));

        // Rotation: the old secret stops working, and so does the admitted connection.
        let rotated = new_secret();
        guard.apply([device("d1", &rotated, true)]);
        assert!(!guard.still_valid("d1", revision));
        assert_eq!(guard.check_password("d1", &secret).await, "bad_password");
        assert_eq!(guard.check_password("d1", &rotated).await, "ok");

        guard.apply([device("d1", &rotated, false)]);
        assert_eq!(guard.check_password("d1", &rotated).await, "disabled");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_passwords_throttle_others_but_not_the_known_secret() {
        let guard = Guard::new(GuardSettings {
            failures_before_throttle: 2,
            ..GuardSettings::default()
        });
        let secret = new_secret();
        guard.apply([device("d1", &secret, true)]);
        assert_eq!(guard.check_password("d1", &secret).await, "ok");
        for _ in 0..2 {
            assert_eq!(guard.check_password("d1", "guess").await, "bad_password");
        }
        assert_eq!(guard.check_password("d1", "guess").await, "throttled");
        assert_eq!(guard.check_password("d1", &secret).await, "cached");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_check_per_device_at_a_time_and_a_new_secret_clears_the_throttle() {
        let guard = Guard::new(GuardSettings {
            failures_before_throttle: 1,
            ..GuardSettings::default()
        });
        let secret = new_secret();
        guard.apply([device("d1", &secret, true)]);
        let id: Arc<str> = Arc::from("d1");
        let slot = guard.reserve_check(&id).expect("free");
        assert!(
            guard.reserve_check(&id).is_none(),
            "a second check waits its turn"
        );
        assert_eq!(guard.check_password("d1", "guess").await, "busy");
        drop(slot);
        assert_eq!(guard.check_password("d1", "guess").await, "bad_password");
        assert_eq!(guard.check_password("d1", &secret).await, "throttled");
        let rotated = new_secret();
        guard.apply([device("d1", &rotated, true)]);
        assert_eq!(guard.check_password("d1", &rotated).await, "ok");
        assert_eq!(guard.pending_checks.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_device_has_a_bounded_number_of_connections() {
        let guard = Guard::new(GuardSettings::default());
        let id: Arc<str> = Arc::from("d1");
        for _ in 0..MAX_CONNECTIONS_PER_DEVICE {
            assert!(guard.open_connection(&id));
        }
        assert!(!guard.open_connection(&id));
        guard.close_connection(&id);
        assert!(guard.open_connection(&id));
    }

    #[tokio::test]
    async fn the_anonymous_login_is_known_only_to_the_codec() {
        let guard = Guard::new(GuardSettings::default());
        let (user, password) = guard.anonymous_login();
        assert!(guard.authenticate(&user, &password).await);
        assert!(!guard.authenticate(&user, "").await);
        assert!(!guard.authenticate(&user, "guess").await);
    }
}
