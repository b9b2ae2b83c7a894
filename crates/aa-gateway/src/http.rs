//! The HTTP face for operators: `/health` and `/metrics` (Prometheus text format) for anyone
//! who can reach the port, and under `/api/v1/`, with the admin token
//! (`Authorization: Bearer <token>`): agents, their lineage and the topology, suspending and
//! resuming agents, approvals, and the audit log with its checkpoints.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use aa_core::ApprovalStatus;

use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::store::Store;

/// Records returned per `/audit` page at most.
const MAX_PAGE: u64 = 1000;

/// The operator API over `gateway`.
pub fn router<S: Store>(gateway: Arc<Gateway<S>>) -> Router {
    Router::new()
        .route("/health", get(health::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/api/v1/agents", get(agents::<S>))
        .route("/api/v1/agents/{id}", get(agent::<S>))
        .route("/api/v1/agents/{id}/lineage", get(lineage::<S>))
        .route("/api/v1/agents/{id}/suspend", post(suspend::<S>))
        .route("/api/v1/agents/{id}/resume", post(resume::<S>))
        .route("/api/v1/topology", get(topology::<S>))
        .route("/api/v1/audit", get(audit::<S>))
        .route("/api/v1/audit/checkpoints", get(checkpoints::<S>))
        .route("/api/v1/approvals", get(approvals::<S>))
        .route("/api/v1/approvals/{id}", get(approval::<S>))
        .route("/api/v1/approvals/{id}/approve", post(approve::<S>))
        .route("/api/v1/approvals/{id}/deny", post(deny::<S>))
        .with_state(gateway)
}

/// An error as an HTTP answer; internals stay in the log.
struct HttpError(GatewayError);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (code, message) = match &self.0 {
            GatewayError::InvalidRequest(_) | GatewayError::Policy(_) => {
                (StatusCode::BAD_REQUEST, self.0.to_string())
            }
            GatewayError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, self.0.to_string()),
            GatewayError::Sequence { .. } | GatewayError::Conflict(_) => {
                (StatusCode::CONFLICT, self.0.to_string())
            }
            GatewayError::NotFound(_) => (StatusCode::NOT_FOUND, self.0.to_string()),
            GatewayError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, self.0.to_string()),
            GatewayError::Storage(_) | GatewayError::Setup(_) => {
                tracing::error!(error = %self.0, "operator API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal gateway error".to_owned(),
                )
            }
        };
        (code, Json(json!({ "error": message }))).into_response()
    }
}

impl From<GatewayError> for HttpError {
    fn from(e: GatewayError) -> Self {
        HttpError(e)
    }
}

type Shared<S> = State<Arc<Gateway<S>>>;

async fn health<S: Store>(State(gateway): Shared<S>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "policy_version": gateway.bundle().version,
        "gateway_did": gateway.public_key().did(),
    }))
}

#[derive(Debug, Deserialize)]
struct TeamFilter {
    team: Option<String>,
}

async fn agents<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Query(filter): Query<TeamFilter>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.agent_views(filter.team.as_deref()).await?))
}

async fn agent<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.agent_view(&id).await?))
}

async fn lineage<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.lineage(&id).await?))
}

#[derive(Debug, Deserialize)]
struct TopologyQuery {
    root: Option<String>,
}

async fn topology<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Query(query): Query<TopologyQuery>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.topology(query.root.as_deref()).await?))
}

/// The body of a suspend or resume.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspensionRequest {
    /// Whether the agent's descendants are stopped (or released) with it.
    #[serde(default)]
    subtree: bool,
    /// Who acts (free text, e.g. a user name).
    #[serde(default)]
    by: Option<String>,
    /// Why (a suspension's reason is told to the agent with every denied check).
    #[serde(default)]
    reason: Option<String>,
}

