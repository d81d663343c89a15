//! Quiet hours: a daily stretch of local time, in a named time zone, during which a channel
//! holds its messages back; they go out when it ends.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Quiet hours as a channel's settings give them: `"22:00"` to `"06:00"` in `"Europe/Berlin"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuietSpec {
    /// Local time the quiet hours start, `HH:MM`.
    pub from: String,
    /// Local time they end, `HH:MM`; before `from` means they run past midnight.
    pub to: String,
    /// An IANA time zone name, such as `Europe/Berlin`.
    pub tz: String,
}

/// Quiet hours, checked and ready to answer "is it quiet now, and until when?".
#[derive(Clone, Debug)]
pub struct QuietHours {
    from: Time,
    to: Time,
    tz: TimeZone,
}

impl QuietHours {
    pub fn parse(spec: &QuietSpec) -> Result<QuietHours, String> {
        let time = |name: &str, text: &str| {
            let valid = text.len() == 5 && text.as_bytes()[2] == b':';
            let parsed = valid
                .then(|| {
                    let hour = text[..2].parse::<i8>().ok()?;
                    let minute = text[3..].parse::<i8>().ok()?;
                    Time::new(hour, minute, 0, 0).ok()
                })
                .flatten();
            parsed.ok_or_else(|| format!("quiet.{name} must be a local time HH:MM, not {text:?}"))
        };
        let from = time("from", &spec.from)?;
        let to = time("to", &spec.to)?;
        if from == to {
            return Err("quiet.from and quiet.to must differ".into());
        }
        let tz = TimeZone::get(&spec.tz)
            .map_err(|_| format!("quiet.tz {:?} is not a known time zone", spec.tz))?;
        Ok(QuietHours { from, to, tz })
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// When the quiet hours that `now_ms` falls in end (ms since 1970); `None` outside them.
    pub fn ends_after(&self, now_ms: i64) -> Option<i64> {
        let now = Timestamp::from_millisecond(now_ms)
            .ok()?
            .to_zoned(self.tz.clone());
        let time = now.time();
        let quiet = if self.from < self.to {
            self.from <= time && time < self.to
        } else {
            time >= self.from || time < self.to
        };
        if !quiet {
            return None;
        }
        // The next `to` after now, today or tomorrow; a `to` inside a DST gap falls after it.
        let mut day = now.date();
        loop {
            let end = day.to_datetime(self.to).to_zoned(self.tz.clone()).ok()?;
            let end_ms = end.timestamp().as_millisecond();
            if end_ms > now_ms {
                return Some(end_ms);
            }
            day = day.tomorrow().ok()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(from: &str, to: &str, tz: &str) -> QuietSpec {
        QuietSpec {
            from: from.into(),
            to: to.into(),
            tz: tz.into(),
        }
    }

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>()
            .expect("a timestamp")
            .as_millisecond()
    }

    #[test]
    fn quiet_hours_run_past_midnight_in_their_own_time_zone() {
        let night = QuietHours::parse(&spec("22:00", "06:00", "Europe/Berlin")).expect("valid");
        // 21:30 UTC is 22:30 in Berlin in winter: quiet until 06:00 Berlin, 05:00 UTC.
        assert_eq!(
            night.ends_after(ms("2026-12-06T21:30:00Z")),
            Some(ms("2026-12-07T05:00:00Z"))
        );
        // 03:00 UTC is 04:00 Berlin: still quiet, same end.
        assert_eq!(
            night.ends_after(ms("2026-12-07T03:00:00Z")),
            Some(ms("2026-12-07T05:00:00Z"))
        );
        // 05:00 UTC is the end itself: no longer quiet; noon neither.
        assert_eq!(night.ends_after(ms("2026-12-07T05:00:00Z")), None);
        assert_eq!(night.ends_after(ms("2026-12-07T11:00:00Z")), None);
        // In summer Berlin is UTC+2.
        assert_eq!(
            night.ends_after(ms("2026-07-01T20:30:00Z")),
            Some(ms("2026-07-02T04:00:00Z"))
        );
        let lunch = QuietHours::parse(&spec("12:00", "13:30", "Asia/Kolkata")).expect("valid");
        assert_eq!(
            lunch.ends_after(ms("2026-12-07T07:00:00Z")),
            Some(ms("2026-12-07T08:00:00Z"))
        );
        assert_eq!(lunch.ends_after(ms("2026-12-07T08:00:00Z")), None);
    }

    #[test]
    fn refuses_times_and_zones_that_do_not_exist() {
        for (from, to, tz, reason) in [
            ("22:00", "06:00", "Europe/Atlantis", "time zone"),
            ("24:00", "06:00", "UTC", "quiet.from"),
            ("22:00", "6:00", "UTC", "quiet.to"),
            ("22:00", "06:60", "UTC", "quiet.to"),
            ("06:00", "06:00", "UTC", "differ"),
        ] {
            let e = QuietHours::parse(&spec(from, to, tz)).expect_err("invalid");
            assert!(e.contains(reason), "{e} should say {reason}");
        }
    }
}
