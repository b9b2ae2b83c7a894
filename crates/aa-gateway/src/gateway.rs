//! The gateway's logic, independent of transport: registration with a challenge, credential
//! renewal, the published policy bundle, audit appends with the backstop scan, and signed
//! checkpoints. The gRPC and HTTP layers only translate.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aa_background::BackgroundPriority;
use aa_core::{AgentRegistration, AuditEvent, EventKind, RedactionReceipt, TopologyEdge};
use aa_identity::{Claims, IdentityError, Keypair, PublicKey, Spawn};
use aa_policy::PriceTable;
use aa_security::{Limits, ReceiptKey, Scanner};
use serde::Deserialize as _;
use serde_json::Value;
use tokio::sync::watch;

use crate::audit::{Checkpoint, Head, Record};
use crate::bundle::{Bundle, PolicyDocument};
use crate::challenges::{Answered, Challenges};
use crate::error::GatewayError;
use crate::store::{AgentRecord, Appended, NewEvent, RevokedToken, Store};

/// Tunables, with defaults fit for production.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// How long a credential token lives; heartbeats renew it.
    pub token_ttl: Duration,
    /// How long a registration challenge may be answered.
    pub challenge_ttl: Duration,
    /// How often the stream heads are signed (when they moved).
    pub checkpoint_interval: Duration,
    /// Size caps for the backstop scan.
    pub limits: Limits,
    /// The bearer token operators present to decide approvals and suspend agents; without
    /// one those calls are refused.
    pub admin_token: Option<String>,
    /// The bearer token runtimes present on every gRPC call (an operator's call may carry the
    /// admin token instead); without one every gRPC call but an operator's is refused.
    pub runtime_token: Option<String>,
    /// The prices LLM calls are charged by; `None` for the shipped table.
    pub prices: Option<Arc<PriceTable>>,
    /// How runtimes' appends (checking their events, the backstop scan, and storing them,
    /// which no agent waits on) give way to the gateway's other calls and to a runtime on the
    /// same host, whose checks would otherwise queue behind them. An append holds the store
    /// while it stores a batch, and a call that needs the store meanwhile waits for it: on a
    /// host whose processors are kept busy at normal priority, `Idle` can make that wait long
    /// (the append gets almost no processor time), which `Lower` bounds.
    pub append_priority: BackgroundPriority,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            token_ttl: Duration::from_secs(15 * 60),
            challenge_ttl: Duration::from_secs(60),
            checkpoint_interval: Duration::from_secs(10),
            limits: Limits::default(),
            admin_token: None,
            runtime_token: None,
            prices: None,
            append_priority: BackgroundPriority::default(),
        }
    }
}

/// A registration's answer to its challenge: the challenge, as the gateway gave it, and the
/// agent key's signature over it; for a child's first registration, its parent's consent too.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChallengeAnswer<'a> {
    /// The challenge answered.
    pub challenge: &'a [u8],
    /// The signature.
    pub signature: &'a [u8],
    /// The parent's signature over the [`aa_identity::Spawn`] of this registration; empty for
    /// an agent without a parent, or one registering again.
    pub parent_signature: &'a [u8],
    /// Else a grant the parent signed ahead of time ([`aa_identity::Grant`]); empty without.
    pub spawn_grant: &'a str,
}

/// What a registration step produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// Sign this with the agent key and register again.
    Challenge(Vec<u8>),
    /// The agent is registered; it presents the token from now on.
    Issued {
        /// The token.
        credential: Credential,
        /// The agent as recorded, lineage included.
        agent: Box<AgentRecord>,
        /// The registry's chain above it: the root first, the parent last.
        ancestors: Vec<AgentRecord>,
    },
}

/// A credential token and what it says.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The token text.
    pub token: String,
    /// Its claims.
    pub claims: Claims,
}

/// Written without the token: whoever reads a log line holding it could act as the agent.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("token", &"<redacted>")
            .field("claims", &self.claims)
            .finish()
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Completed registrations.
    pub registrations: AtomicU64,
    /// Refused registrations, heartbeats and deregistrations.
    pub auth_failures: AtomicU64,
    /// Renewed tokens.
    pub heartbeats: AtomicU64,
    /// Audit events appended.
    pub events_appended: AtomicU64,
    /// Audit events already present.
    pub events_duplicate: AtomicU64,
    /// Spans the backstop scan redacted (each one a secret a runtime let through).
    pub backstop_redactions: AtomicU64,
    /// Bundles published.
    pub bundles_published: AtomicU64,
    /// Checkpoints signed.
    pub checkpoints: AtomicU64,
    /// LLM calls whose estimated cost was reserved.
    pub budget_reservations: AtomicU64,
    /// LLM calls refused because a budget had no room.
    pub budget_refusals: AtomicU64,
    /// Reported LLM usages priced and charged.
    pub usage_settled: AtomicU64,
    /// Reported LLM usages that could not be priced (no usable token counts).
    pub usage_unpriced: AtomicU64,
}

