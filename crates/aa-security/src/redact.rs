//! Redaction: each finding's span becomes `[REDACTED:<kind>]`, the rest of the text is left as
//! it was, and each redaction yields a receipt (rule, kind, byte range, a truncated SHA-256 of
//! the secret, keyed with a [`ReceiptKey`] where the scanner has one — never the secret).

use aa_core::{Action, AuditEvent, RedactionReceipt};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::document::Layout;
use crate::error::SecurityError;
use crate::scanner::{Finding, Scanner};

/// Bytes of the SHA-256 digest kept in a receipt (16 hex characters).
const DIGEST_PREFIX_BYTES: usize = 8;

/// The key a receipt's digest is made with: a digest of a secret anyone can compute is one
/// anyone can invert for the few values personal data takes (a US SSN is one of 10⁹), so
/// receipts in an audit log made with a key name a secret only to whoever holds the key.
/// A receipt's digest is then the first 8 bytes of HMAC-SHA-256, under this key, of
/// `receipt\0` and the secret's unkeyed digest (the hex that [`Scanner::receipt_digest`]
/// gives without a key). Ids and approved actions are keyed with it too, each under a label
/// of its own, so no digest of one kind can be made to stand for another.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceiptKey([u8; 32]);

/// What each use of a [`ReceiptKey`] prefixes to what it digests.
const RECEIPT_LABEL: &[u8] = b"receipt\0";
const ID_LABEL: &[u8] = b"id\0";
const MAC_LABEL: &[u8] = b"mac\0";

impl ReceiptKey {
    /// The key derived from `secret`, a deployment's shared secret (the token its runtimes
    /// present to its gateway): HMAC-SHA-256 of a fixed label under it, so the key is the
    /// same wherever the secret is, and the secret itself is not the key.
    pub fn derive(secret: &[u8]) -> ReceiptKey {
        ReceiptKey(hmac_sha256(secret, &[b"agent-assembly receipt key v1"]))
    }

    /// The digest a receipt made with this key gives for `secret` (as found: decoded and
    /// normalised), to look a known value up in receipts.
    pub fn digest(&self, secret: &[u8]) -> String {
        self.seal(&digest_prefix(secret))
    }

    /// HMAC-SHA-256 of `message` under this key, in hex (64 digits): a digest of something
    /// that may hold a secret (an approved action, stored beside its redacted form) that
    /// only whoever holds the key can compute.
    pub fn mac(&self, message: &[u8]) -> String {
        aa_core::hex::encode(&hmac_sha256(&self.0, &[MAC_LABEL, message]))
    }

    fn seal(&self, digest: &str) -> String {
        let mac = hmac_sha256(&self.0, &[RECEIPT_LABEL, digest.as_bytes()]);
        aa_core::hex::encode(&mac[..DIGEST_PREFIX_BYTES])
    }
}

impl std::fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiptKey(..)")
    }
}

/// HMAC-SHA-256 of the concatenated `parts`. The key is brought to the hash's block as RFC
/// 2104 does (hashed when longer, padded with zeros), so the MAC is built from a block and
/// cannot fail.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut mac = <Hmac<Sha256> as Mac>::new(&block.into());
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// `sha256:` and the first 16 bytes of `digest` in hex.
fn id_form(digest: &[u8; 32]) -> String {
    format!("sha256:{}", aa_core::hex::encode(&digest[..16]))
}

