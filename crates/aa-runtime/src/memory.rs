//! Memory budgets for what agents send that the runtime holds for a while: a pending
//! decision's action until its approval is decided, a decision's event until the outbox has
//! it. A count alone bounds neither: one check can carry megabytes of arguments that take
//! tens of times their size once parsed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aa_core::Action;
use serde_json::Value;

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

/// About how many bytes of memory `action` takes as the runtime holds it: every JSON value
/// [`NODE_BYTES`], every string and key its length too.
pub(crate) fn held_bytes(action: &Action) -> usize {
    let text = |s: &str| NODE_BYTES + s.len();
    // Only containers go on the stack: arguments may be millions of values wide, or deep.
    let mut containers: Vec<&Value> = Vec::new();
    let mut bytes = NODE_BYTES
        + match action {
            Action::ToolCall { tool, args } => {
                containers.push(args);
                text(tool)
            }
            Action::LlmCall { model, .. } => text(model),
            Action::Network { host, method, .. } => text(host) + method.as_deref().map_or(0, text),
            Action::File { path, .. } => text(path),
            Action::ProcessExec { command, args } => {
                text(command) + args.iter().map(|a| text(a)).sum::<usize>()
            }
            Action::AgentSpawn { child_id, reason } => {
                child_id.as_deref().map_or(0, text) + reason.as_deref().map_or(0, text)
            }
        };
    let value_bytes = |value: &Value| match value {
        Value::String(s) => text(s),
        _ => NODE_BYTES,
    };
    while let Some(container) = containers.pop() {
        let items: Box<dyn Iterator<Item = (usize, &Value)>> = match container {
            Value::Array(items) => Box::new(items.iter().map(|item| (0, item))),
            Value::Object(map) => Box::new(map.iter().map(|(key, item)| (key.len(), item))),
            scalar => {
                bytes += value_bytes(scalar);
                continue;
            }
        };
        for (key, item) in items {
            bytes += key + value_bytes(item);
            if item.is_array() || item.is_object() {
                containers.push(item);
            }
        }
    }
    bytes
}

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