/// Runs `change` to its end even when the request that asked for it goes away (a runtime's
/// call timing out, a client hanging up): a change is stored with the event that records it
/// and then announced to whoever follows it, and a request dropped half way through would
/// leave it stored but unannounced (runtimes unaware of a suspension until the next one).
pub(crate) async fn to_the_end<T: Send + 'static>(
    change: impl Future<Output = Result<T, GatewayError>> + Send + 'static,
) -> Result<T, GatewayError> {
    tokio::spawn(change).await.map_err(|e| {
        // A panic is the gateway's own fault: internal, its message kept to the log.
        GatewayError::Storage(format!("a change did not finish: {e}"))
    })?
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The gateway over a store.
#[derive(Debug)]
pub struct Gateway<S> {
    pub(crate) store: S,
    key: Keypair,
    pub(crate) config: GatewayConfig,
    bundle: watch::Sender<Arc<Bundle>>,
    /// By agent id and key: a registration under another key opens its own challenge rather
    /// than replacing the one an agent is answering.
    challenges: Mutex<Challenges>,
    /// The built-in rules, which each bundle's scanner adds its custom patterns to.
    built_in: Arc<Scanner>,
    pub(crate) metrics: Metrics,
    closing: watch::Sender<bool>,
    /// Bumped on every approval change, so waiters re-read theirs.
    pub(crate) approval_epoch: watch::Sender<u64>,
    /// Bumped on every suspension change, so runtimes get the new set.
    pub(crate) suspension_epoch: watch::Sender<u64>,
    /// Bumped on every token revoked before its expiry, so runtimes get the new set.
    revocation_epoch: watch::Sender<u64>,
    /// Held across each read and rewrite of an agent's current token (registration,
    /// heartbeat, deregistration): two at once would let one overwrite the other's token,
    /// leaving a superseded token unrevoked.
    credentials: tokio::sync::Mutex<()>,
    /// Team-wide call-rate limits.
    pub(crate) team_rates: aa_core::rate::RateTable<crate::rates::RateKey>,
    /// Serialises the gateway's own appends, which number their stream themselves.
    pub(crate) own_stream: tokio::sync::Mutex<()>,
    /// The last sequence each runtime stream is known to hold: a run that starts past it
    /// waits for the one before it.
    heads: Mutex<HashMap<String, u64>>,
    /// Woken after every append of a run from a runtime.
    stored: tokio::sync::Notify,
    /// Held from an approval's change in the store to its step in the audit log, so that the
    /// steps of an approval are numbered in the order they happened (a decision is not
    /// recorded before the request it decides).
    pub(crate) approval_steps: tokio::sync::Mutex<()>,
    /// The prices budgets charge by.
    pub(crate) prices: Arc<PriceTable>,
}

/// Checks a new child's registration against its parent: the parent signed the [`Spawn`] of
/// this very registration with its key, or granted this child ahead of time
/// ([`aa_identity::Grant`]), and the child stays in the parent's team. Otherwise anyone could
/// hang an agent under another's, and spend that agent's budgets, or step out of its team's
/// limits and policy.
fn consented(
    reg: &AgentRegistration,
    parent: &AgentRecord,
    answer: ChallengeAnswer<'_>,
    now: u64,
) -> Result<(), GatewayError> {
    if let Some(team) = &reg.lineage.team_id
        && parent.team_id.as_ref() != Some(team)
    {
        let parents = match &parent.team_id {
            Some(own) => format!("team {own:?}"),
            None => "no team".to_owned(),
        };
        return Err(GatewayError::InvalidRequest(format!(
            "team_id {team:?}: agent {:?} is spawned by {:?}, which is in {parents}; a child \
             works in its parent's team, so leave team_id out",
            reg.agent_id, parent.agent_id
        )));
    }
    let parent_key = PublicKey::from_did(&parent.did)
        .map_err(|e| GatewayError::Storage(format!("agent {:?}: {e}", parent.agent_id)))?;
    if !answer.parent_signature.is_empty() {
        let spawn = Spawn {
            parent_id: &parent.agent_id,
            child_id: &reg.agent_id,
            child_did: &reg.public_key,
            challenge: answer.challenge,
        };
        return parent_key
            .verify_spawn(&spawn, answer.parent_signature)
            .map_err(|_| {
                GatewayError::Unauthenticated(format!(
                    "parent_signature does not verify with the key of agent {:?}, which \
                     agent {:?} names as its parent",
                    parent.agent_id, reg.agent_id
                ))
            });
    }
    if answer.spawn_grant.is_empty() {
        return Err(GatewayError::Unauthenticated(format!(
            "agent {:?} names {:?} as its parent, and its first registration carries neither \
             parent_signature (that agent's consent, signed with its key) nor spawn_grant (one \
             it signed ahead of time: `aasm agents grant`)",
            reg.agent_id, parent.agent_id
        )));
    }
    let refused = |why: String| {
        GatewayError::Unauthenticated(format!(
            "spawn_grant of agent {:?} under {:?}: {why}",
            reg.agent_id, parent.agent_id
        ))
    };
    let grant = aa_identity::verify_grant(answer.spawn_grant, &parent_key, now).map_err(|e| {
        refused(match e {
            IdentityError::BadSignature => "not signed with the parent's key".to_owned(),
            IdentityError::ExpiredToken => "expired".to_owned(),
            other => other.to_string(),
        })
    })?;
    if grant.parent_id != parent.agent_id || grant.child_id != reg.agent_id {
        return Err(refused(format!(
            "it grants agent {:?} under {:?}",
            grant.child_id, grant.parent_id
        )));
    }
    Ok(())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl<S: Store> Gateway<S> {
    /// A gateway publishing `documents` from the start.
    pub fn new(
        store: S,
        key: Keypair,
        documents: Vec<PolicyDocument>,
        config: GatewayConfig,
    ) -> Result<Self, GatewayError> {
        let mut built_in = Scanner::new().map_err(|e| GatewayError::Setup(e.to_string()))?;
        // Receipts are keyed with what the runtimes' are: a key derived from their token.
        if let Some(token) = &config.runtime_token {
            built_in = built_in.with_receipt_key(ReceiptKey::derive(token.as_bytes()));
        }
        let built_in = Arc::new(built_in);
        let bundle = Bundle::new(documents, key.public(), &built_in)?;
        let prices = match &config.prices {
            Some(prices) => Arc::clone(prices),
            None => Arc::new(
                PriceTable::builtin()
                    .map_err(|e| GatewayError::Setup(format!("the shipped price table: {e}")))?,
            ),
        };
        Ok(Gateway {
            store,
            key,
            config,
            bundle: watch::Sender::new(Arc::new(bundle)),
            challenges: Mutex::new(Challenges::default()),
            built_in,
            metrics: Metrics::default(),
            closing: watch::Sender::new(false),
            approval_epoch: watch::Sender::new(0),
            suspension_epoch: watch::Sender::new(0),
            revocation_epoch: watch::Sender::new(0),
            credentials: tokio::sync::Mutex::new(()),
            team_rates: aa_core::rate::RateTable::default(),
            own_stream: tokio::sync::Mutex::new(()),
            heads: Mutex::new(HashMap::new()),
            stored: tokio::sync::Notify::new(),
            approval_steps: tokio::sync::Mutex::new(()),
            prices,
        })
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The key that signs tokens and checkpoints.
    pub fn public_key(&self) -> PublicKey {
        self.key.public()
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The tunables.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The prices budgets charge by.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// The bundle runtimes hold now.
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle.borrow().clone()
    }

    /// Follows published bundles.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Bundle>> {
        self.bundle.subscribe()
    }

    /// Ends every bundle watch, so a stopping server is not held open by runtimes that
    /// would otherwise watch forever.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`Gateway::close`] was called.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closing = self.closing.subscribe();
        async move {
            let _ = closing.wait_for(|c| *c).await;
        }
    }

    /// Publishes new documents; runtimes watching receive them. Publishing the same content
    /// again changes nothing. Returns the version.
    pub fn publish(&self, documents: Vec<PolicyDocument>) -> Result<String, GatewayError> {
        let bundle = Bundle::new(documents, self.key.public(), &self.built_in)?;
        let version = bundle.version.clone();
        let changed = self.bundle.send_if_modified(|current| {
            if current.version == bundle.version {
                return false;
            }
            *current = Arc::new(bundle);
            true
        });
        if changed {
            bump(&self.metrics.bundles_published, 1);
        }
        Ok(version)
    }

    /// One registration step. Without an answer (or with an empty signature) the answer is a
    /// new challenge; with the signature over a challenge open for the agent and its key the
    /// agent is recorded (lineage checked against the registry) and a token issued.
    pub async fn register(
        &self,
        registration: AgentRegistration,
        answer: Option<ChallengeAnswer<'_>>,
    ) -> Result<Registered, GatewayError> {
        let outcome = self.try_register(registration, answer).await;
        if matches!(outcome, Err(GatewayError::Unauthenticated(_))) {
            bump(&self.metrics.auth_failures, 1);
        }
        outcome
    }

    async fn try_register(
        &self,
        reg: AgentRegistration,
        answer: Option<ChallengeAnswer<'_>>,
    ) -> Result<Registered, GatewayError> {
        let reg = self.screened(reg)?;
        let key = PublicKey::from_did(&reg.public_key)
            .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
        let _credentials = self.credentials.lock().await;
        let existing = self.store.agent(&reg.agent_id).await?;
        if existing.as_ref().is_some_and(|a| a.did != reg.public_key) {
            return Err(GatewayError::Unauthenticated(format!(
                "agent {:?} is registered with another key",
                reg.agent_id
            )));
        }
        let Some(answer) = answer.filter(|a| !a.signature.is_empty()) else {
            return self.open_challenge(&reg).map(Registered::Challenge);
        };
        self.answer_challenge(&reg, &key, answer)?;

        let (team_id, depth, ancestors) = match &reg.lineage.parent_agent_id {
            Some(parent_id) => {
                let parent = self.store.agent(parent_id).await?.ok_or_else(|| {
                    GatewayError::InvalidRequest(format!(
                        "parent agent {parent_id:?} is not registered"
                    ))
                })?;
                // A stopped agent spawns nothing.
                self.ensure_running(&parent).await?;
                // The edge is made once, with the parent's consent; registering again keeps it.
                if existing.is_none() {
                    consented(&reg, &parent, answer, unix_secs(SystemTime::now()))?;
                }
                // Depth is the registry's to say, not the child's: one below its parent.
                let team = reg.lineage.team_id.clone().or(parent.team_id.clone());
                let depth = parent.depth.saturating_add(1);
                let mut ancestors = self.ancestors(&parent).await?;
                ancestors.push(parent);
                (team, depth, ancestors)
            }
            None => {
                if let Some(team) = &reg.lineage.team_id {
                    self.admitted(team, &reg.agent_id)?;
                }
                (reg.lineage.team_id.clone(), 0, Vec::new())
            }
        };
        // An agent registering again keeps its place in the tree: a new parent could make a
        // cycle, or lift it out from under a suspended subtree or its ancestors' bounds, and a
        // new team out of its team's limits.
        if let Some(known) = &existing {
            let moved = if known.parent_agent_id != reg.lineage.parent_agent_id {
                Some((
                    "parent",
                    &known.parent_agent_id,
                    &reg.lineage.parent_agent_id,
                ))
            } else if known.team_id != team_id {
                Some(("team", &known.team_id, &team_id))
            } else {
                None
            };
            if let Some((what, was, asked)) = moved {
                // Deregistering keeps the record (the audit log names the agent by it), so
                // nothing moves an agent: another place takes another id.
                let plain = |value: &Option<String>| match value {
                    Some(id) => format!("{what} {id:?}"),
                    None => format!("no {what}"),
                };
                return Err(GatewayError::Conflict(format!(
                    "agent {:?} is registered with {}, not {}; an agent keeps its parent and \
                     team for good, so register it elsewhere under another id",
                    reg.agent_id,
                    plain(was),
                    plain(asked)
                )));
            }
        }
        let credential = self.issue(&reg.agent_id, &reg.public_key)?;
        let now = now_ms();
        let agent = AgentRecord {
            agent_id: reg.agent_id.clone(),
            did: reg.public_key.clone(),
            name: reg.name.clone(),
            framework: reg.framework.clone(),
            team_id,
            parent_agent_id: reg.lineage.parent_agent_id.clone(),
            delegation_reason: reg.lineage.delegation_reason.clone(),
            spawned_by_tool: reg.lineage.spawned_by_tool.clone(),
            depth,
            registered_at_ms: existing.as_ref().map_or(now, |a| a.registered_at_ms),
            last_seen_ms: now,
            token_id: credential.claims.token_id.clone(),
        };
        self.store.put_agent(agent.clone()).await?;
        // The token it held until now, through whichever runtime, is superseded.
        if let Some(previous) = existing.filter(|a| !a.token_id.is_empty()) {
            self.revoke(&previous.agent_id, &previous.token_id).await;
        }
        bump(&self.metrics.registrations, 1);
        Ok(Registered::Issued {
            credential,
            agent: Box::new(agent),
            ancestors,
        })
    }

    /// A registration as the registry may keep and show it: its ids are refused when they
    /// hold what reads as a secret (an id is kept, logged and shown as it is, and names the
    /// agent in every event), and its free text (name, framework, why and by which tool it was
    /// spawned) is redacted.
    fn screened(&self, mut reg: AgentRegistration) -> Result<AgentRegistration, GatewayError> {
        let scanner = self.scanner();
        let ids = [
            ("agent id", Some(&reg.agent_id)),
            ("team id", reg.lineage.team_id.as_ref()),
            ("parent agent id", reg.lineage.parent_agent_id.as_ref()),
        ];
        for (what, id) in ids {
            let found = id.map(|id| scanner.scan(id)).unwrap_or_default();
            if let Some(finding) = found.first() {
                return Err(GatewayError::InvalidRequest(format!(
                    "the {what} holds what reads as a secret ({}); an id is kept and shown as \
                     it is, so choose another",
                    finding.kind
                )));
            }
        }
        for text in [
            Some(&mut reg.name),
            Some(&mut reg.framework),
            reg.lineage.delegation_reason.as_mut(),
            reg.lineage.spawned_by_tool.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            *text = self.redacted_text(text, "").0;
        }
        Ok(reg)
    }

    fn open_challenge(&self, reg: &AgentRegistration) -> Result<Vec<u8>, GatewayError> {
        let challenge =
            aa_identity::challenge().map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        let now = SystemTime::now();
        self.challenges
            .lock()
            .map_err(|_| GatewayError::Unavailable("challenge table poisoned".into()))?
            .open(
                &reg.agent_id,
                &reg.public_key,
                challenge,
                now,
                now + self.config.challenge_ttl,
            );
        Ok(challenge.to_vec())
    }

    /// Takes the challenge `answer` names if its signature verifies. A wrong answer leaves
    /// it open: the agent's id and key are public, so anyone could send one, and spending the
    /// challenge would fail the agent's own answer.
    fn answer_challenge(
        &self,
        reg: &AgentRegistration,
        key: &PublicKey,
        answer: ChallengeAnswer<'_>,
    ) -> Result<(), GatewayError> {
        if answer.challenge.is_empty() {
            return Err(GatewayError::InvalidRequest(
                "a signed registration must name the challenge it answers (answered_challenge)"
                    .into(),
            ));
        }
        let answered = self
            .challenges
            .lock()
            .map_err(|_| GatewayError::Unavailable("challenge table poisoned".into()))?
            .answer(
                answer.challenge,
                &reg.agent_id,
                &reg.public_key,
                SystemTime::now(),
                |challenge| {
                    key.verify_challenge(&reg.agent_id, challenge, answer.signature)
                        .is_ok()
                },
            );
        match answered {
            Answered::Taken => Ok(()),
            Answered::Wrong => Err(GatewayError::Unauthenticated(
                "challenge signature does not verify".into(),
            )),
            Answered::NotOpen => Err(GatewayError::Unauthenticated(
                "the challenge answered is not open for this agent and key (expired, answered \
                 already, or never given); register without a signature first"
                    .into(),
            )),
        }
    }

    /// Refuses a root agent naming a team whose policies list members it is not among: a
    /// team's policy (its mode, its limits) is the operator's to give, not a name any agent
    /// may claim. A child needs no listing: it goes where its consenting parent is.
    fn admitted(&self, team: &str, agent_id: &str) -> Result<(), GatewayError> {
        let bundle = self.bundle.borrow();
        bundle
            .policies
            .team_admits(team, agent_id)
            .map_err(|listing| {
                GatewayError::Unauthenticated(format!(
                    "agent {agent_id:?} is not a member of team {team:?}: the team's members \
                     are listed in spec.members of {}",
                    listing.join(", ")
                ))
            })
    }

    fn issue(&self, agent_id: &str, did: &str) -> Result<Credential, GatewayError> {
        let now = unix_secs(SystemTime::now());
        let (token, claims) = aa_identity::issue(
            &self.key,
            agent_id,
            did,
            now,
            self.config.token_ttl.as_secs(),
        )
        .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
        Ok(Credential { token, claims })
    }

    /// Checks that `token` is the current, unexpired token of `agent_id`, and returns the
    /// agent's record.
    pub async fn authenticate(
        &self,
        agent_id: &str,
        token: &str,
    ) -> Result<AgentRecord, GatewayError> {
        let unauthenticated = |m: String| {
            bump(&self.metrics.auth_failures, 1);
            GatewayError::Unauthenticated(m)
        };
        let claims = aa_identity::verify(token, &self.key.public(), unix_secs(SystemTime::now()))
            .map_err(|e| unauthenticated(e.to_string()))?;
        if claims.agent_id != agent_id {
            return Err(unauthenticated("token belongs to another agent".into()));
        }
        let record = self
            .store
            .agent(agent_id)
            .await?
            .ok_or_else(|| unauthenticated("agent is not registered".into()))?;
        if record.token_id != claims.token_id || record.did != claims.agent_did {
            return Err(unauthenticated("token was superseded or revoked".into()));
        }
        Ok(record)
    }

    /// Renews a current token.
    pub async fn heartbeat(&self, agent_id: &str, token: &str) -> Result<Credential, GatewayError> {
        let _credentials = self.credentials.lock().await;
        let mut record = self.authenticate(agent_id, token).await?;
        let credential = self.issue(agent_id, &record.did)?;
        record.token_id = credential.claims.token_id.clone();
        record.last_seen_ms = now_ms();
        self.store.put_agent(record).await?;
        bump(&self.metrics.heartbeats, 1);
        Ok(credential)
    }

    /// Revokes the agent's token; it must register again to act.
    pub async fn deregister(&self, agent_id: &str, token: &str) -> Result<(), GatewayError> {
        let _credentials = self.credentials.lock().await;
        let mut record = self.authenticate(agent_id, token).await?;
        let token_id = std::mem::take(&mut record.token_id);
        record.last_seen_ms = now_ms();
        self.store.put_agent(record).await?;
        self.revoke(agent_id, &token_id).await;
        Ok(())
    }

    /// Stores a token as revoked until it would have expired, and tells every runtime. The
    /// agent's record already names its new token (or none), which is what the gateway itself
    /// checks; a revocation that cannot be stored is logged and leaves other runtimes taking
    /// the old token until its expiry.
    async fn revoke(&self, agent_id: &str, token_id: &str) {
        let now = now_ms();
        let ttl = i64::try_from(self.config.token_ttl.as_millis()).unwrap_or(i64::MAX);
        let token = RevokedToken {
            agent_id: agent_id.to_owned(),
            token_id: token_id.to_owned(),
            expires_at_ms: now.saturating_add(ttl),
        };
        match self.store.put_revoked(token, now).await {
            Ok(()) => self
                .revocation_epoch
                .send_modify(|epoch| *epoch = epoch.wrapping_add(1)),
            Err(error) => tracing::error!(%error, agent = %agent_id, "revoked token not stored"),
        }
    }

    /// The tokens revoked before their expiry and not expired yet.
    pub async fn revoked_tokens(&self) -> Result<Vec<RevokedToken>, GatewayError> {
        self.store.revoked(now_ms()).await
    }

    /// Changes whenever a token is revoked, so watchers read the set again.
    pub fn revocation_changes(&self) -> watch::Receiver<u64> {
        self.revocation_epoch.subscribe()
    }

    /// Appends events from runtimes. Each must carry its origin (stream and sequence); runs of
    /// one stream are appended together, in order. Every event is scanned again before it is
    /// stored: a secret a runtime missed or a hostile runtime sent never reaches the store.
    /// An event that fails its checks refuses the batch whole, before anything is stored; a
    /// sequence refusal comes from the store, a stream at a time.
    ///
    /// Batches may overlap: one is checked while an earlier one is stored, and a run that
    /// starts past its stream's head waits for the run before it ([`GAP_WAIT`]).
    pub async fn append(&self, events: Vec<AuditEvent>) -> Result<Appended, GatewayError> {
        let mut total = Appended::default();
        let mut run: Vec<NewEvent> = Vec::new();
        let mut run_stream = String::new();
        let mut edges = Vec::new();
        let mut usages = Vec::new();
        // Every event is checked before any is stored, but those sent again.
        let heads = self.heads_of(&events).await?;
        let checked = match check_all(&self.scanner(), self.config.limits, heads, events).await {
            Ok(checked) => checked,
            Err(refused) => return Err(self.named_only_past_the_head(refused).await),
        };
        let redacted = checked.iter().map(|c| c.redactions as u64).sum();
        bump(&self.metrics.backstop_redactions, redacted);
        // Runs of resends, as (stream, first sequence, count).
        let mut resent: Vec<(String, u64, u64)> = Vec::new();
        for checked in checked {
            edges.extend(checked.edge);
            usages.extend(checked.usage);
            if checked.event.canonical().is_none() {
                let sequence = checked.event.sequence;
                match resent.last_mut() {
                    Some((stream, first, count))
                        if *stream == checked.stream && *first + *count == sequence =>
                    {
                        *count += 1;
                    }
                    _ => resent.push((checked.stream.clone(), sequence, 1)),
                }
            }
            if checked.stream != run_stream && !run.is_empty() {
                total = add(
                    total,
                    self.append_in_order(&run_stream, std::mem::take(&mut run))
                        .await?,
                );
            }
            run_stream = checked.stream;
            run.push(checked.event);
        }
        if !run.is_empty() {
            total = add(total, self.append_in_order(&run_stream, run).await?);
        }
        // Held, every resend is stored: its edge and usage are read as stored.
        for (stream, first, count) in resent {
            let stored = self
                .store
                .records_after(Some((stream.clone(), first.saturating_sub(1))), count)
                .await?;
            for record in stored.into_iter().filter(|r| r.stream_id == stream) {
                let (edge, usage) = edge_and_usage(record);
                edges.extend(edge);
                usages.extend(usage);
            }
        }
        if !edges.is_empty() {
            self.store.put_edges(edges).await?;
        }
        // After the append, so what is charged is on record; settling is idempotent, so a
        // batch sent again after a failure here charges each usage once.
        for usage in &usages {
            self.settle_usage(usage).await?;
        }
        Ok(total)
    }

    /// `error`, unless it names an event refused for good at or below its stream's head: the
    /// store may hold that very event there (stored before its runtime heard so, and refused
    /// now by a gateway that has since changed), which a tombstone must not replace. That
    /// refusal names no event. One this gateway took for new (its head in memory was behind
    /// the store's, while another append of the stream was under way) moves the head in memory
    /// up to the store's, so that its runtime's next try is a resend, held by its id; one the
    /// gateway cannot decode is refused at every try. Logged, for an operator.
    pub(crate) async fn named_only_past_the_head(&self, error: GatewayError) -> GatewayError {
        let GatewayError::EventRefused {
            stream,
            sequence,
            reason,
        } = error
        else {
            return error;
        };
        match self.store.heads().await {
            Ok(heads) => {
                let head = heads
                    .iter()
                    .find(|h| h.stream_id == stream)
                    .map_or(0, |h| h.sequence);
                if sequence > head {
                    GatewayError::EventRefused {
                        stream,
                        sequence,
                        reason,
                    }
                } else {
                    tracing::error!(
                        stream,
                        sequence,
                        head,
                        reason,
                        "an event at or below its stream's head is refused; its runtime sends it again"
                    );
                    self.raise_head(&stream, head);
                    GatewayError::InvalidRequest(format!(
                        "event at sequence {sequence} refused: {reason}"
                    ))
                }
            }
            Err(e) => e,
        }
    }

    /// The backstop's scanner: the published bundle's, which holds its policies' custom
    /// patterns.
    pub(crate) fn scanner(&self) -> Arc<Scanner> {
        Arc::clone(&self.bundle.borrow().scanner)
    }

    /// Free text the gateway keeps and shows (an agent's name or why it was spawned, an
    /// operator's name, reason or comment) with what reads as a secret redacted; the receipts
    /// name `field`, for the event that records the text.
    pub(crate) fn redacted_text(&self, text: &str, field: &str) -> (String, Vec<RedactionReceipt>) {
        let mut redaction = self.scanner().redact(text);
        for receipt in &mut redaction.receipts {
            receipt.field = field.to_owned();
        }
        (redaction.text, redaction.receipts)
    }

    /// The backstop scan: redacts what a runtime missed (or what the gateway itself is about
    /// to record) in place.
    pub(crate) fn backstop(&self, event: &mut AuditEvent) -> Result<(), GatewayError> {
        let added = self
            .scanner()
            .redact_audit_event(event, &self.config.limits)
            .map_err(|e| GatewayError::InvalidRequest(e.to_string()))?;
        bump(&self.metrics.backstop_redactions, added as u64);
        Ok(())
    }

    /// [`append_run`](Self::append_run) for a runtime's run, once its stream holds what comes
    /// before it: a runtime sends its next batch before the last is answered, and the later
    /// one may be checked first. A run that starts past its stream's head waits, up to
    /// [`GAP_WAIT`], for another append of the stream to close the gap; then the store decides.
    async fn append_in_order(
        &self,
        stream: &str,
        run: Vec<NewEvent>,
    ) -> Result<Appended, GatewayError> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(Appended::default());
        };
        let (first, last) = (first.sequence, last.sequence);
        let deadline = tokio::time::Instant::now() + GAP_WAIT;
        loop {
            let stored = self.stored.notified();
            tokio::pin!(stored);
            // Registered before the head is read, so an append finishing in between wakes us.
            stored.as_mut().enable();
            if first <= self.known_head(stream).await?.saturating_add(1)
                || tokio::time::Instant::now() >= deadline
            {
                break;
            }
            tokio::select! {
                () = stored => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        let appended = self.append_run(stream, run).await;
        match &appended {
            Ok(_) => {
                // A run of duplicates may lie behind the head.
                self.raise_head(stream, last);
            }
            Err(GatewayError::Sequence { expected, .. }) => {
                // The refusal names the place after the head as stored. Heads only move up
                // while the gateway runs, and another append may have raised this one
                // meanwhile, so it is never lowered.
                self.raise_head(stream, expected.saturating_sub(1));
            }
            Err(_) => {}
        }
        self.stored.notify_waiters();
        appended
    }

    /// The head of each stream `events` name, from memory, or from the store (read once for
    /// all the streams memory lacks, and nothing kept: a stream is remembered once stored): an
    /// event at or below it was sent before, by a runtime that did not hear it stored.
    async fn heads_of(
        &self,
        events: &[AuditEvent],
    ) -> Result<Arc<HashMap<String, u64>>, GatewayError> {
        let mut heads = HashMap::new();
        let mut stored: Option<Vec<Head>> = None;
        for origin in events.iter().filter_map(|e| e.origin.as_ref()) {
            if heads.contains_key(&origin.stream_id) {
                continue;
            }
            let known = self.heads().get(&origin.stream_id).copied();
            let head = match known {
                Some(head) => head,
                None => {
                    let stored = match &mut stored {
                        Some(stored) => stored,
                        None => stored.insert(self.store.heads().await?),
                    };
                    stored
                        .iter()
                        .find(|h| h.stream_id == origin.stream_id)
                        .map_or(0, |h| h.sequence)
                }
            };
            heads.insert(origin.stream_id.clone(), head);
        }
        Ok(Arc::new(heads))
    }

    /// The last sequence `stream` holds, from memory, or from the store the first time.
    async fn known_head(&self, stream: &str) -> Result<u64, GatewayError> {
        if let Some(head) = self.heads().get(stream) {
            return Ok(*head);
        }
        let stored = self.store.heads().await?;
        let mut heads = self.heads();
        for head in stored {
            heads.entry(head.stream_id).or_insert(head.sequence);
        }
        Ok(*heads.entry(stream.to_owned()).or_insert(0))
    }

    /// Moves `stream`'s head in memory up to `head`, never down: heads only move up while the
    /// gateway runs, and appends of a stream finish in any order.
    fn raise_head(&self, stream: &str, head: u64) {
        let mut heads = self.heads();
        match heads.get_mut(stream) {
            Some(known) => *known = (*known).max(head),
            None => {
                heads.insert(stream.to_owned(), head);
            }
        }
    }

    fn heads(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // Only a hint of when to store (the store checks every sequence): a panic elsewhere
        // leaves it usable.
        self.heads.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) async fn append_run(
        &self,
        stream: &str,
        run: Vec<NewEvent>,
    ) -> Result<Appended, GatewayError> {
        let appended = self.store.append_events(stream, run).await?;
        bump(&self.metrics.events_appended, appended.accepted);
        bump(&self.metrics.events_duplicate, appended.duplicates);
        Ok(appended)
    }

    /// Signs a checkpoint of the stream heads if they moved since the last one.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, GatewayError> {
        let mut heads = self.store.heads().await?;
        heads.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
        let last = self.store.last_checkpoint().await?;
        if heads.is_empty() || last.as_ref().is_some_and(|c| c.heads == heads) {
            return Ok(None);
        }
        let id = last.map_or(1, |c| c.id + 1);
        let checkpoint = Checkpoint::sign(&self.key, id, now_ms(), heads);
        self.store.add_checkpoint(checkpoint.clone()).await?;
        bump(&self.metrics.checkpoints, 1);
        Ok(Some(checkpoint))
    }
}

