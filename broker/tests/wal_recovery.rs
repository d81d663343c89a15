//! The write-ahead log on disk: appends read back in order across segments and reopenings,
//! a torn or damaged tail is cut to the valid prefix, damage anywhere else is refused with an
//! error naming the file, and segments are deleted once storage and the live history are done with them.

use std::path::{Path, PathBuf};

use fieldline_broker::wal::{Durability, Wal, WalError, WalSettings};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!(
            "fieldline-wal-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(dir: &Path, durability: Durability, segment_bytes: u64) -> WalSettings {
    WalSettings {
        dir: dir.to_owned(),
        durability,
        segment_bytes,
    }
}

/// Opens the log in the place of the database that follows it: with the identity the log
/// gave itself, when it has one.
fn open_log(
    settings: WalSettings,
    stored: u64,
) -> Result<(std::sync::Arc<Wal>, fieldline_broker::wal::Opened), WalError> {
    let owner = std::fs::read_to_string(settings.dir.join("ID"))
        .ok()
        .map(|s| s.trim().to_owned());
    Wal::open(settings, stored, owner.as_deref())
}

fn payload(i: u64) -> String {
    format!("{{\"seq\":{i},\"lat\":1.5,\"lon\":2.5}}")
}

/// Appends records `1..=n` and drops the log.
fn write(dir: &Path, durability: Durability, segment_bytes: u64, n: u64) {
    let (wal, _) = open_log(settings(dir, durability, segment_bytes), 0).expect("log opens");
    for i in 1..=n {
        let position = wal
            .append(
                1_000 + i as i64,
                b"devices/d/location",
                payload(i).as_bytes(),
                |p| p,
            )
            .expect("append");
        assert_eq!(position, i, "positions count up from 1");
        wal.wait_durable(position);
    }
}

