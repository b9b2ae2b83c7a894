//! Team-wide call-rate limits (`team_limit_per_minute`, `team_limit_per_hour`): counted here,
//! across every runtime, by GCRA ([`aa_core::rate`]). The runtime asks only for tool entries
//! that set one; the team is the registry's, never the caller's word. An agent without a team
//! is counted as a team of one.

use std::time::{Duration, Instant};

use aa_core::rate::Quota;
use aa_policy::RateLimits;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::store::Store;

/// One tool entry's team limits, as the runtime's bundle has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamLimit {
    /// The policy, `name@version`.
    pub policy: String,
    /// The tool entry's key.
    pub entry: String,
    /// The limits.
    pub limits: RateLimits,
}

/// The answer to a take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamRate {
    /// Every limit had room; one call was counted against each.
    Allowed,
    /// One had none; nothing was counted.
    Limited {
        /// Which limit, by index.
        index: usize,
        /// `team_limit_per_minute` or `team_limit_per_hour`.
        window: &'static str,
        /// When a call would fit.
        retry_after: Duration,
        /// The team counted.
        team: String,
    },
}

/// The key of one window of one entry for one team.
pub(crate) type RateKey = (String, String, String, &'static str);

impl<S: Store> Gateway<S> {
    /// Takes one call for `agent_id`'s team from every limit, or none.
    pub async fn take_team_rate(
        &self,
        agent_id: &str,
        credential_token: &str,
        limits: &[TeamLimit],
    ) -> Result<TeamRate, GatewayError> {
        let agent = self.authenticate(agent_id, credential_token).await?;
        let team = agent
            .team_id
            .clone()
            .unwrap_or_else(|| format!("agent:{agent_id}"));
        let mut quotas = Vec::new();
        let mut owners = Vec::new();
        for (index, limit) in limits.iter().enumerate() {
            let windows = [
                (
                    "team_limit_per_minute",
                    limit.limits.per_minute.map(Quota::per_minute),
                ),
                (
                    "team_limit_per_hour",
                    limit.limits.per_hour.map(Quota::per_hour),
                ),
            ];
            for (window, quota) in windows {
                if let Some(quota) = quota {
                    let key = (
                        team.clone(),
                        limit.policy.clone(),
                        limit.entry.clone(),
                        window,
                    );
                    quotas.push((key, quota));
                    owners.push((index, window));
                }
            }
        }
        if quotas.is_empty() {
            return Err(GatewayError::InvalidRequest(
                "a team rate take needs at least one limit".into(),
            ));
        }
        Ok(match self.team_rates.try_take(&quotas, Instant::now()) {
            Ok(()) => TeamRate::Allowed,
            Err(limited) => {
                let (index, window) = owners
                    .get(limited.index)
                    .copied()
                    .unwrap_or((0, "team_limit_per_minute"));
                TeamRate::Limited {
                    index,
                    window,
                    retry_after: limited.retry_after,
                    team,
                }
            }
        })
    }
}
