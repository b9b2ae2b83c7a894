//! Approvals at the gateway over a real SQLite store: who may create, decide and redeem;
//! decided once, used once, bound to the digest; expiry; every step on the audited stream.

use std::sync::Arc;
use std::time::Duration;

use aa_core::{Action, ApprovalStatus};
use aa_gateway::{
    GATEWAY_STREAM, Gateway, GatewayConfig, GatewayError, NewApproval, SqliteStore, Store, audit,
};
use aa_identity::Keypair;
use serde_json::json;

use crate::gateway::{gateway, register};

/// What a runtime binds an approval of `action` to (its key: one derived from a token).
pub(crate) fn bound_to(action: &Action) -> String {
    aa_security::ReceiptKey::derive(b"runtime-token").mac(&action.canonical_bytes())
}

const ADMIN: &str = "admin-secret";

fn action(command: &str) -> Action {
    Action::ToolCall {
        tool: "shell".into(),
        args: json!({ "command": command }),
    }
}

fn ask(agent: &str, token: &str, id: &str, command: &str, timeout: Duration) -> NewApproval {
    let action = action(command);
    NewApproval {
        agent_id: agent.into(),
        credential_token: token.into(),
        approval_id: id.into(),
        action_digest: bound_to(&action),
        action,
        rule: "tools.shell.requires_approval_if".into(),
        reason: "deletes files".into(),
        policy: "test@1".into(),
        timeout,
    }
}

async fn setup() -> (Arc<Gateway<SqliteStore>>, String, String) {
    let gw = Arc::new(gateway(GatewayConfig {
        admin_token: Some(ADMIN.into()),
        ..GatewayConfig::default()
    }));
    let lead_key = Keypair::generate().unwrap();
    let lead = register(&gw, "lead", &lead_key, None).await;
    let helper_key = Keypair::generate().unwrap();
    let helper = register(&gw, "helper", &helper_key, Some(("lead", &lead_key))).await;
    (gw, lead, helper)
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn only_a_registered_agent_creates_and_ids_and_digests_are_checked() {
    let (gw, lead, _) = setup().await;
    let id = "0123456789abcdef0123";
    let bad = gw
        .create_approval(ask("lead", "forged", id, "rm x", MINUTE))
        .await;
    assert!(
        matches!(bad, Err(GatewayError::Unauthenticated(_))),
        "{bad:?}"
    );
    for (approval_id, digest, timeout, what) in [
        ("short", None, MINUTE, "approval_id"),
        ("has spaces in it, sixteen+", None, MINUTE, "approval_id"),
        (id, Some("abc"), MINUTE, "action_digest"),
        (id, None, Duration::ZERO, "timeout"),
        (id, None, Duration::from_secs(8 * 24 * 3600), "timeout"),
    ] {
        let mut request = ask("lead", &lead, approval_id, "rm x", timeout);
        if let Some(digest) = digest {
            request.action_digest = digest.into();
        }
        let error = gw.create_approval(request).await.unwrap_err();
        assert!(
            matches!(&error, GatewayError::InvalidRequest(m) if m.contains(what)),
            "{error}"
        );
    }
    let created = gw
        .create_approval(ask("lead", &lead, id, "rm x", MINUTE))
        .await
        .unwrap();
    assert_eq!(created.status, ApprovalStatus::Pending);
    assert_eq!(created.agent.team.as_deref(), Some("ops"));
    assert!(created.expires_at_ms - created.created_at_ms == 60_000);
    // A retry of the same creation returns the same approval.
    let again = gw
        .create_approval(ask("lead", &lead, id, "rm x", MINUTE))
        .await
        .unwrap();
    assert_eq!(again, created);
}

#[tokio::test]
async fn operators_need_the_admin_token() {
    let (gw, _, _) = setup().await;
    // The scheme in any case (RFC 7235), over HTTP and gRPC alike.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let presented = format!("{scheme} {ADMIN}");
        assert!(gw.authorize_admin(Some(&presented)).is_ok(), "{presented}");
        assert!(
            gw.authorize_runtime(Some(&presented)).is_ok(),
            "{presented}"
        );
    }
    for presented in [
        None,
        Some("Bearer admin-secreT"),
        Some(ADMIN),
        Some(""),
        Some("Basic admin-secret"),
        Some("Bearer"),
        Some("Bearer "),
    ] {
        assert!(matches!(
            gw.authorize_admin(presented),
            Err(GatewayError::Unauthenticated(_))
        ));
    }
    let open = gateway(GatewayConfig::default());
    let refused = open
        .authorize_admin(Some(&format!("Bearer {ADMIN}")))
        .unwrap_err();
    assert!(refused.to_string().contains("no admin token"), "{refused}");
}

