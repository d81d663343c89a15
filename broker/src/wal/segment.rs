//! Segment files: naming, the header, and reading a segment's frames back with the checks
//! recovery needs (a torn tail is cut, corruption anywhere else is an error naming the file).

use std::fs::File;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::frame::{self, Invalid, Record, HEADER};
use super::WalError;

/// The first bytes of every segment: the format and its version.
pub(crate) const MAGIC: &[u8; 8] = b"FLWAL\x00\x00\x01";

/// A segment is named after the position of its first record, zero-padded so names sort.
pub(crate) fn path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

/// The segments in `dir`, oldest first, as (first position, path).
pub(crate) fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let entries = std::fs::read_dir(dir).map_err(|e| WalError::io("cannot read", dir, e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| WalError::io("cannot read", dir, e))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((first, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// Creates an empty segment whose first record will be `first`.
pub(crate) fn create(dir: &Path, first: u64) -> Result<(File, PathBuf), WalError> {
    use std::os::unix::fs::FileExt;
    let path = path(dir, first);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| WalError::io("cannot create", &path, e))?;
    file.write_all_at(MAGIC, 0)
        .map_err(|e| WalError::io("cannot write", &path, e))?;
    Ok((file, path))
}

/// Reads a whole segment.
pub(crate) fn read(path: &Path) -> Result<Bytes, WalError> {
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|e| WalError::io("cannot read", path, e))
}

/// Where a segment's valid frames end.
pub(crate) struct Scan {
    /// Position of the last valid record, or `first - 1` when there is none.
    pub last: u64,
    /// Byte offset just past the last valid frame.
    pub valid_len: u64,
    /// What was found past it, when anything was.
    pub invalid: Option<Invalid>,
}

/// Walks every frame of a segment, calling `each` for records after `after`. Stops at the
/// first frame that is not valid and says so in the result; the caller decides whether that
/// is a torn tail or corruption.
pub(crate) fn scan(
    path: &Path,
    bytes: &Bytes,
    first: u64,
    after: u64,
    mut each: impl FnMut(Record),
) -> Result<Scan, WalError> {
    if bytes.len() < MAGIC.len() {
        // A crash right after the file was created: no header, so no records either.
        return Ok(Scan {
            last: first.saturating_sub(1),
            valid_len: 0,
            invalid: (!bytes.is_empty()).then_some(Invalid::Short),
        });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(WalError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            reason: "not a Fieldline log segment (bad header)".into(),
        });
    }
    let mut offset = MAGIC.len();
    let mut expected = first;
    while offset < bytes.len() {
        match frame::decode(&bytes.slice(offset..), expected) {
            Ok((record, size)) => {
                if record.position > after {
                    each(record);
                }
                offset += size;
                expected += 1;
            }
            Err(invalid) => {
                return Ok(Scan {
                    last: expected.saturating_sub(1),
                    valid_len: offset as u64,
                    invalid: Some(invalid),
                })
            }
        }
    }
    Ok(Scan {
        last: expected.saturating_sub(1),
        valid_len: offset as u64,
        invalid: None,
    })
}

/// After an invalid frame at `from`: is there a valid frame with a later position further on?
/// Then the damage is in the middle of the log, not a write cut short by a crash.
pub(crate) fn valid_frame_after(bytes: &Bytes, from: usize, last_good: u64) -> Option<usize> {
    let end = bytes.len().saturating_sub(HEADER);
    (from + 1..=end).find(|&at| {
        let mut word = [0; 8];
        word.copy_from_slice(&bytes[at + 8..at + 16]);
        let position = u64::from_le_bytes(word);
        // Cheap filter before the checksum: a plausible next position.
        position > last_good
            && position - last_good < 1 << 32
            && frame::decode_any(&bytes.slice(at..)).is_ok()
    })
}
