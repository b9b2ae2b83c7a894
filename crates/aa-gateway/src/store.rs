//! Storage behind one trait, so the gateway's logic does not know the database. Embedded
//! SQLite ([`SqliteStore`](crate::sqlite::SqliteStore)) is the default.

use std::future::Future;

use aa_core::{Approval, ApprovalStatus, Suspension, TopologyEdge};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::{Checkpoint, Head, Record};
use crate::error::GatewayError;

/// An event arriving from a runtime stream, already redacted, in the canonical form it is
/// stored and hashed in; or one sent again, known by its id alone.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id; a second append with the same id is a duplicate, not an error. A resend's is
    /// the id it came with.
    pub event_id: String,
    /// The runtime's sequence number: the next after the stream's head.
    pub sequence: u64,
    /// `None` for a resend, which is never stored.
    canonical: Option<String>,
    /// A resend's id as the gateway's scanner digests it, now and before digests were keyed
    /// ([`aa_security::Scanner::id_digests`]): the other forms it may be stored in.
    digested: Vec<String>,
}

impl NewEvent {
    /// `event` serialised here, where it was built, rather than in the store's transaction,
    /// so that the value is dropped on the thread that allocated it.
    pub fn new(event_id: String, sequence: u64, event: &Value) -> NewEvent {
        NewEvent {
            event_id,
            sequence,
            canonical: Some(aa_core::canonical::canonical_string(event)),
            digested: Vec::new(),
        }
    }

    /// An event its runtime sends again, at or below its stream's head as the gateway last
    /// saw it, with the id it came with, and that id's `digested` forms: held if the store has
    /// its stream's event at that sequence under any (the forms an id is stored in, whichever
    /// the scanner's rules and key at the time chose); else refused as out of sequence, never
    /// stored: its runtime sends it again from where the head is, and it is checked then.
    pub fn resent(id: &str, digested: Vec<String>, sequence: u64) -> NewEvent {
        NewEvent {
            event_id: id.to_owned(),
            sequence,
            canonical: None,
            digested,
        }
    }

    /// The event as canonical JSON; `None` for a resend.
    pub fn canonical(&self) -> Option<&str> {
        self.canonical.as_deref()
    }

    /// Whether this is the event a store holds under `stored_id` at its place.
    pub fn is_held_as(&self, stored_id: &str) -> bool {
        stored_id == self.event_id || self.digested.iter().any(|d| d == stored_id)
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    /// Newly appended.
    pub accepted: u64,
    /// Already present (same event id).
    pub duplicates: u64,
}

/// A registered agent and its lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentRecord {
    /// Its id.
    pub agent_id: String,
    /// Its key, as `did:key`.
    pub did: String,
    /// Display name.
    pub name: String,
    /// e.g. `langchain`, `custom`.
    pub framework: String,
    /// Its team, if any.
    pub team_id: Option<String>,
    /// The agent that spawned it, if any.
    pub parent_agent_id: Option<String>,
    /// Why it was spawned.
    pub delegation_reason: Option<String>,
    /// The parent's tool that spawned it.
    pub spawned_by_tool: Option<String>,
    /// 0 for a root agent.
    pub depth: u32,
    /// First registration, milliseconds since the Unix epoch.
    pub registered_at_ms: i64,
    /// Last registration or heartbeat.
    pub last_seen_ms: i64,
    /// The id of the credential token issued last; older tokens are superseded.
    pub token_id: String,
}

impl AgentRecord {
    /// The agent as policy sees it.
    pub fn context(&self) -> aa_core::AgentContext {
        aa_core::AgentContext {
            id: self.agent_id.clone(),
            team: self.team_id.clone(),
            depth: self.depth,
            parent: self.parent_agent_id.clone(),
        }
    }
}

/// An LLM call's estimated cost, held against accounts until its usage settles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReservation {
    /// Its id.
    pub spend_id: String,
    /// The calling agent.
    pub agent_id: String,
    /// The model, as the call named it.
    pub model: String,
    /// When it was made; the windows it counts in follow from this.
    pub at_ms: i64,
    /// The estimated cost.
    pub estimate_micros: u64,
    /// False when the model was priced at the table's `unknown` price.
    pub listed_price: bool,
    /// Every account it is charged to (`agent:<id>`, `team:<id>`).
    pub accounts: Vec<String>,
}

