//! Credential tokens: `aat1.<claims>.<signature>`, both parts base64url without padding; the
//! signature is the issuing gateway's Ed25519 signature over `aat1.<claims>`. Spawn grants,
//! a parent agent's consent to one child signed ahead of time, take the same form under
//! `aag1` and the parent's signature.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::IdentityError;
use crate::key::{Keypair, PublicKey};

const VERSION: &str = "aat1";
/// A spawn grant's version; its signed bytes (`aag1.…`) start unlike anything else an agent's
/// key signs (a challenge's or a spawn's context), so no signature passes for another.
const GRANT_VERSION: &str = "aag1";
/// The longest a spawn grant may hold, from its signing to its expiry: it is good for its
/// child's id whoever presents it, so it is meant to be handed over and used soon.
pub const MAX_GRANT_SECS: u64 = 24 * 60 * 60;
/// How far ahead of the verifier's clock a grant may say it was signed (the signer's clock
/// may run ahead).
const GRANT_CLOCK_SKEW_SECS: u64 = 5 * 60;
/// Far above any real token; a longer one is refused before decoding.
const MAX_TOKEN_BYTES: usize = 4096;

/// What a token says: which agent, which key, who issued it, and when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The agent the token is bound to.
    pub agent_id: String,
    /// The agent's key, as `did:key`.
    pub agent_did: String,
    /// The issuing gateway's key, as `did:key`.
    pub issuer: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the token is refused from this second on.
    pub expires_at: u64,
    /// Random, unique per token: tells the current token from one it superseded.
    pub token_id: String,
}

/// Issues a token for `agent_id` holding `agent_did`, valid for `ttl_secs` from `now`.
pub fn issue(
    gateway: &Keypair,
    agent_id: &str,
    agent_did: &str,
    now: u64,
    ttl_secs: u64,
) -> Result<(String, Claims), IdentityError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| IdentityError::Random(e.to_string()))?;
    let claims = Claims {
        agent_id: agent_id.to_owned(),
        agent_did: agent_did.to_owned(),
        issuer: gateway.public().did(),
        issued_at: now,
        expires_at: now.saturating_add(ttl_secs),
        token_id: id.iter().map(|b| format!("{b:02x}")).collect(),
    };
    Ok((signed(gateway, VERSION, &claims)?, claims))
}

/// A parent's consent to one child's first registration, signed ahead of time with the
/// parent's key for a child registered where that key is not (another host): good for that
/// child's id under that parent until it expires, whoever presents it, so it is handed over
/// as a secret and lives minutes, not days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The parent's agent id.
    pub parent_id: String,
    /// The child's agent id.
    pub child_id: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; the grant is refused from this second on.
    pub expires_at: u64,
}

/// A grant (`aag1.…`) by `parent`, the key of agent `parent_id`, for the child `child_id`,
/// valid for `ttl_secs` from `now`: at least a second, at most [`MAX_GRANT_SECS`].
pub fn grant(
    parent: &Keypair,
    parent_id: &str,
    child_id: &str,
    now: u64,
    ttl_secs: u64,
) -> Result<(String, Grant), IdentityError> {
    if !(1..=MAX_GRANT_SECS).contains(&ttl_secs) {
        return Err(IdentityError::InvalidGrant(
            "a grant holds for a second at least and a day at most",
        ));
    }
    let grant = Grant {
        parent_id: parent_id.to_owned(),
        child_id: child_id.to_owned(),
        issued_at: now,
        expires_at: now.saturating_add(ttl_secs),
    };
    Ok((signed(parent, GRANT_VERSION, &grant)?, grant))
}

/// Checks a grant's form, its signature by `parent` (the key of the agent it names as the
/// parent), its lifetime (at most [`MAX_GRANT_SECS`] from a signing not ahead of `now`, Unix
/// seconds, by more than a few minutes) and its expiry at `now`, and returns it. Whether it
/// names the child and parent at hand is the caller's to check.
pub fn verify_grant(grant: &str, parent: &PublicKey, now: u64) -> Result<Grant, IdentityError> {
    let grant: Grant = verified(grant, GRANT_VERSION, parent)?;
    if grant.expires_at.saturating_sub(grant.issued_at) > MAX_GRANT_SECS {
        return Err(IdentityError::InvalidGrant(
            "signed to hold for more than a day",
        ));
    }
    if grant.issued_at > now.saturating_add(GRANT_CLOCK_SKEW_SECS) {
        return Err(IdentityError::InvalidGrant("signed ahead of this clock"));
    }
    if now >= grant.expires_at {
        return Err(IdentityError::ExpiredToken);
    }
    Ok(grant)
}

