//! The audit log's integrity: canonical bytes, the hash chain of each stream, signed
//! checkpoints of the stream heads, and the verification `aasm audit verify` runs.
//!
//! A record's hash is `SHA-256(prev_hash || canonical(record))`, where the canonical form is
//! JSON with sorted keys and no white space over its stream, sequence, event id and event. The
//! first record of a stream follows 32 zero bytes.

use std::collections::BTreeMap;
use std::io::Write as _;

use aa_core::canonical::{canonical, write_str};
use aa_identity::{Keypair, PublicKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// The hash before a stream's first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// One event as the chain holds it; hashes are lowercase hex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    /// The runtime stream the event came from.
    pub stream_id: String,
    /// Its place in the stream, from 1, without gaps.
    pub sequence: u64,
    /// The event's id: sent again to the same place in its stream, it is a duplicate.
    pub event_id: String,
    /// The event, redacted, as the runtime enriched it.
    pub event: Value,
    /// The hash of the stream's previous record.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
}

impl Record {
    /// A record following `prev`, with its hash computed.
    pub fn new(
        stream_id: &str,
        sequence: u64,
        event_id: &str,
        event: Value,
        prev: &[u8; 32],
    ) -> Record {
        let hash = link_hash(prev, stream_id, sequence, event_id, &event);
        Record {
            stream_id: stream_id.to_owned(),
            sequence,
            event_id: event_id.to_owned(),
            event,
            prev_hash: hex(prev),
            hash: hex(&hash),
        }
    }

    /// What the hash of this record should be, from its contents and `prev_hash`.
    fn expected_hash(&self) -> Option<String> {
        let prev = unhex(&self.prev_hash)?;
        Some(hex(&link_hash(
            &prev,
            &self.stream_id,
            self.sequence,
            &self.event_id,
            &self.event,
        )))
    }

    fn describe(&self) -> String {
        format!(
            "stream {:?} sequence {} (event {:?})",
            self.stream_id, self.sequence, self.event_id
        )
    }
}

/// An event as read back from where it was stored (the database, an export): its value when
/// the text is exactly that value's canonical form, as the gateway writes and hashes it; else
/// the text itself, as a string, whose hash then names the record as edited. So an edit that
/// parses back to the same value (white space, a key given twice, which a reader that keeps
/// the first would see otherwise) is caught like any other.
pub fn stored_event(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(value) if aa_core::canonical::canonical_string(&value) == text => value,
        _ => Value::String(text.to_owned()),
    }
}

/// `SHA-256(prev || canonical({event, event_id, sequence, stream_id}))`.
pub fn link_hash(
    prev: &[u8; 32],
    stream_id: &str,
    sequence: u64,
    event_id: &str,
    event: &Value,
) -> [u8; 32] {
    link_hash_of_canonical(prev, stream_id, sequence, event_id, &canonical(event))
}

/// [`link_hash`] given the event's canonical bytes, for a caller that also stores them.
pub fn link_hash_of_canonical(
    prev: &[u8; 32],
    stream_id: &str,
    sequence: u64,
    event_id: &str,
    event: &[u8],
) -> [u8; 32] {
    // The envelope is written around the event's bytes, its keys in canonical order, so that
    // the event (the bulk of it) is neither copied into a new value nor serialised again.
    let mut rest = Vec::with_capacity(64 + event_id.len() + stream_id.len());
    rest.extend_from_slice(b",\"event_id\":");
    write_str(event_id, &mut rest);
    // Writing into a Vec cannot fail.
    let _ = write!(rest, ",\"sequence\":{sequence},\"stream_id\":");
    write_str(stream_id, &mut rest);
    rest.push(b'}');
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(b"{\"event\":");
    hasher.update(event);
    hasher.update(&rest);
    hasher.finalize().into()
}

/// The head of one stream: its last sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Head {
    /// The stream.
    pub stream_id: String,
    /// Its last sequence number.
    pub sequence: u64,
    /// The hash of that record (hex).
    pub hash: String,
}

