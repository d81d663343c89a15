//! The write-ahead log under the PUBACK: every publish is appended here before the broker
//! acknowledges it, and stays until storage says it holds it.
//!
//! Segments of fixed size hold frames of `length | crc32c | position | payload`. Positions
//! count 1, 2, 3, … across segments and restarts, so storage can record "everything up to N"
//! in the same transaction as the rows, and a replay after a crash skips exactly that.
//!
//! Durability: in `process` mode an append is a `pwrite` that has reached the kernel before
//! it returns, which a crash of the process cannot undo. In `fsync` mode a sync thread runs
//! `fdatasync` in a loop and each PUBACK waits for the sync that covers its publish (group
//! commit: one sync serves every append made while the previous one ran). A failed sync is
//! fatal: after one, the kernel may have dropped the dirty pages and a retry would report
//! success for data that is gone (PostgreSQL's fsync lesson), so the process stops.

mod frame;
mod reader;
mod segment;

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use frame::Record;
pub use reader::Reader;

/// How far an acknowledged publish has got when its PUBACK is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Only in memory: a crash loses what storage does not hold yet.
    Memory,
    /// In the kernel: survives a crash or `kill -9` of the process.
    Process,
    /// On the disk: survives a power loss too.
    Fsync,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Memory => "memory",
            Durability::Process => "process",
            Durability::Fsync => "fsync",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the write-ahead log is damaged in {path} at byte {offset}: {reason}. Records after that point cannot be trusted; restore the file from a backup, or truncate it at byte {offset} to keep the records before the damage (what follows it is then lost)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("another process is using the write-ahead log in {0} (a second Fieldline with the same --wal-dir?)")]
    Locked(PathBuf),
    #[error("the write-ahead log in {dir} belongs to another database (it is log {log}; this database follows {}): replaying it here would store another database's data. Point --wal-dir at this database's log, or remove {dir} to start this database with a new one", database.as_deref().unwrap_or("no log yet"))]
    ForeignLog {
        dir: PathBuf,
        log: String,
        database: Option<String>,
    },
    #[error("the write-ahead log in {dir} starts at record {first}, but storage holds records only up to {stored}: the log belongs to another database, or its oldest segment is missing. If the database was replaced on purpose, remove {dir} (whatever it held that the old database did not is then lost); otherwise restore the missing segment")]
    AheadOfStorage {
        dir: PathBuf,
        first: u64,
        stored: u64,
    },
}

