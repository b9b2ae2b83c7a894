//! The link to the gateway: lifecycle calls, the bundle and suspension watches, and the
//! forwarder that drains the outbox in order. Every loop here outlives gateway outages: it backs off and retries.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aa_core::Suspension;
use aa_proto::encoded::EncodedAppendEventsRequest;
use aa_proto::pb;
use aa_proto::pb::ErrorCode;
use tokio::sync::{Notify, watch};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::bundle::Compiled;
use crate::error::RuntimeError;
use crate::outbox::{Outbox, Stored};
use crate::runtime::{Refusal, Runtime};

pub(crate) const BACKOFF_START: Duration = Duration::from_millis(50);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often a quiet link to the gateway is pinged, and how long a ping may go unanswered.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// How long one append may take before the forwarder gives up on it and sends it again.
const APPEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the forwarder lets a short batch's successors gather before reading again.
const FORWARD_LINGER: Duration = Duration::from_millis(10);
const BUNDLE_KEY: &str = "bundle";
const SUSPENSIONS_KEY: &str = "suspensions";

/// Clients of the gateway's services over one lazily connected channel, each call carrying
/// the runtime token.
#[derive(Debug, Clone)]
pub struct GatewayLink {
    channel: Authed,
}

type Authed = InterceptedService<Channel, Bearer>;

/// Puts `authorization: Bearer <runtime token>` on a call.
#[derive(Debug, Clone)]
struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A unary call's answer, or the gateway's refusal in the runtime's terms.
async fn unary<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Refusal> {
    call.await
        .map(tonic::Response::into_inner)
        .map_err(|s| refusal(&s))
}

fn refusal(status: &tonic::Status) -> Refusal {
    // The runtime itself refused (its token): the agents' credentials are not in question, so
    // their calls fail as if the gateway were out of reach, which their SDKs retry.
    if status
        .metadata()
        .contains_key(aa_proto::RUNTIME_REFUSED_METADATA)
    {
        tracing::error!(reason = %status.message(), "the gateway refuses this runtime: check its runtime token");
        return Refusal {
            code: ErrorCode::Unavailable,
            message: format!("the gateway refuses this runtime: {}", status.message()),
        };
    }
    let code = match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => ErrorCode::Unauthenticated,
        // What asking again cannot change: an unknown approval, a request too large.
        tonic::Code::InvalidArgument
        | tonic::Code::FailedPrecondition
        | tonic::Code::NotFound
        | tonic::Code::AlreadyExists
        | tonic::Code::OutOfRange
        | tonic::Code::ResourceExhausted => ErrorCode::InvalidRequest,
        _ => ErrorCode::Unavailable,
    };
    let message = match code {
        ErrorCode::Unavailable => format!("gateway unavailable: {}", status.message()),
        _ => status.message().to_owned(),
    };
    Refusal { code, message }
}

