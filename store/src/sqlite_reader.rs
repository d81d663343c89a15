//! History reads on SQLite (tracks, telemetry, statuses by range) on connections of their own,
//! on a blocking thread.
//!
//! sqlx runs each SQLite connection on a worker thread and hands every row over a channel with
//! each value copied out: a 24 h track of 86,400 fixes took about 230 ms that way, nearly all
//! of it in that hand-over, not in SQLite. Read here, straight off the statement, the rows
//! cost what SQLite spends on them. The file is in WAL mode, so these readers never hold the
//! writer up, nor it them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use super::records;
use super::{Range, StatusPoint, StoreError, TelemetryPoint, TrackPoint};

/// Connections kept open between reads: one per reader that runs at once, as a rule.
const IDLE_CONNECTIONS: usize = 4;

pub(crate) struct HistoryReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl HistoryReader {
    pub(crate) fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            path,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn connection(&self) -> rusqlite::Result<Connection> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        if let Some(connection) = idle {
            return Ok(connection);
        }
        // The file exists (the store created and migrated it); never create one here.
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(Duration::from_secs(10))?;
        connection.pragma_update(None, "query_only", true)?;
        Ok(connection)
    }

    fn give_back(&self, connection: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(connection);
        }
    }

    /// Runs `read` on a connection of the reader's, on a blocking thread.
    async fn read<T, F>(self: &Arc<Self>, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let reader = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let connection = reader.connection()?;
            let out = read(&connection);
            // A connection whose read failed is dropped: it may be what failed.
            if out.is_ok() {
                reader.give_back(connection);
            }
            out
        })
        .await;
        match done {
            Ok(out) => Ok(out?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::ShuttingDown),
        }
    }

    pub(crate) async fn track(
        self: &Arc<Self>,
        device: &str,
        range: Range,
    ) -> Result<Vec<TrackPoint>, StoreError> {
        let device = device.to_owned();
        self.read(move |c| {
            rows(
                c,
                "SELECT ts, seq, lat, lon, speed, heading, alt, accuracy FROM positions
                 WHERE device_id = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts, rowid LIMIT ?4",
                params![device, range.from_ms, range.to_ms, range.limit],
                |r| {
                    Ok(records::track_point((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    )))
                },
            )
        })
        .await
    }

    pub(crate) async fn telemetry(
        self: &Arc<Self>,
        device: &str,
        metric: Option<&str>,
        range: Range,
    ) -> Result<Vec<TelemetryPoint>, StoreError> {
        let (device, metric) = (device.to_owned(), metric.map(str::to_owned));
        self.read(move |c| {
            // One metric reads its index in order (ties in rowid order, which the index
            // holds), so a page costs its own rows, not a sort of the whole range.
            let sql = match &metric {
                Some(_) => {
                    "SELECT ts, seq, metric, value FROM telemetry
                     WHERE device_id = ?1 AND metric = ?2 AND ts >= ?3 AND ts < ?4
                     ORDER BY ts, rowid LIMIT ?5"
                }
                None => {
                    "SELECT ts, seq, metric, value FROM telemetry
                     WHERE device_id = ?1 AND ?2 IS NULL AND ts >= ?3 AND ts < ?4
                     ORDER BY ts, metric, seq LIMIT ?5"
                }
            };
            rows(
                c,
                sql,
                params![device, metric, range.from_ms, range.to_ms, range.limit],
                |r| {
                    Ok(records::telemetry_point((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                    )))
                },
            )
        })
        .await
    }

    pub(crate) async fn statuses(
        self: &Arc<Self>,
        device: &str,
        range: Range,
    ) -> Result<Vec<StatusPoint>, StoreError> {
        let device = device.to_owned();
        self.read(move |c| {
            rows(
                c,
                "SELECT ts, seq, online, reason FROM statuses
                 WHERE device_id = ?1 AND ts >= ?2 AND ts < ?3 ORDER BY ts, rowid LIMIT ?4",
                params![device, range.from_ms, range.to_ms, range.limit],
                |r| {
                    Ok(records::status_point((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                    )))
                },
            )
        })
        .await
    }
}

/// Every row of a cached statement, each through `row`.
fn rows<T>(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut statement = connection.prepare_cached(sql)?;
    let rows = statement.query_map(params, row)?;
    rows.collect()
}