/// The gateway's signed statement of every stream head at a moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checkpoint {
    /// Increasing from 1.
    pub id: u64,
    /// When it was made, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The stream heads, sorted by stream.
    pub heads: Vec<Head>,
    /// The signing gateway's key, as `did:key`.
    pub gateway_did: String,
    /// Ed25519 signature over the canonical form of the fields above (hex).
    pub signature: String,
}

impl Checkpoint {
    /// Signs the heads with the gateway's key.
    pub fn sign(gateway: &Keypair, id: u64, created_at_ms: i64, mut heads: Vec<Head>) -> Self {
        heads.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        let gateway_did = gateway.public().did();
        let signature =
            hex(&gateway.sign(&Self::signed_bytes(id, created_at_ms, &heads, &gateway_did)));
        Checkpoint {
            id,
            created_at_ms,
            heads,
            gateway_did,
            signature,
        }
    }

    fn signed_bytes(id: u64, created_at_ms: i64, heads: &[Head], gateway_did: &str) -> Vec<u8> {
        canonical(&serde_json::json!({
            "created_at_ms": created_at_ms,
            "gateway_did": gateway_did,
            "heads": heads,
            "id": id,
        }))
    }

    /// Whether the signature is the named gateway's over these fields.
    fn signature_holds(&self) -> bool {
        let Ok(key) = PublicKey::from_did(&self.gateway_did) else {
            return false;
        };
        let Some(signature) = aa_core::hex::decode(&self.signature) else {
            return false;
        };
        let bytes = Self::signed_bytes(self.id, self.created_at_ms, &self.heads, &self.gateway_did);
        key.verify(&bytes, &signature).is_ok()
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Streams seen.
    pub streams: u64,
    /// Checkpoints whose signatures and heads were checked.
    pub checkpoints: u64,
    /// Records past the last checkpoint's head of their stream: their chain holds, but no
    /// signature covers them yet (a running gateway signs every few seconds).
    pub unsigned: u64,
}

/// The first thing wrong with an audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Tampered(pub String);

/// Checks every stream's chain (sequence from 1 without gaps, each `prev_hash` the previous
/// record's hash, each hash matching its contents) and every checkpoint (its signature, its
/// signer when `trusted` names one, and each head present in the chain with that hash).
/// `records` must come ordered by stream, then sequence, as the store returns them.
pub fn verify(
    records: impl IntoIterator<Item = Record>,
    checkpoints: &[Checkpoint],
    trusted: Option<&PublicKey>,
) -> Result<Verified, Tampered> {
    let mut verifier = Verifier::new(checkpoints, trusted);
    for record in records {
        if verifier.check(record).is_err() {
            break;
        }
    }
    verifier.finish()
}

/// Every checkpointed (stream, sequence), with the hash it claims and the checkpoint's id;
/// ticked off as the records are seen.
type Claimed = BTreeMap<(String, u64), (String, u64)>;

/// [`verify`] a record at a time, so that a log is checked as it is read and never held
/// whole: the checkpoints first, then every record in stream order, then
/// [`finish`](Verifier::finish). The first thing found wrong is kept: every later check
/// returns it, and so does `finish`, so a reader may stop at the first error or read on.
#[derive(Debug)]
pub struct Verifier {
    verified: Verified,
    claimed: Claimed,
    /// Each stream's highest sequence a checkpoint names.
    signed_through: BTreeMap<String, u64>,
    previous: Option<Record>,
    tampered: Option<Tampered>,
}

impl Verifier {
    /// Checks the checkpoints' signatures (and signer, when `trusted` names one) and notes
    /// the heads they claim, for the records to match.
    pub fn new(checkpoints: &[Checkpoint], trusted: Option<&PublicKey>) -> Verifier {
        let (verified, claimed, tampered) = match read_checkpoints(checkpoints, trusted) {
            Ok((verified, claimed)) => (verified, claimed, None),
            Err(tampered) => (Verified::default(), BTreeMap::new(), Some(tampered)),
        };
        let mut signed_through = BTreeMap::new();
        for (stream, sequence) in claimed.keys() {
            let through = signed_through.entry(stream.clone()).or_insert(0);
            *through = (*through).max(*sequence);
        }
        Verifier {
            verified,
            claimed,
            signed_through,
            previous: None,
            tampered,
        }
    }

