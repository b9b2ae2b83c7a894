//! Redaction: each finding's span becomes `[REDACTED:<kind>]`, the rest of the text is left as
//! it was, and each redaction yields a receipt (rule, kind, byte range, a truncated SHA-256 of
//! the secret — never the secret).

use aa_core::{AuditEvent, RedactionReceipt};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::SecurityError;
use crate::scanner::{Finding, Scanner};

/// Bytes of the SHA-256 digest kept in a receipt (16 hex characters).
const DIGEST_PREFIX_BYTES: usize = 8;

/// What an oversized field becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Oversize {
    /// Replaced whole by `[REDACTED:OVERSIZED]` (the default: unscanned text is never passed on).
    #[default]
    Redact,
    /// Scanned and redacted like any other field, whatever its size.
    Scan,
}

/// Size caps for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest string (key or value) scanned; larger ones are handled per `oversize`.
    pub max_field_bytes: usize,
    /// The most string bytes scanned per event; strings past it are handled per `oversize`.
    pub max_event_bytes: usize,
    /// What happens to strings over either cap.
    pub oversize: Oversize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_field_bytes: 64 * 1024,
            max_event_bytes: 1024 * 1024,
            oversize: Oversize::Redact,
        }
    }
}

/// The label an oversized field becomes.
pub const OVERSIZED: &str = "[REDACTED:OVERSIZED]";

/// A redacted text and its receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    /// The text with every finding replaced.
    pub text: String,
    /// One receipt per replaced span; ranges refer to the original text.
    pub receipts: Vec<RedactionReceipt>,
}

/// Redacted bytes (not necessarily UTF-8) and their receipts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactedBytes {
    /// The bytes with every finding replaced; invalid UTF-8 is kept as it was.
    pub bytes: Vec<u8>,
    /// One receipt per replaced span; ranges refer to the original bytes.
    pub receipts: Vec<RedactionReceipt>,
}

impl Scanner {
    /// Redacts every finding in `text`.
    pub fn redact(&self, text: &str) -> Redacted {
        let findings = self.scan(text);
        let (bytes, receipts) = apply(text.as_bytes(), &findings, "");
        // Replacements are ASCII and cut at character boundaries, so the result is UTF-8.
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Redacted { text, receipts }
    }

    /// Redacts every finding in bytes that may not be UTF-8.
    pub fn redact_bytes(&self, bytes: &[u8]) -> RedactedBytes {
        let findings = self.scan_bytes(bytes);
        let (bytes, receipts) = apply(bytes, &findings, "");
        RedactedBytes { bytes, receipts }
    }