#[tokio::test]
async fn decided_once_used_once_and_only_for_its_action() {
    let (gw, lead, helper) = setup().await;
    let id = "approval-aaaaaaaaaaaaaaaa";
    let created = gw
        .create_approval(ask("helper", &helper, id, "rm x", MINUTE))
        .await
        .unwrap();
    let digest = created.action_digest.clone();
    assert_eq!(created.agent.parent.as_deref(), Some("lead"));

    // Not approved yet: nothing to release.
    let early = gw.redeem_approval("helper", &helper, id, &digest).await;
    assert!(matches!(early, Err(GatewayError::Conflict(_))), "{early:?}");

    // Two operators decide at once: exactly one wins.
    let (a, b) = tokio::join!(
        gw.decide_approval(id, true, "alice", Some("fine".into())),
        gw.decide_approval(id, false, "bob", Some("no".into())),
    );
    assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
    let raced = gw.approval(id).await.unwrap();
    let winner = if raced.status == ApprovalStatus::Approved {
        "alice"
    } else {
        "bob"
    };
    assert_eq!(raced.decided_by.as_deref(), Some(winner));

    // A second approval, approved, for the rest.
    let id = "approval-bbbbbbbbbbbbbbbb";
    gw.create_approval(ask("helper", &helper, id, "rm x", MINUTE))
        .await
        .unwrap();
    let decided = gw
        .decide_approval(id, true, "alice", Some("fine".into()))
        .await
        .unwrap();
    assert_eq!(decided.decided_by.as_deref(), Some("alice"));
    assert_eq!(decided.comment.as_deref(), Some("fine"));

    // Another agent, another action: refused; the right one: released once.
    let other = gw.redeem_approval("lead", &lead, id, &digest).await;
    assert!(matches!(other, Err(GatewayError::Conflict(_))), "{other:?}");
    let wrong = gw
        .redeem_approval("helper", &helper, id, &bound_to(&action("rm -rf /")))
        .await;
    assert!(matches!(wrong, Err(GatewayError::Conflict(m)) if m.contains("another action")));
    let used = gw
        .redeem_approval("helper", &helper, id, &digest)
        .await
        .unwrap();
    assert!(used.used_at_ms.is_some());
    let twice = gw.redeem_approval("helper", &helper, id, &digest).await;
    assert!(matches!(twice, Err(GatewayError::Conflict(m)) if m.contains("used already")));
    let unknown = gw
        .decide_approval("nope-nope-nope-nope", true, "x", None)
        .await;
    assert!(matches!(unknown, Err(GatewayError::NotFound(_))));
}