/// An event from a runtime, checked, re-scanned and serialised: ready for its stream's chain.
struct Checked {
    stream: String,
    event: NewEvent,
    edge: Option<TopologyEdge>,
    usage: Option<AuditEvent>,
    redactions: usize,
}

/// The fewest events a part of a batch checked on its own thread holds. A runtime sends its
/// backlog a batch at a time, so one long batch is all the gateway has to work on meanwhile:
/// it is checked in parts, one per processor. Shorter batches, such as the decisions of a few
/// milliseconds, are checked in one part.
const MIN_PART: usize = 128;

/// [`check_appended`] for every event of a batch, in order, on the blocking pool (the
/// appends' own when the gRPC service runs the append, so that batches from several runtimes
/// are checked side by side); the first refusal in that order refuses the batch.
async fn check_all(
    scanner: &Arc<Scanner>,
    limits: Limits,
    heads: Arc<HashMap<String, u64>>,
    events: Vec<AuditEvent>,
) -> Result<Vec<Checked>, GatewayError> {
    let processors = std::thread::available_parallelism().map_or(1, usize::from);
    let parts = processors.min(events.len() / MIN_PART).max(1);
    let (total, per_part) = (events.len(), events.len().div_ceil(parts).max(1));
    let mut events = events.into_iter();
    let mut handles = Vec::with_capacity(parts);
    loop {
        let part: Vec<AuditEvent> = events.by_ref().take(per_part).collect();
        if part.is_empty() {
            break;
        }
        let (scanner, heads) = (Arc::clone(scanner), Arc::clone(&heads));
        handles.push(tokio::task::spawn_blocking(move || {
            check_part(&scanner, limits, &heads, part)
        }));
    }
    let mut checked = Vec::with_capacity(total);
    for handle in handles {
        let part = handle
            .await
            .map_err(|e| GatewayError::Unavailable(format!("checking a batch: {e}")))??;
        checked.extend(part);
    }
    Ok(checked)
}

