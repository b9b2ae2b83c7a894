//! The HTTP face for operators: `/health` and `/metrics` (Prometheus text format) for anyone
//! who can reach the port, and under `/api/v1/`, with the admin token
//! (`Authorization: Bearer <token>`): agents, their lineage and the topology, suspending and
//! resuming agents, approvals, spend against budgets, and the audit log with its
//! checkpoints; and the OpenAPI
//! document of all of it at `/api/v1/openapi.json` (no token), generated from the handlers.

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
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use aa_core::{Approval, ApprovalStatus};

use crate::audit::{Checkpoint, Record};
use crate::budgets::BudgetReport;
use crate::registry::{AgentView, SuspensionChange, Topology};

use crate::error::GatewayError;
use crate::gateway::{Gateway, to_the_end};
use crate::store::Store;

/// Records returned per `/audit` page at most.
const MAX_PAGE: u64 = 1000;

/// The operator API over `gateway`.
pub fn router<S: Store>(gateway: Arc<Gateway<S>>) -> Router {
    Router::new()
        .route("/health", get(health::<S>))
        .route("/metrics", get(metrics::<S>))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/agents", get(agents::<S>))
        .route("/api/v1/agents/{id}", get(agent::<S>))
        .route("/api/v1/agents/{id}/lineage", get(lineage::<S>))
        .route("/api/v1/agents/{id}/suspend", post(suspend::<S>))
        .route("/api/v1/agents/{id}/resume", post(resume::<S>))
        .route("/api/v1/topology", get(topology::<S>))
        .route("/api/v1/audit", get(audit::<S>))
        .route("/api/v1/audit/checkpoints", get(checkpoints::<S>))
        .route("/api/v1/budgets", get(budgets::<S>))
        .route("/api/v1/budgets/agents/{id}", get(agent_budget::<S>))
        .route("/api/v1/budgets/teams/{id}", get(team_budget::<S>))
        .route("/api/v1/approvals", get(approvals::<S>))
        .route("/api/v1/approvals/{id}", get(approval::<S>))
        .route("/api/v1/approvals/{id}/approve", post(approve::<S>))
        .route("/api/v1/approvals/{id}/deny", post(deny::<S>))
        .with_state(gateway)
}

/// What every error answer holds.
#[derive(Debug, Serialize, ToSchema)]
struct ErrorBody {
    /// What was wrong, for a person.
    error: String,
}

/// An error as an HTTP answer; internals stay in the log.
struct HttpError(GatewayError);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (code, message) = match &self.0 {
            GatewayError::InvalidRequest(_)
            | GatewayError::EventRefused { .. }
            | GatewayError::Policy(_) => (StatusCode::BAD_REQUEST, self.0.to_string()),
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
        (code, Json(ErrorBody { error: message })).into_response()
    }
}

impl From<GatewayError> for HttpError {
    fn from(e: GatewayError) -> Self {
        HttpError(e)
    }
}

type Shared<S> = State<Arc<Gateway<S>>>;

/// The gateway's state.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// `ok`.
    status: &'static str,
    /// The version (content hash) of the policy bundle runtimes hold.
    policy_version: String,
    /// The key that signs tokens and checkpoints.
    gateway_did: String,
}

#[utoipa::path(get, path = "/health", tag = "service", security(()),
    responses((status = 200, description = "The gateway is up", body = Health)))]
async fn health<S: Store>(State(gateway): Shared<S>) -> impl IntoResponse {
    Json(Health {
        status: "ok",
        policy_version: gateway.bundle().version.clone(),
        gateway_did: gateway.public_key().did(),
    })
}

#[derive(Debug, Deserialize)]
struct TeamFilter {
    team: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    params(("team" = Option<String>, Query, description = "Only this team's agents")),
    responses((status = 200, description = "Agents by id", body = [AgentView]), (status = 401, description = "No or wrong admin token", body = ErrorBody)))]
async fn agents<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Query(filter): Query<TeamFilter>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.agent_views(filter.team.as_deref()).await?))
}