impl GatewayLink {
    /// A link to `url`, presenting `token`; nothing is dialled until the first call.
    pub fn new(url: &str, token: &str, timeout: Duration) -> Result<GatewayLink, RuntimeError> {
        let mut bearer = MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| {
            RuntimeError::Config {
                field: "gateway_token",
                message: e.to_string(),
            }
        })?;
        // Kept out of debug output and from header compression tables.
        bearer.set_sensitive(true);
        let channel = Endpoint::from_shared(url.to_owned())
            .map_err(|e| RuntimeError::Config {
                field: "gateway_url",
                message: e.to_string(),
            })?
            .connect_timeout(timeout)
            .tcp_nodelay(true)
            // A link that goes silent (a partition, a vanished host) is noticed in seconds
            // and dialled again, not waited on for the minutes TCP would take to give up.
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(GatewayLink {
            channel: InterceptedService::new(channel, Bearer(bearer)),
        })
    }

    fn agents(&self) -> pb::agent_service_client::AgentServiceClient<Authed> {
        pb::agent_service_client::AgentServiceClient::new(self.channel.clone())
    }

    pub(crate) async fn register(
        &self,
        request: pb::RegisterRequest,
    ) -> Result<pb::RegisterResponse, Refusal> {
        unary(self.agents().register(request)).await
    }

    pub(crate) async fn heartbeat(
        &self,
        request: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse, Refusal> {
        unary(self.agents().heartbeat(request)).await
    }

    pub(crate) async fn deregister(
        &self,
        request: pb::DeregisterRequest,
    ) -> Result<pb::DeregisterResponse, Refusal> {
        unary(self.agents().deregister(request)).await
    }

    pub(crate) async fn take_team_rate(
        &self,
        request: pb::TakeTeamRateRequest,
    ) -> Result<pb::TakeTeamRateResponse, Refusal> {
        unary(self.agents().take_team_rate(request)).await
    }

    pub(crate) async fn reserve_budget(
        &self,
        request: pb::ReserveBudgetRequest,
    ) -> Result<pb::ReserveBudgetResponse, Refusal> {
        unary(self.agents().reserve_budget(request)).await
    }

    fn approvals(&self) -> pb::approval_service_client::ApprovalServiceClient<Authed> {
        pb::approval_service_client::ApprovalServiceClient::new(self.channel.clone())
    }

    pub(crate) async fn create_approval(
        &self,
        request: pb::CreateApprovalRequest,
    ) -> Result<pb::Approval, Refusal> {
        unary(self.approvals().create(request)).await
    }

    pub(crate) async fn redeem_approval(
        &self,
        request: pb::RedeemApprovalRequest,
    ) -> Result<pb::Approval, Refusal> {
        unary(self.approvals().redeem(request)).await
    }

    /// The approval's state now and at every change, until it is decided or expires.
    pub(crate) async fn watch_approval(
        &self,
        approval_id: &str,
    ) -> Result<tonic::Streaming<pb::Approval>, Refusal> {
        unary(self.approvals().watch(pb::WatchApprovalRequest {
            approval_id: approval_id.to_owned(),
        }))
        .await
    }

    /// `AuditService.AppendEvents` with the events as the outbox stores them, encoded: the
    /// generated client would take them decoded, only to encode them again.
    async fn append(&self, events: Vec<Stored>) -> Result<pb::AppendEventsResponse, tonic::Status> {
        use tonic::codegen::http::uri::PathAndQuery;
        let request = EncodedAppendEventsRequest {
            events: events.into_iter().map(|e| e.wire).collect(),
        };
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let call = async move {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(format!("gateway not ready: {e}")))?;
            let codec = tonic_prost::ProstCodec::<
                EncodedAppendEventsRequest,
                pb::AppendEventsResponse,
            >::default();
            let path = PathAndQuery::from_static("/assembly.v1.AuditService/AppendEvents");
            grpc.unary(tonic::Request::new(request), path, codec).await
        };
        tokio::time::timeout(APPEND_TIMEOUT, call)
            .await
            .map_err(|_| {
                tonic::Status::deadline_exceeded("the gateway did not store the batch in time")
            })?
            .map(tonic::Response::into_inner)
    }
}

/// Installs what an earlier run saved — the bundle and the suspensions — so a restart during
/// a gateway outage still decides by the last policy (rather than denying everything) and
/// still stops suspended agents.
pub(crate) fn restore(runtime: &Runtime) {
    use prost::Message as _;
    let saved = |key| runtime.outbox().get(key).ok().flatten();
    if let Some(bundle) = saved(BUNDLE_KEY)
        .and_then(|h| aa_core::hex::decode(&h))
        .and_then(|b| pb::PolicyBundle::decode(&*b).ok())
    {
        match Compiled::compile(&bundle, runtime.built_in_scanner()) {
            Ok(compiled) => runtime.set_bundle(compiled),
            Err(error) => tracing::warn!(%error, "saved bundle ignored"),
        }
    }
    // Nothing saved is a first start; a set that cannot be read may have stopped someone.
    let suspensions = runtime
        .outbox()
        .get(SUSPENSIONS_KEY)
        .map_err(|e| e.to_string())
        .and_then(|saved| {
            saved
                .map(|text| serde_json::from_str::<Vec<Suspension>>(&text))
                .transpose()
                .map_err(|e| e.to_string())
        });
    match suspensions {
        Ok(Some(list)) => runtime.set_suspensions(list),
        Ok(None) => {}
        Err(error) => {
            tracing::error!(%error, "saved suspensions unreadable: every agent is stopped until the gateway's arrive");
            runtime.forget_suspensions();
        }
    }
}