async fn change_suspension<S: Store>(
    gateway: &Gateway<S>,
    headers: &HeaderMap,
    id: &str,
    suspend: bool,
    body: Option<Json<SuspensionRequest>>,
) -> Result<Json<crate::SuspensionChange>, HttpError> {
    gateway.authorize_admin(bearer(headers))?;
    let r = body.map(|Json(r)| r).unwrap_or_default();
    let by = r.by.as_deref().unwrap_or_default();
    let reason = r.reason.as_deref().unwrap_or_default();
    let change = if suspend {
        gateway.suspend(id, r.subtree, by, reason).await?
    } else {
        gateway.resume(id, r.subtree, by, reason).await?
    };
    Ok(Json(change))
}

async fn suspend<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<SuspensionRequest>>,
) -> Result<impl IntoResponse, HttpError> {
    change_suspension(&gateway, &headers, &id, true, body).await
}

async fn resume<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<SuspensionRequest>>,
) -> Result<impl IntoResponse, HttpError> {
    change_suspension(&gateway, &headers, &id, false, body).await
}

#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: u64,
}

fn default_limit() -> u64 {
    100
}

async fn audit<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    let records = gateway
        .store()
        .records(page.after, page.limit.min(MAX_PAGE))
        .await?;
    let next = page.after + records.len() as u64;
    Ok(Json(json!({ "records": records, "next": next })))
}

async fn checkpoints<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.store().checkpoints().await?))
}

async fn metrics<S: Store>(State(gateway): Shared<S>) -> Result<impl IntoResponse, HttpError> {
    let m = gateway.metrics();
    let agents = gateway.store().agents().await?.len();
    let mut text = String::new();
    let counters = [
        (
            "aasm_gateway_registrations_total",
            "Completed agent registrations.",
            &m.registrations,
        ),
        (
            "aasm_gateway_auth_failures_total",
            "Refused registrations and tokens.",
            &m.auth_failures,
        ),
        (
            "aasm_gateway_heartbeats_total",
            "Renewed credential tokens.",
            &m.heartbeats,
        ),
        (
            "aasm_gateway_audit_events_appended_total",
            "Audit events appended.",
            &m.events_appended,
        ),
        (
            "aasm_gateway_audit_events_duplicate_total",
            "Audit events already present.",
            &m.events_duplicate,
        ),
        (
            "aasm_gateway_backstop_redactions_total",
            "Spans redacted by the gateway's backstop scan.",
            &m.backstop_redactions,
        ),
        (
            "aasm_gateway_bundles_published_total",
            "Policy bundles published.",
            &m.bundles_published,
        ),
        (
            "aasm_gateway_checkpoints_total",
            "Audit checkpoints signed.",
            &m.checkpoints,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        text,
        "# HELP aasm_gateway_agents Registered agents.\n# TYPE aasm_gateway_agents gauge\naasm_gateway_agents {agents}"
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    ))
}

/// The `Authorization` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()
}

#[derive(Debug, Deserialize)]
struct ApprovalFilter {
    status: Option<ApprovalStatus>,
}

async fn approvals<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Query(filter): Query<ApprovalFilter>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.approvals(filter.status).await?))
}

async fn approval<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.approval(&id).await?))
}

/// The body of an approve or deny.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    /// Who decides (free text, e.g. a user name); `operator` when absent.
    #[serde(default)]
    decided_by: Option<String>,
    /// Why.
    #[serde(default)]
    reason: Option<String>,
}

async fn decide<S: Store>(
    gateway: &Gateway<S>,
    headers: &HeaderMap,
    id: &str,
    approve: bool,
    body: Option<Json<Decision>>,
) -> Result<Json<aa_core::Approval>, HttpError> {
    gateway.authorize_admin(bearer(headers))?;
    let Decision { decided_by, reason } = body.map(|Json(d)| d).unwrap_or_default();
    let decided_by = decided_by.unwrap_or_default();
    Ok(Json(
        gateway
            .decide_approval(id, approve, &decided_by, reason)
            .await?,
    ))
}

async fn approve<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Decision>>,
) -> Result<impl IntoResponse, HttpError> {
    decide(&gateway, &headers, &id, true, body).await
}

async fn deny<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<Decision>>,
) -> Result<impl IntoResponse, HttpError> {
    decide(&gateway, &headers, &id, false, body).await
}