fn plain_id_digest(id: &str) -> String {
    id_form(&Sha256::digest(id.as_bytes()).into())
}

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
        let receipts = self.sealed(receipts_of(text.as_bytes(), self.scan(text)));
        let text = splice_text(text, &receipts);
        Redacted { text, receipts }
    }

    /// An identifier as it may be stored: `id` itself when it is at most `max_len` bytes and
    /// holds nothing the scanner finds; else `sha256:` and 32 hex digits of its digest, as
    /// stable and as unique (the same id gives the same one, so a batch sent again is still
    /// recognised) and holding no secret. The receipts say what was found in `id`.
    pub fn redact_id(&self, id: &str, max_len: usize) -> (String, Vec<RedactionReceipt>) {
        let receipts = self.sealed(receipts_of(id.as_bytes(), self.scan(id)));
        if receipts.is_empty() && id.len() <= max_len {
            return (id.to_owned(), receipts);
        }
        (self.id_digest(id), receipts)
    }

    /// The form [`redact_id`](Self::redact_id) keeps an id in when it cannot be kept as it
    /// is: `sha256:` and 32 hex digits of its digest, keyed when the scanner has a
    /// [`ReceiptKey`] (HMAC-SHA-256 under its id label: an id that holds a short secret,
    /// `evt-219-09-9999`, is no more to be tried value by value than a receipt). So an id is
    /// stored either as itself or as this, whatever the scanner's rules.
    pub fn id_digest(&self, id: &str) -> String {
        match &self.receipt_key {
            Some(key) => id_form(&hmac_sha256(&key.0, &[ID_LABEL, id.as_bytes()])),
            None => plain_id_digest(id),
        }
    }

    /// Every digest an id may be stored as: [`id_digest`](Self::id_digest)'s, and the plain
    /// SHA-256 one ids were kept as before digests were keyed (a store written then holds
    /// them), so an event sent again is recognised across the upgrade.
    pub fn id_digests(&self, id: &str) -> Vec<String> {
        let mut forms = vec![self.id_digest(id)];
        if self.receipt_key.is_some() {
            forms.push(plain_id_digest(id));
        }
        forms
    }

    /// Redacts every finding in bytes that may not be UTF-8.
    pub fn redact_bytes(&self, bytes: &[u8]) -> RedactedBytes {
        let receipts = self.sealed(receipts_of(bytes, self.scan_bytes(bytes)));
        let bytes = splice(bytes, &receipts);
        RedactedBytes { bytes, receipts }
    }

    /// The digest a receipt gives for `secret` (as found: decoded and normalised), to look a
    /// known value up in receipts: keyed when the scanner has a [`ReceiptKey`].
    pub fn receipt_digest(&self, secret: &[u8]) -> String {
        match &self.receipt_key {
            Some(key) => key.digest(secret),
            None => digest_prefix(secret),
        }
    }

    /// `receipts` with their digests keyed, when the scanner has a key.
    pub(crate) fn sealed(&self, mut receipts: Vec<RedactionReceipt>) -> Vec<RedactionReceipt> {
        if let Some(key) = &self.receipt_key {
            for receipt in &mut receipts {
                receipt.sha256_prefix = key.seal(&receipt.sha256_prefix);
            }
        }
        receipts
    }

    /// Redacts every string of a JSON document, keys and values, in place, and credentials
    /// split across adjacent strings (see `document`). Receipts name the field by its path
    /// (`args.command`, `items[2]`; a key as `path{key}`) and refer to the strings as they came.
    pub fn redact_json(&self, value: &mut Value, limits: &Limits) -> Vec<RedactionReceipt> {
        self.redact_document(value, limits, None)
    }

    /// Redacts an event given as raw bytes: a JSON document is redacted field by field and
    /// re-serialised; anything else is redacted as text.
    pub fn redact_event(&self, bytes: &[u8], limits: &Limits) -> RedactedBytes {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(mut value) => {
                let receipts = self.redact_json(&mut value, limits);
                // Keys come out sorted, as serde_json writes its maps.
                let mut bytes = Vec::with_capacity(bytes.len());
                aa_core::canonical::write_canonical(&value, &mut bytes);
                RedactedBytes { bytes, receipts }
            }
            Err(_)
                if bytes.len() > limits.max_event_bytes && limits.oversize == Oversize::Redact =>
            {
                RedactedBytes {
                    bytes: OVERSIZED.as_bytes().to_vec(),
                    receipts: self.sealed(vec![oversized_receipt("", bytes)]),
                }
            }
            Err(_) => self.redact_bytes(bytes),
        }
    }

    /// Redacts every string of an audit event an agent supplied (its agent, session, action
    /// and detail) or that quotes it (the verdict, whose reason may name the path or command
    /// it was given), appending one receipt per span to `event.redactions` with the field's
    /// path from the event's root (`action.args.command`). What the trusted side set (the id,
    /// the origin, earlier receipts) is not scanned, nor what the event's types fix (the
    /// names of its fields, an action's type, a verdict's decision and mode), so the event
    /// always reads back as one. Returns the number of new receipts.
    pub fn redact_audit_event(
        &self,
        event: &mut AuditEvent,
        limits: &Limits,
    ) -> Result<usize, SecurityError> {
        let unreadable = |e: serde_json::Error| SecurityError::Event(e.to_string());
        // A tool's arguments, the session and the detail are moved into the document and back
        // out rather than copied: the arguments and the detail are often the bulk of an event.
        let args = match &mut event.action {
            Action::ToolCall { args, .. } => Some(args.take()),
            _ => None,
        };
        let mut fields = Map::new();
        let serialised = serialise_fixed(event, &mut fields);
        if let Err(e) = serialised {
            put_args(event, args);
            return Err(unreadable(e));
        }
        if let (Some(args), Some(Value::Object(action))) = (args, fields.get_mut("action")) {
            action.insert("args".into(), args);
        }
        // Only what is there: a field that is null holds no string, but its name would still
        // be read.
        if let Some(session) = event.session_id.take() {
            fields.insert("session_id".into(), Value::String(session));
        }
        let had_detail = event.detail.is_some();
        if let Some(detail) = event.detail.take() {
            fields.insert("detail".into(), detail);
        }
        let mut doc = Value::Object(fields);
        let receipts = self.redact_document(&mut doc, limits, Some(&AUDIT_EVENT));
        let args = match doc.get_mut("action") {
            Some(Value::Object(action)) => action.get_mut("args").map(Value::take),
            _ => None,
        };
        let mut part = |name: &str| doc.get_mut(name).map(Value::take).unwrap_or(Value::Null);
        event.detail = had_detail.then(|| part("detail"));
        if let Value::String(session) = part("session_id") {
            event.session_id = Some(session);
        }
        if receipts.is_empty() {
            put_args(event, args);
            return Ok(0);
        }
        let rebuilt = (|| {
            event.agent = serde_json::from_value(part("agent"))?;
            event.action = serde_json::from_value(part("action"))?;
            event.verdict = serde_json::from_value(part("verdict"))?;
            Ok(())
        })();
        put_args(event, args);
        rebuilt.map_err(unreadable)?;
        let added = receipts.len();
        event.redactions.extend(receipts);
        Ok(added)
    }

    /// [`redact_audit_event`](Self::redact_audit_event) for an event already serialised to a
    /// JSON object, as a store keeps it: the supplied fields are redacted in place, no copy
    /// made, and the receipts appended to its `redactions`. Returns the number of new receipts.
    /// An event that is not an object, or whose `redactions` is not a list, is an error and
    /// left as it was.
    pub fn redact_audit_value(
        &self,
        event: &mut Value,
        limits: &Limits,
    ) -> Result<usize, SecurityError> {
        let Value::Object(fields) = event else {
            return Err(SecurityError::Event(
                "an audit event is a JSON object".into(),
            ));
        };
        if fields.get("redactions").is_some_and(|r| !r.is_array()) {
            return Err(SecurityError::Event("redactions is not a list".into()));
        }
        let mut doc = Map::new();
        for name in SCANNED_FIELDS {
            // A null field holds no string (and is left where it is).
            if fields.get(name).is_some_and(|v| !v.is_null())
                && let Some(value) = fields.remove(name)
            {
                doc.insert(name.into(), value);
            }
        }
        let mut doc = Value::Object(doc);
        let receipts = self.redact_document(&mut doc, limits, Some(&AUDIT_EVENT));
        if let Value::Object(supplied) = doc {
            fields.extend(supplied);
        }
        if receipts.is_empty() {
            return Ok(0);
        }
        let added = receipts.len();
        let receipts = receipts
            .into_iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SecurityError::Event(e.to_string()))?;
        if let Value::Array(list) = fields
            .entry("redactions")
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            list.extend(receipts);
        }
        Ok(added)
    }
}