#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents", params(("id" = String, Path, description = "The agent id")),
    responses((status = 200, description = "The agent", body = AgentView), (status = 401, description = "No or wrong admin token", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn agent<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.agent_view(&id).await?))
}

#[utoipa::path(get, path = "/api/v1/agents/{id}/lineage", tag = "agents", params(("id" = String, Path, description = "The agent id")),
    responses((status = 200, description = "Its ancestors and itself, the root first", body = [AgentView]), (status = 401, description = "No or wrong admin token", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/topology", tag = "agents",
    params(("root" = Option<String>, Query, description = "The agent at the top (default: every tree)")),
    responses((status = 200, description = "The agents, parents first, and the edges from them", body = Topology), (status = 401, description = "No or wrong admin token", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn topology<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Query(query): Query<TopologyQuery>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.topology(query.root.as_deref()).await?))
}

/// The body of a suspend or resume.
#[derive(Debug, Default, Deserialize, ToSchema)]
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
    gateway: &Arc<Gateway<S>>,
    headers: &HeaderMap,
    id: &str,
    suspend: bool,
    body: Option<Json<SuspensionRequest>>,
) -> Result<Json<crate::SuspensionChange>, HttpError> {
    gateway.authorize_admin(bearer(headers))?;
    let r = body.map(|Json(r)| r).unwrap_or_default();
    let (gateway, id) = (Arc::clone(gateway), id.to_owned());
    let change = to_the_end(async move {
        let by = r.by.as_deref().unwrap_or_default();
        let reason = r.reason.as_deref().unwrap_or_default();
        if suspend {
            gateway.suspend(&id, r.subtree, by, reason).await
        } else {
            gateway.resume(&id, r.subtree, by, reason).await
        }
    })
    .await?;
    Ok(Json(change))
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/suspend", tag = "agents", params(("id" = String, Path, description = "The agent id")),
    request_body(content = SuspensionRequest, description = "All fields optional"),
    responses((status = 200, description = "The agents now stopped", body = SuspensionChange), (status = 401, description = "No or wrong admin token", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn suspend<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<SuspensionRequest>>,
) -> Result<impl IntoResponse, HttpError> {
    change_suspension(&gateway, &headers, &id, true, body).await
}

#[utoipa::path(post, path = "/api/v1/agents/{id}/resume", tag = "agents", params(("id" = String, Path, description = "The agent id")),
    request_body(content = SuspensionRequest, description = "All fields optional"),
    responses((status = 200, description = "The agents released", body = SuspensionChange), (status = 401, description = "No or wrong admin token", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
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
    after: Option<u64>,
    cursor: Option<String>,
    #[serde(default = "default_limit")]
    limit: u64,
}

/// Where a page ended, as a `cursor`: the last record's stream and sequence.
fn cursor_of(record: &Record) -> String {
    format!("{}:{}", record.stream_id, record.sequence)
}

/// A `cursor` read back; the sequence follows the last `:`, since a stream id may hold one.
/// Sequences are stored as SQLite integers, so one past `i64::MAX` was never given.
fn parse_cursor(cursor: &str) -> Result<(String, u64), GatewayError> {
    cursor
        .rsplit_once(':')
        .and_then(|(stream, sequence)| {
            let sequence = sequence.parse::<i64>().ok()?;
            Some((stream.to_owned(), u64::try_from(sequence).ok()?))
        })
        .ok_or_else(|| {
            GatewayError::InvalidRequest(format!(
                "cursor {cursor:?} is not one this API gave (stream:sequence)"
            ))
        })
}

fn default_limit() -> u64 {
    100
}

/// One page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
struct AuditPage {
    /// The records, in stream order.
    records: Vec<Record>,
    /// The `after` of the next page, when paging by `after`.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<u64>,
    /// The `cursor` of the next page: where this one ended (after an empty page, where the
    /// request started; absent while the log is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(("after" = Option<u64>, Query, description = "Skip this many records (default 0); each page costs as much as the records it skips"),
        ("cursor" = Option<String>, Query, description = "Start after the record a page's `cursor` names, at the same cost however deep (not with `after`)"),
        ("limit" = Option<u64>, Query, description = "At most this many (default 100, at most 1000)")),
    responses((status = 200, description = "Records in stream order", body = AuditPage), (status = 400, description = "A cursor this API did not give, an `after` past 2^63 - 1, or both `after` and `cursor`", body = ErrorBody), (status = 401, description = "No or wrong admin token", body = ErrorBody)))]
async fn audit<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Query(page): Query<Page>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    let limit = page.limit.min(MAX_PAGE);
    let (records, next) = match (&page.cursor, page.after) {
        (Some(_), Some(_)) => {
            return Err(GatewayError::InvalidRequest(
                "pass either after or cursor, not both".into(),
            )
            .into());
        }
        (Some(cursor), None) => {
            let at = parse_cursor(cursor)?;
            (gateway.store().records_after(Some(at), limit).await?, None)
        }
        (None, after) => {
            let after = after.unwrap_or(0);
            // The store counts in SQLite integers: an offset past them is the caller's
            // mistake, not the store's failure.
            if i64::try_from(after).is_err() {
                return Err(GatewayError::InvalidRequest(format!(
                    "after must be at most {}",
                    i64::MAX
                ))
                .into());
            }
            let records = gateway.store().records(after, limit).await?;
            let next = after + records.len() as u64;
            (records, Some(next))
        }
    };
    let cursor = records.last().map(cursor_of).or(page.cursor);
    Ok(Json(AuditPage {
        records,
        next,
        cursor,
    }))
}

