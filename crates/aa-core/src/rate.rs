//! Call-rate limits by the generic cell rate algorithm (GCRA): each key keeps one instant, its
//! theoretical arrival time. A limit of `n` per `period` lets a burst of `n` through at once,
//! then one call every `period / n`; a refused call learns exactly when it would fit.
//!
//! Time is an input: callers pass `now` (a monotonic instant), so this does no IO.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `limit` calls per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Calls allowed per period (at least 1).
    pub limit: u32,
    /// The period.
    pub period: Duration,
}

impl Quota {
    /// `limit` per minute.
    pub fn per_minute(limit: u32) -> Quota {
        Quota {
            limit,
            period: Duration::from_secs(60),
        }
    }

    /// `limit` per hour.
    pub fn per_hour(limit: u32) -> Quota {
        Quota {
            limit,
            period: Duration::from_secs(3600),
        }
    }

    fn interval(self) -> Duration {
        self.period / self.limit.max(1)
    }

    /// The arrival time after a call at `now` given the key's `tat`, or how long until the
    /// call would fit.
    fn admit(self, tat: Option<Instant>, now: Instant) -> Result<Instant, Duration> {
        if self.limit == 0 {
            return Err(self.period);
        }
        let interval = self.interval();
        let tolerance = self.period.saturating_sub(interval);
        let tat = tat.map_or(now, |t| t.max(now));
        let ahead = tat.saturating_duration_since(now);
        if ahead > tolerance {
            Err(ahead - tolerance)
        } else {
            Ok(tat + interval)
        }
    }
}

/// Keys past this many are swept of those that are back to full (their arrival time passed),
/// so churning agents cannot grow the table without end.
const SWEEP_AT: usize = 10_000;

/// Arrival times by key.
#[derive(Debug)]
pub struct RateTable<K> {
    cells: Mutex<HashMap<K, Instant>>,
}

impl<K> Default for RateTable<K> {
    fn default() -> Self {
        RateTable {
            cells: Mutex::new(HashMap::new()),
        }
    }
}

/// A refused call: which of the limits had no room, and when the call would fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The index of the limit, in the order given.
    pub index: usize,
    /// How long until a call fits that limit.
    pub retry_after: Duration,
}

impl<K: Eq + Hash + Clone> RateTable<K> {
    /// Takes one call from every `(key, quota)` if each has room, else none and says which
    /// had none (the one that frees up last). A poisoned table refuses.
    pub fn try_take(&self, limits: &[(K, Quota)], now: Instant) -> Result<(), Limited> {
        let Ok(mut cells) = self.cells.lock() else {
            return Err(Limited {
                index: 0,
                retry_after: Duration::ZERO,
            });
        };
        let mut next = Vec::with_capacity(limits.len());
        let mut refused: Option<Limited> = None;
        for (index, (key, quota)) in limits.iter().enumerate() {
            match quota.admit(cells.get(key).copied(), now) {
                Ok(tat) => next.push(tat),
                Err(retry_after) => {
                    if refused.is_none_or(|r| retry_after > r.retry_after) {
                        refused = Some(Limited { index, retry_after });
                    }
                }
            }
        }
        if let Some(refused) = refused {
            return Err(refused);
        }
        if cells.len() >= SWEEP_AT {
            cells.retain(|_, tat| *tat > now);
        }
        for ((key, _), tat) in limits.iter().zip(next) {
            cells.insert(key.clone(), tat);
        }
        Ok(())
    }
}

/// `d` for a person: `12.3 s`, `4 min 5 s`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{:.1} s", (secs * 10.0).ceil() / 10.0)
    } else {
        let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        format!("{} min {} s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let table = RateTable::default();
        let limit = [("bot", Quota::per_minute(2))];
        let start = Instant::now();
        assert!(table.try_take(&limit, start).is_ok());
        assert!(table.try_take(&limit, start).is_ok());
        let refused = table.try_take(&limit, start).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(30));
        assert!(
            table
                .try_take(&[("other", Quota::per_minute(2))], start)
                .is_ok(),
            "per key"
        );
        let later = start + Duration::from_secs(30);
        assert!(table.try_take(&limit, later).is_ok(), "one fits again");
        assert!(table.try_take(&limit, later).is_err());
    }

    #[test]
    fn every_limit_must_have_room_and_a_refusal_takes_nothing() {
        let table = RateTable::default();
        let both = [("m", Quota::per_minute(10)), ("h", Quota::per_hour(3))];
        let start = Instant::now();
        for _ in 0..3 {
            assert!(table.try_take(&both, start).is_ok());
        }
        let refused = table.try_take(&both, start).unwrap_err();
        assert_eq!(refused.index, 1);
        assert_eq!(refused.retry_after, Duration::from_secs(20 * 60));
        // The minute limit was not charged by the refusal: seven more fit it alone.
        for _ in 0..7 {
            assert!(table.try_take(&both[..1], start).is_ok());
        }
        assert!(table.try_take(&both[..1], start).is_err());
        assert!(
            table
                .try_take(&both, start + Duration::from_secs(20 * 60))
                .is_ok()
        );
    }

    #[test]
    fn a_zero_limit_refuses_and_durations_read_well() {
        let table = RateTable::default();
        assert!(
            table
                .try_take(&[(1, Quota::per_hour(0))], Instant::now())
                .is_err()
        );
        assert_eq!(human(Duration::from_millis(29_940)), "30.0 s");
        assert_eq!(human(Duration::from_secs(1200)), "20 min 0 s");
    }
}
