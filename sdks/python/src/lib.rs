//! The Python SDK's native module, `agent_assembly._native`: [`aa_sdk_client`] for Python.
//!
//! - this file: the module and its three classes — `Client` (one connection to the runtime,
//!   shared by every agent registered on it), `Agent` (a registration and its credential) and
//!   `Outcome` (a decision).
//! - [`errors`]: how client errors become Python exceptions.
//! - [`json`]: Python objects to JSON values.
//!
//! It holds no client logic: each method hands its call to `aa-sdk-client` and waits with the
//! GIL released, in slices so Ctrl-C still interrupts; a check is written and read on the
//! calling thread (`check_blocking_until`). Actions and events cross as Python
//! objects (or JSON text), checked here with errors that say which item and field was wrong. Nothing here may panic
//! across the boundary: every failure is a Python exception.

mod errors;
mod json;

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aa_core::{Action, EdgeKind, EventKind, Mode, TopologyEdge};
use aa_sdk_client::{Agent, AgentSpec, Call, CheckOutcome, Client, ClientConfig, Report};
use pyo3::prelude::*;
use pyo3::types::PyString;
use serde::Deserialize;
use serde_json::Value;

/// How long one wait lasts before Python gets to handle its signals.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// Waits for a call with the GIL released; a pending KeyboardInterrupt abandons it.
fn wait<T: Send>(py: Python<'_>, mut call: Call<T>) -> PyResult<T> {
    loop {
        if let Some(answer) = py.detach(|| call.wait_for(WAIT_SLICE)) {
            return answer.map_err(errors::to_py);
        }
        py.check_signals()?;
    }
}

fn seconds(what: &str, value: f64) -> PyResult<Duration> {
    if value.is_finite() && value > 0.0 {
        Duration::try_from_secs_f64(value).map_err(|e| errors::invalid(what, e))
    } else {
        Err(errors::invalid(
            what,
            format!("must be a positive number of seconds, not {value}"),
        ))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A JSON document given as text or as a Python object.
fn json_value(
    what: &str,
    value: &Bound<'_, PyAny>,
    default: Option<&Bound<'_, PyAny>>,
) -> PyResult<Value> {
    match value.cast::<PyString>() {
        Ok(text) => serde_json::from_str(&text.to_cow()?)
            .map_err(|e| errors::invalid(what, format!("not JSON: {e}"))),
        Err(_) => json::to_value(value, default),
    }
}

/// An array of items, each parsed on its own so an error names its index.
fn parse_items<T: for<'de> Deserialize<'de>>(what: &str, items: Value) -> PyResult<Vec<T>> {
    let Value::Array(items) = items else {
        return Err(errors::invalid(what, "not an array"));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_value(item).map_err(|e| errors::invalid(&format!("{what}[{i}]"), e))
        })
        .collect()
}

/// One event as the package sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventJson {
    kind: EventKind,
    action: Action,
    #[serde(default)]
    detail: Option<Value>,
    #[serde(default)]
    session_id: Option<String>,
}

/// One edge from the reporting agent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeJson {
    to_agent_id: String,
    kind: EdgeKind,
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
}

/// A connection to the runtime with its own background IO thread.
#[pyclass(module = "agent_assembly._native", name = "Client", frozen)]
#[derive(Debug)]
struct PyClient {
    client: RwLock<Option<Client>>,
    socket_path: String,
    mode: Mode,
    /// Makes objects of other types JSON-ready, as `json.dumps(default=...)`.
    json_default: Option<Py<PyAny>>,
}

impl PyClient {
    fn value(&self, py: Python<'_>, what: &str, value: &Bound<'_, PyAny>) -> PyResult<Value> {
        json_value(what, value, self.json_default.as_ref().map(|d| d.bind(py)))
    }

    fn client(&self) -> PyResult<Client> {
        self.client
            .read()
            .ok()
            .and_then(|c| c.clone())
            .ok_or_else(errors::closed)
    }
}

