//! Stream positions: `{epoch}-{offset}`, the id a client stores and sends back to resume.
//!
//! The epoch is fixed when the hub starts (so ids from before a restart are recognised as
//! such) and the offset counts the events the hub has emitted since.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{}", self.epoch, self.offset)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("not a stream position (expected the \"id\" of an event, like 18f3a2b4c5d-42)")]
pub struct BadPosition;

impl FromStr for Position {
    type Err = BadPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Bounded before parsing: the value comes from clients.
        if s.len() > 40 {
            return Err(BadPosition);
        }
        let (epoch, offset) = s.split_once('-').ok_or(BadPosition)?;
        let digits = |t: &str, radix| {
            (!t.is_empty() && t.chars().all(|c| c.is_digit(radix)))
                .then(|| u64::from_str_radix(t, radix).ok())
                .flatten()
        };
        Ok(Position {
            epoch: digits(epoch, 16).ok_or(BadPosition)?,
            offset: digits(offset, 10).ok_or(BadPosition)?,
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
        };
        assert_eq!(p.to_string(), "18f3a2b4c5d-42");
        assert_eq!("18f3a2b4c5d-42".parse(), Ok(p));
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "-",
            "abc",
            "12-",
            "-12",
            "1-2-3",
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