/// One cap a reservation is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapCheck {
    /// The account capped.
    pub account: String,
    /// The window's start; spend charged from then counts.
    pub since_ms: i64,
    /// The window's end (exclusive).
    pub until_ms: i64,
    /// The cap.
    pub cap_micros: u64,
    /// False for a cap that is only watched (`alert`, or observe mode): passing it does not
    /// refuse the reservation.
    pub enforced: bool,
}

/// What a reservation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveOutcome {
    /// True when it was recorded: no enforced cap would be passed.
    pub reserved: bool,
    /// For each cap, in order: what its window held before this call (settled and held).
    pub spent_micros: Vec<u64>,
}

/// An LLM call's reported usage, priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The usage event; settling is idempotent by it.
    pub event_id: String,
    /// The agent that made the call.
    pub agent_id: String,
    /// The model, as reported.
    pub model: String,
    /// When the usage was reported; an unreserved call counts from then.
    pub at_ms: i64,
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Their cost.
    pub cost_micros: u64,
    /// False when the model was priced at the table's `unknown` price.
    pub listed_price: bool,
    /// Every account an unreserved call is charged to.
    pub accounts: Vec<String>,
    /// Only a reservation made since then can be settled by this usage; an older one is taken
    /// for a call that never reported, and stays charged at its estimate.
    pub open_since_ms: i64,
}

/// What settling a usage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The spend record it settled or created.
    pub spend_id: String,
    /// The estimate it replaced, when it settled a reservation.
    pub estimate_micros: Option<u64>,
    /// False when this usage had been settled before (nothing changed).
    pub fresh: bool,
}

/// Spend on one model in one account and window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpend {
    /// The model, as calls named it.
    pub model: String,
    /// Calls reserved or reported.
    pub calls: u64,
    /// Settled cost.
    pub settled_micros: u64,
    /// Reservations not settled yet, at their estimate.
    pub held_micros: u64,
    /// False when any of its calls was priced at the table's `unknown` price.
    pub listed_price: bool,
}

/// A credential token that stopped working before its expiry: superseded by a new
/// registration of its agent, or revoked by deregistration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedToken {
    /// Whose.
    pub agent_id: String,
    /// Its `token_id` claim.
    pub token_id: String,
    /// By when it expires anyway (at the latest), milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Where the gateway keeps its state.