/// Follows the gateway's policy bundle, suspensions and revoked tokens until `stop`.
pub(crate) async fn watch(runtime: Arc<Runtime>, link: GatewayLink, stop: watch::Receiver<bool>) {
    tokio::join!(
        watch_bundles(Arc::clone(&runtime), link.clone(), stop.clone()),
        watch_suspensions(Arc::clone(&runtime), link.clone(), stop.clone()),
        watch_revocations(runtime, link, stop),
    );
}

/// Each set of revoked tokens ends the sessions that hold one (which persists: the sessions
/// are removed from the database too).
async fn watch_revocations(runtime: Arc<Runtime>, link: GatewayLink, stop: watch::Receiver<bool>) {
    let open = || {
        let mut client = link.agents();
        async move {
            client
                .watch_revocations(pb::WatchRevocationsRequest {})
                .await
        }
    };
    let apply = |wire: pb::Revocations| {
        let revoked: Vec<(String, String)> = wire
            .tokens
            .into_iter()
            .map(|t| (t.agent_id, t.token_id))
            .collect();
        runtime.drop_revoked(&revoked);
        std::future::ready(())
    };
    follow(stop, open, apply).await;
}

/// Keeps a server stream open until `stop`: `open` starts it, `apply` takes each message. A
/// refused or broken stream is opened again after a pause that doubles from 50 ms to 2 s and
/// starts over once a message arrives.
async fn follow<T, F, A>(
    mut stop: watch::Receiver<bool>,
    mut open: impl FnMut() -> F,
    mut apply: impl FnMut(T) -> A,
) where
    F: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
    A: Future<Output = ()>,
{
    let mut backoff = BACKOFF_START;
    loop {
        let stream = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            s = open() => s,
        };
        // An unreachable gateway is expected and retried quietly; anything else (a refusal,
        // a message too large to decode) would stop what the stream carries, so it is logged.
        let failed = |status: &tonic::Status| {
            if status.code() != tonic::Code::Unavailable {
                tracing::warn!(code = ?status.code(), reason = %status.message(), "a watch stream from the gateway failed; opening it again");
            }
        };
        match stream {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let message = tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        m = stream.message() => m,
                    };
                    match message {
                        Ok(Some(message)) => {
                            backoff = BACKOFF_START;
                            // One at a time, so what each saves is saved in order.
                            apply(message).await;
                        }
                        Ok(None) => break,
                        Err(status) => {
                            failed(&status);
                            break;
                        }
                    }
                }
            }
            Err(status) => failed(&status),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Each new bundle version is compiled and applied, then saved.
async fn watch_bundles(runtime: Arc<Runtime>, link: GatewayLink, stop: watch::Receiver<bool>) {
    use prost::Message as _;
    let open = || {
        let known = runtime
            .bundle()
            .map(|b| b.version.clone())
            .unwrap_or_default();
        let mut client = pb::policy_service_client::PolicyServiceClient::new(link.channel.clone());
        async move {
            client
                .watch_bundle(pb::WatchBundleRequest {
                    known_version: known,
                })
                .await
        }
    };
    let apply = |bundle: pb::PolicyBundle| {
        let runtime = Arc::clone(&runtime);
        async move {
            match Compiled::compile(&bundle, runtime.built_in_scanner()) {
                Ok(compiled) => {
                    tracing::info!(version = %compiled.version, "policy bundle applied");
                    runtime.set_bundle(compiled);
                    let saved = aa_core::hex::encode(&bundle.encode_to_vec());
                    let put = move |outbox: &Outbox| outbox.put(BUNDLE_KEY, &saved);
                    if let Err(error) = runtime.on_outbox(put).await {
                        tracing::warn!(%error, "bundle not saved");
                    }
                }
                Err(error) => tracing::error!(%error, "bundle refused; keeping the one in force"),
            }
        }
    };
    follow(stop, open, apply).await;
}

