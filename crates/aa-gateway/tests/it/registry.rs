//! The registry at the gateway over a real SQLite store: lineage and ancestors, topology with
//! reported edges, and suspensions — who they stop, what the gateway refuses for a stopped
//! agent, how they are lifted, and that the change reaches watchers.

use std::time::Duration;

use aa_core::{
    AgentContext, AgentRegistration, AuditEvent, EdgeKind, EventKind, Lineage, Origin, TopologyEdge,
};
use aa_gateway::{ChallengeAnswer, GatewayConfig, GatewayError, Registered, Store};
use aa_identity::Keypair;

use crate::approvals::bound_to;
use crate::gateway::{Parent, answer, consent, gateway, keys, register, register_as, registration};

#[tokio::test]
async fn lineage_topology_and_ancestors_come_from_the_registry() {
    let gw = gateway(GatewayConfig::default());
    let [root, lead, key] = keys();
    register(&gw, "root", &root, None).await;
    register(&gw, "lead", &lead, Some(("root", &root))).await;
    register(&gw, "worker", &key, Some(("lead", &lead))).await;
    register(&gw, "other", &Keypair::generate().unwrap(), None).await;

    // A registration answers with the chain above the agent, the root first.
    let Registered::Challenge(challenge) = gw
        .register(registration("worker", &key, Some("lead")), None)
        .await
        .unwrap()
    else {
        panic!("expected a challenge");
    };
    let signature = key.sign_challenge("worker", &challenge);
    let Registered::Issued { ancestors, .. } = gw
        .register(
            registration("worker", &key, Some("lead")),
            answer(&challenge, &signature),
        )
        .await
        .unwrap()
    else {
        panic!("expected a token");
    };
    let ids: Vec<_> = ancestors.iter().map(|a| a.agent_id.as_str()).collect();
    assert_eq!(ids, ["root", "lead"]);

    let lineage = gw.lineage("worker").await.unwrap();
    let ids: Vec<_> = lineage.iter().map(|v| v.agent.agent_id.as_str()).collect();
    assert_eq!(ids, ["root", "lead", "worker"]);
    assert!(matches!(
        gw.lineage("nobody").await,
        Err(GatewayError::NotFound(_))
    ));

    // A reported edge (through an appended event) joins the registration edges.
    let edge = TopologyEdge {
        from_agent_id: "lead".into(),
        to_agent_id: "other".into(),
        kind: EdgeKind::Delegated,
        tool: Some("handoff".into()),
        created_at_ms: 5,
        metadata: None,
    };
    let event = AuditEvent {
        event_id: "rt/lead/edge-1".into(),
        timestamp_ms: 5,
        agent: AgentContext::new("lead"),
        session_id: None,
        action: aa_core::Action::AgentSpawn {
            child_id: Some("other".into()),
            reason: None,
        },
        verdict: None,
        redactions: Vec::new(),
        kind: EventKind::Edge,
        detail: serde_json::to_value(&edge).ok(),
        origin: Some(Origin {
            stream_id: "rt".into(),
            sequence: 1,
            received_at_ms: 5,
            peer_uid: 0,
            peer_pid: 0,
        }),
    };
    // The same edge claimed by another agent is stored as an event but joins no topology:
    // had it, as the first sighting, it would also have hidden the real one.
    let mut forged = event.clone();
    forged.event_id = "rt/worker/edge-1".into();
    forged.agent = AgentContext::new("worker");
    forged.origin = forged.origin.map(|o| Origin { sequence: 1, ..o });
    let mut event = event;
    event.origin = event.origin.map(|o| Origin { sequence: 2, ..o });
    gw.append(vec![forged]).await.unwrap();
    assert!(
        gw.topology(Some("lead"))
            .await
            .unwrap()
            .edges
            .iter()
            .all(|e| e.to_agent_id != "other"),
        "an edge claimed by another agent joined the topology"
    );
    gw.append(vec![event.clone()]).await.unwrap();
    gw.append(vec![event]).await.unwrap();
    let tree = gw.topology(Some("lead")).await.unwrap();
    let ids: Vec<_> = tree
        .agents
        .iter()
        .map(|v| v.agent.agent_id.as_str())
        .collect();
    assert_eq!(ids, ["lead", "worker"]);
    let edges: Vec<_> = tree
        .edges
        .iter()
        .map(|e| (e.from_agent_id.as_str(), e.to_agent_id.as_str(), e.kind))
        .collect();
    // Oldest first: the reported edge carries its own (early) time.
    assert_eq!(
        edges,
        [
            ("lead", "other", EdgeKind::Delegated),
            ("lead", "worker", EdgeKind::Spawned)
        ]
    );
    assert_eq!(tree.edges.len(), 2, "the duplicate append added nothing");
    let all = gw.topology(None).await.unwrap();
    let roots: Vec<_> = all
        .agents
        .iter()
        .map(|v| v.agent.agent_id.as_str())
        .collect();
    assert_eq!(roots, ["other", "root", "lead", "worker"]);
}