#[utoipa::path(get, path = "/api/v1/audit/checkpoints", tag = "audit",
    responses((status = 200, description = "Every signed checkpoint, oldest first", body = [Checkpoint]), (status = 401, description = "No or wrong admin token", body = ErrorBody)))]
async fn checkpoints<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.store().checkpoints().await?))
}

#[utoipa::path(get, path = "/metrics", tag = "service", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics<S: Store>(State(gateway): Shared<S>) -> Result<impl IntoResponse, HttpError> {
    let m = gateway.metrics();
    // Counted, not read: the endpoint needs no token.
    let agents = gateway.store().agent_count().await?;
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
        (
            "aasm_gateway_budget_reservations_total",
            "LLM calls whose estimated cost was reserved.",
            &m.budget_reservations,
        ),
        (
            "aasm_gateway_budget_refusals_total",
            "LLM calls refused for want of budget.",
            &m.budget_refusals,
        ),
        (
            "aasm_gateway_usage_settled_total",
            "Reported LLM usages priced and charged.",
            &m.usage_settled,
        ),
        (
            "aasm_gateway_usage_unpriced_total",
            "Reported LLM usages without token counts, left unsettled.",
            &m.usage_unpriced,
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

#[utoipa::path(get, path = "/api/v1/budgets", tag = "budgets",
    responses((status = 200, description = "Spend of every team, every root agent and every agent with a budget of its own", body = [BudgetReport]), (status = 401, description = "No or wrong admin token", body = ErrorBody)))]
async fn budgets<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.budget_reports().await?))
}

#[utoipa::path(get, path = "/api/v1/budgets/agents/{id}", tag = "budgets", params(("id" = String, Path, description = "The agent id")),
    responses((status = 200, description = "Spend of the agent and everything it spawned", body = BudgetReport), (status = 401, description = "No or wrong admin token", body = ErrorBody), (status = 404, description = "Unknown agent", body = ErrorBody)))]
async fn agent_budget<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(
        gateway
            .budget_report(&aa_policy::Account::Agent(id))
            .await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/budgets/teams/{id}", tag = "budgets", params(("id" = String, Path, description = "The team id")),
    responses((status = 200, description = "Spend of the team's agents", body = BudgetReport), (status = 401, description = "No or wrong admin token", body = ErrorBody)))]
async fn team_budget<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(
        gateway.budget_report(&aa_policy::Account::Team(id)).await?,
    ))
}

