//! Ed25519 keys, their `did:key` names, and the registration challenge.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use crate::error::IdentityError;

/// The multicodec prefix of an Ed25519 public key (varint 0xed).
const ED25519_CODEC: [u8; 2] = [0xed, 0x01];
/// `did:key` with multibase base58btc (`z`).
const DID_PREFIX: &str = "did:key:z";
/// The most base58 digits a `did:key` of an Ed25519 key takes (its 34 bytes take 47), with
/// room to spare.
const MAX_DID_DIGITS: usize = 64;
/// Domain separation: a challenge signature cannot be reused as anything else.
const CHALLENGE_CONTEXT: &[u8] = b"agent-assembly register v1\0";
/// Domain separation for a parent's consent to a child's registration.
const SPAWN_CONTEXT: &[u8] = b"agent-assembly spawn v1\0";

/// How many random bytes a challenge holds.
pub const CHALLENGE_BYTES: usize = 32;

/// A fresh random challenge for a registration.
pub fn challenge() -> Result<[u8; CHALLENGE_BYTES], IdentityError> {
    let mut bytes = [0u8; CHALLENGE_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| IdentityError::Random(e.to_string()))?;
    Ok(bytes)
}

/// A signed message: the context, then the parts apart by NUL (ids and `did:key`s hold none;
/// the challenge, last, is of fixed length).
fn message(context: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let length = parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut message = Vec::with_capacity(context.len() + length);
    message.extend_from_slice(context);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            message.push(0);
        }
        message.extend_from_slice(part);
    }
    message
}

/// What an agent signs to answer a challenge: its id and the challenge, so the answer is bound
/// to both.
fn challenge_message(agent_id: &str, challenge: &[u8]) -> Vec<u8> {
    message(CHALLENGE_CONTEXT, &[agent_id.as_bytes(), challenge])
}

/// A child's registration as its parent consents to it: which parent, which child with which
/// key, and the challenge of that registration, so the consent is good for it alone.
#[derive(Debug, Clone, Copy)]
pub struct Spawn<'a> {
    /// The parent's agent id.
    pub parent_id: &'a str,
    /// The child's agent id.
    pub child_id: &'a str,
    /// The child's key as a `did:key`.
    pub child_did: &'a str,
    /// The challenge the child's registration answers.
    pub challenge: &'a [u8],
}

impl Spawn<'_> {
    fn message(&self) -> Vec<u8> {
        message(
            SPAWN_CONTEXT,
            &[
                self.parent_id.as_bytes(),
                self.child_id.as_bytes(),
                self.child_did.as_bytes(),
                self.challenge,
            ],
        )
    }
}

/// An Ed25519 signing key: an agent's identity, or a gateway's.
pub struct Keypair {
    signing: SigningKey,
}

impl std::fmt::Debug for Keypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Keypair")
            .field("did", &self.public().did())
            .finish()
    }
}

impl Keypair {
    /// A new random key.
    pub fn generate() -> Result<Keypair, IdentityError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
        Ok(Keypair::from_secret(&secret))
    }

    /// The key with this 32-byte secret (as written by [`secret`](Self::secret)).
    pub fn from_secret(secret: &[u8; 32]) -> Keypair {
        Keypair {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// The key from secret bytes of unchecked length, e.g. read from a file.
    pub fn from_secret_slice(secret: &[u8]) -> Result<Keypair, IdentityError> {
        let secret: &[u8; 32] = secret.try_into().map_err(|_| {
            IdentityError::InvalidKey(format!("a secret key is 32 bytes, not {}", secret.len()))
        })?;
        Ok(Keypair::from_secret(secret))
    }

    /// The 32 secret bytes, for the caller to persist (mode 0600).
    pub fn secret(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            verifying: self.signing.verifying_key(),
        }
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Answers a registration challenge for `agent_id`.
    pub fn sign_challenge(&self, agent_id: &str, challenge: &[u8]) -> [u8; 64] {
        self.sign(&challenge_message(agent_id, challenge))
    }

    /// A parent's consent to `spawn`, signed with the parent's key.
    pub fn sign_spawn(&self, spawn: &Spawn<'_>) -> [u8; 64] {
        self.sign(&spawn.message())
    }
}

/// An Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey {
    verifying: VerifyingKey,
}