    /// Checks the next record, in stream order, against the one before it and the heads.
    pub fn check(&mut self, record: Record) -> Result<(), Tampered> {
        if let Some(tampered) = &self.tampered {
            return Err(tampered.clone());
        }
        self.check_record(record).inspect_err(|tampered| {
            self.tampered = Some(tampered.clone());
        })
    }

    fn check_record(&mut self, record: Record) -> Result<(), Tampered> {
        // Every stream is a runtime's or the gateway's own, named.
        if record.stream_id.is_empty() {
            return Err(Tampered(format!(
                "{}: has no stream id (inserted)",
                record.describe()
            )));
        }
        let previous = self.previous.as_ref();
        let same_stream = previous.is_some_and(|p| p.stream_id == record.stream_id);
        // Streams come one after another in order of their ids: a stream seen again after
        // another was spliced in.
        if let Some(p) = previous
            && !same_stream
            && record.stream_id < p.stream_id
        {
            return Err(Tampered(format!(
                "{}: stream comes after {:?}: out of order or duplicated",
                record.describe(),
                p.stream_id
            )));
        }
        let (expected_sequence, expected_prev) = match previous {
            Some(p) if same_stream => (p.sequence + 1, p.hash.clone()),
            _ => (1, hex(&GENESIS)),
        };
        if !same_stream {
            self.verified.streams += 1;
        }
        if record.sequence != expected_sequence {
            let what = if record.sequence > expected_sequence {
                "records before it are missing or out of order"
            } else {
                "it is out of order or duplicated"
            };
            return Err(Tampered(format!(
                "{}: expected sequence {expected_sequence}: {what}",
                record.describe()
            )));
        }
        if record.prev_hash != expected_prev {
            return Err(Tampered(format!(
                "{}: does not link to the previous record (deleted, reordered or rewritten)",
                record.describe()
            )));
        }
        if record.expected_hash().as_deref() != Some(record.hash.as_str()) {
            return Err(Tampered(format!(
                "{}: hash does not match its contents (edited)",
                record.describe()
            )));
        }
        if let Some((hash, checkpoint)) = self
            .claimed
            .remove(&(record.stream_id.clone(), record.sequence))
            && hash != record.hash
        {
            return Err(Tampered(format!(
                "{}: differs from checkpoint {checkpoint} (rewritten)",
                record.describe()
            )));
        }
        self.verified.records += 1;
        if self
            .signed_through
            .get(&record.stream_id)
            .is_none_or(|&through| record.sequence > through)
        {
            self.verified.unsigned += 1;
        }
        self.previous = Some(record);
        Ok(())
    }

