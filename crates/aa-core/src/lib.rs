//! Domain types shared by every Agent Assembly crate.
//!
//! - [`agent`]: who acts — an agent's identity, team and lineage — and operators'
//!   suspensions of agents and their subtrees.
//! - [`action`]: what an agent wants to do (tool call, LLM call, network call, file operation,
//!   process exec, agent spawn).
//! - [`decision`]: the answer — allow, deny or pending — with the rule that decided it, and the
//!   enforcement [`Mode`](decision::Mode) it applies under.
//! - [`event`]: what is recorded — audit events, redaction receipts, approvals, topology edges.
//! - [`canonical`]: canonical JSON, the form hashes and signatures are taken over.
//! - [`hex`]: lowercase hex for ids, hashes and digests.
//! - [`ids`]: event ids unique per generator and sorted in the order they were made.
//! - [`lanes`]: sixteen bytes classified at once (SIMD where there is some).
//! - [`pattern`]: custom patterns a policy adds to the scanner.
//! - [`rate`]: call-rate limits by GCRA, keyed, with the time as an input.
//! - [`error`]: the crate's error type.
//!
//! This crate does no IO and holds no policy logic: it is the vocabulary the other crates speak.
//! Every type here serialises to the JSON shapes the CLI and SDKs use.

pub mod action;
pub mod agent;
pub mod canonical;
pub mod decision;
pub mod error;
pub mod event;
pub mod hex;
pub mod ids;
pub mod lanes;
pub mod pattern;
pub mod rate;

pub use action::{Action, ActionKind, FileOperation};
pub use agent::{AgentContext, AgentRegistration, Lineage, Suspension, Suspensions, suspension_of};
pub use decision::{Decision, Mode, Verdict};
pub use error::CoreError;
pub use event::{
    Approval, ApprovalStatus, AuditEvent, EdgeKind, EventKind, Origin, RedactionReceipt,
    TopologyEdge,
};
pub use pattern::CustomPattern;