/// Each new set of suspensions is applied at once, then saved.
async fn watch_suspensions(runtime: Arc<Runtime>, link: GatewayLink, stop: watch::Receiver<bool>) {
    let open = || {
        let mut client = link.agents();
        async move {
            client
                .watch_suspensions(pb::WatchSuspensionsRequest {})
                .await
        }
    };
    let apply = |wire: pb::Suspensions| {
        let list: Vec<Suspension> = wire
            .suspensions
            .into_iter()
            .filter_map(|s| match Suspension::try_from(s) {
                Ok(s) => Some(s),
                Err(error) => {
                    tracing::error!(%error, "unreadable suspension from the gateway skipped");
                    None
                }
            })
            .collect();
        tracing::info!(count = list.len(), "suspensions applied");
        let saved = serde_json::to_string(&list);
        runtime.set_suspensions(list);
        let runtime = Arc::clone(&runtime);
        async move {
            let saved = match saved {
                Ok(text) => {
                    let put = move |outbox: &Outbox| outbox.put(SUSPENSIONS_KEY, &text);
                    runtime.on_outbox(put).await.map_err(|e| e.to_string())
                }
                Err(error) => Err(error.to_string()),
            };
            if let Err(error) = saved {
                tracing::warn!(%error, "suspensions not saved");
            }
        }
    };
    follow(stop, open, apply).await;
}

/// Reads up to `batch` events after `sequence` off the async workers; a failed read is logged
/// and reads as nothing, to be tried again. A row that does not read as an event is set aside
/// first ([`set_aside`]), and the read made again.
async fn read_after(outbox: &Arc<Outbox>, sequence: u64, batch: usize) -> Vec<Stored> {
    loop {
        let reading = Arc::clone(outbox);
        match tokio::task::spawn_blocking(move || reading.pending_after(sequence, batch)).await {
            Ok(Ok(events)) => return events,
            // A row that is not an event would stop every read from before it, for ever.
            Ok(Err(RuntimeError::UnreadableEvent {
                sequence: unreadable,
                reason,
            })) => {
                let reason = format!("the runtime cannot read it back: {reason}");
                if !set_aside(outbox, unreadable, &reason).await {
                    tracing::error!(
                        sequence = unreadable,
                        reason,
                        "the outbox holds an event it cannot read, and cannot set it aside: nothing after it is forwarded"
                    );
                    return Vec::new();
                }
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "outbox read failed");
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        }
    }
}

/// Where the forwarder goes on from after the gateway asked for events already sent.
struct Rewound {
    /// The last sequence the gateway holds.
    from: u64,
    /// The events after it, read back from the outbox.
    events: Vec<Stored>,
}

