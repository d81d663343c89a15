//! The three kinds of document a device sends, as storage keeps them apart.

use std::fmt;

/// What a topic carries; one topic, one kind of document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Telemetry,
    Location,
    Status,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Telemetry, Kind::Location, Kind::Status];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Location => "location",
            Kind::Status => "status",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
