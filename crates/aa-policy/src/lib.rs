//! The policy engine: YAML policy documents are parsed, validated (every error located at
//! `line:col` and naming its key), compiled once, and evaluated against requests.
//!
//! - [`policy`]: loading — [`Policy::parse`] turns YAML into compiled [`Policy`] values.
//! - [`eval`]: [`Policy::evaluate`] answers one [`Request`] with an [`aa_core::Verdict`].
//! - [`set`]: [`PolicySet`] cascades global, team and agent policies; the most restrictive wins;
//!   a spawned agent's answer is bounded by its ancestors'.
//! - [`budget`]: the day and month windows a budget caps, in its time zone.
//! - [`prices`]: the [`PriceTable`] LLM calls are charged by ([`BUILTIN_PRICES`] ships with
//!   the gateway).
//! - [`testing`]: policy test files (cases of agent, action and expected decision) and their runner.
//! - `condition`, `native`, `pattern`, `schedule`, `yaml`, `suggest`: CEL conditions (string,
//!   integer and `matches` tests of the common shape evaluated natively, the rest by the
//!   interpreter),
//!   globs/hosts/paths, active hours, the located YAML reader, did-you-mean hints.
//! - [`error`]: [`PolicyError`] and its located [`Diagnostic`]s.
//!
//! This crate does no IO: callers read files and the clock and pass text and time in.
//! Evaluation never panics and never fails: any problem (a condition that cannot be evaluated,
//! a malformed path) becomes a deny that says why.

pub mod budget;
mod condition;
pub mod error;
pub mod eval;
mod native;
mod pattern;
pub mod policy;
pub mod prices;
pub mod schedule;
pub mod set;
mod suggest;
pub mod testing;
mod yaml;

pub use budget::{Cap, Period, Window};
pub use error::{Diagnostic, PolicyError};
pub use eval::Request;
pub use policy::{
    API_VERSION, Budget, CredentialAction, CustomPattern, DataRules, ExceedAction, Policy,
    RateLimits, Scope, ToolRule,
};
pub use prices::{BUILTIN_PRICES, Price, PriceTable, Priced, Reserve};
pub use set::{Account, DEFAULT_APPROVAL_TIMEOUT_S, PolicySet};
pub use testing::{Expectation, TestCase, TestFailure, TestSuite};
pub use yaml::Loc;