/// When the gateway refused a batch because its stream's head calls for a sequence already
/// sent (its store was restored from a backup, say), the events from there, read back from
/// the delivered ones the outbox keeps. `None` for any other refusal; also, logged as what no
/// resend can mend, when the outbox no longer holds the first of them, and when the gateway
/// holds other events than the outbox beyond what was sent.
async fn rewind(
    outbox: &Arc<Outbox>,
    status: &tonic::Status,
    sent: u64,
    batch: usize,
) -> Option<Rewound> {
    let expected: u64 = status
        .metadata()
        .get(aa_proto::EXPECTED_SEQUENCE_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    if status.code() != tonic::Code::FailedPrecondition || expected == 0 {
        return None;
    }
    if expected > sent {
        // Past what was sent, the gateway holds other events than this outbox at the same
        // places: the two histories differ, and no resend can join them.
        if expected > sent + 1 {
            tracing::error!(
                expected,
                sent,
                "the gateway's record of this runtime's stream differs from its outbox (state restored from a backup?); nothing more can be sent"
            );
        }
        return None;
    }
    let from = expected - 1;
    let events = read_after(outbox, from, batch).await;
    if events.first().map(|e| e.sequence) != Some(expected) {
        tracing::error!(
            expected,
            "the gateway lacks events this outbox no longer keeps; its stream cannot go on"
        );
        return None;
    }
    tracing::warn!(
        expected,
        sent,
        "the gateway lacks events it had acknowledged (a restored store?); sending them again"
    );
    Some(Rewound { from, events })
}

/// The event an append's refusal names as refused for good, if it names one.
fn refused_sequence(status: &tonic::Status) -> Option<u64> {
    if status.code() != tonic::Code::InvalidArgument {
        return None;
    }
    status
        .metadata()
        .get(aa_proto::REFUSED_SEQUENCE_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Sets aside the event at `sequence`, which can never be delivered (`reason`: the gateway
/// refused it for good, or the outbox cannot read it back), and puts a tombstone in its place
/// ([`Outbox::quarantine`]), so that the events after it go on to the gateway rather than wait
/// behind it for ever. Whether it did.
async fn set_aside(outbox: &Arc<Outbox>, sequence: u64, reason: &str) -> bool {
    let (outbox, why) = (Arc::clone(outbox), reason.to_owned());
    match tokio::task::spawn_blocking(move || outbox.quarantine(sequence, &why)).await {
        Ok(Ok(true)) => {
            tracing::error!(
                sequence,
                reason,
                "an event that can never be delivered is set aside in the outbox's quarantine table, and a tombstone is sent in its place"
            );
            true
        }
        Ok(Ok(false)) => false,
        Ok(Err(error)) => {
            tracing::error!(%error, sequence, reason, "could not set aside an event that can never be delivered");
            false
        }
        Err(_) => false,
    }
}

/// How many appends the forwarder has in flight while a backlog drains: the gateway checks
/// the next batches while it stores the last, and stores them in the order they were sent.
/// A third keeps its processors busy when a batch waits for the one before it to be stored
/// (BENCHMARKS.md, "The gateway's appends on a background of their own").
const APPENDS_IN_FLIGHT: usize = 3;

/// An append sent and not yet answered.
struct InFlight {
    /// Its last sequence.
    last: u64,
    /// Shorter than a batch: the outbox had no more.
    short: bool,
    call: tokio::task::JoinHandle<Result<pb::AppendEventsResponse, tonic::Status>>,
}

/// Keeps the first of `events` that fit in one append ([`aa_proto::MAX_APPEND_BYTES`]; at
/// least one, however large); returns whether any were cut off. A batch the gateway cannot
/// take would be refused, and sent again, for ever.
fn cut_to_append_bytes(events: &mut Vec<Stored>) -> bool {
    let mut bytes = 0usize;
    let fit = events
        .iter()
        .take_while(|e| {
            bytes = bytes.saturating_add(e.wire.len());
            bytes <= aa_proto::MAX_APPEND_BYTES
        })
        .count()
        .max(1);
    let cut = fit < events.len();
    events.truncate(fit);
    cut
}

/// The answer to an append, or `None` once the drain's deadline passes first (a stop that
/// arrives meanwhile starts it): an append in flight, which may take [`APPEND_TIMEOUT`], does
/// not hold a stopping runtime past its drain. What it carried stays in the outbox, and is
/// sent again when the runtime next starts.
async fn answer_in_time(
    call: &mut tokio::task::JoinHandle<Result<pb::AppendEventsResponse, tonic::Status>>,
    deadline: &mut Option<tokio::time::Instant>,
    stop: &mut watch::Receiver<bool>,
    drain: Duration,
) -> Option<Result<pb::AppendEventsResponse, tonic::Status>> {
    let joined = loop {
        match *deadline {
            Some(at) => break tokio::time::timeout_at(at, &mut *call).await.ok()?,
            None => tokio::select! {
                joined = &mut *call => break joined,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        *deadline = Some(tokio::time::Instant::now() + drain);
                    }
                }
            },
        }
    };
    Some(
        joined
            .unwrap_or_else(|e| Err(tonic::Status::internal(format!("the append was lost: {e}")))),
    )
}

/// Sends the outbox to the gateway in stream order until `stop`, then for at most `drain`
/// longer while events remain. Events just committed come from memory
/// ([`Outbox::pending_after`]), older ones from the database. A backlog goes out
/// [`APPENDS_IN_FLIGHT`] batches at a time, the next read while the last is sent; answers are
/// taken in order, and after a failure everything from the last one acknowledged is sent
/// again. The outbox learns what was delivered behind the stream, so a restart may send a
/// batch again, which the gateway recognises as duplicates. An event the gateway refuses for
/// good is set aside, and a tombstone sent in its place ([`set_aside`]).
pub(crate) async fn forward(
    outbox: Arc<Outbox>,
    link: GatewayLink,
    batch: usize,
    written: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut backoff = BACKOFF_START;
    let mut deadline: Option<tokio::time::Instant> = None;
    // The last sequence the gateway acknowledged.
    let mut sent = match outbox.delivered() {
        Ok(sequence) => sequence,
        Err(error) => {
            tracing::error!(%error, "outbox unreadable: nothing is forwarded");
            return;
        }
    };
    // The last sequence sent, acknowledged or not.
    let mut queued = sent;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut read_ahead: Option<Vec<Stored>> = None;
    let mut marking: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        if deadline.is_none() && *stop.borrow() {
            deadline = Some(tokio::time::Instant::now() + drain);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        // A short batch means the outbox is keeping up: nothing more is sent until it is
        // answered, so that a trickle goes out in few calls.
        while in_flight.len() < APPENDS_IN_FLIGHT && !in_flight.back().is_some_and(|f| f.short) {
            let mut pending = match read_ahead.take() {
                Some(events) => events,
                None => read_after(&outbox, queued, batch).await,
            };
            // What is cut off is read again for the next call.
            let cut = cut_to_append_bytes(&mut pending);
            let Some(last) = pending.last().map(|e| e.sequence) else {
                break;
            };
            let short = !cut && pending.len() < batch;
            let link = link.clone();
            let call = tokio::spawn(async move { link.append(pending).await });
            in_flight.push_back(InFlight { last, short, call });
            queued = last;
        }
        let Some(oldest) = in_flight.pop_front() else {
            if deadline.is_some() {
                break;
            }
            tokio::select! {
                () = written.notified() => {}
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        };
        let mut call = oldest.call;
        let Some(appended) = answer_in_time(&mut call, &mut deadline, &mut stop, drain).await
        else {
            call.abort();
            break;
        };
        match appended {
            Ok(_) => {
                backoff = BACKOFF_START;
                sent = oldest.last;
                if let Some(previous) = marking.take() {
                    let _ = previous.await;
                }
                let outbox = Arc::clone(&outbox);
                marking = Some(tokio::task::spawn_blocking(move || {
                    if let Err(error) = outbox.mark_delivered(sent) {
                        tracing::error!(%error, "could not record delivery; events will be sent again");
                    }
                }));
                // Let the next one fill a little.
                if oldest.short && deadline.is_none() {
                    tokio::select! {
                        () = tokio::time::sleep(FORWARD_LINGER) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
            Err(status) => {
                // What was sent after it follows on from it: its answers no longer count,
                // and it is all sent again (the gateway knows what it already holds).
                for later in in_flight.drain(..) {
                    later.call.abort();
                }
                // Only the failed call's own events were judged.
                let refused =
                    refused_sequence(&status).filter(|s| (sent + 1..=oldest.last).contains(s));
                queued = sent;
                // Marking a delivery prunes the oldest kept rows: done before any are read
                // back, so what a rewind found is still there for the next read.
                if let Some(previous) = marking.take() {
                    let _ = previous.await;
                }
                if let Some(rewound) = rewind(&outbox, &status, sent, batch).await {
                    (sent, read_ahead) = (rewound.from, Some(rewound.events));
                    queued = sent;
                    continue;
                }
                if let Some(sequence) = refused
                    && set_aside(&outbox, sequence, status.message()).await
                {
                    continue;
                }
                tracing::warn!(code = ?status.code(), message = status.message(), "gateway append failed; retrying");
                let pause = match deadline {
                    Some(d) => {
                        backoff.min(d.saturating_duration_since(tokio::time::Instant::now()))
                    }
                    None => backoff,
                };
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.changed(), if deadline.is_none() => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    for unanswered in in_flight {
        unanswered.call.abort();
    }
    if let Some(last) = marking {
        let _ = last.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_append_in_flight_does_not_hold_a_stop_past_its_drain() {
        let (stop_tx, mut stop) = watch::channel(false);
        let mut call = tokio::spawn(std::future::pending());
        let mut deadline = None;
        let stopping = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop_tx.send(true).unwrap();
        };
        let waited = async {
            answer_in_time(
                &mut call,
                &mut deadline,
                &mut stop,
                Duration::from_millis(50),
            )
            .await
        };
        // Bounded only so that a regression fails rather than hangs.
        let (answer, ()) = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(waited, stopping)
        })
        .await
        .expect("the append held the stop");
        assert!(answer.is_none());
        assert!(deadline.is_some(), "the stop started the drain");

        // An answer before the deadline is the answer.
        let mut deadline = Some(tokio::time::Instant::now() + Duration::from_secs(20));
        let mut call = tokio::spawn(async { Err(tonic::Status::unavailable("down")) });
        let answer = answer_in_time(&mut call, &mut deadline, &mut stop, Duration::ZERO).await;
        assert_eq!(
            answer.map(|a| a.map_err(|s| s.code()).err()),
            Some(Some(tonic::Code::Unavailable))
        );
    }

    fn events(sizes: &[usize]) -> Vec<Stored> {
        (1..)
            .zip(sizes)
            .map(|(sequence, &size)| Stored {
                sequence,
                wire: vec![0; size],
            })
            .collect()
    }

    #[test]
    fn a_refusal_asking_again_cannot_change_is_not_unavailability() {
        for code in [
            tonic::Code::NotFound,
            tonic::Code::OutOfRange,
            tonic::Code::ResourceExhausted,
            tonic::Code::FailedPrecondition,
        ] {
            let refused = refusal(&tonic::Status::new(code, "no"));
            assert_eq!(refused.code, ErrorCode::InvalidRequest, "{code:?}");
            assert_eq!(refused.message, "no");
        }
        let away = refusal(&tonic::Status::unavailable("down"));
        assert_eq!(away.code, ErrorCode::Unavailable);
        assert_eq!(
            refusal(&tonic::Status::internal("x")).code,
            ErrorCode::Unavailable
        );
    }

    #[test]
    fn an_append_holds_what_fits_and_at_least_one_event() {
        let max = aa_proto::MAX_APPEND_BYTES;
        for (sizes, kept, cut) in [
            (vec![10, 10, 10], 3, false),
            (vec![max / 2, max / 2, 1], 2, true),
            (vec![max + 1, 1], 1, true),
            (vec![max + 1], 1, false),
            (vec![], 0, false),
        ] {
            let mut batch = events(&sizes);
            assert_eq!(cut_to_append_bytes(&mut batch), cut, "{sizes:?}");
            assert_eq!(batch.len(), kept, "{sizes:?}");
        }
    }
}