/// Serialises into `fields` the scanned fields of `event` that are not moved: its agent, its
/// action and its verdict.
fn serialise_fixed(
    event: &AuditEvent,
    fields: &mut Map<String, Value>,
) -> Result<(), serde_json::Error> {
    fields.insert("agent".into(), serde_json::to_value(&event.agent)?);
    fields.insert("action".into(), serde_json::to_value(&event.action)?);
    if let Some(verdict) = &event.verdict {
        fields.insert("verdict".into(), serde_json::to_value(verdict)?);
    }
    Ok(())
}

/// Puts a tool call's arguments back into its action.
fn put_args(event: &mut AuditEvent, args: Option<Value>) {
    if let (Action::ToolCall { args: slot, .. }, Some(args)) = (&mut event.action, args) {
        *slot = args;
    }
}

/// The fields of an audit event that an agent supplies, or that quote what it supplied (a
/// verdict's reason names the path, host or command it was given), and so are scanned; the
/// others are set by the trusted side.
const SCANNED_FIELDS: [&str; 5] = ["agent", "session_id", "action", "detail", "verdict"];

/// What of an audit event's scanned fields its types fix: the names of its own fields and of
/// those of its agent, action and verdict, and the tags of its action (type, file operation)
/// and verdict (decision, mode); its numbers but for a bare detail or arguments. Only what an
/// agent chose is read, so a redacted event always reads back as one.
const AUDIT_EVENT: Layout = Layout {
    named: &[&[], &["agent"], &["action"], &["verdict"]],
    tags: &[
        &["action", "type"],
        &["action", "operation"],
        &["verdict", "decision"],
        &["verdict", "mode"],
    ],
    free: &[&["detail"], &["action", "args"]],
};

