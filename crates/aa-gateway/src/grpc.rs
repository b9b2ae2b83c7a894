//! The gRPC face for runtimes: agent lifecycle, the policy bundle watch stream, audit appends,
//! approvals (created and redeemed by runtimes, decided by operators with the admin token).
//! Translation only: wire → domain, a call on [`Gateway`], domain → wire, and errors mapped to
//! a status once, here, without internals.

use std::pin::Pin;
use std::sync::Arc;

use aa_background::Background;
use aa_core::{Action, AgentRegistration, ApprovalStatus, AuditEvent};
use aa_proto::convert::{duration, timestamp};
use aa_proto::pb;
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::approvals::NewApproval;
use crate::budgets::ReserveRequest;
use crate::bundle::Bundle;
use crate::error::GatewayError;
use crate::gateway::{ChallengeAnswer, Credential, Gateway, Registered, to_the_end};
use crate::rates::{TeamLimit, TeamRate};
use crate::store::{AgentRecord, Store};

/// The gateway's error as a gRPC status. Storage and setup failures say only that something
/// failed inside: their details are for the operator's logs, not for callers.
pub fn status(error: GatewayError) -> Status {
    match error {
        GatewayError::InvalidRequest(_) | GatewayError::Policy(_) => {
            Status::invalid_argument(error.to_string())
        }
        GatewayError::Unauthenticated(_) => Status::unauthenticated(error.to_string()),
        GatewayError::Sequence {
            ref stream,
            expected,
            ..
        } => {
            let own = stream == crate::approvals::GATEWAY_STREAM;
            let mut status = Status::failed_precondition(error.to_string());
            // Only a runtime's stream: the gateway's own is nothing a runtime could resend.
            if !own {
                status
                    .metadata_mut()
                    .insert(aa_proto::EXPECTED_SEQUENCE_METADATA, expected.into());
            }
            status
        }
        GatewayError::EventRefused { sequence, .. } => {
            let mut status = Status::invalid_argument(error.to_string());
            status
                .metadata_mut()
                .insert(aa_proto::REFUSED_SEQUENCE_METADATA, sequence.into());
            status
        }
        GatewayError::Conflict(_) => Status::failed_precondition(error.to_string()),
        GatewayError::NotFound(_) => Status::not_found(error.to_string()),
        GatewayError::Unavailable(_) => Status::unavailable(error.to_string()),
        GatewayError::Storage(_) | GatewayError::Setup(_) => {
            tracing::error!(%error, "gateway request failed");
            Status::internal("internal gateway error")
        }
    }
}