/// How long a runtime's run that starts past its stream's head waits for the run before it to
/// be stored. The one before was sent first and is on its way or being checked, which takes
/// milliseconds; a run that still finds a gap after this is refused by the store, and the
/// runtime goes back to where the gateway's head is.
const GAP_WAIT: Duration = Duration::from_secs(1);

/// How long a batch is checked before the thread offers its processor to any other thread
/// waiting there. A thread woken behind the gateway otherwise waits for the gateway's time
/// slice to run out, milliseconds: on a host where the gateway shares processors with a
/// runtime, that is how long a check waits behind the events the gateway appends
/// (BENCHMARKS.md). Offering it costs a system call that returns at once when nothing waits.
/// Under `SCHED_IDLE` a woken thread takes the processor at once anyway, and offering it
/// only trades places with other idle threads (a context switch every 50 µs, 4 % of the
/// appends' processor time): this serves the `lower` priority, and hosts that refuse
/// `SCHED_IDLE`.
const YIELD_AFTER: Duration = Duration::from_micros(50);

/// Checks `events` in order, offering the processor to other threads every [`YIELD_AFTER`]
/// unless the thread runs under `SCHED_IDLE`.
fn check_part(
    scanner: &Scanner,
    limits: Limits,
    heads: &HashMap<String, u64>,
    events: Vec<AuditEvent>,
) -> Result<Vec<Checked>, GatewayError> {
    let offers = !aa_background::runs_idle();
    let mut since_yield = Instant::now();
    events
        .into_iter()
        .map(|event| {
            if offers && since_yield.elapsed() >= YIELD_AFTER {
                std::thread::yield_now();
                since_yield = Instant::now();
            }
            check_appended(scanner, &limits, heads, event)
        })
        .collect()
}

