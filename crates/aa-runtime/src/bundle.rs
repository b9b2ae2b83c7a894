//! The policy bundle as the runtime holds it: compiled once per version.

use std::sync::Arc;

use aa_identity::PublicKey;
use aa_policy::{Policy, PolicySet};
use aa_proto::pb;
use aa_security::Scanner;

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
    /// The built-in rules and the policies' custom patterns, for the outbox writer.
    pub scanner: Arc<Scanner>,
}

impl Compiled {
    /// Compiles a bundle from the wire, its scanner `built_in` plus its policies' custom
    /// patterns; a bundle that does not compile is refused whole.
    pub fn compile(
        bundle: &pb::PolicyBundle,
        built_in: &Arc<Scanner>,
    ) -> Result<Compiled, RuntimeError> {
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
        let set = PolicySet::new(policies);
        let scanner = built_in
            .with_patterns_added(&set.patterns())
            .map_err(|e| refuse(e.to_string()))?;
        Ok(Compiled {
            version: bundle.version.clone(),
            set,
            gateway_key,
            scanner,
        })
    }
}
