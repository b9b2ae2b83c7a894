//! Memory budgets for what agents send that the runtime holds for a while: a request from
//! the moment its frame starts arriving until it is answered, a pending decision's action
//! until its approval is decided, a decision's event until the outbox has it. A count alone
//! bounds none of them: one frame can carry megabytes of JSON that take tens of times their
//! size once parsed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aa_core::{Action, AuditEvent};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A budget of bytes shared by the [`Charge`]s taken from it.
#[derive(Debug)]
pub(crate) struct Budget {
    held: Arc<AtomicUsize>,
    max: usize,
}

/// A part of a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Charge {
    /// Its bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Budget {
    pub(crate) fn new(max: usize) -> Budget {
        Budget {
            held: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// `bytes` of the budget, unless that would pass its bound.
    pub(crate) fn take(&self, bytes: usize) -> Option<Charge> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .ok()?;
        Some(Charge {
            held: Arc::clone(&self.held),
            bytes,
        })
    }

    /// The bound, in whole MiB, for saying what was passed.
    pub(crate) fn max_mib(&self) -> usize {
        self.max >> 20
    }
}

/// The memory requests in progress may hold, shared by every connection: a request waits
/// for its part, so past the bound reading slows rather than memory growing. Counted in
/// [`REQUEST_UNIT`]s.
#[derive(Debug, Clone)]
pub(crate) struct RequestMemory {
    units: Arc<Semaphore>,
    max_units: u32,
}

/// A request's part of [`RequestMemory`], given back when dropped; it may be settled to less
/// once what it holds is known.
#[derive(Debug, Default)]
pub(crate) struct RequestCharge(Option<OwnedSemaphorePermit>);

/// The unit [`RequestMemory`] counts in.
pub(crate) const REQUEST_UNIT: usize = 1024;

/// What parsing JSON may grow text to, at most: `[0,0,…]` takes 2 bytes a value as text and
/// a 32-byte value in an array that may have doubled its room, once parsed. A request that
/// carries JSON is charged this multiple of its size until it is parsed.
pub(crate) const PARSED_GROWTH: usize = 32;

impl RequestMemory {
    /// A budget of `bytes`.
    pub(crate) fn new(bytes: usize) -> RequestMemory {
        let max_units = u32::try_from(bytes / REQUEST_UNIT).unwrap_or(u32::MAX);
        RequestMemory {
            units: Arc::new(Semaphore::new(max_units as usize)),
            max_units,
        }
    }

    /// Units for `bytes`, rounded up; a request needing more than the whole budget is charged
    /// the whole budget, so it waits for everything else rather than for ever.
    fn units(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(REQUEST_UNIT))
            .unwrap_or(u32::MAX)
            .min(self.max_units)
    }

    /// `bytes` of the budget, waited for; `None` if the budget is closed.
    pub(crate) async fn take(&self, bytes: usize) -> Option<RequestCharge> {
        let units = self.units(bytes);
        if units == 0 {
            return Some(RequestCharge(None));
        }
        let permit = Arc::clone(&self.units)
            .acquire_many_owned(units)
            .await
            .ok()?;
        Some(RequestCharge(Some(permit)))
    }

    /// The bound, in whole MiB, for saying what was passed.
    pub(crate) fn max_mib(&self) -> usize {
        (self.max_units as usize * REQUEST_UNIT) >> 20
    }
}

impl RequestCharge {
    /// Whether it holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn units(&self) -> u32 {
        self.0
            .as_ref()
            .map_or(0, |p| u32::try_from(p.num_permits()).unwrap_or(u32::MAX))
    }

    /// Gives back all but what `bytes` needs, once what the request holds is known.
    pub(crate) fn settle(&mut self, bytes: usize) {
        let keep = bytes.div_ceil(REQUEST_UNIT);
        let held = self.units() as usize;
        if keep == 0 {
            self.0 = None;
        } else if keep < held
            && let Some(permit) = self.0.as_mut()
        {
            drop(permit.split(held - keep));
        }
    }
}

