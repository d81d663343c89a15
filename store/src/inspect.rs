//! What a database holds, read without changing it: whether it is there and answers, its
//! server, the migrations applied and still to apply, and the write-ahead log position it
//! records. For `fieldline check`, which must report what a start would do without doing it:
//! nothing here creates a file, a table or a migration.

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::{LogState, StoreError};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// The migrations applied and the stored log state, read over `$conn` where their tables
/// exist (`$has` asks whether a table does, with its name as `$1`).
macro_rules! read_schema {
    ($conn:ident, $has:expr) => {{
        let has = |table: &'static str| sqlx::query_scalar::<_, bool>($has).bind(table);
        let applied: Vec<i64> = if has("_sqlx_migrations").fetch_one(&mut $conn).await? {
            sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&mut $conn)
            .await?
        } else {
            Vec::new()
        };
        let log = if has("ingest_log").fetch_one(&mut $conn).await? {
            Some(log_state(
                sqlx::query_as(LOG_STATE).fetch_one(&mut $conn).await?,
            ))
        } else {
            None
        };
        (applied, log)
    }};
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Inspection {
    pub backend: &'static str,
    /// The server and its version (`PostgreSQL 15.18`, `SQLite 3.46.0`).
    pub server: String,
    /// The database exists (a SQLite file not there yet is created at start).
    pub exists: bool,
    /// Migrations this build would apply at start, as `version description`.
    pub pending: Vec<String>,
    /// Applied migrations this build does not know: the database was used by a newer
    /// Fieldline, which this one must not start on.
    pub unknown: Vec<i64>,
    /// TimescaleDB's version where the extension is installed in the database.
    pub timescaledb: Option<String>,
    /// The log position and identity storage records, once its schema exists.
    pub log: Option<LogState>,
}

/// Reads what `url` holds; an error says why it cannot be reached.
pub async fn inspect(url: &str) -> Result<Inspection, StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        inspect_postgres(url).await
    } else if url.starts_with("sqlite:") {
        inspect_sqlite(url).await
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

async fn inspect_postgres(url: &str) -> Result<Inspection, StoreError> {
    let options: PgConnectOptions = url.parse()?;
    let mut conn = options
        .application_name("fieldline check")
        .connect()
        .await?;
    let server: String =
        sqlx::query_scalar("SELECT 'PostgreSQL ' || current_setting('server_version')")
            .fetch_one(&mut conn)
            .await?;
    let timescaledb: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
            .fetch_optional(&mut conn)
            .await?;
    let (applied, log) = read_schema!(conn, "SELECT to_regclass($1) IS NOT NULL");
    conn.close().await?;
    Ok(Inspection {
        backend: "postgres",
        server,
        exists: true,
        pending: pending(&POSTGRES_MIGRATIONS, &applied),
        unknown: unknown(&POSTGRES_MIGRATIONS, &applied),
        timescaledb,
        log,
    })
}

async fn inspect_sqlite(url: &str) -> Result<Inspection, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?;
    let path = options.get_filename().to_path_buf();
    if !path.exists() {
        return Ok(Inspection {
            backend: "sqlite",
            server: format!("SQLite (a new file at {})", path.display()),
            exists: false,
            pending: pending(&SQLITE_MIGRATIONS, &[]),
            unknown: Vec::new(),
            timescaledb: None,
            log: None,
        });
    }
    let mut conn = options.read_only(true).connect().await?;
    let version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&mut conn)
        .await?;
    let (applied, log) = read_schema!(
        conn,
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1)"
    );
    conn.close().await?;
    Ok(Inspection {
        backend: "sqlite",
        server: format!("SQLite {version}"),
        exists: true,
        pending: pending(&SQLITE_MIGRATIONS, &applied),
        unknown: unknown(&SQLITE_MIGRATIONS, &applied),
        timescaledb: None,
        log,
    })
}

/// The stored log position row, read the same on both back ends.
const LOG_STATE: &str = "SELECT stored_position, log_id FROM ingest_log WHERE id = 1";

fn log_state((position, log_id): (i64, Option<String>)) -> LogState {
    LogState {
        stored_position: u64::try_from(position).unwrap_or(0),
        log_id,
    }
}

fn pending(migrator: &Migrator, applied: &[i64]) -> Vec<String> {
    migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{:04} {}", m.version, m.description))
        .collect()
}

fn unknown(migrator: &Migrator, applied: &[i64]) -> Vec<i64> {
    applied
        .iter()
        .copied()
        .filter(|v| !migrator.iter().any(|m| m.version == *v))
        .collect()
}