/// Opens the log with nothing stored and reads every record back.
fn read_back(dir: &Path, segment_bytes: u64) -> Result<Vec<u64>, WalError> {
    let (wal, _) = open_log(settings(dir, Durability::Process, segment_bytes), 0)?;
    let mut positions = Vec::new();
    for record in wal.replay(0) {
        let record = record?;
        assert_eq!(record.payload, payload(record.position).as_bytes());
        assert_eq!(record.received_ms, 1_000 + record.position as i64);
        assert_eq!(&record.topic[..], b"devices/d/location");
        positions.push(record.position);
    }
    Ok(positions)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("log dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

#[test]
fn records_come_back_in_order_across_segments_and_reopenings() {
    for durability in [Durability::Process, Durability::Fsync] {
        let dir = Dir::new("order");
        write(&dir.0, durability, 4096, 500);
        assert!(segments(&dir.0).len() > 5, "small segments rotate");
        assert_eq!(
            read_back(&dir.0, 4096).expect("valid log"),
            (1..=500).collect::<Vec<_>>()
        );
        // Reopened, the log goes on from where it ended.
        let (wal, opened) = open_log(settings(&dir.0, durability, 4096), 0).expect("reopens");
        assert_eq!(opened.last, 500);
        let next = wal.append(0, b"t", b"x", |p| p).expect("append");
        assert_eq!(next, 501);
    }
}

/// A socket read's publishes go in as one write: positions follow one another, batches
/// rotate segments whole, and everything reads back in order.
#[test]
fn batches_come_back_record_by_record_in_order() {
    for durability in [Durability::Process, Durability::Fsync] {
        let dir = Dir::new("batches");
        let (wal, _) = open_log(settings(&dir.0, durability, 4096), 0).expect("log opens");
        let payloads: Vec<String> = (1..=120).map(payload).collect();
        let records: Vec<(&[u8], &[u8])> =
            payloads.iter().map(|p| (&b"t"[..], p.as_bytes())).collect();
        let mut first_positions = Vec::new();
        for chunk in records.chunks(40) {
            let first = wal.append_batch(5, chunk, |p| p).expect("append");
            first_positions.push(first);
            wal.wait_durable(first + chunk.len() as u64 - 1);
        }
        assert_eq!(first_positions, [1, 41, 81]);
        assert!(
            segments(&dir.0).len() > 1,
            "a batch that does not fit starts a segment"
        );
        drop(wal);
        let (wal, opened) = open_log(settings(&dir.0, durability, 4096), 0).expect("reopens");
        assert_eq!(opened.last, 120);
        let back: Vec<(u64, Vec<u8>)> = wal
            .replay(0)
            .map(|r| {
                r.map(|r| (r.position, r.payload.to_vec()))
                    .expect("valid record")
            })
            .collect();
        let expected: Vec<(u64, Vec<u8>)> =
            (1..=120).map(|i| (i, payload(i).into_bytes())).collect();
        assert_eq!(back, expected);
    }
}

#[test]
fn a_record_cut_in_the_middle_is_cut_off_and_the_prefix_kept() {
    let dir = Dir::new("torn");
    write(&dir.0, Durability::Process, 1 << 20, 100);
    let last = segments(&dir.0).pop().expect("a segment");
    let len = std::fs::metadata(&last).expect("segment").len();
    // Half of the last record is gone, as when the process died inside the write.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open");
    file.set_len(len - 20).expect("truncate");
    drop(file);
    let (wal, opened) = open_log(settings(&dir.0, Durability::Process, 1 << 20), 0).expect("opens");
    assert!(opened.cut_bytes > 0);
    assert_eq!(opened.last, 99);
    assert_eq!(wal.replay(0).count(), 99);
    // The next append takes the cut record's place.
    assert_eq!(wal.append(0, b"t", b"x", |p| p).expect("append"), 100);
}

#[test]
fn a_flipped_byte_in_the_last_record_is_cut_off_and_the_prefix_kept() {
    let dir = Dir::new("flip-last");
    write(&dir.0, Durability::Process, 1 << 20, 100);
    let last = segments(&dir.0).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("segment");
    let at = bytes.len() - 5;
    bytes[at] ^= 0x40;
    std::fs::write(&last, &bytes).expect("write back");
    assert_eq!(
        read_back(&dir.0, 1 << 20).expect("prefix is valid"),
        (1..=99).collect::<Vec<_>>()
    );
}

#[test]
fn damage_before_valid_records_in_the_newest_segment_is_refused() {
    let dir = Dir::new("flip-middle");
    write(&dir.0, Durability::Process, 1 << 20, 100);
    let last = segments(&dir.0).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("segment");
    // Inside record 10 or so: valid records follow, so this is no torn write.
    bytes[600] ^= 0x01;
    std::fs::write(&last, &bytes).expect("write back");
    let err = open_log(settings(&dir.0, Durability::Process, 1 << 20), 0)
        .err()
        .expect("damage in the middle is refused");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&last.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_flipped_byte_in_an_earlier_segment_is_an_error_naming_the_file() {
    let dir = Dir::new("flip-earlier");
    write(&dir.0, Durability::Process, 4096, 300);
    let files = segments(&dir.0);
    assert!(files.len() > 2);
    let earlier = &files[1];
    let mut bytes = std::fs::read(earlier).expect("segment");
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    std::fs::write(earlier, &bytes).expect("write back");
    let err = read_back(&dir.0, 4096).expect_err("damage in an earlier segment is refused");
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&earlier.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_missing_segment_is_an_error() {
    let dir = Dir::new("gap");
    write(&dir.0, Durability::Process, 4096, 300);
    let files = segments(&dir.0);
    std::fs::remove_file(&files[2]).expect("remove");
    let err = read_back(&dir.0, 4096).expect_err("a gap is refused");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn stored_segments_are_kept_for_the_live_history_until_released() {
    let dir = Dir::new("release");
    write(&dir.0, Durability::Process, 4096, 300);
    let before = segments(&dir.0).len();
    let (wal, _) = open_log(settings(&dir.0, Durability::Process, 4096), 150).expect("opens");
    assert_eq!(
        segments(&dir.0).len(),
        before,
        "opening keeps stored segments: the live history is rebuilt from them"
    );
    assert_eq!(wal.first_position(), 1);
    let replayed: Vec<u64> = wal
        .replay(150)
        .map(|r| r.expect("valid").position)
        .collect();
    assert_eq!(replayed, (151..=300).collect::<Vec<_>>());
    let on_disk: u64 = segments(&dir.0)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(wal.unstored_bytes() > 0);
    assert!(
        wal.unstored_bytes() < on_disk * 3 / 4,
        "segments wholly stored do not wait for storage: {} of {on_disk}",
        wal.unstored_bytes()
    );
    // Everything stored, but the live history still holds events from record 200 on.
    wal.release(300, 200);
    assert_eq!(wal.unstored_bytes(), 0, "kept for history is not waiting");
    let first = wal.first_position();
    assert!(
        first > 1 && first <= 200,
        "segments before 200 go, 200's stays: {first}"
    );
    let kept: Vec<u64> = wal
        .replay(first - 1)
        .map(|r| r.expect("valid").position)
        .collect();
    assert_eq!(kept, (first..=300).collect::<Vec<_>>());
    // A release for the history alone (nothing new stored) trims too.
    wal.release(300, u64::MAX);
    assert_eq!(segments(&dir.0).len(), 1, "only the active segment is kept");
    // Storage holds less than the history would keep: what storage lacks stays.
    drop(wal);
    let (wal, _) = open_log(settings(&dir.0, Durability::Process, 4096), 300).expect("reopens");
    for i in 0..100 {
        wal.append(0, b"t", payload(301 + i).as_bytes(), |_| ())
            .expect("append");
    }
    wal.release(350, u64::MAX);
    let first = wal.first_position();
    assert!(first <= 351, "unstored records are never released: {first}");
    drop(wal);
    // Storage ahead of the log (the log was moved away): positions go on past storage.
    let moved = Dir::new("moved");
    let (wal, opened) =
        open_log(settings(&moved.0, Durability::Process, 4096), 7_000).expect("opens");
    assert_eq!(opened.last, 7_000);
    assert_eq!(wal.append(0, b"t", b"x", |p| p).expect("append"), 7_001);
    assert_eq!(wal.replay(7_000).count(), 1);
}

#[test]
fn a_second_process_cannot_open_the_same_log() {
    let dir = Dir::new("lock");
    let (_wal, _) = open_log(settings(&dir.0, Durability::Process, 4096), 0).expect("opens");
    let err = open_log(settings(&dir.0, Durability::Process, 4096), 0)
        .err()
        .expect("second open is refused");
    assert!(matches!(err, WalError::Locked(_)), "{err}");
}

#[test]
fn a_missing_first_segment_is_an_error_too() {
    let dir = Dir::new("gap-first");
    write(&dir.0, Durability::Process, 4096, 300);
    std::fs::remove_file(&segments(&dir.0)[0]).expect("remove");
    let err = read_back(&dir.0, 4096).expect_err("records 1.. are missing");
    assert!(
        matches!(err, WalError::AheadOfStorage { stored: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("another database"), "{err}");
}

#[test]
fn in_fsync_mode_a_hole_before_unsynced_records_is_cut() {
    // What a power loss can leave: a page lost in the middle of writes made after the last
    // sync, later pages kept. None of them was acknowledged.
    let dir = Dir::new("hole");
    write(&dir.0, Durability::Process, 1 << 20, 100);
    let last = segments(&dir.0).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("segment");
    bytes[600] ^= 0x01;
    std::fs::write(&last, &bytes).expect("write back");
    let (wal, opened) =
        open_log(settings(&dir.0, Durability::Fsync, 1 << 20), 0).expect("fsync mode cuts");
    assert!(opened.cut_bytes > 0 && opened.last < 10, "{opened:?}");
    assert_eq!(wal.replay(0).count() as u64, opened.last);
}

#[test]
fn a_clean_log_reopened_counts_nothing_as_waiting_for_storage() {
    let dir = Dir::new("clean");
    write(&dir.0, Durability::Process, 1 << 20, 100);
    let (wal, _) = open_log(settings(&dir.0, Durability::Process, 1 << 20), 100).expect("opens");
    assert_eq!(wal.unstored_bytes(), 0, "storage holds everything");
    drop(wal);
    let (wal, _) = open_log(settings(&dir.0, Durability::Process, 1 << 20), 40).expect("opens");
    assert!(wal.unstored_bytes() > 0, "records 41..=100 wait");
}

#[test]
fn a_failed_read_back_gives_the_same_records_when_retried() {
    let dir = Dir::new("reader");
    write(&dir.0, Durability::Process, 4096, 300);
    let (wal, _) = open_log(settings(&dir.0, Durability::Process, 4096), 0).expect("opens");
    let mut reader = wal.reader(1);
    let first: Vec<u64> = reader
        .read(300, 40)
        .expect("read")
        .iter()
        .map(|r| r.position)
        .collect();
    assert_eq!(first, (1..=40).collect::<Vec<_>>());
    // The next segments vanish for a moment (say, no file descriptor to open one with).
    let files = segments(&dir.0);
    let aside: Vec<_> = files[1..]
        .iter()
        .map(|f| {
            let to = f.with_extension("aside");
            std::fs::rename(f, &to).expect("move aside");
            (f.clone(), to)
        })
        .collect();
    assert!(reader.read(300, 200).is_err());
    for (back, from) in aside {
        std::fs::rename(from, back).expect("move back");
    }
    let again: Vec<u64> = reader
        .read(300, 260)
        .expect("read")
        .iter()
        .map(|r| r.position)
        .collect();
    assert_eq!(
        again,
        (41..=300).collect::<Vec<_>>(),
        "nothing skipped, nothing twice"
    );
}

#[test]
fn a_log_of_another_database_is_refused_untouched() {
    let dir = Dir::new("foreign");
    write(&dir.0, Durability::Process, 4096, 300);
    let before = segments(&dir.0);
    for owner in [Some("some-other-log"), None] {
        // Even with a stored position that would delete most segments of its own log.
        let err = Wal::open(settings(&dir.0, Durability::Process, 4096), 250, owner)
            .err()
            .expect("a foreign log is refused");
        assert!(matches!(err, WalError::ForeignLog { .. }), "{err}");
        assert!(err.to_string().contains("another database"), "{err}");
        assert_eq!(segments(&dir.0), before, "nothing deleted or cut");
    }
    // An empty log directory takes the identity storage expects.
    let fresh = Dir::new("fresh");
    let (_, opened) = Wal::open(
        settings(&fresh.0, Durability::Process, 4096),
        40,
        Some("db-log"),
    )
    .expect("an empty log is adopted");
    assert_eq!(opened.id, "db-log");
    assert_eq!(opened.last, 40, "positions go on past storage");
}