fn invalid(e: aa_proto::ProtoError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The four services over one shared gateway.
#[derive(Debug)]
pub struct GrpcApi<S> {
    gateway: Arc<Gateway<S>>,
    /// Where appends run: checking and storing a batch gives way to every other call.
    appends: Arc<Background>,
}

impl<S> Clone for GrpcApi<S> {
    fn clone(&self) -> Self {
        GrpcApi {
            gateway: Arc::clone(&self.gateway),
            appends: Arc::clone(&self.appends),
        }
    }
}

impl<S: Store> GrpcApi<S> {
    /// Serves `gateway`, its appends on `appends`.
    pub fn new(gateway: Arc<Gateway<S>>, appends: Arc<Background>) -> Self {
        GrpcApi { gateway, appends }
    }

    /// The routes to mount on a tonic server. Every call must carry the runtime token (or
    /// the admin token) before it reaches a service: an agent's process on the gateway's host
    /// could otherwise dial the port and append to the audit log past its runtime.
    pub fn routes(self) -> tonic::service::Routes {
        let gateway = Arc::clone(&self.gateway);
        let admit = move |request: Request<()>| {
            gateway.authorize_runtime(bearer(&request)).map_err(|e| {
                let mut refused = status(e);
                refused.metadata_mut().insert(
                    aa_proto::RUNTIME_REFUSED_METADATA,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                refused
            })?;
            Ok(request)
        };
        // Set rather than left at tonic's default (4 MiB), which a runtime's batch of large
        // events would pass and then be refused again on every retry.
        const LIMIT: usize = aa_proto::MAX_GATEWAY_MESSAGE_BYTES;
        tonic::service::Routes::new(InterceptedService::new(
            pb::agent_service_server::AgentServiceServer::new(self.clone())
                .max_decoding_message_size(LIMIT),
            admit.clone(),
        ))
        .add_service(InterceptedService::new(
            pb::policy_service_server::PolicyServiceServer::new(self.clone())
                .max_decoding_message_size(LIMIT),
            admit.clone(),
        ))
        .add_service(InterceptedService::new(
            pb::audit_service_server::AuditServiceServer::new(self.clone())
                .max_decoding_message_size(LIMIT),
            admit.clone(),
        ))
        .add_service(InterceptedService::new(
            pb::approval_service_server::ApprovalServiceServer::new(self)
                .max_decoding_message_size(LIMIT),
            admit,
        ))
    }
}

fn expires(credential: &Credential) -> Option<prost_types::Timestamp> {
    let secs = i64::try_from(credential.claims.expires_at).unwrap_or(i64::MAX);
    Some(timestamp(secs.saturating_mul(1000)))
}

type WatchStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A set the gateway keeps (suspensions, revoked tokens), as `read` gives it: sent when the
/// stream opens and after every change `changes` signals, when it differs from what was sent
/// last. It ends when the gateway closes, the caller goes, or a read fails (with its error).
fn watch_set<S, T, R>(
    gateway: Arc<Gateway<S>>,
    mut changes: tokio::sync::watch::Receiver<u64>,
    read: impl Fn(Arc<Gateway<S>>) -> R + Send + 'static,
) -> WatchStream<T>
where
    S: Store,
    T: PartialEq + Clone + Send + 'static,
    R: Future<Output = Result<T, GatewayError>> + Send,
{
    let closed = gateway.closed();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        tokio::pin!(closed);
        let mut sent = None;
        loop {
            changes.borrow_and_update();
            let current = match read(Arc::clone(&gateway)).await {
                Ok(current) => current,
                Err(error) => {
                    let _ = tx.send(Err(status(error))).await;
                    return;
                }
            };
            if sent.as_ref() != Some(&current) {
                sent = Some(current.clone());
                if tx.send(Ok(current)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
                () = &mut closed => return,
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

type SuspensionStream = WatchStream<pb::Suspensions>;
type RevocationStream = WatchStream<pb::Revocations>;

#[tonic::async_trait]
impl<S: Store> pb::agent_service_server::AgentService for GrpcApi<S> {
    type WatchSuspensionsStream = SuspensionStream;
    type WatchRevocationsStream = RevocationStream;

    async fn watch_revocations(
        &self,
        _request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let changes = self.gateway.revocation_changes();
        Ok(Response::new(watch_set(
            Arc::clone(&self.gateway),
            changes,
            |gateway| async move {
                let tokens = gateway.revoked_tokens().await?;
                let tokens = tokens
                    .into_iter()
                    .map(|t| pb::RevokedToken {
                        agent_id: t.agent_id,
                        token_id: t.token_id,
                        expires_at: Some(timestamp(t.expires_at_ms)),
                    })
                    .collect();
                Ok(pb::Revocations { tokens })
            },
        )))
    }

    async fn watch_suspensions(
        &self,
        _request: Request<pb::WatchSuspensionsRequest>,
    ) -> Result<Response<Self::WatchSuspensionsStream>, Status> {
        let changes = self.gateway.suspension_changes();
        Ok(Response::new(watch_set(
            Arc::clone(&self.gateway),
            changes,
            |gateway| async move {
                let set = gateway.suspensions().await?;
                let mut list: Vec<_> = set.values().map(pb::Suspension::from).collect();
                list.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
                Ok(pb::Suspensions { suspensions: list })
            },
        )))
    }

    async fn reserve_budget(
        &self,
        request: Request<pb::ReserveBudgetRequest>,
    ) -> Result<Response<pb::ReserveBudgetResponse>, Status> {
        let r = request.into_inner();
        let reservation = self
            .gateway
            .reserve_budget(&ReserveRequest {
                agent_id: r.agent_id,
                credential_token: r.credential_token,
                model: r.model,
                token_estimate: r.token_estimate,
                enforce: r.enforce,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReserveBudgetResponse {
            allowed: reservation.reservation_id.is_some(),
            reservation_id: reservation.reservation_id.unwrap_or_default(),
            estimate_usd: reservation.estimate_usd,
            unlisted_model: !reservation.listed_price,
            exceeded: reservation.exceeded.map(|e| pb::BudgetExceeded {
                account: e.account.to_string(),
                window: e.window.period.key().to_owned(),
                cap_usd: e.cap_usd,
                spent_usd: e.spent_usd,
                action: e.action.as_str().to_owned(),
                policy: e.policy,
                resets_at: Some(timestamp(e.window.end.timestamp_millis())),
                timezone: e.window.timezone.name().to_owned(),
            }),
        }))
    }

    async fn take_team_rate(
        &self,
        request: Request<pb::TakeTeamRateRequest>,
    ) -> Result<Response<pb::TakeTeamRateResponse>, Status> {
        let r = request.into_inner();
        let limits: Vec<TeamLimit> = r
            .limits
            .into_iter()
            .map(|l| TeamLimit {
                policy: l.policy,
                entry: l.entry,
                limits: aa_policy::RateLimits {
                    per_minute: Some(l.per_minute).filter(|n| *n > 0),
                    per_hour: Some(l.per_hour).filter(|n| *n > 0),
                },
            })
            .collect();
        let taken = self
            .gateway
            .take_team_rate(&r.agent_id, &r.credential_token, &limits)
            .await
            .map_err(status)?;
        Ok(Response::new(match taken {
            TeamRate::Allowed => pb::TakeTeamRateResponse {
                allowed: true,
                ..Default::default()
            },
            TeamRate::Limited {
                index,
                window,
                retry_after,
                team,
            } => pb::TakeTeamRateResponse {
                allowed: false,
                limit_index: u32::try_from(index).unwrap_or(u32::MAX),
                window: window.to_owned(),
                retry_after: aa_proto::convert::duration_to_wire(retry_after),
                team,
            },
        }))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let mut request = request.into_inner();
        let signature = std::mem::take(&mut request.challenge_signature);
        let answered = std::mem::take(&mut request.answered_challenge);
        let parent_signature = std::mem::take(&mut request.parent_signature);
        let spawn_grant = std::mem::take(&mut request.spawn_grant);
        let registration = AgentRegistration::try_from(request).map_err(invalid)?;
        let agent_id = registration.agent_id.clone();
        let answer = self
            .gateway
            .register(
                registration,
                Some(ChallengeAnswer {
                    challenge: &answered,
                    signature: &signature,
                    parent_signature: &parent_signature,
                    spawn_grant: &spawn_grant,
                }),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(match answer {
            Registered::Challenge(challenge) => pb::RegisterResponse {
                agent_id,
                challenge,
                ..Default::default()
            },
            Registered::Issued {
                credential,
                agent,
                ancestors,
            } => pb::RegisterResponse {
                agent_id,
                expires_at: expires(&credential),
                credential_token: credential.token,
                challenge: Vec::new(),
                agent: Some(agent_ref(&agent)),
                ancestors: ancestors.iter().map(agent_ref).collect(),
            },
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let credential = self
            .gateway
            .heartbeat(&request.agent_id, &request.credential_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::HeartbeatResponse {
            expires_at: expires(&credential),
            credential_token: credential.token,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let request = request.into_inner();
        self.gateway
            .deregister(&request.agent_id, &request.credential_token)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeregisterResponse {}))
    }
}

fn agent_ref(agent: &AgentRecord) -> pb::AgentRef {
    pb::AgentRef {
        agent_id: agent.agent_id.clone(),
        lineage: Some(pb::Lineage {
            parent_agent_id: agent.parent_agent_id.clone().unwrap_or_default(),
            team_id: agent.team_id.clone().unwrap_or_default(),
            delegation_reason: agent.delegation_reason.clone().unwrap_or_default(),
            spawned_by_tool: agent.spawned_by_tool.clone().unwrap_or_default(),
            depth: agent.depth,
        }),
    }
}

/// A bundle on the wire.
pub fn bundle_to_wire(bundle: &Bundle) -> pb::PolicyBundle {
    pb::PolicyBundle {
        version: bundle.version.clone(),
        documents: bundle
            .documents
            .iter()
            .map(|d| pb::PolicyDocument {
                name: d.name.clone(),
                source: d.source.clone(),
            })
            .collect(),
        gateway_public_key: bundle.gateway_key.to_bytes().to_vec(),
    }
}

type BundleStream = Pin<Box<dyn Stream<Item = Result<pb::PolicyBundle, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> pb::policy_service_server::PolicyService for GrpcApi<S> {
    type WatchBundleStream = BundleStream;

    async fn watch_bundle(
        &self,
        request: Request<pb::WatchBundleRequest>,
    ) -> Result<Response<Self::WatchBundleStream>, Status> {
        let known = request.into_inner().known_version;
        let mut bundles = self.gateway.subscribe();
        let closed = self.gateway.closed();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            tokio::pin!(closed);
            let mut last = known;
            loop {
                let current = bundles.borrow_and_update().clone();
                if current.version != last {
                    last.clone_from(&current.version);
                    if tx.send(Ok(bundle_to_wire(&current))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = bundles.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    () = &mut closed => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl<S: Store> pb::audit_service_server::AuditService for GrpcApi<S> {
    async fn append_events(
        &self,
        request: Request<pb::AppendEventsRequest>,
    ) -> Result<Response<pb::AppendEventsResponse>, Status> {
        let decoded = request
            .into_inner()
            .events
            .into_iter()
            .map(|event| {
                // A runtime numbers its events from 1.
                let place = Some((event.stream_id.clone(), event.sequence)).filter(|p| p.1 > 0);
                AuditEvent::try_from(event).map_err(|e| match place {
                    Some((stream, sequence)) => GatewayError::EventRefused {
                        stream,
                        sequence,
                        reason: e.to_string(),
                    },
                    None => GatewayError::InvalidRequest(e.to_string()),
                })
            })
            .collect::<Result<Vec<_>, _>>();
        let events = match decoded {
            Ok(events) => events,
            Err(refused) => {
                return Err(status(self.gateway.named_only_past_the_head(refused).await));
            }
        };
        let gateway = Arc::clone(&self.gateway);
        let appended = self
            .appends
            .run(async move { gateway.append(events).await })
            .await
            .map_err(|e| {
                if e.is_cancelled() {
                    return Status::unavailable("the gateway is stopping");
                }
                tracing::error!(error = %e, "an append failed");
                Status::internal("internal gateway error")
            })?
            .map_err(status)?;
        Ok(Response::new(pb::AppendEventsResponse {
            accepted: appended.accepted,
            duplicates: appended.duplicates,
        }))
    }
}

/// A request's `authorization` metadata.
fn bearer<T>(request: &Request<T>) -> Option<&str> {
    request.metadata().get("authorization")?.to_str().ok()
}

type ApprovalStream = Pin<Box<dyn Stream<Item = Result<pb::Approval, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> pb::approval_service_server::ApprovalService for GrpcApi<S> {
    type WatchStream = ApprovalStream;

    async fn create(
        &self,
        request: Request<pb::CreateApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let request = request.into_inner();
        let action = request
            .action
            .ok_or_else(|| Status::invalid_argument("approval needs the action"))
            .and_then(|a| Action::try_from(a).map_err(invalid))?;
        let timeout = request
            .timeout
            .and_then(|t| duration(&t))
            .ok_or_else(|| Status::invalid_argument("approval needs a positive timeout"))?;
        let new = NewApproval {
            agent_id: request.agent_id,
            credential_token: request.credential_token,
            approval_id: request.approval_id,
            action,
            action_digest: request.action_digest,
            rule: request.rule,
            reason: request.reason,
            policy: request.policy_version,
            timeout,
        };
        let gateway = Arc::clone(&self.gateway);
        let approval = to_the_end(async move { gateway.create_approval(new).await })
            .await
            .map_err(status)?;
        Ok(Response::new((&approval).into()))
    }

    async fn redeem(
        &self,
        request: Request<pb::RedeemApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        let r = request.into_inner();
        let gateway = Arc::clone(&self.gateway);
        let redeemed = to_the_end(async move {
            gateway
                .redeem_approval(
                    &r.agent_id,
                    &r.credential_token,
                    &r.approval_id,
                    &r.action_digest,
                )
                .await
        });
        let approval = redeemed.await.map_err(status)?;
        Ok(Response::new((&approval).into()))
    }

    async fn get(
        &self,
        request: Request<pb::GetApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        self.gateway
            .authorize_admin(bearer(&request))
            .map_err(status)?;
        let approval = self
            .gateway
            .approval(&request.into_inner().approval_id)
            .await
            .map_err(status)?;
        Ok(Response::new((&approval).into()))
    }

    async fn list(
        &self,
        request: Request<pb::ListApprovalsRequest>,
    ) -> Result<Response<pb::ListApprovalsResponse>, Status> {
        self.gateway
            .authorize_admin(bearer(&request))
            .map_err(status)?;
        let filter = match pb::ApprovalStatus::try_from(request.into_inner().status) {
            Ok(pb::ApprovalStatus::Unspecified) => None,
            Ok(pb::ApprovalStatus::Pending) => Some(ApprovalStatus::Pending),
            Ok(pb::ApprovalStatus::Approved) => Some(ApprovalStatus::Approved),
            Ok(pb::ApprovalStatus::Denied) => Some(ApprovalStatus::Denied),
            Ok(pb::ApprovalStatus::Expired) => Some(ApprovalStatus::Expired),
            Err(_) => return Err(Status::invalid_argument("unknown approval status")),
        };
        let approvals = self.gateway.approvals(filter).await.map_err(status)?;
        Ok(Response::new(pb::ListApprovalsResponse {
            approvals: approvals.iter().map(Into::into).collect(),
        }))
    }

    async fn decide(
        &self,
        request: Request<pb::DecideApprovalRequest>,
    ) -> Result<Response<pb::Approval>, Status> {
        self.gateway
            .authorize_admin(bearer(&request))
            .map_err(status)?;
        let r = request.into_inner();
        let gateway = Arc::clone(&self.gateway);
        let decided = to_the_end(async move {
            gateway
                .decide_approval(&r.approval_id, r.approve, &r.decided_by, Some(r.comment))
                .await
        });
        let approval = decided.await.map_err(status)?;
        Ok(Response::new((&approval).into()))
    }

    async fn watch(
        &self,
        request: Request<pb::WatchApprovalRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let approval_id = request.into_inner().approval_id;
        let gateway = Arc::clone(&self.gateway);
        // Subscribed before the first read, so a decision landing between the two still wakes
        // the watch.
        let mut changes = gateway.approval_changes();
        // Refuse an unknown id now, as a status, rather than as a stream that ends at once.
        let first = gateway.approval(&approval_id).await.map_err(status)?;
        let closed = gateway.closed();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            tokio::pin!(closed);
            let mut current = first;
            let mut sent = None;
            loop {
                let wire = pb::Approval::from(&current);
                if sent.as_ref() != Some(&wire) {
                    sent = Some(wire.clone());
                    if tx.send(Ok(wire)).await.is_err() {
                        return;
                    }
                }
                if current.status != ApprovalStatus::Pending {
                    return;
                }
                let until_expiry = u64::try_from(current.expires_at_ms - crate::gateway::now_ms())
                    .map_or(std::time::Duration::ZERO, std::time::Duration::from_millis);
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(until_expiry) => {},
                    () = tx.closed() => return,
                    () = &mut closed => return,
                }
                current = match gateway.approval(&approval_id).await {
                    Ok(approval) => approval,
                    Err(error) => {
                        let _ = tx.send(Err(status(error))).await;
                        return;
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_out_of_sequence_is_refused_naming_the_sequence_expected() {
        let refused = status(GatewayError::Sequence {
            stream: "rt-1".into(),
            expected: 11,
            got: 31,
        });
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        let expected = refused.metadata().get(aa_proto::EXPECTED_SEQUENCE_METADATA);
        assert_eq!(expected.and_then(|v| v.to_str().ok()), Some("11"));
        let own = status(GatewayError::Sequence {
            stream: crate::approvals::GATEWAY_STREAM.into(),
            expected: 11,
            got: 31,
        });
        assert!(
            own.metadata()
                .get(aa_proto::EXPECTED_SEQUENCE_METADATA)
                .is_none()
        );
    }
}
