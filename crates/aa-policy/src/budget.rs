//! Budget windows: the calendar day and month a moment falls in, in a budget's time zone,
//! as UTC instants the gateway sums spend between.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::policy::Budget;

/// The length of a budget window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// A calendar day.
    Daily,
    /// A calendar month.
    Monthly,
}

impl Period {
    /// The key that caps it in a policy: `daily_usd` or `monthly_usd`.
    pub fn key(self) -> &'static str {
        match self {
            Period::Daily => "daily_usd",
            Period::Monthly => "monthly_usd",
        }
    }

    /// `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "day",
            Period::Monthly => "month",
        }
    }

    /// The window of this length that holds `now`, in `timezone`.
    pub fn window(self, timezone: Tz, now: DateTime<Utc>) -> Window {
        let today = now.with_timezone(&timezone).date_naive();
        let (first, next) = match self {
            Period::Daily => (today, today.succ_opt().unwrap_or(today)),
            Period::Monthly => {
                let first = today.with_day(1).unwrap_or(today);
                let next = first
                    .checked_add_months(chrono::Months::new(1))
                    .unwrap_or(first);
                (first, next)
            }
        };
        Window {
            period: self,
            timezone,
            start: local_midnight(timezone, first),
            end: local_midnight(timezone, next),
        }
    }
}

/// One day or month in one time zone, as UTC instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Its length.
    pub period: Period,
    /// The zone its days begin in.
    pub timezone: Tz,
    /// The first instant inside it.
    pub start: DateTime<Utc>,
    /// The first instant after it.
    pub end: DateTime<Utc>,
}

/// A cap on one window, from a policy's budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cap {
    /// The window it caps now.
    pub window: Window,
    /// USD the window may spend.
    pub usd: f64,
}

impl Budget {
    /// The caps this budget sets on the windows holding `now`: the day, the month, or both.
    pub fn caps(&self, now: DateTime<Utc>) -> Vec<Cap> {
        [
            (Period::Daily, self.daily_usd),
            (Period::Monthly, self.monthly_usd),
        ]
        .into_iter()
        .filter_map(|(period, usd)| {
            Some(Cap {
                window: period.window(self.timezone, now),
                usd: usd?,
            })
        })
        .collect()
    }
}

/// Where `date` begins in `timezone`. Where a clock change skips midnight, the day begins at
/// the first local time that exists.
fn local_midnight(timezone: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    (0..=4)
        .find_map(|quarter| {
            timezone
                .from_local_datetime(&(midnight + Duration::minutes(15 * quarter)))
                .earliest()
        })
        .map_or_else(|| midnight.and_utc(), |t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn a_day_begins_at_local_midnight() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        // 23:30 UTC on the 21st is already the 22nd in Berlin.
        let day = Period::Daily.window(tz, at("2026-11-21T23:30:00Z"));
        assert_eq!(day.start, at("2026-11-21T23:00:00Z"));
        assert_eq!(day.end, at("2026-11-22T23:00:00Z"));
    }

    #[test]
    fn a_month_spans_its_calendar_days_across_a_clock_change() {
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let month = Period::Monthly.window(tz, at("2026-10-15T12:00:00Z"));
        assert_eq!(month.start, at("2026-09-30T22:00:00Z"));
        // Summer time ends on 25 October, so November begins an hour later in UTC.
        assert_eq!(month.end, at("2026-10-31T23:00:00Z"));
        let december = Period::Monthly.window(chrono_tz::UTC, at("2026-12-31T23:59:59Z"));
        assert_eq!(december.end, at("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_begins_at_the_first_local_time() {
        // Havana moves its clocks from 00:00 to 01:00 in March.
        let tz: Tz = "America/Havana".parse().unwrap();
        let day = Period::Daily.window(tz, at("2026-03-08T12:00:00Z"));
        assert_eq!(day.start, at("2026-03-08T05:00:00Z"));
    }
}
