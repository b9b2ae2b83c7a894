//! Credential tokens: `aat1.<claims>.<signature>`, both parts base64url without padding; the
//! signature is the issuing gateway's Ed25519 signature over `aat1.<claims>`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::error::IdentityError;
use crate::key::{Keypair, PublicKey};

const VERSION: &str = "aat1";
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
    let json = serde_json::to_vec(&claims)
        .map_err(|_| IdentityError::MalformedToken("claims do not serialise"))?;
    let signed = format!("{VERSION}.{}", URL_SAFE_NO_PAD.encode(json));
    let signature = URL_SAFE_NO_PAD.encode(gateway.sign(signed.as_bytes()));
    Ok((format!("{signed}.{signature}"), claims))
}

/// A token's claims, read without checking its signature or expiry: for a holder that got the
/// token from its issuer, never for one presented to it.
pub fn unverified_claims(token: &str) -> Result<Claims, IdentityError> {
    Parts::of(token)?.claims()
}

/// A token cut into its signed part, its claims and its signature.
struct Parts<'a> {
    signed: &'a str,
    claims: &'a str,
    signature: &'a str,
}

impl<'a> Parts<'a> {
    fn of(token: &'a str) -> Result<Parts<'a>, IdentityError> {
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
        if version != VERSION {
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

    fn claims(&self) -> Result<Claims, IdentityError> {
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
    let parts = Parts::of(token)?;
    let signature = URL_SAFE_NO_PAD
        .decode(parts.signature)
        .map_err(|_| IdentityError::MalformedToken("signature is not base64url"))?;
    issuer
        .verify(parts.signed.as_bytes(), &signature)
        .map_err(|_| IdentityError::ForeignToken)?;
    let claims = parts.claims()?;
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

    #[test]
    fn foreign_and_tampered_tokens_are_refused() {
        let (gateway, token, _) = gateway_and_token();
        let other = Keypair::generate().unwrap().public();
        assert_eq!(
            verify(&token, &other, 1_000),
            Err(IdentityError::ForeignToken)
        );
        // Another agent's id swapped into the claims breaks the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let json = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(json.replace("agent-1", "agent-2"));
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
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

    proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(token in ".{0,300}") {
            let public = Keypair::from_secret(&[7; 32]).public();
            prop_assert!(verify(&token, &public, 0).is_err());
        }
    }
}