    /// Redacts every string of a JSON document, keys and values, in place. Receipts name the
    /// field by its path (`args.command`, `items[2]`; a key as `path{key}`).
    pub fn redact_json(&self, value: &mut Value, limits: &Limits) -> Vec<RedactionReceipt> {
        let mut receipts = Vec::new();
        let mut budget = limits.max_event_bytes;
        // An explicit stack: documents built in memory may nest deeper than a parser allows.
        let mut stack: Vec<(&mut Value, String)> = vec![(value, String::new())];
        while let Some((node, path)) = stack.pop() {
            match node {
                Value::String(s) => {
                    if let Some(new) =
                        self.redact_field(s, &path, limits, &mut budget, &mut receipts)
                    {
                        *s = new;
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter_mut().enumerate().rev() {
                        stack.push((item, format!("{path}[{i}]")));
                    }
                }
                Value::Object(map) => {
                    let entries = std::mem::take(map);
                    let mut rebuilt = serde_json::Map::with_capacity(entries.len());
                    for (key, child) in entries {
                        let key_path = format!("{path}{{key}}");
                        let mut key = self
                            .redact_field(&key, &key_path, limits, &mut budget, &mut receipts)
                            .unwrap_or(key);
                        // Two keys redacted to the same label must not overwrite each other.
                        if rebuilt.contains_key(&key) {
                            let base = key.clone();
                            let mut n = 2;
                            while rebuilt.contains_key(&key) {
                                key = format!("{base}#{n}");
                                n += 1;
                            }
                        }
                        rebuilt.insert(key, child);
                    }
                    *map = rebuilt;
                    let children: Vec<(&mut Value, String)> = map
                        .iter_mut()
                        .map(|(k, v)| {
                            let child = if path.is_empty() {
                                k.clone()
                            } else {
                                format!("{path}.{k}")
                            };
                            (v, child)
                        })
                        .collect();
                    stack.extend(children.into_iter().rev());
                }
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
        receipts
    }

    /// Redacts an event given as raw bytes: a JSON document is redacted field by field and
    /// re-serialised; anything else is redacted as text.
    pub fn redact_event(&self, bytes: &[u8], limits: &Limits) -> RedactedBytes {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(mut value) => {
                let receipts = self.redact_json(&mut value, limits);
                let bytes =
                    serde_json::to_vec(&value).unwrap_or_else(|_| OVERSIZED.as_bytes().to_vec());
                RedactedBytes { bytes, receipts }
            }
            Err(_)
                if bytes.len() > limits.max_event_bytes && limits.oversize == Oversize::Redact =>
            {
                RedactedBytes {
                    bytes: OVERSIZED.as_bytes().to_vec(),
                    receipts: vec![oversized_receipt("", bytes)],
                }
            }
            Err(_) => self.redact_bytes(bytes),
        }
    }

    /// Redacts every string of an audit event an agent supplied (its agent, session, action
    /// and detail), appending one receipt per span to `event.redactions` with the field's path
    /// from the event's root (`action.args.command`). What the trusted side set (the id, the
    /// origin, earlier receipts) is not scanned. Returns the number of new receipts.
    pub fn redact_audit_event(
        &self,
        event: &mut AuditEvent,
        limits: &Limits,
    ) -> Result<usize, SecurityError> {
        let unreadable = |e: serde_json::Error| SecurityError::Event(e.to_string());
        let mut doc = serde_json::json!({
            "agent": event.agent,
            "session_id": event.session_id,
            "action": event.action,
            "detail": event.detail,
        });
        let receipts = self.redact_json(&mut doc, limits);
        if receipts.is_empty() {
            return Ok(0);
        }
        let mut part = |name: &str| doc.get_mut(name).map(Value::take).unwrap_or(Value::Null);
        event.agent = serde_json::from_value(part("agent")).map_err(unreadable)?;
        event.session_id = serde_json::from_value(part("session_id")).map_err(unreadable)?;
        event.action = serde_json::from_value(part("action")).map_err(unreadable)?;
        event.detail = serde_json::from_value(part("detail")).map_err(unreadable)?;
        let added = receipts.len();
        event.redactions.extend(receipts);
        Ok(added)
    }

    /// The redacted form of one string, or `None` when it is unchanged.
    fn redact_field(
        &self,
        text: &str,
        path: &str,
        limits: &Limits,
        budget: &mut usize,
        receipts: &mut Vec<RedactionReceipt>,
    ) -> Option<String> {
        let over = text.len() > limits.max_field_bytes || text.len() > *budget;
        if over && limits.oversize == Oversize::Redact {
            receipts.push(oversized_receipt(path, text.as_bytes()));
            return Some(OVERSIZED.to_owned());
        }
        // Only what is scanned counts against the event's budget.
        *budget = budget.saturating_sub(text.len());
        let findings = self.scan(text);
        if findings.is_empty() {
            return None;
        }
        let (bytes, mut found) = apply(text.as_bytes(), &findings, path);
        receipts.append(&mut found);
        String::from_utf8(bytes).ok()
    }
}

/// Replaces the (non-overlapping, ordered) findings in `input`.
fn apply(input: &[u8], findings: &[Finding], field: &str) -> (Vec<u8>, Vec<RedactionReceipt>) {
    let mut out = Vec::with_capacity(input.len());
    let mut receipts = Vec::with_capacity(findings.len());
    let mut cursor = 0;
    for f in findings {
        let (Some(before), Some(secret)) = (input.get(cursor..f.start), input.get(f.start..f.end))
        else {
            continue;
        };
        out.extend_from_slice(before);
        out.extend_from_slice(format!("[REDACTED:{}]", f.kind).as_bytes());
        receipts.push(RedactionReceipt {
            rule_id: f.rule_id.clone(),
            kind: f.kind.clone(),
            field: field.to_owned(),
            start: f.start as u64,
            end: f.end as u64,
            sha256_prefix: digest_prefix(secret),
        });
        cursor = f.end;
    }
    out.extend_from_slice(input.get(cursor..).unwrap_or_default());
    (out, receipts)
}

fn oversized_receipt(field: &str, bytes: &[u8]) -> RedactionReceipt {
    RedactionReceipt {
        rule_id: "oversized".to_owned(),
        kind: "OVERSIZED".to_owned(),
        field: field.to_owned(),
        start: 0,
        end: bytes.len() as u64,
        sha256_prefix: digest_prefix(bytes),
    }
}

/// Hex of the first bytes of SHA-256 over `secret`: enough to match a known leaked value,
/// too little to recover it.
fn digest_prefix(secret: &[u8]) -> String {
    aa_core::hex::encode(&Sha256::digest(secret)[..DIGEST_PREFIX_BYTES])
}
