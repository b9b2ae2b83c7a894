//! How soon a waiting call is released after an operator approves: one agent checks an
//! action the policy sends for approval, waits for it, and the operator's HTTP call approves
//! it; the time from sending the approval to the wait's answer is one sample.

use std::time::{Duration, Instant};

use aa_core::{Action, Decision};
use serde_json::json;

use crate::BenchError;
use crate::registered_client;
use crate::stack::Stack;
use crate::stats::Percentiles;

/// How long one approval may take to reach the gateway, and one wait to end.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// `count` approvals, one at a time, after `warmup` unmeasured ones.
pub fn run(stack: &Stack, count: usize, warmup: usize) -> Result<Percentiles, BenchError> {
    let (client, agent) = registered_client(
        &stack.socket,
        &stack.client_state_dir(),
        "approval-bench".into(),
        STEP_TIMEOUT,
    )?;
    let token = stack.admin_token()?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        // The default policy sends `sudo` to a human.
        let action = Action::ToolCall {
            tool: "shell".into(),
            args: json!({ "command": format!("sudo true # {i}") }),
        };
        let deadline = Instant::now() + STEP_TIMEOUT;
        let outcome = loop {
            let outcome = client.check(&agent, action.clone(), None).wait()?;
            if outcome.verdict.decision == Decision::Pending || Instant::now() > deadline {
                break outcome;
            }
            std::thread::sleep(Duration::from_millis(50)); // the bundle is on its way
        };
        let Some(id) = outcome.approval_id.clone() else {
            return Err(BenchError::NotReady {
                seconds: STEP_TIMEOUT.as_secs(),
                reason: format!("expected pending, got {outcome:?}"),
            });
        };
        let waiting = client.await_approval(&agent, outcome, STEP_TIMEOUT);
        let path = format!("/api/v1/approvals/{id}");
        while stack.http("GET", &path, Some(&token), "")?.0 != 200 {
            if Instant::now() > deadline {
                return Err(BenchError::Invalid(format!(
                    "approval {id} never reached the gateway"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let approve = format!("{path}/approve");
        let started = Instant::now();
        let (code, body) = stack.http("POST", &approve, Some(&token), "{}")?;
        if code != 200 {
            return Err(BenchError::Invalid(format!(
                "approving {id}: {code} {body}"
            )));
        }
        let released = waiting.wait()?;
        let took = started.elapsed();
        if released.verdict.decision != Decision::Allow {
            return Err(BenchError::Invalid(format!(
                "approved {id} was not released: {released:?}"
            )));
        }
        if i >= warmup {
            samples.push(took);
        }
    }
    Percentiles::of(samples).ok_or_else(|| BenchError::Invalid("count must be positive".into()))
}