#[pymethods]
impl PyClient {
    #[new]
    #[pyo3(signature = (*, socket_path=None, state_dir=None, mode="enforce", timeout=5.0,
        json_default=None))]
    fn new(
        socket_path: Option<PathBuf>,
        state_dir: Option<PathBuf>,
        mode: &str,
        timeout: f64,
        json_default: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let mode: Mode = mode.parse().map_err(|e| errors::invalid("mode", e))?;
        let client = Client::new(ClientConfig {
            socket_path,
            state_dir: aa_sdk_client::resolve_state_dir(state_dir.as_deref()),
            mode,
            timeout: seconds("timeout", timeout)?,
        })
        .map_err(errors::to_py)?;
        Ok(PyClient {
            socket_path: client.socket_path().display().to_string(),
            client: RwLock::new(Some(client)),
            mode,
            json_default,
        })
    }

    /// The runtime socket: the argument, else `AASM_SOCKET`, else `.aasm/runtime.sock`.
    #[getter]
    fn socket_path(&self) -> String {
        self.socket_path.clone()
    }

    /// `enforce`, `observe` or `disabled`: how a failed check resolves.
    #[getter]
    fn mode(&self) -> &'static str {
        self.mode.as_str()
    }

    /// Connects now, so a missing runtime shows at start-up.
    fn connect(&self, py: Python<'_>) -> PyResult<()> {
        wait(py, self.client()?.connect())
    }

    /// Registers an agent; its key is kept under the state directory.
    /// A child registered where its parent's key is not (another host) passes the parent's
    /// `spawn_grant` (else `AASM_SPAWN_GRANT` is read).
    #[pyo3(signature = (agent_id, *, name=None, framework=None, team_id=None,
        parent_agent_id=None, delegation_reason=None, spawned_by_tool=None, spawn_grant=None))]
    #[allow(clippy::too_many_arguments)]
    fn register(
        &self,
        py: Python<'_>,
        agent_id: String,
        name: Option<String>,
        framework: Option<String>,
        team_id: Option<String>,
        parent_agent_id: Option<String>,
        delegation_reason: Option<String>,
        spawned_by_tool: Option<String>,
        spawn_grant: Option<String>,
    ) -> PyResult<PyAgent> {
        let spec = AgentSpec {
            agent_id,
            name,
            framework,
            team_id,
            parent_agent_id,
            delegation_reason,
            spawned_by_tool,
            spawn_grant,
        };
        let agent = wait(py, self.client()?.register(spec))?;
        Ok(PyAgent { agent })
    }

    /// A grant for the child `child_id` of `parent_agent_id` (whose key this client's state
    /// directory keeps), valid for `ttl` seconds: the child, registered on another host,
    /// passes it as `spawn_grant` or in `AASM_SPAWN_GRANT`. Anyone holding it can register
    /// that child until it expires: hand it over as a secret.
    #[pyo3(signature = (parent_agent_id, child_id, ttl=600.0))]
    fn grant_spawn(&self, parent_agent_id: &str, child_id: &str, ttl: f64) -> PyResult<String> {
        self.client()?
            .grant_spawn(parent_agent_id, child_id, seconds("ttl", ttl)?)
            .map_err(errors::to_py)
    }

    /// Asks for a decision on an action (`{"type": "tool_call", ...}`, a dict or JSON text).
    /// Never raises for a runtime failure: that resolves by the mode.
    #[pyo3(signature = (agent, action, session_id=None))]
    fn check(
        &self,
        py: Python<'_>,
        agent: &Bound<'_, PyAgent>,
        action: &Bound<'_, PyAny>,
        session_id: Option<String>,
    ) -> PyResult<PyOutcome> {
        let action = Action::from_value(self.value(py, "action", action)?)
            .map_err(|e| errors::invalid("action", e))?;
        let client = self.client()?;
        let agent = &agent.get().agent;
        // Written and read on this thread (no hop through the client's runtime), in slices
        // so that a pending KeyboardInterrupt abandons the wait.
        let mut signal = None;
        let outcome = py.detach(|| {
            client.check_blocking_until(agent, action, session_id, WAIT_SLICE, &mut || {
                let checked = Python::attach(|py| py.check_signals());
                checked.map_err(|e| signal = Some(e)).is_err()
            })
        });
        if let Some(signal) = signal {
            return Err(signal);
        }
        Ok(PyOutcome {
            outcome: outcome.map_err(errors::to_py)?,
        })
    }

    /// Waits for the approval of a pending outcome; denies when no one decides within
    /// `timeout` seconds (or the approval expires first).
    fn await_approval(
        &self,
        py: Python<'_>,
        agent: &Bound<'_, PyAgent>,
        outcome: &Bound<'_, PyOutcome>,
        timeout: f64,
    ) -> PyResult<PyOutcome> {
        let call = self.client()?.await_approval(
            &agent.get().agent,
            outcome.get().outcome.clone(),
            seconds("timeout", timeout)?,
        );
        Ok(PyOutcome {
            outcome: wait(py, call)?,
        })
    }

    /// Reports events and edges (lists, or JSON arrays as text); returns how many events were
    /// new once the runtime has them on disk.
    #[pyo3(signature = (agent, events=None, edges=None))]
    fn report(
        &self,
        py: Python<'_>,
        agent: &Bound<'_, PyAgent>,
        events: Option<&Bound<'_, PyAny>>,
        edges: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let items = |what: &str, list: Option<&Bound<'_, PyAny>>| {
            list.map_or(Ok(Value::Array(Vec::new())), |list| {
                self.value(py, what, list)
            })
        };
        let (events, edges) = (items("events", events)?, items("edges", edges)?);
        let agent = &agent.get().agent;
        let mut reports = Vec::new();
        for (i, event) in parse_items::<EventJson>("events", events)?
            .into_iter()
            .enumerate()
        {
            event
                .action
                .validate()
                .map_err(|e| errors::invalid(&format!("events[{i}]"), e))?;
            reports.push(Report {
                kind: event.kind,
                action: event.action,
                detail: event.detail,
                session_id: event.session_id,
            });
        }
        let now = now_ms();
        let edges = parse_items::<EdgeJson>("edges", edges)?
            .into_iter()
            .map(|edge| TopologyEdge {
                from_agent_id: agent.id().to_owned(),
                to_agent_id: edge.to_agent_id,
                kind: edge.kind,
                tool: edge.tool,
                created_at_ms: now,
                metadata: edge.metadata,
            })
            .collect();
        wait(py, self.client()?.report(agent, reports, edges))
    }

    /// The JSON text of a value, converted as actions and events are.
    fn dumps(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<String> {
        let default = self.json_default.as_ref().map(|d| d.bind(py));
        serde_json::to_string(&json::to_value(value, default)?)
            .map_err(|e| errors::invalid("value", e))
    }

    /// Renews the agent's credential now (the client also does it on its own).
    fn heartbeat(&self, py: Python<'_>, agent: &Bound<'_, PyAgent>) -> PyResult<()> {
        wait(py, self.client()?.heartbeat(&agent.get().agent))
    }

    /// Ends the agent's registration.
    #[pyo3(signature = (agent, reason=""))]
    fn deregister(&self, py: Python<'_>, agent: &Bound<'_, PyAgent>, reason: &str) -> PyResult<()> {
        wait(py, self.client()?.deregister(&agent.get().agent, reason))
    }

    /// Closes the connection and stops the IO thread; later calls raise `ClientClosed`.
    fn close(&self, py: Python<'_>) {
        let client = self.client.write().ok().and_then(|mut c| c.take());
        if let Some(client) = client {
            // Without the GIL: a check under way on another thread needs it to finish.
            py.detach(|| client.close());
        }
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.client.read().map_or(true, |c| c.is_none())
    }

    fn __repr__(&self) -> String {
        format!(
            "Client(socket_path={:?}, mode={:?})",
            self.socket_path,
            self.mode.as_str()
        )
    }
}

