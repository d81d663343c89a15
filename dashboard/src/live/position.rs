//! Stream positions: `{epoch}-{offset}` or `{epoch}-{offset}-{outbox}`, the id a client stores
//! and sends back to resume.
//!
//! The epoch is fixed when the hub starts (so ids from before a restart are recognised as
//! such). A position holds two cursors: `offset` over device documents (numbered from the
//! write-ahead log) and `outbox` over derived events (their seq in storage), because derived
//! events go live only once stored, after documents that came later. A client that resumes
//! from a position gets the documents past one cursor and the events past the other, so it
//! sees each exactly once, even after a restart that rebuilds them in another interleaving.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
    pub outbox: u64,
}

impl Position {
    /// Whether a client at `self` has seen everything up to `other` (both cursors as far).
    pub fn covers(&self, other: &Position) -> bool {
        self.offset >= other.offset && self.outbox >= other.outbox
    }

    /// Each cursor as far as the further of the two.
    pub fn furthest(&self, other: &Position) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.offset.max(other.offset),
            outbox: self.outbox.max(other.outbox),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.outbox == 0 {
            write!(f, "{:x}-{}", self.epoch, self.offset)
        } else {
            write!(f, "{:x}-{}-{}", self.epoch, self.offset, self.outbox)
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("not a stream position (expected the \"id\" of an event, like 18f3a2b4c5d-42)")]
pub struct BadPosition;

impl FromStr for Position {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Bounded before parsing: the value comes from clients.
        if s.len() > 64 {
            return Err(BadPosition);
        }
        let (epoch, rest) = s.split_once('-').ok_or(BadPosition)?;
        let (offset, outbox) = match rest.split_once('-') {
            Some((offset, outbox)) => (offset, Some(outbox)),
            None => (rest, None),
        };
        let digits = |t: &str, radix| {
            (!t.is_empty() && t.chars().all(|c| c.is_digit(radix)))
                .then(|| u64::from_str_radix(t, radix).ok())
                .flatten()
        };
        Ok(Position {
            epoch: digits(epoch, 16).ok_or(BadPosition)?,
            offset: digits(offset, 10).ok_or(BadPosition)?,
            outbox: match outbox {
                Some(o) => digits(o, 10).ok_or(BadPosition)?,
                None => 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let p = Position {
            epoch: 0x18f3a2b4c5d,
            offset: 42,
            outbox: 0,
        };
        assert_eq!(p.to_string(), "18f3a2b4c5d-42");
        assert_eq!("18f3a2b4c5d-42".parse(), Ok(p));
        let q = Position { outbox: 7, ..p };
        assert_eq!(q.to_string(), "18f3a2b4c5d-42-7");
        assert_eq!("18f3a2b4c5d-42-7".parse(), Ok(q));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "-",
            "abc",
            "12-",
            "-12",
            "1-2-3-4",
            "1-2-",
            "zz-1",
            "1-+2",
            "1- 2",
            "1-99999999999999999999999",
            "ffffffffffffffffff-1",
            &"1".repeat(100),
        ] {
            assert_eq!(bad.parse::<Position>(), Err(BadPosition), "{bad:?}");
        }
    }
}
