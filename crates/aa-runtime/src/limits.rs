//! Per-agent call-rate limits (`limit_per_minute`, `limit_per_hour`), counted where the agent
//! runs, by GCRA ([`aa_core::rate`]): a burst up to the limit, then calls as fast as they
//! free up, and a refusal says when the next one fits.

use std::time::{Duration, Instant};

use aa_core::rate::{Quota, RateTable};
use aa_policy::RateLimits;

type Key = (String, String, String, &'static str);

/// Arrival times per (agent, policy, tool entry, window).
#[derive(Debug, Default)]
pub struct RateCounter {
    table: RateTable<Key>,
}

/// A limit that has no room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The policy that sets it.
    pub policy: String,
    /// The tool entry that sets it.
    pub entry: String,
    /// `limit_per_minute` or `limit_per_hour`.
    pub which: &'static str,
    /// The limit.
    pub limit: u32,
    /// When a call would fit.
    pub retry_after: Duration,
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
        let mut quotas = Vec::new();
        for (policy, entry, limit) in limits {
            let windows = [
                ("limit_per_minute", limit.per_minute.map(Quota::per_minute)),
                ("limit_per_hour", limit.per_hour.map(Quota::per_hour)),
            ];
            for (which, quota) in windows {
                if let Some(quota) = quota {
                    let key = (agent.to_owned(), policy.clone(), entry.clone(), which);
                    quotas.push((key, quota));
                }
            }
        }
        self.table.try_take(&quotas, now).map_err(|limited| {
            let ((_, policy, entry, which), quota) =
                quotas.get(limited.index).cloned().unwrap_or_else(|| {
                    (
                        (
                            String::new(),
                            String::new(),
                            String::new(),
                            "limit_per_minute",
                        ),
                        Quota::per_minute(0),
                    )
                });
            Exceeded {
                policy,
                entry,
                which,
                limit: quota.limit,
                retry_after: limited.retry_after,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_entry_and_agent_counts_apart_and_a_refusal_names_its_limit() {
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
        let third = counter.try_take("bot", &limits, start).unwrap_err();
        assert_eq!((third.which, third.limit), ("limit_per_minute", 2));
        assert_eq!(third.retry_after, Duration::from_secs(30));
        assert_eq!(
            (third.policy.as_str(), third.entry.as_str()),
            ("p@1", "shell")
        );
        assert!(
            counter.try_take("other", &limits, start).is_ok(),
            "per agent"
        );
        let later = start + Duration::from_secs(60);
        assert!(counter.try_take("bot", &limits, later).is_ok());
        let fourth = counter.try_take("bot", &limits, later).unwrap_err();
        assert_eq!(fourth.which, "limit_per_hour");
    }
}
