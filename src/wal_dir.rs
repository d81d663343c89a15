//! Which directory holds the configured database's write-ahead log.
//!
//! A log belongs to one database (storage records the log's identity beside the position it
//! holds), so the default directory is named after that identity: `fieldline-data/wal-<id>`.
//! Switching databases in one working directory then just works, and switching back finds the
//! old log again, while a log named with `--wal-dir` that belongs to another database is still
//! refused at start-up. An installation from before per-database directories keeps using its
//! `fieldline-data/wal` as long as that log's identity is its database's.

use std::path::{Path, PathBuf};

/// Where the default directories live (beside the default SQLite file).
const DATA_DIR: &str = "fieldline-data";
/// The one default directory of earlier versions.
const LEGACY_DIR: &str = "fieldline-data/wal";

/// The log directory to open, and the identity to open it with.
#[derive(Debug, PartialEq)]
pub struct Chosen {
    pub dir: PathBuf,
    /// The identity storage records; for a database that never had a log, a new one, so the
    /// directory and the log inside it carry the same name.
    pub owner: Option<String>,
}

/// `given` is `--wal-dir` when set; `recorded` the log identity storage has.
pub fn choose(given: Option<&Path>, recorded: Option<&str>) -> Chosen {
    choose_in(Path::new("."), given, recorded)
}

fn choose_in(base: &Path, given: Option<&Path>, recorded: Option<&str>) -> Chosen {
    if let Some(dir) = given {
        return Chosen {
            dir: dir.to_path_buf(),
            owner: recorded.map(str::to_owned),
        };
    }
    let id = match recorded {
        Some(id) => id.to_owned(),
        None => fieldline_broker::wal::new_log_id(),
    };
    let own = Path::new(DATA_DIR).join(format!("wal-{id}"));
    let legacy_is_ours = std::fs::read_to_string(base.join(LEGACY_DIR).join("ID"))
        .is_ok_and(|found| found.trim() == id);
    let dir = if !base.join(&own).exists() && legacy_is_ours {
        PathBuf::from(LEGACY_DIR)
    } else {
        own
    };
    Chosen {
        dir,
        owner: Some(id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fieldline-wal-dir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn each_database_gets_a_directory_named_after_its_log() {
        let base = scratch("own");
        let chosen = choose_in(&base, None, Some("abc"));
        assert_eq!(chosen.dir, PathBuf::from("fieldline-data/wal-abc"));
        assert_eq!(chosen.owner.as_deref(), Some("abc"));
        let fresh = choose_in(&base, None, None);
        let id = fresh.owner.expect("a new identity");
        assert_eq!(fresh.dir, PathBuf::from(format!("fieldline-data/wal-{id}")));
    }

    #[test]
    fn an_earlier_installation_keeps_its_log_and_another_databases_is_left_alone() {
        let base = scratch("legacy");
        std::fs::create_dir_all(base.join(LEGACY_DIR)).expect("legacy dir");
        std::fs::write(base.join(LEGACY_DIR).join("ID"), "old-id\n").expect("ID");
        assert_eq!(
            choose_in(&base, None, Some("old-id")).dir,
            PathBuf::from(LEGACY_DIR)
        );
        assert_eq!(
            choose_in(&base, None, Some("other")).dir,
            PathBuf::from("fieldline-data/wal-other")
        );
        // Once a directory of its own exists, that is the one.
        std::fs::create_dir_all(base.join("fieldline-data/wal-old-id")).expect("own dir");
        assert_eq!(
            choose_in(&base, None, Some("old-id")).dir,
            PathBuf::from("fieldline-data/wal-old-id")
        );
        // An explicit directory is taken as given.
        let given = choose_in(&base, Some(Path::new("/srv/log")), Some("x"));
        assert_eq!(given.dir, PathBuf::from("/srv/log"));
    }
}
