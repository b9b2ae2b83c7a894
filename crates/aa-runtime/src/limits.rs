//! Per-agent call-rate limits (`limit_per_minute`, `limit_per_hour`), counted where the agent
//! runs: a sliding window of the calls let through.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aa_policy::RateLimits;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Call times per (agent, policy, tool entry).
#[derive(Debug, Default)]
pub struct RateCounter {
    windows: Mutex<HashMap<(String, String, String), VecDeque<Instant>>>,
}

/// A limit that has no room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// `limit_per_minute` or `limit_per_hour`.
    pub which: &'static str,
    /// The limit.
    pub limit: u32,
}

impl RateCounter {
    /// Whether a call fits every one of `limits` (each named by policy and tool entry); if it
    /// does, it is counted against all of them.
    pub fn try_take(
        &self,
        agent: &str,
        limits: &[(String, String, RateLimits)],
        now: Instant,
    ) -> Result<(), Exceeded> {
        let Ok(mut windows) = self.windows.lock() else {
            // A poisoned counter cannot count: refuse rather than let calls through unlimited.
            return Err(Exceeded {
                which: "limit_per_minute",
                limit: 0,
            });
        };
        for (policy, entry, limit) in limits {
            let key = (agent.to_owned(), policy.clone(), entry.clone());
            let window = windows.entry(key).or_default();
            while window
                .front()
                .is_some_and(|t| now.duration_since(*t) >= HOUR)
            {
                window.pop_front();
            }
            if let Some(per_hour) = limit.per_hour
                && window.len() >= per_hour as usize
            {
                return Err(Exceeded {
                    which: "limit_per_hour",
                    limit: per_hour,
                });
            }
            if let Some(per_minute) = limit.per_minute {
                let recent = window
                    .iter()
                    .rev()
                    .take_while(|t| now.duration_since(**t) < MINUTE)
                    .count();
                if recent >= per_minute as usize {
                    return Err(Exceeded {
                        which: "limit_per_minute",
                        limit: per_minute,
                    });
                }
            }
        }
        for (policy, entry, _) in limits {
            if let Some(window) =
                windows.get_mut(&(agent.to_owned(), policy.clone(), entry.clone()))
            {
                window.push_back(now);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_slide() {
        let counter = RateCounter::default();
        let limits = vec![(
            "p@1".to_owned(),
            "shell".to_owned(),
            RateLimits {
                per_minute: Some(2),
                per_hour: Some(3),
            },
        )];
        let start = Instant::now();
        assert!(counter.try_take("bot", &limits, start).is_ok());
        assert!(counter.try_take("bot", &limits, start).is_ok());
        let third = counter.try_take("bot", &limits, start);
        assert_eq!(third.map_err(|e| e.which), Err("limit_per_minute"));
        assert!(
            counter.try_take("other", &limits, start).is_ok(),
            "per agent"
        );
        let later = start + MINUTE;
        assert!(counter.try_take("bot", &limits, later).is_ok());
        assert_eq!(
            counter.try_take("bot", &limits, later).map_err(|e| e.which),
            Err("limit_per_hour")
        );
        assert!(
            counter
                .try_take("bot", &limits, start + HOUR + MINUTE)
                .is_ok()
        );
    }
}
