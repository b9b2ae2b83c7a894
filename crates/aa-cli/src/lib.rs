//! The library half of `aasm`: starting the gateway and the runtime, alone or together, so
//! that the binary, the end-to-end tests and the load generator run the same composition.
//!
//! - [`up`]: [`up::GatewayHandle`], [`up::RuntimeHandle`] and [`up::Up`] (both in one
//!   process), each stopped cleanly by its handle.
//! - [`files`]: finding and reading policy files, the same for `aasm policy` and `aasm up`.
//!
//! Argument parsing and printing stay in the binary.

pub mod files;
pub mod up;
