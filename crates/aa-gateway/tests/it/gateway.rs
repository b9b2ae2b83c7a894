//! The gateway's logic over a real SQLite store: the registration challenge, lineage, tokens
//! and their renewal, bundle publication, the backstop scan and checkpoints.

use std::time::Duration;

use aa_core::{Action, AgentContext, AgentRegistration, AuditEvent, EventKind, Lineage, Origin};
use aa_gateway::{
    ChallengeAnswer, Gateway, GatewayConfig, GatewayError, NewEvent, PolicyDocument, Registered,
    SqliteStore, Store,
};
use aa_identity::{Keypair, Spawn};
use serde_json::json;

pub(crate) const POLICY: &str = "apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: test, version: \"1\"}
spec: {scope: global, default: allow}
";

pub(crate) fn documents(source: &str) -> Vec<PolicyDocument> {
    vec![PolicyDocument {
        name: "test.yaml".into(),
        source: source.into(),
    }]
}

pub(crate) fn gateway(config: GatewayConfig) -> Gateway<SqliteStore> {
    let store = SqliteStore::open_in_memory().unwrap();
    Gateway::new(
        store,
        Keypair::generate().unwrap(),
        documents(POLICY),
        config,
    )
    .unwrap()
}

pub(crate) fn registration(id: &str, key: &Keypair, parent: Option<&str>) -> AgentRegistration {
    AgentRegistration {
        agent_id: id.into(),
        name: id.into(),
        framework: "custom".into(),
        public_key: key.public().did(),
        lineage: Lineage {
            parent_agent_id: parent.map(Into::into),
            team_id: parent.is_none().then(|| "ops".to_owned()),
            delegation_reason: parent.map(|_| "split the work".to_owned()),
            spawned_by_tool: None,
            depth: 99, // a claim the gateway must not believe
        },
    }
}

/// `N` fresh agent keys.
pub(crate) fn keys<const N: usize>() -> [Keypair; N] {
    std::array::from_fn(|_| Keypair::generate().unwrap())
}

/// A child's parent: its id, and the key that signs its consent to the spawn.
pub(crate) type Parent<'a> = Option<(&'a str, &'a Keypair)>;

pub(crate) async fn register(
    gw: &Gateway<SqliteStore>,
    id: &str,
    key: &Keypair,
    parent: Parent<'_>,
) -> String {
    let reg = registration(id, key, parent.map(|(parent_id, _)| parent_id));
    register_as(gw, reg, key, parent.map(|(_, parent_key)| parent_key)).await
}

/// `signature` as the answer to `challenge`.
pub(crate) fn answer<'a>(challenge: &'a [u8], signature: &'a [u8]) -> Option<ChallengeAnswer<'a>> {
    Some(ChallengeAnswer {
        challenge,
        signature,
        ..ChallengeAnswer::default()
    })
}

/// `parent_key`'s consent to `reg`, a child's registration answering `challenge`.
pub(crate) fn consent(reg: &AgentRegistration, parent_key: &Keypair, challenge: &[u8]) -> Vec<u8> {
    parent_key
        .sign_spawn(&Spawn {
            parent_id: reg.lineage.parent_agent_id.as_deref().unwrap_or_default(),
            child_id: &reg.agent_id,
            child_did: &reg.public_key,
            challenge,
        })
        .to_vec()
}

/// Registers `reg`, answering the challenge with `key` (and `parent_key`'s consent); the
/// token issued.
pub(crate) async fn register_as(
    gw: &Gateway<SqliteStore>,
    reg: AgentRegistration,
    key: &Keypair,
    parent_key: Option<&Keypair>,
) -> String {
    let Registered::Challenge(challenge) = gw.register(reg.clone(), None).await.unwrap() else {
        panic!("expected a challenge first");
    };
    let signature = key.sign_challenge(&reg.agent_id, &challenge);
    let parent_signature = parent_key.map_or_else(Vec::new, |k| consent(&reg, k, &challenge));
    let answer = ChallengeAnswer {
        challenge: &challenge,
        signature: &signature,
        parent_signature: &parent_signature,
        ..ChallengeAnswer::default()
    };
    match gw.register(reg, Some(answer)).await.unwrap() {
        Registered::Issued { credential, .. } => credential.token,
        Registered::Challenge(_) => panic!("expected a token"),
    }
}