    /// What was checked, once every record was: a head a checkpoint names that no record
    /// matched means the log was cut short.
    pub fn finish(self) -> Result<Verified, Tampered> {
        if let Some(tampered) = self.tampered {
            return Err(tampered);
        }
        if let Some(((stream, sequence), (_, checkpoint))) = self.claimed.into_iter().next() {
            return Err(Tampered(format!(
                "stream {stream:?} sequence {sequence}: named by checkpoint {checkpoint} but \
                 missing (truncated or deleted)"
            )));
        }
        Ok(self.verified)
    }
}

/// Checks that a log's `checkpoints` hold `kept`, a checkpoint kept outside the log (an
/// operator's copy, from `aasm audit checkpoint` or the HTTP API): its signature holds (and is
/// `trusted`'s when named) and the log holds it unchanged. Deleting the newest checkpoints
/// together with the records after an older one leaves a log whose own checkpoints all
/// verify; only a copy kept elsewhere shows what it held. A log holding `kept` is then
/// checked against its heads by [`verify`].
pub fn check_kept(
    checkpoints: &[Checkpoint],
    kept: &Checkpoint,
    trusted: Option<&PublicKey>,
) -> Result<(), Tampered> {
    check_signed(kept, trusted)
        .map_err(|Tampered(why)| Tampered(format!("the copy kept outside the log of {why}")))?;
    match checkpoints.iter().find(|c| c.id == kept.id) {
        Some(held) if held == kept => Ok(()),
        Some(_) => Err(Tampered(format!(
            "checkpoint {}: differs from the copy kept outside the log (rewritten)",
            kept.id
        ))),
        None => Err(Tampered(format!(
            "checkpoint {}, kept outside the log, is missing from it (its last is {}): \
             truncated",
            kept.id,
            checkpoints
                .last()
                .map_or("none".to_owned(), |c| format!("checkpoint {}", c.id))
        ))),
    }
}

/// Checks a checkpoint's signature, and its signer when `trusted` names one.
fn check_signed(checkpoint: &Checkpoint, trusted: Option<&PublicKey>) -> Result<(), Tampered> {
    if !checkpoint.signature_holds() {
        return Err(Tampered(format!(
            "checkpoint {}: signature does not verify",
            checkpoint.id
        )));
    }
    if let Some(trusted) = trusted
        && checkpoint.gateway_did != trusted.did()
    {
        return Err(Tampered(format!(
            "checkpoint {}: signed by {}, not by this gateway ({})",
            checkpoint.id,
            checkpoint.gateway_did,
            trusted.did()
        )));
    }
    Ok(())
}

/// The checkpoints' signatures and signers checked, and the heads they claim.
fn read_checkpoints(
    checkpoints: &[Checkpoint],
    trusted: Option<&PublicKey>,
) -> Result<(Verified, Claimed), Tampered> {
    let mut verified = Verified::default();
    let mut claimed = BTreeMap::new();
    for (expected, checkpoint) in (1..).zip(checkpoints) {
        // Numbered from 1 without gaps: one taken out of the middle is named.
        if checkpoint.id != expected {
            return Err(Tampered(format!(
                "checkpoint {expected} is missing (found checkpoint {} in its place)",
                checkpoint.id
            )));
        }
        check_signed(checkpoint, trusted)?;
        for head in &checkpoint.heads {
            claimed.insert(
                (head.stream_id.clone(), head.sequence),
                (head.hash.clone(), checkpoint.id),
            );
        }
        verified.checkpoints += 1;
    }
    Ok((verified, claimed))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    aa_core::hex::encode(bytes)
}

/// A 32-byte hash from hex.
pub fn unhex(text: &str) -> Option<[u8; 32]> {
    aa_core::hex::decode(text)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(stream: &str, n: u64) -> Vec<Record> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|sequence| {
                let record = Record::new(
                    stream,
                    sequence,
                    &format!("{stream}-{sequence}"),
                    json!({"tool": "shell", "n": sequence, "args": {"b": 1, "a": [1, "x"]}}),
                    &prev,
                );
                prev = unhex(&record.hash).unwrap();
                record
            })
            .collect()
    }

    /// The hash is the documented one: over the canonical form of the whole envelope, here
    /// built as a value, with keys and strings that need escaping or sort by bytes.
    #[test]
    fn link_hash_is_taken_over_the_canonical_envelope() {
        let event = json!({"z": "é\n\"", "a": {"é": [1, 2.5, null], "b": true}, "A": -3});
        let (stream, id) = ("runtime \"one\"", "ev\\1");
        let prev = [7u8; 32];
        let envelope = json!({
            "stream_id": stream, "sequence": u64::MAX, "event_id": id, "event": event,
        });
        let mut hasher = Sha256::new();
        hasher.update(prev);
        hasher.update(canonical(&envelope));
        let want: [u8; 32] = hasher.finalize().into();
        assert_eq!(link_hash(&prev, stream, u64::MAX, id, &event), want);
    }

    #[test]
    fn an_intact_log_verifies() {
        let gateway = Keypair::generate().unwrap();
        let mut records = chain("a", 5);
        records.extend(chain("b", 3));
        let heads = vec![
            Head {
                stream_id: "a".into(),
                sequence: 4,
                hash: records[3].hash.clone(),
            },
            Head {
                stream_id: "b".into(),
                sequence: 3,
                hash: records[7].hash.clone(),
            },
        ];
        let checkpoint = Checkpoint::sign(&gateway, 1, 1_000, heads);
        let verified = verify(records, &[checkpoint], Some(&gateway.public())).unwrap();
        assert_eq!(
            verified,
            Verified {
                records: 8,
                streams: 2,
                checkpoints: 1,
                // The fifth record of stream a came after the checkpoint.
                unsigned: 1,
            }
        );
    }

    #[test]
    fn a_verifier_keeps_the_first_thing_found_wrong() {
        let mut records = chain("a", 4);
        records[1].event["tool"] = json!("rm");
        let mut verifier = Verifier::new(&[], None);
        let results: Vec<_> = records.into_iter().map(|r| verifier.check(r)).collect();
        let first = results[1].clone().unwrap_err();
        assert!(first.0.contains("sequence 2"), "{first}");
        assert_eq!(results[0], Ok(()));
        assert_eq!(results[2..], [Err(first.clone()), Err(first.clone())]);
        assert_eq!(verifier.finish(), Err(first));
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let edited = {
            let mut r = chain("a", 4);
            r[2].event["tool"] = json!("rm");
            r
        };
        let deleted = {
            let mut r = chain("a", 4);
            r.remove(1);
            r
        };
        let reordered = {
            let mut r = chain("a", 4);
            r.swap(1, 2);
            r
        };
        let spliced = {
            // A whole stream again after another, each copy a chain of its own.
            let mut r = chain("a", 2);
            r.extend(chain("b", 2));
            r.extend(chain("a", 2));
            r
        };
        let relinked = {
            // An edit with its own hash recomputed still breaks the next link.
            let mut r = chain("a", 4);
            r[1].event["tool"] = json!("rm");
            let prev = unhex(&r[1].prev_hash).unwrap();
            r[1] = Record::new("a", 2, "a-2", r[1].event.clone(), &prev);
            r
        };
        for (records, expected) in [
            (
                edited,
                "stream \"a\" sequence 3 (event \"a-3\"): hash does not match its contents (edited)",
            ),
            (
                deleted,
                "stream \"a\" sequence 3 (event \"a-3\"): expected sequence 2: records before it are missing or out of order",
            ),
            (
                reordered,
                "stream \"a\" sequence 3 (event \"a-3\"): expected sequence 2: records before it are missing or out of order",
            ),
            (
                spliced,
                "stream \"a\" sequence 1 (event \"a-1\"): stream comes after \"b\": out of order or duplicated",
            ),
            (
                relinked,
                "stream \"a\" sequence 3 (event \"a-3\"): does not link to the previous record (deleted, reordered or rewritten)",
            ),
        ] {
            assert_eq!(verify(records, &[], None).unwrap_err().0, expected);
        }
    }

    /// The head of stream "a" at its `n`th record.
    fn head_of(records: &[Record], n: usize) -> Head {
        Head {
            stream_id: "a".into(),
            sequence: n as u64,
            hash: records[n - 1].hash.clone(),
        }
    }

    #[test]
    fn checkpoints_catch_truncation_rewrites_and_forgeries() {
        let gateway = Keypair::generate().unwrap();
        let records = chain("a", 5);
        let head = |n: usize| head_of(&records, n);
        let checkpoint = Checkpoint::sign(&gateway, 1, 1_000, vec![head(5)]);
        // Truncated after the checkpoint.
        let err = verify(
            records[..3].to_vec(),
            std::slice::from_ref(&checkpoint),
            None,
        )
        .unwrap_err();
        assert!(err.0.contains("named by checkpoint 1 but missing"), "{err}");
        // The whole stream rewritten and rehashed from the start.
        let mut rewritten = chain("a", 5);
        rewritten[0] = Record::new("a", 1, "a-1", json!({"tool": "other"}), &GENESIS);
        let mut prev = unhex(&rewritten[0].hash).unwrap();
        for r in rewritten.iter_mut().skip(1) {
            *r = Record::new("a", r.sequence, &r.event_id, r.event.clone(), &prev);
            prev = unhex(&r.hash).unwrap();
        }
        let err = verify(rewritten, std::slice::from_ref(&checkpoint), None).unwrap_err();
        assert!(
            err.0.contains("differs from checkpoint 1 (rewritten)"),
            "{err}"
        );
        // A checkpoint with a changed head, or signed by someone else.
        let mut forged = checkpoint.clone();
        forged.heads[0].sequence = 4;
        let err = verify(records.clone(), &[forged], None).unwrap_err();
        assert_eq!(err.0, "checkpoint 1: signature does not verify");
        let stranger = Keypair::generate().unwrap();
        let theirs = Checkpoint::sign(&stranger, 1, 1_000, vec![head(5)]);
        let err = verify(records.clone(), &[theirs], Some(&gateway.public())).unwrap_err();
        assert!(err.0.contains("not by this gateway"), "{err}");
        // A checkpoint taken out of the middle.
        let later = Checkpoint::sign(&gateway, 3, 3_000, vec![head(5)]);
        let err = verify(records, &[checkpoint, later], None).unwrap_err();
        assert_eq!(
            err.0,
            "checkpoint 2 is missing (found checkpoint 3 in its place)"
        );
    }

    /// The newest checkpoint deleted with the records after the one before it: the log left
    /// verifies on its own, and only a copy of that checkpoint kept elsewhere shows the cut.
    #[test]
    fn a_checkpoint_kept_outside_the_log_catches_a_cut_back_to_an_older_one() {
        let gateway = Keypair::generate().unwrap();
        let records = chain("a", 5);
        let head = |n: usize| head_of(&records, n);
        let first = Checkpoint::sign(&gateway, 1, 1_000, vec![head(3)]);
        let second = Checkpoint::sign(&gateway, 2, 2_000, vec![head(5)]);
        let whole = [first.clone(), second.clone()];
        assert_eq!(check_kept(&whole, &second, Some(&gateway.public())), Ok(()));
        assert_eq!(check_kept(&whole, &first, None), Ok(()));

        let cut = std::slice::from_ref(&first);
        assert!(verify(records[..3].to_vec(), cut, Some(&gateway.public())).is_ok());
        assert_eq!(
            check_kept(cut, &second, Some(&gateway.public()))
                .unwrap_err()
                .0,
            "checkpoint 2, kept outside the log, is missing from it (its last is checkpoint \
             1): truncated"
        );
        assert_eq!(
            check_kept(&[], &second, None).unwrap_err().0,
            "checkpoint 2, kept outside the log, is missing from it (its last is none): \
             truncated"
        );
        // Rewritten in the log and signed again by the gateway's key (a stolen key): the copy
        // still differs.
        let resigned = Checkpoint::sign(&gateway, 2, 2_500, vec![head(4)]);
        assert_eq!(
            check_kept(&[first.clone(), resigned], &second, None)
                .unwrap_err()
                .0,
            "checkpoint 2: differs from the copy kept outside the log (rewritten)"
        );
        // A copy that is not what the gateway signed proves nothing.
        let mut forged = second.clone();
        forged.heads[0].sequence = 4;
        assert_eq!(
            check_kept(&whole, &forged, None).unwrap_err().0,
            "the copy kept outside the log of checkpoint 2: signature does not verify"
        );
        let stranger = Keypair::generate().unwrap();
        let theirs = Checkpoint::sign(&stranger, 2, 2_000, vec![head(5)]);
        assert!(
            check_kept(&whole, &theirs, Some(&gateway.public()))
                .unwrap_err()
                .0
                .contains("not by this gateway")
        );
    }
}
