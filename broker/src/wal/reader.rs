//! Reading the log back while it is still being written: the pipeline's way to catch storage
//! up after an outage, from a position on, a chunk at a time, with `pread` so the segment
//! being appended to is never read whole.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::frame::{self, Record, HEADER, MAX_PAYLOAD};
use super::{segment, Wal, WalError};

/// A cursor over the log, from some position on.
pub struct Reader {
    wal: Arc<Wal>,
    /// The segment being read, its path, and the byte offset of the next frame.
    file: Option<(File, PathBuf, u64)>,
    /// The position the next frame must carry.
    next: u64,
}

impl Reader {
    pub(crate) fn new(wal: Arc<Wal>, from: u64) -> Reader {
        Reader {
            wal,
            file: None,
            next: from,
        }
    }

    /// Up to `max` records from the cursor on, none past `until` (which must be appended).
    /// On an error nothing of this call is consumed: the next read starts where this began.
    pub fn read(&mut self, until: u64, max: usize) -> Result<Vec<Record>, WalError> {
        let start = self.next;
        let read = self.read_from_cursor(until, max);
        if read.is_err() {
            self.next = start;
            self.file = None;
        }
        read
    }

    fn read_from_cursor(&mut self, until: u64, max: usize) -> Result<Vec<Record>, WalError> {
        let mut records = Vec::new();
        while records.len() < max && self.next <= until {
            if self.file.is_none() {
                self.open_segment_of(self.next)?;
            }
            let Some((file, path, offset)) = self.file.as_mut() else {
                break;
            };
            let mut header = [0u8; HEADER];
            let got = read_at(file, &mut header, *offset)
                .map_err(|e| WalError::io("cannot read", path, e))?;
            if got < HEADER {
                // The end of this segment: the next record is in the next one, if any.
                let done = path.clone();
                self.open_segment_of(self.next)?;
                if self.file.as_ref().is_some_and(|(_, p, _)| *p == done) {
                    self.file = None;
                    break;
                }
                continue;
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if len > MAX_PAYLOAD {
                return Err(corrupt(
                    path,
                    *offset,
                    format!("implausible record length {len}"),
                ));
            }
            let mut bytes = vec![0u8; HEADER + len];
            let got = read_at(file, &mut bytes, *offset)
                .map_err(|e| WalError::io("cannot read", path, e))?;
            let bytes = Bytes::from(bytes);
            let decoded = if got < bytes.len() {
                Err(frame::Invalid::Short)
            } else {
                frame::decode_any(&bytes)
            };
            let (record, size) =
                decoded.map_err(|invalid| corrupt(path, *offset, invalid.to_string()))?;
            *offset += size as u64;
            if record.position < self.next {
                // Skipping to the start position within the segment.
                continue;
            }
            if record.position != self.next {
                return Err(corrupt(
                    path,
                    *offset - size as u64,
                    format!(
                        "record {} where record {} was due",
                        record.position, self.next
                    ),
                ));
            }
            self.next += 1;
            records.push(record);
        }
        Ok(records)
    }

    /// Opens the segment that holds `position`, at its first frame.
    fn open_segment_of(&mut self, position: u64) -> Result<(), WalError> {
        let path = {
            let active = self.wal.lock();
            active
                .segments
                .iter()
                .rev()
                .find(|(first, _, _)| *first <= position)
                .map(|(_, path, _)| path.clone())
        };
        let Some(path) = path else {
            return Err(WalError::Corrupt {
                path: self.wal.settings.dir.clone(),
                offset: 0,
                reason: format!(
                    "no segment holds record {position} (it was deleted before storage had it)"
                ),
            });
        };
        let file = File::open(&path).map_err(|e| WalError::io("cannot open", &path, e))?;
        self.file = Some((file, path, segment::MAGIC.len() as u64));
        Ok(())
    }
}

fn corrupt(path: &std::path::Path, offset: u64, reason: String) -> WalError {
    WalError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    }
}

/// Reads as much of `buf` as the file has at `offset`.
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