impl PublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, IdentityError> {
        let bytes: &[u8; 32] = bytes.try_into().map_err(|_| {
            IdentityError::InvalidKey(format!("a public key is 32 bytes, not {}", bytes.len()))
        })?;
        let verifying = VerifyingKey::from_bytes(bytes)
            .map_err(|_| IdentityError::InvalidKey("not an Ed25519 point".to_owned()))?;
        Ok(PublicKey { verifying })
    }

    /// Its 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.verifying.to_bytes()
    }

    /// The key named by a `did:key` identifier.
    pub fn from_did(did: &str) -> Result<PublicKey, IdentityError> {
        let invalid = |reason| IdentityError::InvalidDid {
            did: did.chars().take(128).collect(),
            reason,
        };
        let encoded = did
            .strip_prefix(DID_PREFIX)
            .ok_or_else(|| invalid("expected did:key:z..."))?;
        // An Ed25519 key is 47 base58 digits; base58 decodes in time quadratic in its length,
        // so a long one (a hostile registration or audit export) is refused before.
        if encoded.len() > MAX_DID_DIGITS {
            return Err(invalid("too long for an Ed25519 key"));
        }
        let bytes = bs58::decode(encoded)
            .into_vec()
            .map_err(|_| invalid("not base58btc"))?;
        let key = bytes
            .strip_prefix(&ED25519_CODEC[..])
            .ok_or_else(|| invalid("not an Ed25519 key"))?;
        PublicKey::from_bytes(key).map_err(|_| invalid("not a valid Ed25519 key"))
    }

    /// The `did:key` identifier of this key.
    pub fn did(&self) -> String {
        let mut bytes = Vec::with_capacity(34);
        bytes.extend_from_slice(&ED25519_CODEC);
        bytes.extend_from_slice(&self.to_bytes());
        format!("{DID_PREFIX}{}", bs58::encode(bytes).into_string())
    }

    /// Checks a signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        let signature =
            Signature::from_slice(signature).map_err(|_| IdentityError::BadSignature)?;
        self.verifying
            .verify_strict(message, &signature)
            .map_err(|_| IdentityError::BadSignature)
    }

    /// Checks an answer to a registration challenge for `agent_id`.
    pub fn verify_challenge(
        &self,
        agent_id: &str,
        challenge: &[u8],
        signature: &[u8],
    ) -> Result<(), IdentityError> {
        self.verify(&challenge_message(agent_id, challenge), signature)
    }

    /// Checks a parent's consent to `spawn` against the parent's key.
    pub fn verify_spawn(&self, spawn: &Spawn<'_>, signature: &[u8]) -> Result<(), IdentityError> {
        self.verify(&spawn.message(), signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_did_too_long_for_a_key_is_refused_before_it_is_decoded() {
        let key = Keypair::generate().unwrap().public();
        assert_eq!(PublicKey::from_did(&key.did()).unwrap(), key);
        assert!(key.did().len() - DID_PREFIX.len() <= MAX_DID_DIGITS);
        // Decoding a million digits took minutes (base58 is quadratic).
        let long = format!("{DID_PREFIX}{}", "2".repeat(1_000_000));
        let refused = PublicKey::from_did(&long).unwrap_err().to_string();
        assert!(refused.contains("too long"), "{refused}");
    }

    #[test]
    fn did_key_round_trips_and_matches_the_spec_vector() {
        // The did:key specification's Ed25519 example: secret-independent, so check the
        // encoding of a known public key.
        let did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
        let key = PublicKey::from_did(did).unwrap();
        assert_eq!(key.did(), did);
        let mine = Keypair::generate().unwrap().public();
        assert!(mine.did().starts_with("did:key:z6Mk"));
        assert_eq!(PublicKey::from_did(&mine.did()).unwrap(), mine);
    }

    #[test]
    fn bad_dids_are_named() {
        for (did, reason) in [
            ("did:web:example.com", "expected did:key:z..."),
            ("did:key:z0OIl", "not base58btc"),
            ("did:key:z3yQ", "not an Ed25519 key"),
        ] {
            match PublicKey::from_did(did) {
                Err(IdentityError::InvalidDid { reason: r, .. }) => assert_eq!(r, reason, "{did}"),
                other => panic!("{did}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_challenge_answer_is_bound_to_key_agent_and_challenge() {
        let key = Keypair::generate().unwrap();
        let c = challenge().unwrap();
        let answer = key.sign_challenge("agent-1", &c);
        let public = key.public();
        assert!(public.verify_challenge("agent-1", &c, &answer).is_ok());
        assert!(public.verify_challenge("agent-2", &c, &answer).is_err());
        assert!(
            public
                .verify_challenge("agent-1", &challenge().unwrap(), &answer)
                .is_err()
        );
        let other = Keypair::generate().unwrap().public();
        assert!(other.verify_challenge("agent-1", &c, &answer).is_err());
        assert!(public.verify_challenge("agent-1", &c, b"short").is_err());
    }

    #[test]
    fn a_spawn_consent_is_bound_to_parent_child_key_and_challenge() {
        let parent = Keypair::generate().unwrap();
        let child = Keypair::generate().unwrap().public().did();
        let c = challenge().unwrap();
        let spawn = Spawn {
            parent_id: "lead",
            child_id: "helper",
            child_did: &child,
            challenge: &c,
        };
        let consent = parent.sign_spawn(&spawn);
        assert!(parent.public().verify_spawn(&spawn, &consent).is_ok());
        let other_did = Keypair::generate().unwrap().public().did();
        let other_challenge = challenge().unwrap();
        for changed in [
            Spawn {
                parent_id: "boss",
                ..spawn
            },
            Spawn {
                child_id: "other",
                ..spawn
            },
            Spawn {
                child_did: &other_did,
                ..spawn
            },
            Spawn {
                challenge: &other_challenge,
                ..spawn
            },
        ] {
            assert!(
                parent.public().verify_spawn(&changed, &consent).is_err(),
                "{changed:?}"
            );
        }
        // Neither a challenge answer nor another key's signature stands for consent.
        let answer = parent.sign_challenge("helper", &c);
        assert!(parent.public().verify_spawn(&spawn, &answer).is_err());
        let stranger = Keypair::generate().unwrap().sign_spawn(&spawn);
        assert!(parent.public().verify_spawn(&spawn, &stranger).is_err());
    }

    #[test]
    fn secrets_round_trip_and_never_show_in_debug() {
        let key = Keypair::generate().unwrap();
        let again = Keypair::from_secret_slice(&key.secret()).unwrap();
        assert_eq!(again.public(), key.public());
        assert!(Keypair::from_secret_slice(&[0; 31]).is_err());
        let shown = format!("{key:?}");
        assert!(shown.contains("did:key:z6Mk"));
    }
}
