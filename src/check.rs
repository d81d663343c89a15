//! `fieldline check`: what a start with this configuration would do, without starting. The
//! configuration (flags, environment, TOML) is already merged and validated by then; this
//! looks at what it points to: the listeners' addresses, the database (reached, never
//! migrated), and the write-ahead log directory. Exits non-zero when a start would fail.

use std::net::SocketAddr;
use std::path::Path;

use fieldline_broker::wal::Durability;
use fieldline_store::inspect::{inspect, Inspection};

use crate::config::Config;
use crate::wal_dir::{self, Chosen};

/// Collects what was found; problems make the check fail.
#[derive(Default)]
struct Report {
    problems: usize,
}

impl Report {
    fn ok(&mut self, what: &str, text: impl AsRef<str>) {
        println!("ok       {what:<16} {}", text.as_ref());
    }

    fn note(&mut self, what: &str, text: impl AsRef<str>) {
        println!("note     {what:<16} {}", text.as_ref());
    }

    fn problem(&mut self, what: &str, text: impl AsRef<str>) {
        self.problems += 1;
        println!("PROBLEM  {what:<16} {}", text.as_ref());
    }
}

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let mut report = Report::default();
    report.ok(
        "configuration",
        "flags, environment and the TOML file agree",
    );
    listener(&mut report, "MQTT", config.mqtt_listen);
    listener(&mut report, "HTTP", config.http_listen);
    if let Some(tls) = &config.mqtts {
        listener(&mut report, "MQTT over TLS", tls.listen);
        for (what, path) in [("TLS certificate", &tls.cert), ("TLS key", &tls.key)] {
            match std::fs::read(path) {
                Ok(bytes) if !bytes.is_empty() => report.ok(what, path.display().to_string()),
                Ok(_) => report.problem(what, format!("{} is empty", path.display())),
                Err(e) => report.problem(what, format!("cannot read {}: {e}", path.display())),
            }
        }
    }
    if let Some(addr) = config.mqtt_ws_listen {
        listener(&mut report, "MQTT/WebSocket", addr);
    }
    let url = config.database_url_redacted();
    let found = match inspect(&config.database_url).await {
        Ok(found) => {
            storage(&mut report, &url, &found);
            Some(found)
        }
        Err(e) => {
            report.problem("storage", format!("cannot reach {url}: {e}"));
            None
        }
    };
    if config.durability == Durability::Memory {
        report.note("write-ahead log", "none (--durability memory)");
    } else {
        let recorded = found
            .as_ref()
            .and_then(|f| f.log.as_ref())
            .and_then(|l| l.log_id.clone());
        if recorded.is_none() && config.wal_dir.is_none() {
            // The log's identity, and so its directory's name, is made at start.
            report.note(
                "write-ahead log",
                "a new directory fieldline-data/wal-<new log id> is created at start",
            );
        } else {
            let chosen = wal_dir::choose(config.wal_dir.as_deref(), recorded.as_deref());
            log_dir(&mut report, &chosen, recorded.is_some());
        }
    }
    if report.problems > 0 {
        anyhow::bail!(
            "{} problem{} would stop or hurt a start",
            report.problems,
            if report.problems == 1 { "" } else { "s" }
        );
    }
    println!("ready to start");
    Ok(())
}

fn listener(report: &mut Report, what: &str, addr: SocketAddr) {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => report.ok(what, format!("{addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => report.problem(
            what,
            format!("{addr} is in use (is Fieldline, or another server, already running?)"),
        ),
        Err(e) => report.problem(what, format!("cannot listen on {addr}: {e}")),
    }
}

fn storage(report: &mut Report, url: &str, found: &Inspection) {
    let mut text = format!("{} at {url}", found.server);
    if let Some(version) = &found.timescaledb {
        text.push_str(&format!(", TimescaleDB {version}"));
    }
    report.ok("storage", text);
    if !found.unknown.is_empty() {
        report.problem(
            "migrations",
            format!(
                "the database has migrations this version does not know ({:?}): a newer Fieldline used it",
                found.unknown
            ),
        );
    } else if found.pending.is_empty() {
        report.ok("migrations", "all applied");
    } else {
        let verb = if found.exists { "applied" } else { "created" };
        report.note(
            "migrations",
            format!(
                "{} {verb} at start: {}",
                found.pending.len(),
                found.pending.join(", ")
            ),
        );
    }
    match &found.log {
        Some(log) => report.ok(
            "stored",
            format!(
                "everything up to log record {} of log {}",
                log.stored_position,
                log.log_id.as_deref().unwrap_or("(none yet)")
            ),
        ),
        None => report.note("stored", "nothing yet"),
    }
}

fn log_dir(report: &mut Report, chosen: &Chosen, recorded: bool) {
    let dir = chosen.dir.display().to_string();
    if !chosen.dir.exists() {
        report.note("write-ahead log", format!("{dir} is created at start"));
        return;
    }
    let id = std::fs::read_to_string(chosen.dir.join("ID"))
        .ok()
        .map(|t| t.trim().to_owned());
    let (segments, bytes) = segments(&chosen.dir);
    let holds = format!("{segments} segment(s), {:.1} MB", bytes as f64 / 1e6);
    match (&id, &chosen.owner) {
        (Some(found), Some(owner)) if found != owner && segments > 0 => report.problem(
            "write-ahead log",
            format!(
                "{dir} ({holds}) belongs to another database (log {found}, this database follows {owner}); start-up would refuse it"
            ),
        ),
        (Some(_), None) if segments > 0 && !recorded => report.problem(
            "write-ahead log",
            format!("{dir} ({holds}) belongs to another database; start-up would refuse it"),
        ),
        _ => report.ok("write-ahead log", format!("{dir}: {holds}")),
    }
}

fn segments(dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .fold((0, 0), |(n, bytes), e| {
            (n + 1, bytes + e.metadata().map(|m| m.len()).unwrap_or(0))
        })
}