/// About how many bytes of memory `action` takes as the runtime holds it: every JSON value
/// [`NODE_BYTES`], every string and key its length too.
pub(crate) fn held_bytes(action: &Action) -> usize {
    NODE_BYTES
        + match action {
            Action::ToolCall { tool, args } => text_bytes(tool) + value_bytes(args),
            Action::LlmCall { model, .. } => text_bytes(model),
            Action::Network { host, method, .. } => {
                text_bytes(host) + method.as_deref().map_or(0, text_bytes)
            }
            Action::File { path, .. } => text_bytes(path),
            Action::ProcessExec { command, args } => {
                text_bytes(command) + args.iter().map(|a| text_bytes(a)).sum::<usize>()
            }
            Action::AgentSpawn { child_id, reason } => {
                child_id.as_deref().map_or(0, text_bytes) + reason.as_deref().map_or(0, text_bytes)
            }
        }
}

/// About how many bytes `event` takes, counted as [`held_bytes`] counts an action; its fixed
/// fields (verdict, receipts, origin) are small and bounded by the runtime, and counted as
/// [`EVENT_BYTES`].
pub(crate) fn event_bytes(event: &AuditEvent) -> usize {
    EVENT_BYTES
        + held_bytes(&event.action)
        + text_bytes(&event.event_id)
        + text_bytes(&event.agent.id)
        + event.session_id.as_deref().map_or(0, text_bytes)
        + event.detail.as_ref().map_or(0, value_bytes)
}

/// A string as [`held_bytes`] counts it.
fn text_bytes(text: &str) -> usize {
    NODE_BYTES + text.len()
}

/// A JSON value and everything in it, as [`held_bytes`] counts them.
fn value_bytes(value: &Value) -> usize {
    let own = |value: &Value| match value {
        Value::String(s) => text_bytes(s),
        _ => NODE_BYTES,
    };
    let mut bytes = own(value);
    // Only containers go on the stack: a value may be millions of values wide, or deep.
    let mut containers: Vec<&Value> = vec![value];
    while let Some(container) = containers.pop() {
        let items: Box<dyn Iterator<Item = (usize, &Value)>> = match container {
            Value::Array(items) => Box::new(items.iter().map(|item| (0, item))),
            Value::Object(map) => Box::new(map.iter().map(|(key, item)| (key.len(), item))),
            _ => continue,
        };
        for (key, item) in items {
            bytes += key + own(item);
            if item.is_array() || item.is_object() {
                containers.push(item);
            }
        }
    }
    bytes
}

/// What an event's fields other than its strings and values take, rounded up.
const EVENT_BYTES: usize = 1024;

/// What one JSON value takes, counted by [`held_bytes`]: its own size and its share of its
/// container's, rounded up.
const NODE_BYTES: usize = 64;

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn wide(values: usize) -> Action {
        Action::ToolCall {
            tool: "shell".into(),
            args: serde_json::json!({ "command": vec![0; values], "cwd": {"a": ["b"]} }),
        }
    }

    #[test]
    fn an_actions_bytes_count_every_value() {
        let small = held_bytes(&wide(0));
        assert_eq!(held_bytes(&wide(1_000)) - small, 1_000 * NODE_BYTES);
        assert!(held_bytes(&wide(1_500_000)) > 90 << 20);
    }

    #[test]
    fn charges_share_the_budget_until_dropped() {
        let budget = Budget::new(100);
        let first = budget.take(60).unwrap();
        assert!(budget.take(41).is_none());
        let second = budget.take(40).unwrap();
        drop(first);
        assert!(budget.take(61).is_none());
        assert!(budget.take(60).is_some());
        drop(second);
        assert!(budget.take(100).is_some());
        assert_eq!(budget.max_mib(), 0);
    }
}