/// A registered agent. Its credential stays inside; it is renewed in the background.
#[pyclass(module = "agent_assembly._native", name = "Agent", frozen)]
#[derive(Debug)]
struct PyAgent {
    agent: Agent,
}

#[pymethods]
impl PyAgent {
    #[getter]
    fn agent_id(&self) -> &str {
        self.agent.id()
    }

    /// The team, as the gateway recorded it (a child inherits its parent's).
    #[getter]
    fn team_id(&self) -> Option<&str> {
        self.agent.context().team.as_deref()
    }

    #[getter]
    fn parent_agent_id(&self) -> Option<&str> {
        self.agent.context().parent.as_deref()
    }

    /// 0 for a root agent; the gateway counts it from the parent.
    #[getter]
    fn depth(&self) -> u32 {
        self.agent.context().depth
    }

    /// When the current credential expires, ms since the epoch.
    #[getter]
    fn expires_at_ms(&self) -> i64 {
        self.agent.expires_at_ms()
    }

    fn __repr__(&self) -> String {
        format!(
            "Agent(agent_id={:?}, depth={})",
            self.agent.id(),
            self.agent.context().depth
        )
    }
}

/// A decision and how it was reached.
#[pyclass(module = "agent_assembly._native", name = "Outcome", frozen)]
#[derive(Debug)]
struct PyOutcome {
    outcome: CheckOutcome,
}

#[pymethods]
impl PyOutcome {
    /// `allow`, `deny` or `pending`.
    #[getter]
    fn decision(&self) -> &'static str {
        self.outcome.verdict.decision.as_str()
    }

    #[getter]
    fn rule(&self) -> &str {
        &self.outcome.verdict.rule
    }

    #[getter]
    fn reason(&self) -> &str {
        &self.outcome.verdict.reason
    }

    /// The deciding policy as `name@version`; empty when the client decided.
    #[getter]
    fn policy(&self) -> &str {
        &self.outcome.verdict.policy
    }

    /// The mode the decision applies under.
    #[getter]
    fn mode(&self) -> &'static str {
        self.outcome.verdict.mode.as_str()
    }

    #[getter]
    fn approval_id(&self) -> Option<&str> {
        self.outcome.approval_id.as_deref()
    }

    /// True when the runtime did not decide and the client resolved by its mode.
    #[getter]
    fn resolved_locally(&self) -> bool {
        self.outcome.resolved_locally
    }

    fn __repr__(&self) -> String {
        format!(
            "Outcome(decision={:?}, rule={:?}, reason={:?})",
            self.decision(),
            self.outcome.verdict.rule,
            self.outcome.verdict.reason
        )
    }
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyClient>()?;
    m.add_class::<PyAgent>()?;
    m.add_class::<PyOutcome>()?;
    m.add("NativeError", py.get_type::<errors::NativeError>())?;
    m.add(
        "RuntimeUnavailable",
        py.get_type::<errors::RuntimeUnavailable>(),
    )?;
    m.add("RuntimeRefused", py.get_type::<errors::RuntimeRefused>())?;
    m.add("IdentityError", py.get_type::<errors::IdentityError>())?;
    m.add("ClientClosed", py.get_type::<errors::ClientClosed>())?;
    Ok(())
}