#[tokio::test]
async fn registration_proves_the_key_and_records_lineage() {
    let gw = gateway(GatewayConfig::default());
    let lead_key = Keypair::generate().unwrap();
    let token = register(&gw, "lead", &lead_key, None).await;
    let lead = gw.authenticate("lead", &token).await.unwrap();
    assert_eq!((lead.depth, lead.team_id.as_deref()), (0, Some("ops")));

    let child_key = Keypair::generate().unwrap();
    register(&gw, "child", &child_key, Some(("lead", &lead_key))).await;
    let child = gw.store().agent("child").await.unwrap().unwrap();
    assert_eq!(
        child.depth, 1,
        "depth comes from the registry, not the claim"
    );
    assert_eq!(
        child.team_id.as_deref(),
        Some("ops"),
        "the team is inherited"
    );
    assert_eq!(child.parent_agent_id.as_deref(), Some("lead"));

    // A parent that is not registered is refused, even with a right answer.
    let reg = || registration("orphan", &child_key, Some("ghost"));
    let Registered::Challenge(challenge) = gw.register(reg(), None).await.unwrap() else {
        panic!("expected a challenge first");
    };
    let signature = child_key.sign_challenge("orphan", &challenge);
    let err = gw.register(reg(), answer(&challenge, &signature)).await;
    assert!(matches!(err, Err(GatewayError::InvalidRequest(m)) if m.contains("not registered")));

    // What a registration issues is logged without its token.
    let reg = || registration("lead", &lead_key, None);
    let Registered::Challenge(challenge) = gw.register(reg(), None).await.unwrap() else {
        panic!("expected a challenge first");
    };
    let signature = lead_key.sign_challenge("lead", &challenge);
    let issued = gw
        .register(reg(), answer(&challenge, &signature))
        .await
        .unwrap();
    let Registered::Issued { credential, .. } = &issued else {
        panic!("expected a token");
    };
    let logged = format!("{issued:?}");
    assert!(!logged.contains(&credential.token), "{logged}");
    assert!(logged.contains(&credential.claims.token_id), "{logged}");
}

/// Naming a parent proves nothing: the parent signs its consent to this very registration,
/// or the child is refused (else anyone could spend another agent's budgets as its child).
#[tokio::test]
async fn a_child_is_registered_only_with_its_parents_consent_and_in_its_team() {
    let gw = gateway(GatewayConfig::default());
    let [lead, child, stranger] = keys();
    register(&gw, "lead", &lead, None).await;
    let reg = registration("child", &child, Some("lead"));
    // What signs the consent, given the challenge.
    type Consent<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;
    let refused = async |reg: AgentRegistration, parent_signature: Consent<'_>| {
        let Registered::Challenge(challenge) = gw.register(reg.clone(), None).await.unwrap() else {
            panic!("expected a challenge first");
        };
        let signature = child.sign_challenge(&reg.agent_id, &challenge);
        let parent_signature = parent_signature(&challenge);
        let answer = ChallengeAnswer {
            challenge: &challenge,
            signature: &signature,
            parent_signature: &parent_signature,
            ..ChallengeAnswer::default()
        };
        gw.register(reg, Some(answer))
            .await
            .unwrap_err()
            .to_string()
    };
    let err = refused(reg.clone(), &|_| Vec::new()).await;
    assert_eq!(
        err,
        "unauthenticated: agent \"child\" names \"lead\" as its parent, and its first \
         registration carries neither parent_signature (that agent's consent, signed with its \
         key) nor spawn_grant (one it signed ahead of time: `aasm agents grant`)"
    );
    // Signed by another key, for another child, or for an earlier registration's challenge.
    let earlier = consent(&reg, &lead, &[7; 32]);
    let other_child = registration("other", &child, Some("lead"));
    let wrong: [Consent<'_>; 3] = [
        &|c| consent(&reg, &stranger, c),
        &|c| consent(&other_child, &lead, c),
        &|_| earlier.clone(),
    ];
    for wrong in wrong {
        let err = refused(reg.clone(), wrong).await;
        assert_eq!(
            err,
            "unauthenticated: parent_signature does not verify with the key of agent \"lead\", \
             which agent \"child\" names as its parent"
        );
    }
    assert!(gw.store().agent("child").await.unwrap().is_none());
    // A child stays in its parent's team.
    let elsewhere = AgentRegistration {
        lineage: Lineage {
            team_id: Some("free".into()),
            ..reg.lineage.clone()
        },
        ..reg.clone()
    };
    let err = refused(elsewhere, &|c| consent(&reg, &lead, c)).await;
    assert_eq!(
        err,
        "invalid request: team_id \"free\": agent \"child\" is spawned by \"lead\", which \
         is in team \"ops\"; a child works in its parent's team, so leave team_id out"
    );
    // With the consent, and naming the parent's own team or none, it is registered.
    let same_team = AgentRegistration {
        lineage: Lineage {
            team_id: Some("ops".into()),
            ..reg.lineage.clone()
        },
        ..reg.clone()
    };
    register_as(&gw, same_team, &child, Some(&lead)).await;
    let stored = gw.store().agent("child").await.unwrap().unwrap();
    assert_eq!(
        (stored.parent_agent_id.as_deref(), stored.team_id.as_deref()),
        (Some("lead"), Some("ops"))
    );
}

