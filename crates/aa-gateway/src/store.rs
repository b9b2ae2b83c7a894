//! Storage behind one trait, so the gateway's logic does not know the database. Embedded
//! SQLite ([`SqliteStore`](crate::sqlite::SqliteStore)) is the default.

use std::future::Future;

use aa_core::{Approval, ApprovalStatus, Suspension, TopologyEdge};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::{Checkpoint, Head, Record};
use crate::error::GatewayError;

/// An event arriving from a runtime stream, already redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id; a second append with the same id is a duplicate, not an error.
    pub event_id: String,
    /// The runtime's sequence number: the next after the stream's head.
    pub sequence: u64,
    /// The event.
    pub event: Value,
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

/// Where the gateway keeps its state.
pub trait Store: Send + Sync + 'static {
    /// Appends events to `stream_id` in one transaction: each event either is a duplicate by
    /// id or carries the sequence after the stream's head; anything else fails the whole
    /// batch with [`GatewayError::Sequence`], appending nothing.
    fn append_events(
        &self,
        stream_id: &str,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Appended, GatewayError>> + Send;

    /// The last record of every stream.
    fn heads(&self) -> impl Future<Output = Result<Vec<Head>, GatewayError>> + Send;

    /// Records ordered by stream then sequence, from the `after`-th (0-based) on, at most
    /// `limit`.
    fn records(
        &self,
        after: u64,
        limit: u64,
    ) -> impl Future<Output = Result<Vec<Record>, GatewayError>> + Send;

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

    /// Records a new approval; returns false (changing nothing) when its id exists already.
    fn insert_approval(
        &self,
        approval: Approval,
    ) -> impl Future<Output = Result<bool, GatewayError>> + Send;

    /// One approval.
    fn approval(
        &self,
        approval_id: &str,
    ) -> impl Future<Output = Result<Option<Approval>, GatewayError>> + Send;

    /// Every approval, newest first.
    fn approvals(&self) -> impl Future<Output = Result<Vec<Approval>, GatewayError>> + Send;

    /// Replaces an approval only if it is still `from` and unused (compare and set, so two
    /// deciders or two redeemers cannot both win); returns whether it did.
    fn update_approval(
        &self,
        approval: Approval,
        from: ApprovalStatus,
    ) -> impl Future<Output = Result<bool, GatewayError>> + Send;

    /// Records an operator's suspension of an agent, replacing any it had.
    fn put_suspension(
        &self,
        suspension: Suspension,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// Lifts the suspensions of `agent_ids`; returns the ids that had one.
    fn remove_suspensions(
        &self,
        agent_ids: Vec<String>,
    ) -> impl Future<Output = Result<Vec<String>, GatewayError>> + Send;

    /// Every suspension in force, by agent id.
    fn suspensions(&self) -> impl Future<Output = Result<Vec<Suspension>, GatewayError>> + Send;

    /// Records edges agents reported; an edge already known (same ends and kind) is kept as
    /// first seen.
    fn put_edges(
        &self,
        edges: Vec<TopologyEdge>,
    ) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// Every edge, oldest first: the `spawned` edges of registrations and the reported ones.
    fn edges(&self) -> impl Future<Output = Result<Vec<TopologyEdge>, GatewayError>> + Send;
}