/// Receipts for `findings` in `input`, their field left empty.
pub(crate) fn receipts_of(input: &[u8], findings: Vec<Finding>) -> Vec<RedactionReceipt> {
    findings
        .into_iter()
        .filter_map(|f| {
            let secret = input.get(f.start..f.end)?;
            Some(RedactionReceipt {
                sha256_prefix: f.digest.unwrap_or_else(|| digest_prefix(secret)),
                rule_id: f.rule_id,
                kind: f.kind,
                field: String::new(),
                start: f.start as u64,
                end: f.end as u64,
            })
        })
        .collect()
}

/// `input` with each receipt's span (non-overlapping, ordered) replaced by its label.
pub(crate) fn splice(input: &[u8], receipts: &[RedactionReceipt]) -> Vec<u8> {
    Labelled::new(input, spans_of(receipts)).bytes
}

/// Each receipt's span and kind.
pub(crate) fn spans_of(
    receipts: &[RedactionReceipt],
) -> impl Iterator<Item = (usize, usize, &str)> + '_ {
    receipts
        .iter()
        .map(|r| (r.start as usize, r.end as usize, r.kind.as_str()))
}

/// A text with spans replaced by their labels, and where each label came from, so that what
/// is found in the labelled text can be placed in the original.
pub(crate) struct Labelled {
    pub(crate) bytes: Vec<u8>,
    /// For each label: its span in the original, then in `bytes`.
    spans: Vec<((usize, usize), (usize, usize))>,
}

impl Labelled {
    /// `spans` (start, end, kind) are disjoint and in text order; one that is not, or that
    /// does not fit `input`, is left as it was.
    pub(crate) fn new<'k>(
        input: &[u8],
        spans: impl IntoIterator<Item = (usize, usize, &'k str)>,
    ) -> Labelled {
        let mut bytes = Vec::with_capacity(input.len());
        let mut labels = Vec::new();
        let mut cursor = 0;
        for (start, end, kind) in spans {
            let (Some(before), Some(_)) = (input.get(cursor..start), input.get(start..end)) else {
                continue;
            };
            bytes.extend_from_slice(before);
            let at = bytes.len();
            write_label(&mut bytes, kind);
            labels.push(((start, end), (at, bytes.len())));
            cursor = end;
        }
        bytes.extend_from_slice(input.get(cursor..).unwrap_or_default());
        Labelled {
            bytes,
            spans: labels,
        }
    }

    /// The span in the original of `start..end` in the labelled text: a label it touches
    /// counts whole, as the secret the label replaced.
    pub(crate) fn original_span(&self, start: usize, end: usize) -> (usize, usize) {
        let from = match self.spans.partition_point(|(_, (s, _))| *s <= start) {
            0 => start,
            i => match self.spans.get(i - 1) {
                Some(((from, _), (_, to))) if start < *to => *from,
                Some(((_, from_end), (_, to))) => from_end + (start - to),
                None => start,
            },
        };
        let to = match self.spans.partition_point(|(_, (s, _))| *s < end) {
            0 => end,
            i => match self.spans.get(i - 1) {
                Some(((_, from_end), (_, to))) => from_end + end.saturating_sub(*to),
                None => end,
            },
        };
        (from, to)
    }
}

/// Appends the label a span of `kind` becomes.
pub(crate) fn write_label(out: &mut Vec<u8>, kind: &str) {
    out.extend_from_slice(b"[REDACTED:");
    out.extend_from_slice(kind.as_bytes());
    out.push(b']');
}

/// [`splice`] for a text: labels are ASCII and spans cut at character boundaries, so the
/// result is UTF-8 (lossy conversion only guards against a span that is not).
pub(crate) fn splice_text(text: &str, receipts: &[RedactionReceipt]) -> String {
    String::from_utf8_lossy(&splice(text.as_bytes(), receipts)).into_owned()
}

pub(crate) fn oversized_receipt(field: &str, bytes: &[u8]) -> RedactionReceipt {
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
pub(crate) fn digest_prefix(secret: &[u8]) -> String {
    finish_digest(Sha256::new_with_prefix(secret))
}

/// [`digest_prefix`] of everything `digest` was fed.
pub(crate) fn finish_digest(digest: Sha256) -> String {
    aa_core::hex::encode(&digest.finalize()[..DIGEST_PREFIX_BYTES])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231's test cases 2 (a short key) and 6 (a key longer than the block).
    #[test]
    fn hmac_is_rfc_4231s() {
        let hex = |bytes: [u8; 32]| aa_core::hex::encode(&bytes);
        assert_eq!(
            hex(hmac_sha256(
                b"Jefe",
                &[b"what do ya want", b" for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
