//! Active-hours windows in an IANA time zone; windows may wrap midnight.

use chrono::{DateTime, Datelike, Duration, NaiveTime, Timelike, Utc, Weekday};
use chrono_tz::Tz;

/// When agents may act.
#[derive(Debug, Clone)]
pub struct Schedule {
    start: NaiveTime,
    end: NaiveTime,
    timezone: Tz,
    /// Days a window may start on; `None` means every day.
    days: Option<Vec<Weekday>>,
}

impl Schedule {
    pub(crate) fn new(
        start: NaiveTime,
        end: NaiveTime,
        timezone: Tz,
        days: Option<Vec<Weekday>>,
    ) -> Self {
        Schedule {
            start,
            end,
            timezone,
            days,
        }
    }

    /// True when `now` falls inside a window. A window that wraps midnight (22:00–06:00)
    /// belongs to the day it started on.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.timezone);
        let time = local.time().with_nanosecond(0).unwrap_or(local.time());
        let (inside, started_yesterday) = if self.start < self.end {
            (self.start <= time && time < self.end, false)
        } else if time >= self.start {
            (true, false)
        } else {
            (time < self.end, true)
        };
        if !inside {
            return false;
        }
        let day = if started_yesterday {
            (local.date_naive() - Duration::days(1)).weekday()
        } else {
            local.weekday()
        };
        self.days.as_ref().is_none_or(|days| days.contains(&day))
    }

    /// The zone its hours are in.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// `08:00–20:00 Europe/Berlin`, for reasons.
    pub fn describe(&self) -> String {
        format!(
            "{}–{} {}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M"),
            self.timezone
        )
    }
}

/// Parses `HH:MM`.
pub(crate) fn parse_time(text: &str) -> Result<NaiveTime, String> {
    NaiveTime::parse_from_str(text, "%H:%M")
        .map_err(|_| format!("invalid time \"{text}\" (expected HH:MM, 00:00 to 23:59)"))
}

/// Parses an IANA zone name such as `Europe/Berlin`.
pub(crate) fn parse_timezone(text: &str) -> Result<Tz, String> {
    text.parse::<Tz>().map_err(|_| {
        format!("unknown time zone \"{text}\" (expected an IANA name such as Europe/Berlin)")
    })
}

/// Parses `mon`..`sun` (or full names).
pub(crate) fn parse_weekday(text: &str) -> Result<Weekday, String> {
    text.parse::<Weekday>().map_err(|_| {
        format!("unknown day \"{text}\" (expected mon, tue, wed, thu, fri, sat or sun)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn schedule(start: &str, end: &str, tz: &str, days: Option<Vec<Weekday>>) -> Schedule {
        Schedule::new(
            parse_time(start).unwrap(),
            parse_time(end).unwrap(),
            parse_timezone(tz).unwrap(),
            days,
        )
    }

    #[test]
    fn daytime_window_in_a_zone() {
        let s = schedule("08:00", "20:00", "Europe/Berlin", None);
        // 07:30 UTC is 08:30 in Berlin in winter (UTC+1) and 09:30 in summer (UTC+2).
        assert!(s.is_active(at("2026-01-15T07:30:00Z")));
        assert!(!s.is_active(at("2026-01-15T06:30:00Z")));
        assert!(!s.is_active(at("2026-07-15T18:30:00Z")));
        assert!(s.is_active(at("2026-07-15T17:59:00Z")));
    }

    #[test]
    fn window_wrapping_midnight_belongs_to_its_start_day() {
        let s = schedule("22:00", "06:00", "UTC", Some(vec![Weekday::Fri]));
        assert!(s.is_active(at("2026-11-20T23:00:00Z"))); // Friday night
        assert!(s.is_active(at("2026-11-21T05:00:00Z"))); // early Saturday, Friday's window
        assert!(!s.is_active(at("2026-11-21T23:00:00Z"))); // Saturday night
        assert!(!s.is_active(at("2026-11-20T12:00:00Z")));
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(parse_time("25:00").unwrap_err().contains("25:00"));
        assert!(
            parse_timezone("Mars/Olympus")
                .unwrap_err()
                .contains("Mars/Olympus")
        );
        assert!(parse_weekday("funday").is_err());
    }
}
