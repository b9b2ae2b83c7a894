//! Integration tests of the gateway crate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[cfg(target_os = "linux")]
mod appends;
mod approvals;
mod budgets;
mod gateway;
mod registry;
mod store;
