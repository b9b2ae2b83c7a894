//! Test and benchmark support shared by the workspace's crates and `xtask`.
//!
//! - [`corpus`]: deterministic text corpora — clean text (prose, code, logs full of decoys:
//!   UUIDs, hashes, versions, timestamps) and the same with secrets planted at known places —
//!   for the scanner's benchmarks and its recall comparison.
//!
//! Nothing here is used by production code.

pub mod corpus;
