//! Policy bundles: the documents a runtime compiles to decide locally, named by a content hash
//! so a runtime can tell a new bundle from one it holds.

use std::sync::Arc;

use aa_identity::PublicKey;
use aa_policy::{Policy, PolicySet};
use aa_security::Scanner;
use sha2::{Digest as _, Sha256};

use crate::audit::hex;
use crate::error::GatewayError;

/// One policy document as its author wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDocument {
    /// Where it came from (a file name), for error messages.
    pub name: String,
    /// The YAML text.
    pub source: String,
}

/// A validated set of documents and the key that signs credential tokens.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// `sha256:<hex>` over the documents and the key: equal versions, equal bundles.
    pub version: String,
    /// The documents, in the order given.
    pub documents: Vec<PolicyDocument>,
    /// The gateway's public key.
    pub gateway_key: PublicKey,
    /// The documents compiled, for what the gateway enforces itself (budgets).
    pub policies: Arc<PolicySet>,
    /// The backstop scanner: the built-in rules and the policies' custom patterns.
    pub scanner: Arc<Scanner>,
}

impl PartialEq for Bundle {
    fn eq(&self, other: &Self) -> bool {
        // The version is a hash over everything else.
        self.version == other.version
    }
}

impl Eq for Bundle {}

impl Bundle {
    /// Builds a bundle, refusing any document that does not parse and validate: a runtime
    /// must never receive a bundle it cannot compile. Its scanner is `built_in` plus the
    /// policies' custom patterns.
    pub fn new(
        documents: Vec<PolicyDocument>,
        gateway_key: PublicKey,
        built_in: &Arc<Scanner>,
    ) -> Result<Bundle, GatewayError> {
        if documents.is_empty() {
            return Err(GatewayError::Policy(
                "a bundle needs at least one policy document".into(),
            ));
        }
        let mut hash = Sha256::new();
        let mut policies = Vec::new();
        for doc in &documents {
            policies.extend(
                Policy::parse(&doc.source)
                    .map_err(|e| GatewayError::Policy(format!("{}: {e}", doc.name)))?,
            );
            for part in [doc.name.as_bytes(), doc.source.as_bytes()] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part);
            }
        }
        hash.update(gateway_key.to_bytes());
        let policies = PolicySet::new(policies);
        let scanner = built_in
            .with_patterns_added(&policies.patterns())
            .map_err(|e| GatewayError::Policy(e.to_string()))?;
        Ok(Bundle {
            version: format!("sha256:{}", hex(&hash.finalize())),
            documents,
            gateway_key,
            policies: Arc::new(policies),
            scanner,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use aa_identity::Keypair;

    use super::*;

    const POLICY: &str = "apiVersion: agent-assembly/v1\nkind: Policy\nmetadata: {name: p, version: \"1\"}\nspec: {scope: global, default: allow}\n";

    fn built_in() -> Arc<Scanner> {
        static BUILT_IN: std::sync::LazyLock<Arc<Scanner>> =
            std::sync::LazyLock::new(|| Arc::new(Scanner::new().unwrap()));
        Arc::clone(&BUILT_IN)
    }

    fn doc(source: &str) -> PolicyDocument {
        PolicyDocument {
            name: "p.yaml".into(),
            source: source.into(),
        }
    }

    #[test]
    fn version_follows_content() {
        let key = Keypair::generate().unwrap().public();
        let a = Bundle::new(vec![doc(POLICY)], key, &built_in()).unwrap();
        let b = Bundle::new(vec![doc(POLICY)], key, &built_in()).unwrap();
        assert_eq!(a.version, b.version);
        let changed = Bundle::new(
            vec![doc(&POLICY.replace("allow", "deny"))],
            key,
            &built_in(),
        )
        .unwrap();
        assert_ne!(a.version, changed.version);
        assert!(a.version.starts_with("sha256:"));
    }

    #[test]
    fn refuses_a_document_that_does_not_validate() {
        let key = Keypair::generate().unwrap().public();
        let err = Bundle::new(vec![doc("kind: Nonsense\n")], key, &built_in())
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.yaml"), "{err}");
        assert!(Bundle::new(vec![], key, &built_in()).is_err());
    }
}
