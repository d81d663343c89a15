//! The epoch of live stream ids when they are numbered by the write-ahead log: kept across
//! restarts while the log still holds every event that was sent live, new when it may not.
//!
//! Live events go out when a publish is handed over, before a sync in `fsync` mode, and
//! `process` mode never syncs. A restart of the process loses none of them (the kernel has
//! every write), but a crash of the machine may, and then positions would be reused for other
//! events. So the epoch is kept only while the machine has not rebooted (Linux's boot id) and
//! opening the log cut nothing off; otherwise clients get a `reset` instead of wrong events.

use std::path::Path;

use fieldline_broker::wal::Opened;

const FILE: &str = "LIVE_EPOCH";

/// The epoch for this start: the previous one when it is still safe, else a new one (written
/// down for the next start).
pub fn live_epoch(wal_dir: &Path, opened: &Opened) -> u64 {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|b| b.trim().to_owned());
    let path = wal_dir.join(FILE);
    let kept = std::fs::read_to_string(&path).ok().and_then(|text| {
        let mut fields = text.split_whitespace();
        let epoch = u64::from_str_radix(fields.next()?, 16).ok()?;
        let (was_boot, was_log) = (fields.next()?, fields.next()?);
        let same = boot.as_deref() == Some(was_boot) && was_log == opened.id;
        (same && opened.cut_bytes == 0 && epoch > 0).then_some(epoch)
    });
    if let Some(epoch) = kept {
        return epoch;
    }
    // Microseconds since 1970: distinct from every earlier epoch of this machine.
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    let written = match &boot {
        Some(boot) => std::fs::write(&path, format!("{epoch:x} {boot} {}\n", opened.id))
            .map_err(|e| tracing::warn!(file = %path.display(), error = %e, "cannot record the live stream epoch; live clients will reload after the next restart")),
        None => {
            tracing::info!("no boot id on this system: live clients reload after every restart");
            Err(())
        }
    };
    if written.is_err() {
        // An older epoch left behind must not be taken up again by a later start.
        let _ = std::fs::remove_file(&path);
    }
    epoch
}