/// [`check_fresh`], but for a resend: an event at or below its stream's head in `heads` was
/// sent before, by a runtime that did not hear it stored. It is known by its id alone
/// ([`NewEvent::resent`]) and not judged again: checks that changed since it was stored (the
/// published patterns, the gateway's version) could refuse it, or read its id differently,
/// and hold its stream back for ever. Its edge and usage are read from the record the store
/// holds ([`Gateway::append`]), not from what came again.
fn check_appended(
    scanner: &Scanner,
    limits: &Limits,
    heads: &HashMap<String, u64>,
    event: AuditEvent,
) -> Result<Checked, GatewayError> {
    match &event.origin {
        Some(origin)
            if origin.stream_id != crate::approvals::GATEWAY_STREAM
                && heads
                    .get(&origin.stream_id)
                    .is_some_and(|&head| origin.sequence <= head) =>
        {
            Ok(Checked {
                stream: origin.stream_id.clone(),
                event: NewEvent::resent(
                    &event.event_id,
                    scanner.id_digests(&event.event_id),
                    origin.sequence,
                ),
                edge: None,
                usage: None,
                redactions: 0,
            })
        }
        _ => check_fresh(scanner, limits, event),
    }
}

/// Refuses an event without an origin, with an empty stream id or claiming the gateway's own
/// stream, re-scans it (the backstop) and serialises it once: the scan redacts that form in
/// place.
fn check_fresh(
    scanner: &Scanner,
    limits: &Limits,
    event: AuditEvent,
) -> Result<Checked, GatewayError> {
    // The id a runtime chose is scanned too (and before it is quoted in an error): one that
    // kept an agent's own id as it came (an older or faulty runtime) would have it stored as
    // given. The same id always comes out the same, so a batch sent again is still recognised.
    let (event_id, id_receipts) = scanner.redact_id(&event.event_id, usize::MAX);
    let Some(origin) = event.origin.clone() else {
        return Err(GatewayError::InvalidRequest(format!(
            "event {event_id:?} has no origin (stream and sequence)"
        )));
    };
    if origin.stream_id == crate::approvals::GATEWAY_STREAM {
        return Err(GatewayError::InvalidRequest(format!(
            "event {event_id:?}: stream {:?} is the gateway's own",
            origin.stream_id
        )));
    }
    // Every stream is named: `aasm audit verify` reports a record without one as inserted.
    if origin.stream_id.is_empty() {
        return Err(GatewayError::InvalidRequest(format!(
            "event {event_id:?} has an empty stream id"
        )));
    }
    // What fails here fails whenever the event is sent, whatever the bundle: named by its
    // place, so that its runtime can set it aside rather than send it, and hold back what
    // follows, for ever.
    let refused = |e: &dyn std::fmt::Display| GatewayError::EventRefused {
        stream: origin.stream_id.clone(),
        sequence: origin.sequence,
        reason: format!("event {event_id:?}: {e}"),
    };
    let kind = event.kind;
    let agent_id = event.agent.id.clone();
    let mut value = event.into_value().map_err(|e| refused(&e))?;
    let mut redactions = scanner
        .redact_audit_value(&mut value, limits)
        .map_err(|e| refused(&e))?;
    if !id_receipts.is_empty() {
        redactions += id_receipts.len();
        if let Some(fields) = value.as_object_mut() {
            fields.insert("event_id".into(), Value::String(event_id.clone()));
            let receipts = fields
                .entry("redactions")
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(receipts) = receipts {
                for mut receipt in id_receipts {
                    "event_id".clone_into(&mut receipt.field);
                    receipts.push(serde_json::to_value(receipt).map_err(|e| refused(&e))?);
                }
            }
        }
    }
    let edge = own_edge(kind, &agent_id, &event_id, value.get("detail"));
    let usage = if kind == EventKind::LlmUsage {
        // Read back after redaction, which leaves an event's names and tags as they were
        // whatever the bundle's patterns: what fails here fails with every bundle.
        Some(AuditEvent::deserialize(&value).map_err(|e| refused(&e))?)
    } else {
        None
    };
    Ok(Checked {
        stream: origin.stream_id,
        event: NewEvent::new(event_id, origin.sequence, &value),
        edge,
        usage,
        redactions,
    })
}