/// `<version>.<claims>.<signature>`, signed by `key`.
fn signed(key: &Keypair, version: &str, claims: &impl Serialize) -> Result<String, IdentityError> {
    let json = serde_json::to_vec(claims)
        .map_err(|_| IdentityError::MalformedToken("claims do not serialise"))?;
    let signed = format!("{version}.{}", URL_SAFE_NO_PAD.encode(json));
    let signature = URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes()));
    Ok(format!("{signed}.{signature}"))
}

/// The claims of a `version` token whose signature `key` makes; [`IdentityError::BadSignature`]
/// when it does not verify.
fn verified<T: DeserializeOwned>(
    token: &str,
    version: &str,
    key: &PublicKey,
) -> Result<T, IdentityError> {
    let parts = Parts::of(token, version)?;
    let signature = URL_SAFE_NO_PAD
        .decode(parts.signature)
        .map_err(|_| IdentityError::MalformedToken("signature is not base64url"))?;
    key.verify(parts.signed.as_bytes(), &signature)?;
    parts.claims()
}

/// A token's claims, read without checking its signature or expiry: for a holder that got the
/// token from its issuer, never for one presented to it.
pub fn unverified_claims(token: &str) -> Result<Claims, IdentityError> {
    Parts::of(token, VERSION)?.claims()
}

/// A token cut into its signed part, its claims and its signature.
struct Parts<'a> {
    signed: &'a str,
    claims: &'a str,
    signature: &'a str,
}

impl<'a> Parts<'a> {
    fn of(token: &'a str, expected: &str) -> Result<Parts<'a>, IdentityError> {
        if token.is_empty() {
            return Err(IdentityError::MalformedToken("missing"));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(IdentityError::MalformedToken("too long"));
        }
        let mut parts = token.split('.');
        let (Some(version), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::MalformedToken(
                "expected three dot-separated parts",
            ));
        };
        if version != expected {
            return Err(IdentityError::MalformedToken("unknown version"));
        }
        let signed = token
            .get(..version.len() + 1 + claims.len())
            .unwrap_or_default();
        Ok(Parts {
            signed,
            claims,
            signature,
        })
    }

    fn claims<T: DeserializeOwned>(&self) -> Result<T, IdentityError> {
        let json = URL_SAFE_NO_PAD
            .decode(self.claims)
            .map_err(|_| IdentityError::MalformedToken("claims are not base64url"))?;
        serde_json::from_slice(&json)
            .map_err(|_| IdentityError::MalformedToken("claims are not the expected JSON"))
    }
}