pub trait Store: Send + Sync + 'static {
    /// Appends events to `stream_id` in one transaction: each event either is a duplicate (the
    /// stream already holds its id at its sequence; on the gateway's own stream, anywhere) or
    /// carries the sequence after the stream's head; anything else fails the whole batch with
    /// [`GatewayError::Sequence`], appending nothing and naming the place after the head as
    /// stored.
    fn append_events(
        &self,
        stream_id: &str,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Appended, GatewayError>> + Send;

    /// The last record of every stream.
    fn heads(&self) -> impl Future<Output = Result<Vec<Head>, GatewayError>> + Send;

    /// Records ordered by stream then sequence, from the `after`-th (0-based) on, at most
    /// `limit`. Each page costs as much as the records it skips: to read the whole log, use
    /// [`records_after`](Store::records_after).
    fn records(
        &self,
        after: u64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<Record>, GatewayError>> + Send;

    /// Records ordered by stream then sequence, after the record at `after` (a stream id and
    /// sequence; from the first when `None`), at most `limit`.
    fn records_after(
        &self,
        after: Option<(String, u64)>,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<Record>, GatewayError>> + Send;

    /// Records in the order they were appended, after position `position` (0: from the
    /// first), at most `limit`, each with its position.
    fn appended_since(
        &self,
        position: u64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<(u64, Record)>, GatewayError>> + Send;

    /// The last `count` records appended, oldest first, each with its position.
    fn last_appended(
        &self,
        count: u64,
    ) -> impl Future<Output = Result<Vec<(u64, Record)>, GatewayError>> + Send;

    /// Signs nothing itself: stores a checkpoint the caller signed.
    fn add_checkpoint(
        &self,
        checkpoint: Checkpoint,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// The newest checkpoint, if any.
    fn last_checkpoint(
        &self,
    ) -> impl Future<Output = Result<Option<Checkpoint>, GatewayError>> + Send;

    /// Every checkpoint, oldest first.
    fn checkpoints(&self) -> impl Future<Output = Result<Vec<Checkpoint>, GatewayError>> + Send;

    /// Creates or updates an agent, and records its parent → child edge.
    fn put_agent(
        &self,
        agent: AgentRecord,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// One agent.
    fn agent(
        &self,
        agent_id: &str,
    ) -> impl Future<Output = Result<Option<AgentRecord>, GatewayError>> + Send;

    /// Every agent, by id.
    fn agents(&self) -> impl Future<Output = Result<Vec<AgentRecord>, GatewayError>> + Send;

    /// How many agents are registered, without reading them.
    fn agent_count(&self) -> impl Future<Output = Result<u64, GatewayError>> + Send;

    /// Records a new approval, and `step` on the gateway's own stream in the same transaction;
    /// returns false (changing nothing) when its id exists already.
    fn insert_approval(
        &self,
        approval: Approval,
        step: NewEvent,
    ) -> impl Future<Output = Result<bool, GatewayError>> + Send;

    /// One approval.
    fn approval(
        &self,
        approval_id: &str,
    ) -> impl Future<Output = Result<Option<Approval>, GatewayError>> + Send;

    /// Every approval, newest first.
    fn approvals(&self) -> impl Future<Output = Result<Vec<Approval>, GatewayError>> + Send;

    /// The approvals still pending (some perhaps past their expiry), oldest first.
    fn pending_approvals(&self)
    -> impl Future<Output = Result<Vec<Approval>, GatewayError>> + Send;

    /// Replaces an approval only if it is still `from` and unused (compare and set, so two
    /// deciders or two redeemers cannot both win), and appends `step` to the gateway's own
    /// stream in the same transaction; returns whether it did.
    fn update_approval(
        &self,
        approval: Approval,
        from: ApprovalStatus,
        step: NewEvent,
    ) -> impl Future<Output = Result<bool, GatewayError>> + Send;

    /// Records an operator's suspension of an agent, replacing any it had, and `step` on the
    /// gateway's own stream in the same transaction.
    fn put_suspension(
        &self,
        suspension: Suspension,
        step: NewEvent,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// Lifts the suspensions of `agent_ids`, each of which must have one (else
    /// [`GatewayError::Conflict`], changing nothing), and appends `step` to the gateway's own
    /// stream in the same transaction.
    fn remove_suspensions(
        &self,
        agent_ids: Vec<String>,
        step: NewEvent,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// Every suspension in force, by agent id.
    fn suspensions(&self) -> impl Future<Output = Result<Vec<Suspension>, GatewayError>> + Send;

    /// Records a token revoked before its expiry, and forgets those expired by `now_ms`.
    fn put_revoked(
        &self,
        token: RevokedToken,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// The tokens revoked and not yet expired at `now_ms`, by agent id.
    fn revoked(
        &self,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<RevokedToken>, GatewayError>> + Send;

    /// Records edges agents reported; an edge already known (same ends and kind) is kept as
    /// first seen.
    fn put_edges(
        &self,
        edges: Vec<TopologyEdge>,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// Every edge, oldest first: the `spawned` edges of registrations and the reported ones.
    fn edges(&self) -> impl Future<Output = Result<Vec<TopologyEdge>, GatewayError>> + Send;

    /// Checks `caps` and records `reservation` in one atomic step: it is recorded unless it
    /// would take an enforced cap past its limit, so concurrent reservations can never
    /// together pass one. Each window's total is kept as spend is charged, so the check does
    /// not grow with the spend already in the window.
    fn reserve(
        &self,
        reservation: NewReservation,
        caps: Vec<CapCheck>,
    ) -> impl Future<Output = Result<ReserveOutcome, GatewayError>> + Send;

    /// Settles `usage`: replaces the agent's oldest open reservation made since
    /// `usage.open_since_ms` (for the same model if it has one) with the priced usage, or,
    /// with none, charges the usage by itself.
    /// Settling the same usage event again changes nothing.
    fn settle(&self, usage: Usage) -> impl Future<Output = Result<Settled, GatewayError>> + Send;

    /// Spend charged to `account` between `since_ms` (inclusive) and `until_ms`, by model.
    fn spend(
        &self,
        account: String,
        since_ms: i64,
        until_ms: i64,
    ) -> impl Future<Output = Result<Vec<ModelSpend>, GatewayError>> + Send;
}