/// The topology edge an event of `kind` adds. An edge enters the topology only from the agent
/// it starts at: an event naming another agent's child is kept as a record of the claim, not
/// as an edge.
fn own_edge(
    kind: EventKind,
    agent_id: &str,
    event_id: &str,
    detail: Option<&Value>,
) -> Option<TopologyEdge> {
    if kind != EventKind::Edge {
        return None;
    }
    detail
        .and_then(|d| TopologyEdge::deserialize(d).ok())
        .filter(|edge| {
            let own = edge.from_agent_id == agent_id;
            if !own {
                tracing::warn!(
                    event = %event_id,
                    agent = %agent_id,
                    from = %edge.from_agent_id,
                    "an edge from another agent is not added to the topology"
                );
            }
            own
        })
}

/// The edge and usage of a record the store holds, for a resend of it: what recording them
/// the first time, had it failed after the event was stored, left to do (both are recorded
/// idempotently, the usage by the id the record is stored under).
fn edge_and_usage(record: Record) -> (Option<TopologyEdge>, Option<AuditEvent>) {
    let stored = match AuditEvent::deserialize(&record.event) {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(stream = record.stream_id, sequence = record.sequence, %error, "a stored record does not read as an event: its edge and usage are not read again");
            return (None, None);
        }
    };
    let edge = own_edge(
        stored.kind,
        &stored.agent.id,
        &record.event_id,
        stored.detail.as_ref(),
    );
    (edge, (stored.kind == EventKind::LlmUsage).then_some(stored))
}

fn add(a: Appended, b: Appended) -> Appended {
    Appended {
        accepted: a.accepted + b.accepted,
        duplicates: a.duplicates + b.duplicates,
    }
}