#[derive(Debug, Deserialize)]
struct ApprovalFilter {
    status: Option<ApprovalStatus>,
}

#[utoipa::path(get, path = "/api/v1/approvals", tag = "approvals",
    params(("status" = Option<ApprovalStatus>, Query, description = "Only approvals in this state")),
    responses((status = 200, description = "Approvals, newest first", body = [Approval]), (status = 401, description = "No or wrong admin token", body = ErrorBody)))]
async fn approvals<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Query(filter): Query<ApprovalFilter>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.approvals(filter.status).await?))
}

#[utoipa::path(get, path = "/api/v1/approvals/{id}", tag = "approvals", params(("id" = String, Path, description = "The approval id")),
    responses((status = 200, description = "The approval", body = Approval), (status = 401, description = "No or wrong admin token", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody)))]
async fn approval<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    gateway.authorize_admin(bearer(&headers))?;
    Ok(Json(gateway.approval(&id).await?))
}

/// The body of an approve or deny.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ApprovalDecision {
    /// Who decides (free text, e.g. a user name); `operator` when absent.
    #[serde(default)]
    decided_by: Option<String>,
    /// Why.
    #[serde(default)]
    reason: Option<String>,
}

async fn decide<S: Store>(
    gateway: &Arc<Gateway<S>>,
    headers: &HeaderMap,
    id: &str,
    approve: bool,
    body: Option<Json<ApprovalDecision>>,
) -> Result<Json<aa_core::Approval>, HttpError> {
    gateway.authorize_admin(bearer(headers))?;
    let ApprovalDecision { decided_by, reason } = body.map(|Json(d)| d).unwrap_or_default();
    let decided_by = decided_by.unwrap_or_default();
    let (gateway, id) = (Arc::clone(gateway), id.to_owned());
    let decided = to_the_end(async move {
        gateway
            .decide_approval(&id, approve, &decided_by, reason)
            .await
    });
    Ok(Json(decided.await?))
}

#[utoipa::path(post, path = "/api/v1/approvals/{id}/approve", tag = "approvals", params(("id" = String, Path, description = "The approval id")),
    request_body(content = ApprovalDecision, description = "Both fields optional"),
    responses((status = 200, description = "The approved approval", body = Approval), (status = 401, description = "No or wrong admin token", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
async fn approve<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<ApprovalDecision>>,
) -> Result<impl IntoResponse, HttpError> {
    decide(&gateway, &headers, &id, true, body).await
}

#[utoipa::path(post, path = "/api/v1/approvals/{id}/deny", tag = "approvals", params(("id" = String, Path, description = "The approval id")),
    request_body(content = ApprovalDecision, description = "Both fields optional"),
    responses((status = 200, description = "The denied approval", body = Approval), (status = 401, description = "No or wrong admin token", body = ErrorBody), (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "Not in a state that allows it", body = ErrorBody)))]
async fn deny<S: Store>(
    State(gateway): Shared<S>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<ApprovalDecision>>,
) -> Result<impl IntoResponse, HttpError> {
    decide(&gateway, &headers, &id, false, body).await
}

/// The operator API's OpenAPI document, generated from the handlers and types above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Agent Assembly gateway",
        description = "The operators' API: agents, their trees and suspensions, approvals, budgets, the audit log. Everything under /api/v1 but this document needs the admin token as a bearer token."
    ),
    paths(
        health, metrics, agents, agent, lineage, topology, suspend, resume, audit, checkpoints,
        approvals, approval, approve, deny, budgets, agent_budget, team_budget
    ),
    modifiers(&AdminToken),
    security(("admin_token" = [])),
    tags(
        (name = "agents", description = "The registry, lineage, topology and the kill switch"),
        (name = "approvals", description = "Pending actions waiting for a human"),
        (name = "budgets", description = "LLM spend against the budgets policies set"),
        (name = "audit", description = "The hash-chained audit log and its signed checkpoints"),
        (name = "service", description = "Health and metrics, without a token")
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

/// Declares the admin token as the API's bearer scheme.
#[derive(Debug)]
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
