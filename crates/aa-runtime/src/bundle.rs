//! The policy bundle as the runtime holds it: compiled once per version.

use aa_identity::PublicKey;
use aa_policy::{Policy, PolicySet};
use aa_proto::pb;

use crate::error::RuntimeError;

/// A compiled bundle.
#[derive(Debug)]
pub struct Compiled {
    /// The gateway's content hash.
    pub version: String,
    /// The policies, ready to evaluate.
    pub set: PolicySet,
    /// The gateway's key.
    pub gateway_key: PublicKey,
}

impl Compiled {
    /// Compiles a bundle from the wire; a bundle that does not compile is refused whole.
    pub fn compile(bundle: &pb::PolicyBundle) -> Result<Compiled, RuntimeError> {
        let refuse = |message: String| RuntimeError::Bundle {
            version: bundle.version.clone(),
            message,
        };
        let mut policies = Vec::new();
        for doc in &bundle.documents {
            let parsed =
                Policy::parse(&doc.source).map_err(|e| refuse(format!("{}: {e}", doc.name)))?;
            policies.extend(parsed);
        }
        if policies.is_empty() {
            return Err(refuse("holds no policy".into()));
        }
        let gateway_key =
            PublicKey::from_bytes(&bundle.gateway_public_key).map_err(|e| refuse(e.to_string()))?;
        Ok(Compiled {
            version: bundle.version.clone(),
            set: PolicySet::new(policies),
            gateway_key,
        })
    }
}