#[tokio::test]
async fn expiry_is_recorded_on_read_and_by_the_sweep() {
    let (gw, lead, _) = setup().await;
    let short = Duration::from_millis(50);
    gw.create_approval(ask("lead", &lead, "expires-on-read-0001", "rm a", short))
        .await
        .unwrap();
    gw.create_approval(ask("lead", &lead, "expires-by-sweep-0001", "rm b", short))
        .await
        .unwrap();
    let mut changes = gw.approval_changes();
    changes.borrow_and_update();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(
        gw.approval("expires-on-read-0001").await.unwrap().status,
        ApprovalStatus::Expired
    );
    assert!(changes.has_changed().unwrap(), "waiters hear of the expiry");
    assert_eq!(gw.expire_approvals().await.unwrap(), 1);
    assert_eq!(gw.expire_approvals().await.unwrap(), 0);
    let late = gw
        .decide_approval("expires-by-sweep-0001", true, "x", None)
        .await;
    assert!(matches!(late, Err(GatewayError::Conflict(m)) if m.contains("expired")));
    assert_eq!(
        gw.approvals(Some(ApprovalStatus::Expired))
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(
        gw.approvals(Some(ApprovalStatus::Pending))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn every_step_is_on_the_gateway_stream_and_verifies() {
    let (gw, _, helper) = setup().await;
    let id = "audited-approval-0001";
    let mut asked = ask("helper", &helper, id, "rm x", MINUTE);
    asked.reason = "deletes files with key AKIAZXCVBNMASDFGHJKL".into();
    let created = gw.create_approval(asked).await.unwrap();
    // The reason is stored as the audit log holds it, redacted.
    assert!(
        created.reason.contains("[REDACTED:") && !created.reason.contains("AKIAZXCVBNMASDFGHJKL"),
        "{}",
        created.reason
    );
    let stored = gw.approval(id).await.unwrap();
    assert_eq!(stored.reason, created.reason);
    gw.decide_approval(
        id,
        true,
        "alice",
        Some("with key AKIAQWERTYUIOPASDFGH".into()),
    )
    .await
    .unwrap();
    gw.redeem_approval("helper", &helper, id, &created.action_digest)
        .await
        .unwrap();
    let records = gw.store().records(0, 1000).await.unwrap();
    let steps: Vec<_> = records
        .iter()
        .filter(|r| r.stream_id == GATEWAY_STREAM)
        .map(|r| {
            (
                r.sequence,
                r.event["detail"]["step"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            (1, "requested".into()),
            (2, "approved".into()),
            (3, "used".into())
        ]
    );
    let text = serde_json::to_string(&records).unwrap();
    assert!(
        !text.contains("AKIAQWERTYUIOPASDFGH"),
        "an operator's comment is scanned too"
    );
    gw.checkpoint().await.unwrap();
    let checkpoints = gw.store().checkpoints().await.unwrap();
    audit::verify(records, &checkpoints, Some(&gw.public_key())).unwrap();

    // No runtime may write on the gateway's stream.
    let mut forged = aa_core::AuditEvent {
        event_id: "forged".into(),
        timestamp_ms: 1,
        agent: aa_core::AgentContext::new("helper"),
        session_id: None,
        action: action("ls"),
        verdict: None,
        redactions: Vec::new(),
        kind: aa_core::EventKind::Approval,
        detail: None,
        origin: None,
    };
    forged.origin = Some(aa_core::Origin {
        stream_id: GATEWAY_STREAM.into(),
        sequence: 4,
        received_at_ms: 1,
        peer_uid: 0,
        peer_pid: 0,
    });
    let refused = gw.append(vec![forged]).await;
    assert!(
        matches!(refused, Err(GatewayError::InvalidRequest(_))),
        "{refused:?}"
    );
}

/// An operator deciding the moment an approval can be seen: the decision is still numbered
/// after the request in the gateway's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_racing_its_request_is_recorded_after_it() {
    let (gw, lead, _) = setup().await;
    let ids: Vec<String> = (0..40).map(|i| format!("race-approval-{i:04}")).collect();
    for id in &ids {
        let creating = tokio::spawn({
            let (gw, lead, id) = (Arc::clone(&gw), lead.clone(), id.clone());
            async move {
                gw.create_approval(ask("lead", &lead, &id, "rm x", MINUTE))
                    .await
            }
        });
        loop {
            match gw.decide_approval(id, false, "op", None).await {
                Ok(_) => break,
                Err(GatewayError::NotFound(_)) => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
        creating.await.unwrap().unwrap();
    }
    let records = gw.store().records(0, 10_000).await.unwrap();
    for id in &ids {
        let steps: Vec<&str> = records
            .iter()
            .filter(|r| r.stream_id == GATEWAY_STREAM && r.event["detail"]["approval_id"] == **id)
            .map(|r| r.event["detail"]["step"].as_str().unwrap())
            .collect();
        assert_eq!(steps, ["requested", "denied"], "{id}");
    }
}

/// A creation whose caller goes away (the runtime's call timed out, and the gRPC request was
/// dropped with it) is still stored with its audit step, and announced to those watching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_whose_caller_goes_away_is_still_stored_and_announced() {
    use aa_proto::pb::approval_service_server::ApprovalService as _;

    let (gw, lead, _) = setup().await;
    let appends = aa_background::Background::start("test-appends", Default::default()).unwrap();
    let api = aa_gateway::grpc::GrpcApi::new(Arc::clone(&gw), Arc::new(appends));
    let mut changes = gw.approval_changes();
    changes.borrow_and_update();
    let id = "abandoned-0123456789";
    let new = ask("lead", &lead, id, "rm x", MINUTE);
    let request = aa_proto::pb::CreateApprovalRequest {
        agent_id: new.agent_id,
        credential_token: new.credential_token,
        approval_id: new.approval_id,
        action: Some((&new.action).into()),
        action_digest: new.action_digest,
        rule: new.rule,
        reason: new.reason,
        policy_version: new.policy,
        timeout: aa_proto::convert::duration_to_wire(new.timeout),
    };
    // Polled once, then dropped, as a request its caller gave up on is.
    let dropped = tokio::time::timeout(Duration::ZERO, api.create(tonic::Request::new(request)));
    assert!(dropped.await.is_err(), "the creation finished at once");
    let announced = tokio::time::timeout(Duration::from_secs(10), changes.changed()).await;
    assert!(
        matches!(announced, Ok(Ok(()))),
        "the creation was not announced"
    );
    assert_eq!(
        gw.approval(id).await.unwrap().status,
        ApprovalStatus::Pending
    );
    let steps = gw.store().records(0, 100).await.unwrap();
    assert!(
        steps
            .iter()
            .any(|r| r.stream_id == GATEWAY_STREAM && r.event_id.contains(id)),
        "the creation's step was not recorded"
    );
}

/// The approval record is shown to operators and served by the API as it is stored, so an
/// operator's name and comment holding what reads as a secret are kept redacted there, as in
/// the event that records the decision (which says what was redacted).
#[tokio::test]
async fn an_operators_name_and_comment_are_kept_redacted() {
    let (gw, _, helper) = setup().await;
    let secret = "ghp_0123456789abcdefghijABCDEFGHIJKLMNOP";
    let id = "redacted-decision-0001";
    gw.create_approval(ask("helper", &helper, id, "rm x", MINUTE))
        .await
        .unwrap();
    let decided = gw
        .decide_approval(
            id,
            false,
            &format!("alice {secret}"),
            Some(format!("leaked {secret}")),
        )
        .await
        .unwrap();
    assert_eq!(
        decided.decided_by.as_deref(),
        Some("alice [REDACTED:github_token]")
    );
    assert_eq!(
        decided.comment.as_deref(),
        Some("leaked [REDACTED:github_token]")
    );
    let stored = gw.approval(id).await.unwrap();
    assert_eq!(
        (stored.decided_by, stored.comment),
        (decided.decided_by, decided.comment)
    );
    let records = gw.store().records(0, 1000).await.unwrap();
    assert!(!serde_json::to_string(&records).unwrap().contains(secret));
    let denied = records
        .iter()
        .find(|r| r.event["detail"]["step"] == "denied")
        .unwrap();
    let fields: Vec<&str> = denied.event["redactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["detail.decided_by", "detail.comment"]);
}