/// A child registered where its parent's key is not (another host) shows a grant the parent
/// signed ahead of time: for that child under that parent, unexpired, and signed now, not
/// ahead (its lifetime, at most a day, is `aa_identity`'s to check).
#[tokio::test]
async fn a_child_elsewhere_is_registered_with_its_parents_grant() {
    let gw = gateway(GatewayConfig::default());
    let [lead, child, stranger] = keys();
    register(&gw, "lead", &lead, None).await;
    let reg = registration("child", &child, Some("lead"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let with_grant = async |grant: &str| {
        let Registered::Challenge(challenge) = gw.register(reg.clone(), None).await.unwrap() else {
            panic!("expected a challenge first");
        };
        let signature = child.sign_challenge("child", &challenge);
        let answer = ChallengeAnswer {
            challenge: &challenge,
            signature: &signature,
            spawn_grant: grant,
            ..ChallengeAnswer::default()
        };
        gw.register(reg.clone(), Some(answer))
            .await
            .map_err(|e| e.to_string())
    };
    let grant = |key: &Keypair, parent: &str, child: &str, issued: u64, ttl: u64| {
        aa_identity::grant(key, parent, child, issued, ttl)
            .unwrap()
            .0
    };
    let refusals = [
        (
            grant(&stranger, "lead", "child", now, 600),
            "not signed with the parent's key",
        ),
        (
            grant(&lead, "lead", "other", now, 600),
            "it grants agent \"other\" under \"lead\"",
        ),
        (grant(&lead, "lead", "child", now - 700, 600), "expired"),
        (
            grant(&lead, "lead", "child", now + 3_600, 600),
            "invalid grant: signed ahead of this clock",
        ),
        (
            "aag1.x".to_owned(),
            "malformed token: expected three dot-separated parts",
        ),
    ];
    for (grant, why) in refusals {
        assert_eq!(
            with_grant(&grant).await.unwrap_err(),
            format!("unauthenticated: spawn_grant of agent \"child\" under \"lead\": {why}")
        );
    }
    assert!(gw.store().agent("child").await.unwrap().is_none());
    let issued = with_grant(&grant(&lead, "lead", "child", now, 600))
        .await
        .unwrap();
    assert!(matches!(issued, Registered::Issued { .. }));
    let stored = gw.store().agent("child").await.unwrap().unwrap();
    assert_eq!(
        (stored.parent_agent_id.as_deref(), stored.depth),
        (Some("lead"), 1)
    );
}

/// A team whose policy lists members takes only them as roots (their children follow their
/// parent); naming it is no way into its policy, here an observed one.
#[tokio::test]
async fn a_team_that_lists_members_takes_only_them() {
    let gw = gateway(GatewayConfig::default());
    gw.publish(documents(&format!(
        "{POLICY}---
apiVersion: agent-assembly/v1
kind: Policy
metadata: {{name: ops, version: \"4\"}}
spec: {{scope: team:ops, mode: observe, members: [\"lead\", \"ops-*\"]}}
"
    )))
    .unwrap();
    let [lead, helper, stranger] = keys();
    // `registration` puts every root in team "ops".
    register(&gw, "lead", &lead, None).await;
    register(&gw, "ops-nightly", &stranger, None).await;
    register(&gw, "helper", &helper, Some(("lead", &lead))).await;
    assert_eq!(
        gw.store()
            .agent("helper")
            .await
            .unwrap()
            .unwrap()
            .team_id
            .as_deref(),
        Some("ops")
    );
    let intruder = Keypair::generate().unwrap();
    let reg = registration("intruder", &intruder, None);
    let Registered::Challenge(challenge) = gw.register(reg.clone(), None).await.unwrap() else {
        panic!("expected a challenge first");
    };
    let signature = intruder.sign_challenge("intruder", &challenge);
    let err = gw
        .register(reg, answer(&challenge, &signature))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unauthenticated: agent \"intruder\" is not a member of team \"ops\": the team's \
         members are listed in spec.members of ops@4"
    );
    assert!(gw.store().agent("intruder").await.unwrap().is_none());
}

#[tokio::test]
async fn a_wrong_answer_another_key_or_no_challenge_is_refused() {
    let gw = gateway(GatewayConfig::default());
    let key = Keypair::generate().unwrap();
    let other = Keypair::generate().unwrap();
    let bot = || registration("bot", &key, None);

    // No open challenge: never given, or not named.
    let made_up = [0; 32];
    let signature = key.sign_challenge("bot", &made_up);
    let err = gw.register(bot(), answer(&made_up, &signature)).await;
    assert!(
        matches!(&err, Err(GatewayError::Unauthenticated(m)) if m.contains("not open")),
        "{err:?}"
    );
    let err = gw.register(bot(), answer(&[], &signature)).await;
    assert!(
        matches!(&err, Err(GatewayError::InvalidRequest(m)) if m.contains("answered_challenge")),
        "{err:?}"
    );

    // Signed by another key, or over another agent's id: refused, and the challenge stays
    // open for the right answer, which takes it, once.
    let Registered::Challenge(challenge) = gw.register(bot(), None).await.unwrap() else {
        panic!("expected a challenge first");
    };
    for wrong in [
        other.sign_challenge("bot", &challenge),
        key.sign_challenge("bat", &challenge),
    ] {
        let err = gw.register(bot(), answer(&challenge, &wrong)).await;
        assert!(
            matches!(&err, Err(GatewayError::Unauthenticated(m)) if m.contains("does not verify")),
            "{err:?}"
        );
    }
    let right = key.sign_challenge("bot", &challenge);
    let registered = gw.register(bot(), answer(&challenge, &right)).await;
    assert!(
        matches!(registered, Ok(Registered::Issued { .. })),
        "{registered:?}"
    );
    let again = gw.register(bot(), answer(&challenge, &right)).await;
    assert!(
        matches!(&again, Err(GatewayError::Unauthenticated(m)) if m.contains("not open")),
        "a challenge answers once: {again:?}"
    );

    // A challenge opened for one agent is not another's to answer.
    let Registered::Challenge(challenge) = gw
        .register(registration("other", &other, None), None)
        .await
        .unwrap()
    else {
        panic!("expected a challenge first");
    };
    let err = gw
        .register(
            bot(),
            answer(&challenge, &key.sign_challenge("bot", &challenge)),
        )
        .await;
    assert!(
        matches!(&err, Err(GatewayError::Unauthenticated(m)) if m.contains("not open")),
        "{err:?}"
    );

    // Once registered, the id is bound to its key.
    let err = gw.register(registration("bot", &other, None), None).await;
    assert!(matches!(err, Err(GatewayError::Unauthenticated(m)) if m.contains("another key")));
}

/// An agent's id and key are public (the registry shows them, its tokens name them), so
/// anyone who can reach a runtime can send a registration step for them. Between the agent's
/// challenge and its answer, an unsigned step (which once replaced the agent's challenge) and
/// a step signed with junk (which once spent it) leave the agent's challenge as it was, and
/// the agent registers.
#[tokio::test]
async fn registration_steps_sent_for_an_agent_by_others_do_not_block_it() {
    let gw = gateway(GatewayConfig::default());
    let key = Keypair::generate().unwrap();
    let victim = || registration("victim", &key, None);
    for registered_before in [false, true] {
        if registered_before {
            // A known agent registering again (a restart) is open to the same.
            register(&gw, "victim", &key, None).await;
        }
        let Registered::Challenge(challenge) = gw.register(victim(), None).await.unwrap() else {
            panic!("expected a challenge first");
        };
        // The attacker's own challenge, and junk answers to it and to the victim's (whose
        // bytes it may have guessed or seen): none takes anything from the victim.
        let Registered::Challenge(theirs) = gw.register(victim(), None).await.unwrap() else {
            panic!("each request gets a challenge");
        };
        assert_ne!(theirs, challenge);
        for answered in [&theirs, &challenge] {
            let junk = gw.register(victim(), answer(answered, &[7; 64])).await;
            assert!(
                matches!(&junk, Err(GatewayError::Unauthenticated(_))),
                "{junk:?}"
            );
        }
        let signature = key.sign_challenge("victim", &challenge);
        let registered = gw.register(victim(), answer(&challenge, &signature)).await;
        assert!(
            matches!(registered, Ok(Registered::Issued { .. })),
            "the victim still registers: {registered:?}"
        );
    }
}

#[tokio::test]
async fn heartbeat_supersedes_and_deregister_revokes() {
    let gw = gateway(GatewayConfig::default());
    let key = Keypair::generate().unwrap();
    let first = register(&gw, "bot", &key, None).await;
    let renewed = gw.heartbeat("bot", &first).await.unwrap().token;
    assert!(gw.authenticate("bot", &renewed).await.is_ok());
    let replay = gw.authenticate("bot", &first).await;
    assert!(matches!(replay, Err(GatewayError::Unauthenticated(m)) if m.contains("superseded")));
    assert!(
        gw.authenticate("other", &renewed).await.is_err(),
        "bound to its agent"
    );

    let foreign = gateway(GatewayConfig::default());
    assert!(
        foreign.authenticate("bot", &renewed).await.is_err(),
        "another gateway's token"
    );

    // Runtimes are told of tokens a registration supersedes or a deregistration revokes:
    // another runtime may hold those. A renewed token only its own runtime held, and that
    // runtime holds the new one now.
    let mut changes = gw.revocation_changes();
    let revoked_ids = async |gw: &Gateway<SqliteStore>| -> Vec<String> {
        let mut ids: Vec<String> = gw
            .revoked_tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| format!("{}:{}", t.agent_id, t.token_id))
            .collect();
        ids.sort();
        ids
    };
    let id = |token: &str| {
        format!(
            "bot:{}",
            aa_identity::unverified_claims(token).unwrap().token_id
        )
    };
    assert!(revoked_ids(&gw).await.is_empty());
    let again = register(&gw, "bot", &key, None).await;
    assert!(changes.has_changed().unwrap(), "watchers are woken");
    changes.borrow_and_update();
    assert_eq!(revoked_ids(&gw).await, [id(&renewed)]);
    assert!(gw.authenticate("bot", &renewed).await.is_err());

    gw.deregister("bot", &again).await.unwrap();
    assert!(changes.has_changed().unwrap());
    assert!(gw.authenticate("bot", &again).await.is_err());
    let mut expected = [id(&renewed), id(&again)];
    expected.sort();
    assert_eq!(revoked_ids(&gw).await, expected);
}

/// A heartbeat through one runtime racing a registration through another never leaves the
/// registration's token superseded and unrevoked: the registration's token is the current
/// one, and a token the heartbeat got meanwhile is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_racing_a_registration_leaves_no_token_unrevoked() {
    let gw = std::sync::Arc::new(gateway(GatewayConfig::default()));
    let key = Keypair::generate().unwrap();
    let mut held = register(&gw, "bot", &key, None).await;
    for _ in 0..20 {
        let renewing = {
            let (gw, held) = (std::sync::Arc::clone(&gw), held.clone());
            tokio::spawn(async move { gw.heartbeat("bot", &held).await })
        };
        let registered = register(&gw, "bot", &key, None).await;
        let renewed = renewing.await.unwrap();
        assert!(
            gw.authenticate("bot", &registered).await.is_ok(),
            "the registration's token was overwritten"
        );
        if let Ok(renewed) = renewed {
            let id = aa_identity::unverified_claims(&renewed.token)
                .unwrap()
                .token_id;
            let revoked = gw.revoked_tokens().await.unwrap();
            assert!(
                revoked.iter().any(|t| t.token_id == id),
                "a renewed token left valid"
            );
        }
        held = registered;
    }
}

/// An agent registering in a loop keeps only its few newest revoked tokens in the set every
/// runtime is sent; other agents' stay.
#[tokio::test]
async fn each_agent_keeps_a_few_revoked_tokens_at_most() {
    let gw = gateway(GatewayConfig::default());
    let (key, other) = (Keypair::generate().unwrap(), Keypair::generate().unwrap());
    register(&gw, "other", &other, None).await;
    register(&gw, "other", &other, None).await;
    for _ in 0..10 {
        register(&gw, "looping", &key, None).await;
    }
    let revoked = gw.revoked_tokens().await.unwrap();
    let of = |agent: &str| revoked.iter().filter(|t| t.agent_id == agent).count();
    assert_eq!((of("looping"), of("other")), (4, 1));
}

/// Revoked tokens outlive a gateway restart (a runtime away meanwhile still learns of them),
/// and are forgotten once they would have expired.
#[tokio::test]
async fn revoked_tokens_are_kept_until_they_would_have_expired() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Gateway::new(
            SqliteStore::open(&dir.path().join("gateway.db")).unwrap(),
            aa_identity::keyfile::load_or_create(&dir.path().join("gateway.key")).unwrap(),
            documents(POLICY),
            GatewayConfig {
                token_ttl: Duration::from_secs(2),
                ..GatewayConfig::default()
            },
        )
        .unwrap()
    };
    let key = Keypair::generate().unwrap();
    let gw = open();
    let first = register(&gw, "bot", &key, None).await;
    register(&gw, "bot", &key, None).await;
    drop(gw);
    let gw = open();
    let revoked = gw.revoked_tokens().await.unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(
        revoked[0].token_id,
        aa_identity::unverified_claims(&first).unwrap().token_id
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(gw.revoked_tokens().await.unwrap().is_empty());
}

#[tokio::test]
async fn tokens_expire() {
    let gw = gateway(GatewayConfig {
        token_ttl: Duration::from_secs(1),
        ..GatewayConfig::default()
    });
    let token = register(&gw, "bot", &Keypair::generate().unwrap(), None).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = gw.authenticate("bot", &token).await;
    assert!(matches!(err, Err(GatewayError::Unauthenticated(m)) if m.contains("expired")));
}

#[tokio::test]
async fn publishing_changes_the_version_only_when_content_changes() {
    let gw = gateway(GatewayConfig::default());
    let watch = gw.subscribe();
    let first = gw.bundle().version.clone();
    assert_eq!(gw.publish(documents(POLICY)).unwrap(), first);
    assert!(!watch.has_changed().unwrap());
    let second = gw
        .publish(documents(&POLICY.replace("allow", "deny")))
        .unwrap();
    assert_ne!(second, first);
    assert!(watch.has_changed().unwrap());
    assert!(gw.publish(documents("not: a policy")).is_err());
    assert_eq!(
        gw.bundle().version,
        second,
        "a bad document changes nothing"
    );
}

fn event(n: u64, command: &str) -> AuditEvent {
    event_in("rt-1", n, command)
}

pub(crate) fn event_in(stream: &str, n: u64, command: &str) -> AuditEvent {
    AuditEvent {
        event_id: format!("{stream}/{n}"),
        timestamp_ms: 1,
        agent: AgentContext::new("bot"),
        session_id: None,
        action: Action::ToolCall {
            tool: "shell".into(),
            args: json!({ "command": command }),
        },
        verdict: None,
        redactions: vec![],
        kind: EventKind::ToolStart,
        detail: None,
        origin: Some(Origin {
            stream_id: stream.into(),
            sequence: n,
            received_at_ms: 2,
            peer_uid: 1000,
            peer_pid: 7,
        }),
    }
}

#[tokio::test]
async fn appends_are_scanned_again_and_checkpointed() {
    let gw = gateway(GatewayConfig::default());
    let secret = "AKIAQWERTYUIOPASDFGH";
    let appended = gw
        .append(vec![
            event(1, "ls"),
            event(2, &format!("aws --key {secret}")),
        ])
        .await
        .unwrap();
    assert_eq!(appended.accepted, 2);
    let again = gw.append(vec![event(2, "ls")]).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 1));

    let records = gw.store().records(0, 10).await.unwrap();
    let stored = serde_json::to_string(&records).unwrap();
    assert!(!stored.contains(secret), "{stored}");
    assert!(stored.contains("[REDACTED:aws_access_key]"));

    let mut missing_origin = event(3, "ls");
    missing_origin.origin = None;
    assert!(gw.append(vec![missing_origin]).await.is_err());

    let checkpoint = gw.checkpoint().await.unwrap().expect("heads moved");
    assert_eq!(checkpoint.heads[0].sequence, 2);
    assert!(
        gw.checkpoint().await.unwrap().is_none(),
        "nothing moved since"
    );
    let verified = aa_gateway::audit::verify(
        records,
        &gw.store().checkpoints().await.unwrap(),
        Some(&gw.public_key()),
    )
    .unwrap();
    assert_eq!((verified.records, verified.checkpoints), (2, 1));
}

/// An event id holding a secret (kept by a runtime that did not scan it) is stored as its
/// digest, with a receipt, and the same id sent again is still a duplicate.
#[tokio::test]
async fn the_backstop_scans_event_ids_too() {
    let gw = gateway(GatewayConfig::default());
    let secret = "AKIAQWERTYUIOPASDFGH";
    let mut leaky = event(1, "ls");
    leaky.event_id = format!("rt-1/bot/{secret}");
    let appended = gw.append(vec![leaky.clone()]).await.unwrap();
    assert_eq!(appended.accepted, 1);
    let again = gw.append(vec![leaky]).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 1));
    let records = gw.store().records(0, 10).await.unwrap();
    let stored = serde_json::to_string(&records).unwrap();
    assert!(!stored.contains(secret), "{stored}");
    assert!(records[0].event_id.starts_with("sha256:"), "{stored}");
    assert_eq!(records[0].event["event_id"], records[0].event_id.as_str());
    let receipts = records[0].event["redactions"].as_array().unwrap();
    assert!(
        receipts
            .iter()
            .any(|r| r["field"] == "event_id" && r["kind"] == "aws_access_key"),
        "{stored}"
    );
}