/// Compares two secrets (tokens) in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Checks a token's form, its signature by `issuer` and its expiry at `now` (Unix seconds),
/// and returns its claims. Whether the claims fit the caller (the right agent, the current
/// token) is the caller's to check.
pub fn verify(token: &str, issuer: &PublicKey, now: u64) -> Result<Claims, IdentityError> {
    let claims: Claims = verified(token, VERSION, issuer).map_err(|e| match e {
        IdentityError::BadSignature => IdentityError::ForeignToken,
        other => other,
    })?;
    if claims.issuer != issuer.did() {
        return Err(IdentityError::ForeignToken);
    }
    if now >= claims.expires_at {
        return Err(IdentityError::ExpiredToken);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gateway_and_token() -> (Keypair, String, Claims) {
        let gateway = Keypair::generate().unwrap();
        let agent = Keypair::generate().unwrap().public().did();
        let (token, claims) = issue(&gateway, "agent-1", &agent, 1_000, 600).unwrap();
        (gateway, token, claims)
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let (gateway, token, claims) = gateway_and_token();
        let public = gateway.public();
        assert_eq!(verify(&token, &public, 1_000).unwrap(), claims);
        assert_eq!(verify(&token, &public, 1_599).unwrap().agent_id, "agent-1");
        assert_eq!(
            verify(&token, &public, 1_600),
            Err(IdentityError::ExpiredToken)
        );
    }

    #[test]
    fn a_holder_reads_its_tokens_claims_without_the_issuers_key() {
        let (_, token, claims) = gateway_and_token();
        assert_eq!(unverified_claims(&token).unwrap(), claims);
        assert_eq!(
            unverified_claims("aat1.x.y"),
            Err(IdentityError::MalformedToken("claims are not base64url"))
        );
    }

    /// `token` with `from` replaced by `to` in its claims, its signature kept.
    fn swapped(token: &str, from: &str, to: &str) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(json.replace(from, to));
        format!("{}.{forged}.{}", parts[0], parts[2])
    }

    #[test]
    fn foreign_and_tampered_tokens_are_refused() {
        let (gateway, token, _) = gateway_and_token();
        let other = Keypair::generate().unwrap().public();
        assert_eq!(
            verify(&token, &other, 1_000),
            Err(IdentityError::ForeignToken)
        );
        // Another agent's id swapped into the claims breaks the signature.
        let tampered = swapped(&token, "agent-1", "agent-2");
        assert_eq!(
            verify(&tampered, &gateway.public(), 1_000),
            Err(IdentityError::ForeignToken)
        );
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let public = Keypair::generate().unwrap().public();
        for (token, why) in [
            ("", "missing"),
            ("aat1.x", "expected three dot-separated parts"),
            ("aat2.x.y", "unknown version"),
            ("aat1.x.!!", "signature is not base64url"),
        ] {
            assert_eq!(
                verify(token, &public, 0),
                Err(IdentityError::MalformedToken(why)),
                "{token:?}"
            );
        }
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            verify(&long, &public, 0),
            Err(IdentityError::MalformedToken("too long"))
        );
    }

    #[test]
    fn a_grant_holds_for_its_child_under_its_parents_key_until_it_expires() {
        let parent = Keypair::generate().unwrap();
        let (text, issued) = grant(&parent, "planner", "worker-7", 1_000, 300).unwrap();
        assert!(text.starts_with("aag1."));
        let public = parent.public();
        assert_eq!(verify_grant(&text, &public, 1_299).unwrap(), issued);
        assert_eq!(
            (issued.parent_id.as_str(), issued.child_id.as_str()),
            ("planner", "worker-7")
        );
        assert_eq!(
            verify_grant(&text, &public, 1_300),
            Err(IdentityError::ExpiredToken)
        );
        let stranger = Keypair::generate().unwrap().public();
        assert_eq!(
            verify_grant(&text, &stranger, 1_000),
            Err(IdentityError::BadSignature)
        );
        // Another child's id swapped in breaks the signature.
        let tampered = swapped(&text, "worker-7", "worker-8");
        assert_eq!(
            verify_grant(&tampered, &public, 1_000),
            Err(IdentityError::BadSignature)
        );
        // Signed for too long (by another signer than `grant`), for no time, or ahead of
        // the clock.
        let long = Grant {
            expires_at: 1_000 + MAX_GRANT_SECS + 1,
            ..issued.clone()
        };
        let long = signed(&parent, GRANT_VERSION, &long).unwrap();
        assert_eq!(
            verify_grant(&long, &public, 1_000 + MAX_GRANT_SECS),
            Err(IdentityError::InvalidGrant(
                "signed to hold for more than a day"
            ))
        );
        assert!(grant(&parent, "planner", "worker-7", 1_000, 0).is_err());
        assert!(grant(&parent, "planner", "worker-7", 1_000, MAX_GRANT_SECS + 1).is_err());
        let (ahead, _) = grant(&parent, "planner", "worker-7", 2_000, 300).unwrap();
        assert_eq!(
            verify_grant(&ahead, &public, 1_000),
            Err(IdentityError::InvalidGrant("signed ahead of this clock"))
        );
        // A grant is no credential token, nor a token a grant, whoever signed them.
        assert_eq!(
            verify(&text, &public, 1_000),
            Err(IdentityError::MalformedToken("unknown version"))
        );
        let (token, _) = issue(&parent, "worker-7", &public.did(), 1_000, 300).unwrap();
        assert_eq!(
            verify_grant(&token, &public, 1_000),
            Err(IdentityError::MalformedToken("unknown version"))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(token in ".{0,300}") {
            let public = Keypair::from_secret(&[7; 32]).public();
            prop_assert!(verify(&token, &public, 0).is_err());
            prop_assert!(verify_grant(&token, &public, 0).is_err());
        }
    }
}