#[tokio::test]
async fn a_suspension_stops_an_agent_or_its_subtree_until_lifted() {
    let gw = gateway(GatewayConfig::default());
    let mut changes = gw.suspension_changes();
    let [root, lead, worker_key] = keys();
    register(&gw, "root", &root, None).await;
    let lead_token = register(&gw, "lead", &lead, Some(("root", &root))).await;
    register(&gw, "worker", &worker_key, Some(("lead", &lead))).await;
    assert!(matches!(
        gw.suspend("nobody", true, "alice", "").await,
        Err(GatewayError::NotFound(_))
    ));

    let change = gw.suspend("root", true, "alice", "runaway").await.unwrap();
    assert_eq!(change.agent_ids, ["root", "lead", "worker"]);
    tokio::time::timeout(Duration::from_secs(1), changes.changed())
        .await
        .expect("watchers hear of the change")
        .unwrap();
    let worker = gw.agent_view("worker").await.unwrap();
    assert_eq!(worker.suspension.unwrap().agent_id, "root");

    // What the gateway decides itself is refused for a stopped agent: spawning, asking for
    // an approval.
    let refused = register_err(&gw, "late", Some(("worker", &worker_key))).await;
    assert!(
        refused.contains("\"worker\" is suspended with the subtree of \"root\" by alice: runaway"),
        "{refused}"
    );
    let action = aa_core::Action::ToolCall {
        tool: "deploy".into(),
        args: serde_json::json!({}),
    };
    let asked = gw
        .create_approval(aa_gateway::NewApproval {
            agent_id: "lead".into(),
            credential_token: lead_token,
            approval_id: "0123456789abcdef0123".into(),
            action_digest: bound_to(&action),
            action,
            rule: "r".into(),
            reason: "why".into(),
            policy: "p@1".into(),
            timeout: Duration::from_secs(60),
        })
        .await;
    assert!(matches!(asked, Err(GatewayError::Conflict(_))), "{asked:?}");

    // A descendant is released only with the suspension that stops it.
    let err = gw.resume("lead", false, "bob", "").await.unwrap_err();
    assert!(err.to_string().contains("resume that one"), "{err}");
    let lifted = gw.resume("root", false, "bob", "fixed").await.unwrap();
    assert_eq!(lifted.agent_ids, ["root"]);
    assert!(gw.agent_view("worker").await.unwrap().suspension.is_none());
    let err = gw.resume("root", false, "bob", "").await.unwrap_err();
    assert_eq!(err.to_string(), "conflict: agent \"root\" is not suspended");

    // Without the subtree, only the agent; resuming a subtree lifts every suspension in it.
    gw.suspend("lead", false, "alice", "").await.unwrap();
    gw.suspend("worker", false, "alice", "").await.unwrap();
    assert!(gw.agent_view("root").await.unwrap().suspension.is_none());
    let lifted = gw.resume("root", true, "bob", "").await.unwrap();
    assert_eq!(lifted.agent_ids, ["lead", "worker"]);
    assert!(gw.suspensions().await.unwrap().is_empty());

    // Each step is on the gateway's stream.
    let steps: Vec<String> = gw
        .store()
        .records(0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event["kind"] == "suspension")
        .map(|r| {
            format!(
                "{} {}",
                r.event["agent"]["id"].as_str().unwrap(),
                r.event["detail"]["step"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            "root suspended",
            "root resumed",
            "lead suspended",
            "worker suspended",
            "root resumed"
        ]
    );
}

async fn register_err(
    gw: &aa_gateway::Gateway<aa_gateway::SqliteStore>,
    id: &str,
    parent: Parent<'_>,
) -> String {
    let key = Keypair::generate().unwrap();
    let reg = registration(id, &key, parent.map(|(parent_id, _)| parent_id));
    let Registered::Challenge(challenge) = gw.register(reg.clone(), None).await.unwrap() else {
        panic!("expected a challenge");
    };
    let signature = key.sign_challenge(id, &challenge);
    let parent_signature = parent.map_or_else(Vec::new, |(_, k)| consent(&reg, k, &challenge));
    gw.register(
        reg,
        Some(ChallengeAnswer {
            challenge: &challenge,
            signature: &signature,
            parent_signature: &parent_signature,
            ..ChallengeAnswer::default()
        }),
    )
    .await
    .unwrap_err()
    .to_string()
}

#[tokio::test]
async fn an_agent_registering_again_keeps_its_place_in_the_tree() {
    let gw = gateway(GatewayConfig::default());
    let (root, worker) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    register(&gw, "root", &root, None).await;
    register(&gw, "worker", &worker, Some(("root", &root))).await;
    // Again, as it was: a restarted agent, which its parent need not sign for again.
    register(&gw, "worker", &worker, Some(("root", &root))).await;
    register_as(
        &gw,
        registration("worker", &worker, Some("root")),
        &worker,
        None,
    )
    .await;
    let again_as = async |reg: AgentRegistration, key: &Keypair| -> GatewayError {
        let Registered::Challenge(challenge) = gw.register(reg.clone(), None).await.unwrap() else {
            panic!("expected a challenge");
        };
        let signature = key.sign_challenge(&reg.agent_id, &challenge);
        gw.register(reg, answer(&challenge, &signature))
            .await
            .unwrap_err()
    };
    let again = async |id: &str, key: &Keypair, parent: Option<&str>| -> GatewayError {
        again_as(registration(id, key, parent), key).await
    };
    // Out from under its parent (and so from a suspension of the parent's subtree) ...
    let err = again("worker", &worker, None).await;
    assert_eq!(
        err.to_string(),
        "conflict: agent \"worker\" is registered with parent \"root\", not no parent; an agent \
         keeps its parent and team for good, so register it elsewhere under another id"
    );
    // ... out of its team's limits, or into a team it had none of ...
    let err = again_as(
        AgentRegistration {
            lineage: Lineage {
                team_id: Some("other".into()),
                ..Lineage::default()
            },
            ..registration("root", &root, None)
        },
        &root,
    )
    .await;
    assert!(
        matches!(&err, GatewayError::Conflict(m)
            if m.contains("registered with team \"ops\", not team \"other\";")),
        "{err}"
    );
    let loner = Keypair::generate().unwrap();
    let teamless = AgentRegistration {
        lineage: Lineage::default(),
        ..registration("loner", &loner, None)
    };
    register_as(&gw, teamless.clone(), &loner, None).await;
    let err = again_as(registration("loner", &loner, None), &loner).await;
    assert!(
        matches!(&err, GatewayError::Conflict(m)
            if m.contains("registered with no team, not team \"ops\";")),
        "{err}"
    );
    // Deregistered, it still keeps its place: the message's advice holds.
    let token = register_as(&gw, teamless, &loner, None).await;
    gw.deregister("loner", &token).await.unwrap();
    let err = again_as(registration("loner", &loner, None), &loner).await;
    assert!(matches!(&err, GatewayError::Conflict(_)), "{err}");
    // ... or under its own child: a cycle.
    let err = again("root", &root, Some("worker")).await;
    assert!(matches!(&err, GatewayError::Conflict(_)), "{err}");
    let parent = |id: &'static str| {
        let gw = &gw;
        async move { gw.store().agent(id).await.unwrap().unwrap().parent_agent_id }
    };
    assert_eq!(parent("worker").await.as_deref(), Some("root"));
    assert_eq!(parent("root").await, None);
}

/// Another key asking for a new agent's challenge opens its own: the agent's answer to its
/// challenge still registers it.
#[tokio::test]
async fn a_challenge_opened_under_another_key_does_not_replace_the_agents() {
    let gw = gateway(GatewayConfig::default());
    let (own, other) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    let Registered::Challenge(challenge) = gw
        .register(registration("newcomer", &own, None), None)
        .await
        .unwrap()
    else {
        panic!("expected a challenge");
    };
    let Registered::Challenge(_) = gw
        .register(registration("newcomer", &other, None), None)
        .await
        .unwrap()
    else {
        panic!("expected a challenge");
    };
    let signature = own.sign_challenge("newcomer", &challenge);
    let registered = gw
        .register(
            registration("newcomer", &own, None),
            answer(&challenge, &signature),
        )
        .await
        .unwrap();
    assert!(matches!(registered, Registered::Issued { .. }));
}

/// The registry keeps and shows a registration as it came, so what reads as a secret is kept
/// out: an id holding one is refused at the first step (naming the kind, never the id), and
/// free text (a name, why the agent was spawned) is redacted before it is stored.
#[tokio::test]
async fn a_registration_holding_secrets_keeps_them_out_of_the_registry() {
    let gw = gateway(GatewayConfig::default());
    let token = "ghp_0123456789abcdefghijABCDEFGHIJKLMNOP";
    let [key, root] = keys();
    register(&gw, "root", &root, None).await;
    for reg in [
        registration(&format!("bot-{token}"), &key, None),
        AgentRegistration {
            lineage: Lineage {
                team_id: Some(format!("team {token}")),
                ..Lineage::default()
            },
            ..registration("bot", &key, None)
        },
        AgentRegistration {
            lineage: Lineage {
                parent_agent_id: Some(format!("root {token}")),
                ..Lineage::default()
            },
            ..registration("bot", &key, None)
        },
    ] {
        let err = gw.register(reg, None).await.unwrap_err();
        assert!(
            matches!(&err, GatewayError::InvalidRequest(m)
                if m.contains("reads as a secret (github_token)") && !m.contains(token)),
            "{err}"
        );
    }

    let told = |reg: &AgentRegistration| AgentRegistration {
        name: format!("helper for jane@example.com {token}"),
        framework: format!("custom {token}"),
        lineage: Lineage {
            delegation_reason: Some(format!("card 4111 1111 1111 1111, key {token}")),
            spawned_by_tool: Some(format!("spawn?auth={token}")),
            ..reg.lineage.clone()
        },
        ..reg.clone()
    };
    register_as(
        &gw,
        told(&registration("worker", &key, Some("root"))),
        &key,
        Some(&root),
    )
    .await;
    let stored = gw.store().agent("worker").await.unwrap().unwrap();
    let kept = format!(
        "{} {} {:?} {:?}",
        stored.name, stored.framework, stored.delegation_reason, stored.spawned_by_tool
    );
    for secret in [token, "jane@example.com", "4111 1111 1111 1111"] {
        assert!(!kept.contains(secret), "{kept}");
    }
    assert_eq!(
        stored.delegation_reason.as_deref(),
        Some("card [REDACTED:payment_card], key [REDACTED:github_token]")
    );
    assert_eq!(stored.parent_agent_id.as_deref(), Some("root"));
}

/// A suspension is shown with its agent, streamed to every runtime and quoted to the agents
/// it stops, so what reads as a secret in who suspended and why is redacted before it is kept.
#[tokio::test]
async fn a_suspensions_free_text_is_kept_redacted() {
    let gw = gateway(GatewayConfig::default());
    let secret = "ghp_0123456789abcdefghijABCDEFGHIJKLMNOP";
    let root = Keypair::generate().unwrap();
    register(&gw, "root", &root, None).await;
    gw.suspend(
        "root",
        true,
        &format!("alice {secret}"),
        &format!("leaked {secret}"),
    )
    .await
    .unwrap();
    let shown = gw.agent_view("root").await.unwrap().suspension.unwrap();
    assert_eq!(shown.suspended_by, "alice [REDACTED:github_token]");
    assert_eq!(shown.reason, "leaked [REDACTED:github_token]");
    assert_eq!(gw.suspensions().await.unwrap()["root"], shown);
    let refused = register_err(&gw, "child", Some(("root", &root))).await;
    assert!(
        refused.contains("by alice [REDACTED:github_token]: leaked [REDACTED:github_token]"),
        "{refused}"
    );
    let records = gw.store().records(0, 100).await.unwrap();
    assert!(!serde_json::to_string(&records).unwrap().contains(secret));
}