impl WalError {
    fn io(what: &'static str, path: &Path, source: std::io::Error) -> Self {
        WalError::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WalSettings {
    pub dir: PathBuf,
    /// `Process` or `Fsync`; `Memory` means no log is opened at all.
    pub durability: Durability,
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
}

/// Appended bytes are remembered in steps of this size, for the backlog gauges.
const CHECKPOINT_BYTES: u64 = 256 * 1024;

struct Active {
    file: Arc<File>,
    path: PathBuf,
    /// Bytes in the active segment, header included: where the next frame goes.
    len: u64,
    /// The next position to hand out.
    next: u64,
    /// A failed append could not be cut back; nothing is appended until it is.
    torn_at: Option<u64>,
    frame: Vec<u8>,
    /// Every segment, oldest first, as (first position, path, bytes); the last is active.
    segments: VecDeque<(u64, PathBuf, u64)>,
    /// (last position, bytes appended up to it, its receive time), about every
    /// [`CHECKPOINT_BYTES`]: what storage has not yet confirmed.
    backlog: VecDeque<(u64, u64, i64)>,
    appended_bytes: u64,
    stored_bytes: u64,
    stored: u64,
}

/// The open log.
pub struct Wal {
    settings: WalSettings,
    active: Mutex<Active>,
    /// Highest position known to be on disk (fsync mode).
    synced: Mutex<u64>,
    synced_changed: Condvar,
    /// Bytes appended up to the last sync, for the bytes-per-sync figure.
    synced_bytes: Mutex<u64>,
    /// Wakes the sync thread when there is something to sync.
    appended: Condvar,
    /// The last append failed (disk full, I/O error); cleared by the next that succeeds.
    failing: AtomicBool,
    /// `appended_bytes - stored_bytes`, kept beside the lock: every publishing connection
    /// reads it before each hand-over, and must not queue behind an append's write.
    unstored: AtomicU64,
    _lock: File,
    metrics: Metrics,
}

struct Metrics {
    appends: metrics::Counter,
    append_errors: metrics::Counter,
    bytes: metrics::Gauge,
    segments: metrics::Gauge,
    unstored_bytes: metrics::Gauge,
    oldest_unstored: metrics::Gauge,
    syncs: metrics::Counter,
    synced_bytes: metrics::Counter,
    sync_seconds: metrics::Histogram,
}

impl Metrics {
    fn new() -> Self {
        Self {
            appends: metrics::counter!("fieldline_wal_appends_total"),
            append_errors: metrics::counter!("fieldline_wal_append_errors_total"),
            bytes: metrics::gauge!("fieldline_wal_bytes"),
            segments: metrics::gauge!("fieldline_wal_segments"),
            unstored_bytes: metrics::gauge!("fieldline_wal_unstored_bytes"),
            oldest_unstored: metrics::gauge!("fieldline_wal_oldest_unstored_seconds"),
            syncs: metrics::counter!("fieldline_wal_syncs_total"),
            synced_bytes: metrics::counter!("fieldline_wal_synced_bytes_total"),
            sync_seconds: metrics::histogram!("fieldline_wal_sync_seconds"),
        }
    }
}

/// What opening found, for the start-up log.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    pub segments: usize,
    pub last: u64,
    /// Bytes cut from the end of the newest segment (a write cut short by a crash).
    pub cut_bytes: u64,
    /// The log's identity, which storage records beside its position.
    pub id: String,
}

impl Wal {
    /// Opens (or creates) the log in `settings.dir`. `stored` is the position storage holds
    /// everything up to, in the log storage names as `owner`; a log with records and another
    /// identity is refused before anything in it is touched. Segments storage holds are kept
    /// (the live history is rebuilt from them) until [`Wal::release`] lets them go. The
    /// newest segment's torn tail is cut; damage anywhere else is refused when
    /// [`Wal::replay`] reads it.
    pub fn open(
        settings: WalSettings,
        stored: u64,
        owner: Option<&str>,
    ) -> Result<(Arc<Wal>, Opened), WalError> {
        let dir = settings.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| WalError::io("cannot create", &dir, e))?;
        let lock_path = dir.join("LOCK");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| WalError::io("cannot open", &lock_path, e))?;
        // A log just dropped in this process may still be held by its sync thread for a
        // moment (it lets go within one wait); another process holds it for good.
        let mut attempts = 0;
        while lock.try_lock().is_err() {
            attempts += 1;
            if attempts > 10 {
                return Err(WalError::Locked(dir.clone()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }

        let listed = segment::list(&dir)?;
        let empty = match listed.as_slice() {
            [] => true,
            [(_, only)] => {
                std::fs::metadata(only).map(|m| m.len()).unwrap_or(0) <= segment::MAGIC.len() as u64
            }
            _ => false,
        };
        let id = identity(&settings, owner, empty)?;
        let mut opened = Opened::default();
        let mut segments = VecDeque::new();
        let mut tail = None;
        for (i, (first, path)) in listed.iter().enumerate() {
            let newest = i + 1 == listed.len();
            let size = std::fs::metadata(path)
                .map_err(|e| WalError::io("cannot read", path, e))?
                .len();
            if newest {
                let bytes = segment::read(path)?;
                let scan = segment::scan(path, &bytes, *first, u64::MAX, |_| {})?;
                let mut valid_len = scan.valid_len;
                if let Some(invalid) = scan.invalid {
                    let later =
                        segment::valid_frame_after(&bytes, scan.valid_len as usize, scan.last);
                    match later {
                        // After a crash of the process the kernel holds every write in order,
                        // so a hole with records behind it is damage, not a torn write.
                        Some(at) if settings.durability != Durability::Fsync => {
                            return Err(WalError::Corrupt {
                                path: path.clone(),
                                offset: scan.valid_len,
                                reason: format!("{invalid}, and valid records follow at byte {at}"),
                            });
                        }
                        // After a power loss, pages written since the last sync may survive
                        // out of order; none of them was acknowledged, since a PUBACK waits
                        // for the sync that covers it.
                        Some(at) => tracing::warn!(
                            file = %path.display(),
                            offset = scan.valid_len,
                            later = at,
                            "write-ahead log has a hole with records behind it, as a power loss leaves unsynced writes; cutting at the hole (nothing past it was acknowledged)"
                        ),
                        None => {}
                    }
                    opened.cut_bytes = size - scan.valid_len;
                    tracing::warn!(
                        file = %path.display(),
                        offset = scan.valid_len,
                        cut_bytes = opened.cut_bytes,
                        "write-ahead log ends in a record cut short ({invalid}), as a crash leaves it; cutting it off"
                    );
                }
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| WalError::io("cannot open", path, e))?;
                if valid_len < segment::MAGIC.len() as u64 {
                    file.write_all_at(segment::MAGIC, 0)
                        .map_err(|e| WalError::io("cannot write", path, e))?;
                    valid_len = segment::MAGIC.len() as u64;
                }
                file.set_len(valid_len)
                    .map_err(|e| WalError::io("cannot cut", path, e))?;
                if settings.durability == Durability::Fsync {
                    file.sync_all()
                        .map_err(|e| WalError::io("cannot sync", path, e))?;
                }
                segments.push_back((*first, path.clone(), valid_len));
                tail = Some((file, path.clone(), valid_len, scan.last));
            } else {
                segments.push_back((*first, path.clone(), size));
            }
        }
        opened.segments = segments.len();
        let (file, path, len, next) = match tail {
            // The log goes on where it ended, unless storage is ahead of it (a log that was
            // moved away): positions must keep growing past what storage recorded.
            Some((file, path, len, last)) if last >= stored => (file, path, len, last + 1),
            _ => {
                // Every record of an older log is stored; replay must not meet its gap.
                for (_, path, _) in segments.drain(..) {
                    std::fs::remove_file(&path)
                        .map_err(|e| WalError::io("cannot delete", &path, e))?;
                }
                let first = stored + 1;
                let (file, path) = segment::create(&dir, first)?;
                sync_dir(&settings, &dir)?;
                segments.push_back((first, path.clone(), segment::MAGIC.len() as u64));
                (file, path, segment::MAGIC.len() as u64, first)
            }
        };
        opened.last = next - 1;
        opened.id = id;
        // What waits for storage: the segments from the one holding `stored + 1` on (that one
        // may be partly stored; recovery stores it all before any device is read, and then it
        // counts as stored). Older segments, kept for the live history, wait for nothing.
        let backlog_bytes: u64 = segments.iter().map(|s| s.2).sum();
        let mut backlog = VecDeque::new();
        let stored_bytes = if next - 1 > stored {
            backlog.push_back((next - 1, backlog_bytes, now_ms()));
            segments
                .iter()
                .zip(segments.iter().skip(1))
                .take_while(|(_, next_segment)| next_segment.0 <= stored + 1)
                .map(|(segment, _)| segment.2)
                .sum()
        } else {
            backlog_bytes
        };
        let wal = Arc::new(Wal {
            active: Mutex::new(Active {
                file: Arc::new(file),
                path,
                len,
                next,
                torn_at: None,
                frame: Vec::with_capacity(4096),
                segments,
                backlog,
                appended_bytes: backlog_bytes,
                stored_bytes,
                stored,
            }),
            synced: Mutex::new(next - 1),
            synced_changed: Condvar::new(),
            synced_bytes: Mutex::new(backlog_bytes),
            failing: AtomicBool::new(false),
            unstored: AtomicU64::new(backlog_bytes.saturating_sub(stored_bytes)),
            appended: Condvar::new(),
            _lock: lock,
            metrics: Metrics::new(),
            settings,
        });
        wal.report(&wal.lock());
        if wal.settings.durability == Durability::Fsync {
            // A weak reference: the thread ends once the log is dropped.
            let syncer = Arc::downgrade(&wal);
            std::thread::Builder::new()
                .name("fieldline-wal-sync".into())
                .spawn(move || {
                    while let Some(wal) = syncer.upgrade() {
                        wal.sync_once();
                    }
                })
                .map_err(|e| {
                    WalError::io("cannot start the sync thread for", &wal.settings.dir, e)
                })?;
        }
        Ok((wal, opened))
    }

    pub fn durability(&self) -> Durability {
        self.settings.durability
    }

    fn lock(&self) -> MutexGuard<'_, Active> {
        // A panic while holding the lock leaves the state consistent: every field is
        // updated only after the write it describes succeeded.
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one publish and, still holding the log's lock, calls `then` with its position,
    /// so whatever `then` queues is queued in log order.
    pub fn append<T>(
        &self,
        received_ms: i64,
        topic: &[u8],
        payload: &[u8],
        then: impl FnOnce(u64) -> T,
    ) -> Result<T, WalError> {
        self.append_batch(received_ms, &[(topic, payload)], then)
    }

    /// Appends publishes received together (`(topic, payload)`, at least one) in one write
    /// and, still holding the log's lock, calls `then` with the position of the first; the
    /// others follow it in order. One write for a socket read's worth of publishes instead
    /// of one each.
    pub fn append_batch<T>(
        &self,
        received_ms: i64,
        records: &[(&[u8], &[u8])],
        then: impl FnOnce(u64) -> T,
    ) -> Result<T, WalError> {
        let mut active = self.lock();
        let active = &mut *active;
        if let Some(at) = active.torn_at {
            active
                .file
                .set_len(at)
                .map_err(|e| WalError::io("cannot cut", &active.path, e))?;
            active.torn_at = None;
        }
        let first = active.next;
        let count = records.len() as u64;
        active.frame.clear();
        for (position, (topic, payload)) in (first..).zip(records) {
            frame::encode(&mut active.frame, position, received_ms, topic, payload);
        }
        let size = active.frame.len() as u64;
        if active.len + size > self.settings.segment_bytes
            && active.len > segment::MAGIC.len() as u64
        {
            if let Err(e) = self.rotate(active, first) {
                // No room for a new segment counts as a failing append like any other.
                self.metrics.append_errors.increment(1);
                self.failing.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        if let Err(e) = active.file.write_all_at(&active.frame, active.len) {
            self.metrics.append_errors.increment(1);
            self.failing.store(true, Ordering::Relaxed);
            // Cut the partial frames off, so the log stays a valid sequence; if even that
            // fails, the next append tries again first.
            if active.file.set_len(active.len).is_err() {
                active.torn_at = Some(active.len);
            }
            return Err(WalError::io("cannot append to", &active.path, e));
        }
        let position = first + count.saturating_sub(1);
        active.len += size;
        active.next += count;
        active.appended_bytes += size;
        self.note_unstored(active);
        if let Some(last) = active.segments.back_mut() {
            last.2 = active.len;
        }
        let checkpoint_due = active
            .backlog
            .back()
            .is_none_or(|&(_, bytes, _)| active.appended_bytes - bytes >= CHECKPOINT_BYTES);
        if checkpoint_due {
            active
                .backlog
                .push_back((position, active.appended_bytes, received_ms));
        } else if let Some(last) = active.backlog.back_mut() {
            // The newest checkpoint always covers the newest record.
            last.0 = position;
            last.1 = active.appended_bytes;
        }
        self.metrics.appends.increment(count);
        if self.failing.load(Ordering::Relaxed) {
            self.failing.store(false, Ordering::Relaxed);
        }
        let result = then(first);
        if self.settings.durability == Durability::Fsync {
            self.appended.notify_one();
        }
        Ok(result)
    }

    /// Closes the active segment and starts the next, whose first record is `first`.
    fn rotate(&self, active: &mut Active, first: u64) -> Result<(), WalError> {
        if self.settings.durability == Durability::Fsync {
            // The sync thread only syncs the active file: the old one is synced here.
            self.sync_file(&active.file, &active.path);
            let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
            *synced = (*synced).max(first - 1);
            self.synced_changed.notify_all();
        }
        let (file, path) = segment::create(&self.settings.dir, first)?;
        sync_dir(&self.settings, &self.settings.dir)?;
        active.file = Arc::new(file);
        active.path = path.clone();
        active.len = segment::MAGIC.len() as u64;
        active.segments.push_back((first, path, active.len));
        self.report(active);
        Ok(())
    }

    /// Blocks until `position` is as durable as the mode promises (fsync mode: on disk).
    pub fn wait_durable(&self, position: u64) {
        if self.settings.durability != Durability::Fsync {
            return;
        }
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        while *synced < position {
            synced = self
                .synced_changed
                .wait(synced)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether `position` is already as durable as the mode promises, without waiting.
    pub fn is_durable(&self, position: u64) -> bool {
        self.settings.durability != Durability::Fsync
            || *self.synced.lock().unwrap_or_else(|e| e.into_inner()) >= position
    }

    /// One round of the sync thread: waits (up to 100 ms) for appends not yet synced, and
    /// syncs them all with one `fdatasync`.
    fn sync_once(&self) {
        let (file, path, target, bytes) = {
            let mut active = self.lock();
            let synced = *self.synced.lock().unwrap_or_else(|e| e.into_inner());
            if active.next - 1 <= synced {
                active = self
                    .appended
                    .wait_timeout(active, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if active.next - 1 <= *self.synced.lock().unwrap_or_else(|e| e.into_inner()) {
                    return;
                }
            }
            (
                active.file.clone(),
                active.path.clone(),
                active.next - 1,
                active.appended_bytes,
            )
        };
        self.sync_file(&file, &path);
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        *synced = (*synced).max(target);
        let mut synced_bytes = self.synced_bytes.lock().unwrap_or_else(|e| e.into_inner());
        self.metrics
            .synced_bytes
            .increment(bytes.saturating_sub(*synced_bytes));
        *synced_bytes = bytes.max(*synced_bytes);
        self.synced_changed.notify_all();
    }

    /// `fdatasync`, or the end of the process: after a failed sync nothing written since the
    /// last good one can be trusted, and retrying could report success for lost data.
    fn sync_file(&self, file: &File, path: &Path) {
        let started = Instant::now();
        if let Err(e) = file.sync_data() {
            tracing::error!(file = %path.display(), error = %e, "fdatasync of the write-ahead log failed; stopping, since acknowledged data may not be on disk (restart to recover from what is)");
            eprintln!("fatal: fdatasync of {} failed: {e}", path.display());
            std::process::abort();
        }
        self.metrics.syncs.increment(1);
        self.metrics
            .sync_seconds
            .record(started.elapsed().as_secs_f64());
    }

    /// Storage holds every record up to `stored`, and nothing before `keep_from` is needed
    /// any more (the live history holds no older event): delete the segments that hold
    /// nothing else.
    pub fn release(&self, stored: u64, keep_from: u64) {
        let mut active = self.lock();
        if stored > active.stored {
            active.stored = stored;
            while let Some(&(last, bytes, _)) = active.backlog.front() {
                if last > stored {
                    break;
                }
                active.stored_bytes = bytes;
                active.backlog.pop_front();
            }
            self.note_unstored(&active);
        }
        let stored = active.stored;
        // The history is a convenience: a full disk gives it up before devices wait.
        let needed_from = if self.is_failing() {
            stored + 1
        } else {
            keep_from.min(stored + 1)
        };
        while active.segments.len() > 1 && active.segments[1].0 <= needed_from {
            if let Some((_, path, _)) = active.segments.pop_front() {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot delete a stored write-ahead log segment");
                }
            }
        }
        if self.is_failing()
            && stored + 1 >= active.next
            && active.len > segment::MAGIC.len() as u64
        {
            // The disk is full and storage holds the whole log: the active segment is empty
            // of anything needed. Start it over (truncate, then rename to its new first
            // position), since creating a new file could fail for want of space too.
            if let Err(e) = self.recycle(&mut active) {
                tracing::warn!(error = %e, "cannot start the write-ahead log segment over");
            }
        }
        self.report(&active);
    }

    fn recycle(&self, active: &mut Active) -> Result<(), WalError> {
        let header = segment::MAGIC.len() as u64;
        active
            .file
            .set_len(header)
            .map_err(|e| WalError::io("cannot cut", &active.path, e))?;
        active.len = header;
        active.torn_at = None;
        let path = segment::path(&self.settings.dir, active.next);
        std::fs::rename(&active.path, &path)
            .map_err(|e| WalError::io("cannot rename", &active.path, e))?;
        sync_dir(&self.settings, &self.settings.dir)?;
        active.path = path.clone();
        active.segments.clear();
        active.segments.push_back((active.next, path, header));
        tracing::info!(
            first = active.next,
            "write-ahead log segment started over to free disk space"
        );
        Ok(())
    }

    /// While appends fail and storage holds the whole log, starts the active segment over to
    /// free its space (the disk may have filled after the last release).
    pub fn free_space_if_stuck(&self) {
        let mut active = self.lock();
        if self.is_failing()
            && active.stored + 1 >= active.next
            && active.len > segment::MAGIC.len() as u64
        {
            if let Err(e) = self.recycle(&mut active) {
                tracing::warn!(error = %e, "cannot start the write-ahead log segment over");
            }
            self.report(&active);
        }
    }

    /// Appends are failing (disk full or an I/O error): devices are being held back.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Bytes appended that storage has not confirmed yet (to within a checkpoint step).
    pub fn unstored_bytes(&self) -> u64 {
        self.unstored.load(Ordering::Acquire)
    }

    fn note_unstored(&self, active: &Active) {
        self.unstored.store(
            active.appended_bytes.saturating_sub(active.stored_bytes),
            Ordering::Release,
        );
    }

    fn report(&self, active: &Active) {
        self.metrics
            .bytes
            .set(active.segments.iter().map(|s| s.2).sum::<u64>() as f64);
        self.metrics.segments.set(active.segments.len() as f64);
        self.metrics
            .unstored_bytes
            .set(active.appended_bytes.saturating_sub(active.stored_bytes) as f64);
        let oldest = active
            .backlog
            .front()
            .map(|&(_, _, ms)| (now_ms() - ms).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        self.metrics.oldest_unstored.set(oldest);
    }

    /// Refreshes the backlog gauges (their age moves with the clock); call it on a timer.
    pub fn report_backlog(&self) {
        self.report(&self.lock());
    }

    /// The oldest position the log still has (the next to be written when it is empty).
    pub fn first_position(&self) -> u64 {
        let active = self.lock();
        active.segments.front().map_or(active.next, |s| s.0)
    }

    /// A cursor reading the log from `from` on while appends go on.
    pub fn reader(self: &Arc<Self>, from: u64) -> Reader {
        Reader::new(self.clone(), from)
    }

    /// Reads back every record after `after`, oldest first, checking each frame. Damage in
    /// any but the newest segment (whose torn tail [`Wal::open`] already cut) is an error
    /// naming the file.
    pub fn replay(&self, after: u64) -> Replay {
        let active = self.lock();
        let segments: VecDeque<(u64, PathBuf)> = active
            .segments
            .iter()
            .map(|(first, path, _)| (*first, path.clone()))
            .collect();
        Replay {
            segments,
            after,
            end: active.next,
            expected: None,
            pending: VecDeque::new(),
        }
    }
}

/// The records of a replay, segment by segment, so memory holds one segment at a time.
pub struct Replay {
    segments: VecDeque<(u64, PathBuf)>,
    after: u64,
    /// Position the log had reached when the replay began.
    end: u64,
    expected: Option<u64>,
    pending: VecDeque<Record>,
}

impl Iterator for Replay {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.pending.pop_front() {
                if record.position >= self.end {
                    return None;
                }
                return Some(Ok(record));
            }
            let (first, path) = self.segments.pop_front()?;
            if self.expected.is_none() && first > self.after + 1 {
                return Some(Err(WalError::AheadOfStorage {
                    dir: path.parent().map(Path::to_owned).unwrap_or_default(),
                    first,
                    stored: self.after,
                }));
            }
            if let Some(expected) = self.expected {
                if first != expected {
                    return Some(Err(WalError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!("segment starts at record {first}, but record {expected} was due (a segment is missing)"),
                    }));
                }
            }
            let bytes = match segment::read(&path) {
                Ok(bytes) => bytes,
                Err(e) => return Some(Err(e)),
            };
            let mut records = VecDeque::new();
            let scan =
                match segment::scan(&path, &bytes, first, self.after, |r| records.push_back(r)) {
                    Ok(scan) => scan,
                    Err(e) => return Some(Err(e)),
                };
            // The newest segment may still be growing: past `end` is not ours to judge.
            let newest = self.segments.is_empty();
            if let (Some(invalid), false) = (&scan.invalid, newest) {
                return Some(Err(WalError::Corrupt {
                    path,
                    offset: scan.valid_len,
                    reason: invalid.to_string(),
                }));
            }
            self.expected = Some(scan.last + 1);
            self.pending = records;
        }
    }
}

/// The log's identity, kept in `ID` beside the segments. A log without records takes the
/// identity storage expects (or a new one); one with records must already have it.
/// A new log identity: creation time and process, unique enough to tell one log from another
/// (and usable in a directory name).
pub fn new_log_id() -> String {
    format!(
        "{:x}-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        std::process::id()
    )
}

fn identity(settings: &WalSettings, owner: Option<&str>, empty: bool) -> Result<String, WalError> {
    let path = settings.dir.join("ID");
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(WalError::io("cannot read", &path, e)),
    };
    if !empty {
        return match (found, owner) {
            (Some(log), Some(db)) if log == db => Ok(log),
            (log, database) => Err(WalError::ForeignLog {
                dir: settings.dir.clone(),
                log: log.unwrap_or_else(|| "without an identity".into()),
                database: database.map(str::to_owned),
            }),
        };
    }
    let id = match owner {
        Some(db) => db.to_owned(),
        None => new_log_id(),
    };
    if found.as_deref() != Some(id.as_str()) {
        std::fs::write(&path, format!("{id}\n"))
            .map_err(|e| WalError::io("cannot write", &path, e))?;
        if let Ok(file) = File::open(&path) {
            if settings.durability == Durability::Fsync {
                file.sync_all()
                    .map_err(|e| WalError::io("cannot sync", &path, e))?;
            }
        }
        sync_dir(settings, &settings.dir)?;
    }
    Ok(id)
}

fn sync_dir(settings: &WalSettings, dir: &Path) -> Result<(), WalError> {
    if settings.durability == Durability::Fsync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WalError::io("cannot sync", dir, e))?;
    }
    Ok(())
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn now_ms_of(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
