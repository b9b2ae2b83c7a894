//! Identity for agents and gateways: Ed25519 keys named as `did:key`, the registration
//! challenge that proves an agent holds its key, and the signed credential tokens a gateway
//! issues to registered agents and every runtime checks.
//!
//! - [`key`]: [`Keypair`] and [`PublicKey`], their `did:key` form, the challenge, and a
//!   parent's consent to a child's registration ([`Spawn`]).
//! - [`token`]: [`Claims`], [`issue`] and [`verify`] for credential tokens; [`Grant`],
//!   [`grant`] and [`verify_grant`] for a parent's consent to a child signed ahead of time;
//!   and [`same_secret`], the constant-time comparison of tokens.
//! - [`keyfile`]: keys kept on disk, owner-only.
//! - [`error`]: the crate's error type, [`IdentityError`].
//!
//! Outside [`keyfile`] this crate does no IO beyond asking the OS for random bytes; callers
//! pass the time in. Verification never panics, whatever the input.

pub mod error;
pub mod key;
pub mod keyfile;
pub mod token;

pub use error::IdentityError;
pub use key::{CHALLENGE_BYTES, Keypair, PublicKey, Spawn, challenge};
pub use token::{
    Claims, Grant, MAX_GRANT_SECS, grant, issue, same_secret, unverified_claims, verify,
    verify_grant,
};