/// The backstop scans with the custom patterns (`spec.data.patterns`) of the bundle in force,
/// from the one published after them on.
#[tokio::test]
async fn the_backstop_scans_for_the_published_policies_custom_patterns() {
    let gw = gateway(GatewayConfig::default());
    gw.append(vec![event(1, "badge EMP-123456")]).await.unwrap();
    let with_pattern = "apiVersion: agent-assembly/v1
kind: Policy
metadata: {name: test, version: \"2\"}
spec:
  scope: global
  default: allow
  data:
    patterns: [{name: employee_id, regex: 'EMP-\\d{6}'}]
";
    gw.publish(documents(with_pattern)).unwrap();
    gw.append(vec![event(2, "badge EMP-654321")]).await.unwrap();

    let stored = serde_json::to_string(&gw.store().records(0, 10).await.unwrap()).unwrap();
    assert!(
        stored.contains("EMP-123456"),
        "stored before the pattern: {stored}"
    );
    assert!(!stored.contains("EMP-654321"), "{stored}");
    assert!(stored.contains("[REDACTED:employee_id]"), "{stored}");
    assert!(
        stored.contains("custom-employee_id"),
        "the receipt names the rule: {stored}"
    );

    let bad_name = with_pattern.replace("employee_id", "employee id");
    assert!(gw.publish(documents(&bad_name)).is_err());
}

/// A runtime that did not hear its batch stored sends it again, perhaps after the published
/// patterns changed how its ids read: an event at or below its stream's head is known by its
/// id, as stored before the change or after, and is not checked or stored again. Were it
/// judged again, an id that now reads as a secret (stored as it was, resent as its digest)
/// or no longer does would be a different event at a taken place, and the stream could never
/// go on.
#[tokio::test]
async fn an_event_sent_again_is_held_whatever_its_id_reads_as_now() {
    let gw = gateway(GatewayConfig::default());
    let with_badge = |n: u64| {
        let mut e = event(n, "ls");
        e.event_id = format!("rt-1/bot/EMP-12345{n}");
        e
    };
    let batch: Vec<AuditEvent> = (1..=3).map(with_badge).collect();
    assert_eq!(gw.append(batch.clone()).await.unwrap().accepted, 3);
    let with_pattern = POLICY.replace(
        "default: allow}",
        "default: allow, data: {patterns: [{name: badge, regex: 'EMP-\\d{6}'}]}}",
    );
    gw.publish(documents(&with_pattern)).unwrap();
    let mut again = batch.clone();
    // What follows a resend is new, and checked as ever.
    again.push(with_badge(4));
    let appended = gw.append(again.clone()).await.unwrap();
    assert_eq!((appended.accepted, appended.duplicates), (1, 3));
    let records = gw.store().records(0, 10).await.unwrap();
    assert_eq!(records[0].event_id, "rt-1/bot/EMP-123451");
    assert!(records[3].event_id.starts_with("sha256:"), "{records:?}");

    // The other way round: stored as its digest, resent after the pattern is gone.
    gw.publish(documents(POLICY)).unwrap();
    let appended = gw.append(again).await.unwrap();
    assert_eq!((appended.accepted, appended.duplicates), (0, 4));

    // A resend is known by its id alone: what it carries now is neither read nor stored.
    let redactions = || {
        gw.metrics()
            .backstop_redactions
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = redactions();
    let mut changed = with_badge(2);
    changed.action = Action::ToolCall {
        tool: "shell".into(),
        args: json!({"command": "aws --key AKIAQWERTYUIOPASDFGH"}),
    };
    let appended = gw.append(vec![changed]).await.unwrap();
    assert_eq!((appended.accepted, appended.duplicates), (0, 1));
    assert_eq!(redactions(), before, "the resend was not scanned");

    // A usage is held once stored; and a pattern published since that matches its action's
    // type leaves the type alone (a tag, not an agent's data): a new usage still reads as one.
    let mut usage = event(5, "ls");
    usage.kind = EventKind::LlmUsage;
    usage.action = Action::LlmCall {
        model: "gpt-4o".into(),
        token_estimate: Some(10),
    };
    assert_eq!(gw.append(vec![usage.clone()]).await.unwrap().accepted, 1);
    let matching_the_type = POLICY.replace(
        "default: allow}",
        "default: allow, data: {patterns: [{name: calls, regex: 'llm_call'}]}}",
    );
    gw.publish(documents(&matching_the_type)).unwrap();
    let mut next = usage.clone();
    next.event_id = "rt-1/6".into();
    next.origin.as_mut().unwrap().sequence = 6;
    let appended = gw.append(vec![usage, next]).await.unwrap();
    assert_eq!((appended.accepted, appended.duplicates), (1, 1));
    let stored = gw.store().records(5, 1).await.unwrap();
    assert_eq!(stored[0].event["action"]["type"], "llm_call", "{stored:?}");

    // Another event at a taken place is still refused: the two histories differ.
    let mut other = event(2, "ls");
    other.event_id = "rt-1/bot/another".into();
    let refused = gw.append(vec![other]).await;
    assert!(
        matches!(
            refused,
            Err(GatewayError::Sequence {
                expected: 7,
                got: 2,
                ..
            })
        ),
        "{refused:?}"
    );
}

/// A refusal for being out of sequence names the stream's head as stored, and the gateway
/// takes it: an event stored while the gateway's own count lagged (another append of the
/// stream not yet finished) is known for a resend at the next try, whatever its id reads as
/// now.
#[tokio::test]
async fn the_head_a_refusal_names_makes_the_next_try_a_resend() {
    let gw = gateway(GatewayConfig::default());
    let with_pattern = POLICY.replace(
        "default: allow}",
        "default: allow, data: {patterns: [{name: badge, regex: 'EMP-\\d{6}'}]}}",
    );
    gw.publish(documents(&with_pattern)).unwrap();
    assert_eq!(gw.append(vec![event(1, "ls")]).await.unwrap().accepted, 1);
    let mut badge = event(2, "ls");
    badge.event_id = "rt-1/bot/EMP-123456".into();
    // Stored under the id as it came, past the head the gateway counts.
    let stored = NewEvent::new(
        badge.event_id.clone(),
        2,
        &serde_json::to_value(&badge).unwrap(),
    );
    gw.store()
        .append_events("rt-1", vec![stored])
        .await
        .unwrap();

    // Taken for new, its id reads as its digest now: another event at a taken place.
    let refused = gw.append(vec![badge.clone()]).await;
    assert!(
        matches!(
            refused,
            Err(GatewayError::Sequence {
                expected: 3,
                got: 2,
                ..
            })
        ),
        "{refused:?}"
    );
    let appended = gw.append(vec![badge]).await.unwrap();
    assert_eq!((appended.accepted, appended.duplicates), (0, 1));

    // A batch refused for a gap stores nothing, so what came before the gap is still new.
    let refused = gw.append(vec![event(3, "ls"), event(5, "ls")]).await;
    assert!(
        matches!(
            refused,
            Err(GatewayError::Sequence {
                expected: 3,
                got: 5,
                ..
            })
        ),
        "{refused:?}"
    );
    let appended = gw.append(vec![event(3, "ls")]).await.unwrap();
    assert_eq!((appended.accepted, appended.duplicates), (1, 0));
}

/// A batch of two streams is stored in order, redacted throughout, or refused whole.
#[tokio::test]
async fn a_batch_is_stored_in_order_or_refused_whole() {
    let gw = gateway(GatewayConfig::default());
    let secret = "AKIAQWERTYUIOPASDFGH";
    let command = |n: u64| match n % 50 {
        0 => format!("aws --key {secret} # {n}"),
        _ => format!("ls {n}"),
    };
    let mut batch: Vec<AuditEvent> = (1..=250)
        .map(|n| event_in("rt-1", n, &command(n)))
        .collect();
    batch.extend((1..=150).map(|n| event_in("rt-2", n, &command(n))));
    let mut refused = batch.clone();
    refused.push(event_in("rt-2", 151, "ls"));
    refused.last_mut().unwrap().origin = None;
    let err = gw.append(refused.clone()).await;
    assert!(matches!(err, Err(GatewayError::InvalidRequest(m)) if m.contains("no origin")));
    // Long batches are checked in parts on several threads: the refusal is still the first
    // in the batch's order, whichever part finished first.
    let mut refused_twice = refused;
    refused_twice[5].origin.as_mut().unwrap().stream_id = "gateway".into();
    let err = gw.append(refused_twice).await;
    assert!(
        matches!(&err, Err(GatewayError::InvalidRequest(m)) if m.contains("the gateway's own")),
        "{err:?}"
    );
    // A stream without a name: `aasm audit verify` would report its record as inserted.
    let err = gw.append(vec![event_in("", 1, "ls")]).await;
    assert!(
        matches!(&err, Err(GatewayError::InvalidRequest(m)) if m.contains("empty stream id")),
        "{err:?}"
    );
    assert!(
        gw.store().records(0, 10).await.unwrap().is_empty(),
        "nothing of a refused batch is stored"
    );

    let appended = gw.append(batch).await.unwrap();
    assert_eq!(appended.accepted, 400);
    let records = gw.store().records(0, 1000).await.unwrap();
    let places: Vec<(String, u64)> = records
        .iter()
        .map(|r| (r.stream_id.clone(), r.sequence))
        .collect();
    let expected: Vec<(String, u64)> = (1..=250)
        .map(|n| ("rt-1".to_owned(), n))
        .chain((1..=150).map(|n| ("rt-2".to_owned(), n)))
        .collect();
    assert_eq!(places, expected);
    let stored = serde_json::to_string(&records).unwrap();
    assert!(!stored.contains(secret));
    assert_eq!(stored.matches("[REDACTED:aws_access_key]").count(), 8);
    assert!(stored.contains("ls 249") && stored.contains("ls 149"));
    let verified = aa_gateway::audit::verify(records, &[], None).unwrap();
    assert_eq!(verified.records, 400);
}

/// A runtime sends its next batch before the last is answered, and the later one may reach the
/// gateway first: the gateway checks both at once and stores a stream's runs in sequence
/// order. A run behind one that is refused finds its gap still open and is refused by the
/// store, naming the sequence the stream's head calls for.
#[tokio::test]
async fn overlapping_batches_of_a_stream_are_stored_in_sequence_order() {
    let gw = gateway(GatewayConfig::default());
    // Long enough to be checked in parts on the blocking pool: it finishes its checks well
    // after the one-event batch that follows it, whichever arrives first.
    let long: Vec<AuditEvent> = (1..=600).map(|n| event(n, &format!("ls {n}"))).collect();
    let (second, first) = tokio::join!(gw.append(vec![event(601, "ls")]), gw.append(long.clone()));
    assert_eq!(first.unwrap().accepted, 600);
    assert_eq!(second.unwrap().accepted, 1);
    let (first, second) = tokio::join!(
        gw.append((602..=1000).map(|n| event(n, "ls")).collect()),
        gw.append(vec![event(1001, "ls")])
    );
    assert_eq!(
        (first.unwrap().accepted, second.unwrap().accepted),
        (399, 1)
    );

    let mut refused: Vec<AuditEvent> = (1002..=1600).map(|n| event(n, "ls")).collect();
    refused[300].origin = None;
    let (first, second) = tokio::join!(gw.append(refused), gw.append(vec![event(1601, "ls")]));
    assert!(
        matches!(first, Err(GatewayError::InvalidRequest(_))),
        "{first:?}"
    );
    assert!(
        matches!(
            second,
            Err(GatewayError::Sequence {
                expected: 1002,
                got: 1601,
                ..
            })
        ),
        "{second:?}"
    );

    let records = gw.store().records(0, 2000).await.unwrap();
    let sequences: Vec<u64> = records.iter().map(|r| r.sequence).collect();
    assert_eq!(sequences, (1..=1001).collect::<Vec<u64>>());
    assert_eq!(
        aa_gateway::audit::verify(records, &[], None)
            .unwrap()
            .records,
        1001
    );
}
