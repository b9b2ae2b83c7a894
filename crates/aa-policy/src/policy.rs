//! Loading: a YAML policy document is parsed, validated and compiled in one pass that keeps
//! every value's location, so each problem is reported as `line:col: key: message`.

use std::collections::HashMap;

use aa_core::{AgentContext, Decision, Mode};

use crate::condition::Condition;
use crate::error::PolicyError;
use crate::pattern::{GlobList, HostSet, NameSet, compile_glob, is_glob, normalize_path};
use crate::schedule::{Schedule, parse_time, parse_timezone, parse_weekday};
use crate::yaml::{self, Loc, Located, Node, Reader, join_path};

/// The `apiVersion` every document carries.
pub const API_VERSION: &str = "agent-assembly/v1";

/// A compiled policy document, ready to evaluate.
#[derive(Debug)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) scope: Scope,
    pub(crate) mode: Option<Mode>,
    pub(crate) default: Decision,
    pub(crate) tools: ToolTable,
    pub(crate) network: Option<NetworkRules>,
    pub(crate) files: Option<FileRules>,
    pub(crate) llm: Option<LlmRules>,
    pub(crate) process: Option<ProcessRules>,
    pub(crate) max_depth: Option<u32>,
    pub(crate) approval_timeout_s: Option<u32>,
    pub(crate) schedule: Option<Schedule>,
    pub(crate) budget: Option<Budget>,
    pub(crate) data: Option<DataRules>,
    /// `spec.members` of a team's policy: the agents that may register into the team.
    pub(crate) members: Option<NameSet>,
}

/// Which agents a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every agent.
    Global,
    /// Agents of one team.
    Team(String),
    /// One agent.
    Agent(String),
}

impl Scope {
    /// True when the policy applies to `agent`.
    pub fn covers(&self, agent: &AgentContext) -> bool {
        match self {
            Scope::Global => true,
            Scope::Team(team) => agent.team.as_deref() == Some(team.as_str()),
            Scope::Agent(id) => agent.id == *id,
        }
    }

    /// Higher is more specific: agent > team > global.
    pub fn specificity(&self) -> u8 {
        match self {
            Scope::Global => 0,
            Scope::Team(_) => 1,
            Scope::Agent(_) => 2,
        }
    }

    fn parse(text: &str) -> Result<Scope, String> {
        let bad = || format!("invalid scope \"{text}\" (expected global, team:<id> or agent:<id>)");
        match text.split_once(':') {
            None if text == "global" => Ok(Scope::Global),
            Some(("team", id)) if !id.is_empty() => Ok(Scope::Team(id.to_owned())),
            Some(("agent", id)) if !id.is_empty() => Ok(Scope::Agent(id.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// One entry under `tools`.
#[derive(Debug)]
pub struct ToolRule {
    pub(crate) key: String,
    pub(crate) allow: bool,
    pub(crate) deny_if: Option<Condition>,
    pub(crate) requires_approval_if: Option<Condition>,
    limits: RateLimits,
    team_limits: RateLimits,
}

impl ToolRule {
    /// The key as written: a tool name, a glob, or `*`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The call-rate limits the runtime counts for this entry, per agent.
    pub fn limits(&self) -> RateLimits {
        self.limits
    }

    /// The call-rate limits the gateway counts for this entry, across the agent's team
    /// (`team_limit_per_minute`, `team_limit_per_hour`).
    pub fn team_limits(&self) -> RateLimits {
        self.team_limits
    }
}

/// `limit_per_minute` / `limit_per_hour`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Calls allowed per minute.
    pub per_minute: Option<u32>,
    /// Calls allowed per hour.
    pub per_hour: Option<u32>,
}

/// Tool entries indexed for lookup: exact names by hash, globs compiled into one set, so lookup
/// cost barely grows with the number of entries.
#[derive(Debug)]
pub(crate) struct ToolTable {
    rules: Vec<ToolRule>,
    exact: HashMap<String, usize>,
    globs: GlobList,
    glob_rules: Vec<usize>,
    wildcard: Option<usize>,
}

impl ToolTable {
    /// The exact entry, else the first matching glob in file order, else `"*"`.
    pub(crate) fn find(&self, tool: &str) -> Option<&ToolRule> {
        let index = self
            .exact
            .get(tool)
            .copied()
            .or_else(|| {
                self.globs
                    .first_match(tool)
                    .and_then(|g| self.glob_rules.get(g).copied())
            })
            .or(self.wildcard)?;
        self.rules.get(index)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[derive(Debug)]
pub(crate) struct NetworkRules {
    pub(crate) allow: Option<HostSet>,
    pub(crate) deny: Option<HostSet>,
    pub(crate) ports: Option<Vec<u16>>,
}

#[derive(Debug)]
pub(crate) struct FileRules {
    pub(crate) read: Option<Vec<String>>,
    pub(crate) write: Option<Vec<String>>,
    pub(crate) delete: Option<Vec<String>>,
}

#[derive(Debug)]
pub(crate) struct LlmRules {
    pub(crate) models: Option<NameSet>,
    pub(crate) max_tokens_per_call: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct ProcessRules {
    pub(crate) allow: Option<NameSet>,
    pub(crate) deny: Option<NameSet>,
}

/// What happens when a budget is exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceedAction {
    /// Further paid calls are denied.
    Deny,
    /// Further paid calls need a human's approval.
    Pending,
    /// Calls go on; an alert is raised.
    Alert,
}

/// `spec.budget`, enforced by the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// USD per day.
    pub daily_usd: Option<f64>,
    /// USD per calendar month.
    pub monthly_usd: Option<f64>,
    /// What exceeding does.
    pub action_on_exceed: ExceedAction,
    /// Where days and months begin: `budget.timezone`, else the schedule's, else UTC.
    pub timezone: chrono_tz::Tz,
}

impl ExceedAction {
    /// The name as written in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            ExceedAction::Deny => "deny",
            ExceedAction::Pending => "pending",
            ExceedAction::Alert => "alert",
        }
    }
}

/// What the runtime does when it finds a credential in an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialAction {
    /// Deny the action carrying it.
    Block,
    /// Replace it with `[REDACTED:<kind>]`.
    Redact,
    /// Redact and raise an alert.
    Alert,
}

/// A custom pattern from `spec.data.patterns`, validated at load.
pub use aa_core::CustomPattern;

/// `spec.data`, used by the runtime's scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRules {
    /// What to do on a credential.
    pub credential_action: CredentialAction,
    /// Extra patterns to scan for.
    pub patterns: Vec<CustomPattern>,
}

impl Policy {
    /// Parses and compiles every document of a YAML stream (documents separated by `---`).
    pub fn parse(source: &str) -> Result<Vec<Policy>, PolicyError> {
        let docs = yaml::load(source)?;
        let mut reader = Reader::new(source);
        if docs.is_empty() {
            reader.error(
                Loc { line: 1, col: 1 },
                "",
                "the file holds no policy document",
            );
        }
        let policies: Vec<Policy> = docs
            .iter()
            .filter_map(|d| document(&mut reader, d))
            .collect();
        reader.finish(policies)
    }

    /// Parses a stream that must hold exactly one document.
    pub fn parse_one(source: &str) -> Result<Policy, PolicyError> {
        let mut policies = Policy::parse(source)?;
        match (policies.pop(), policies.is_empty()) {
            (Some(policy), true) => Ok(policy),
            _ => Err(PolicyError::Invalid(vec![crate::Diagnostic {
                line: 1,
                col: 1,
                message: "expected exactly one policy document".to_owned(),
            }])),
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `metadata.version`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `<name>@<version>`, as decisions name it.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// `spec.scope`.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// `spec.mode`, when set.
    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// `spec.approvals.timeout_seconds`, when set.
    pub fn approval_timeout_s(&self) -> Option<u32> {
        self.approval_timeout_s
    }

    /// `spec.default`.
    pub fn default_decision(&self) -> Decision {
        self.default
    }

    /// The entry that governs `tool`, if any.
    pub fn tool_rule(&self, tool: &str) -> Option<&ToolRule> {
        self.tools.find(tool)
    }

    /// `spec.budget`.
    pub fn budget(&self) -> Option<&Budget> {
        self.budget.as_ref()
    }

    /// `spec.data`.
    pub fn data(&self) -> Option<&DataRules> {
        self.data.as_ref()
    }

    /// Whether `spec.members` names `agent_id` (an id or a glob); `None` when the policy
    /// lists no members.
    pub fn admits(&self, agent_id: &str) -> Option<bool> {
        self.members
            .as_ref()
            .map(|members| members.find(agent_id).is_some())
    }
}

const TOP_KEYS: &[&str] = &["apiVersion", "kind", "metadata", "spec"];
const METADATA_KEYS: &[&str] = &["name", "version", "description", "labels"];
const SPEC_KEYS: &[&str] = &[
    "scope",
    "mode",
    "default",
    "tools",
    "network",
    "files",
    "llm",
    "process",
    "delegation",
    "approvals",
    "schedule",
    "budget",
    "data",
    "members",
];

fn document(r: &mut Reader<'_>, node: &Node<'_>) -> Option<Policy> {
    let entries = r.mapping(node, "", Some(TOP_KEYS))?;
    r.require(node, "", &entries, TOP_KEYS);
    let mut meta = None;
    let mut spec = None;
    let mut ok = true;
    for (key, value) in &entries {
        match key.value.as_str() {
            "apiVersion" => ok &= expect_literal(r, value, "apiVersion", API_VERSION),
            "kind" => ok &= expect_literal(r, value, "kind", "Policy"),
            "metadata" => meta = metadata(r, value),
            _ => spec = Some(*value),
        }
    }
    let (name, version) = meta?;
    let spec = spec_section(r, spec?)?;
    ok.then(|| Policy {
        name,
        version,
        ..spec
    })
}

/// Checks a key holds one exact string (`apiVersion`, `kind`).
pub(crate) fn expect_literal(r: &mut Reader<'_>, node: &Node<'_>, path: &str, want: &str) -> bool {
    match r.string(node, path) {
        Some(s) if s.value == want => true,
        Some(s) => {
            r.error(
                s.loc,
                path,
                format!("expected \"{want}\", found \"{}\"", s.value),
            );
            false
        }
        None => false,
    }
}

fn metadata(r: &mut Reader<'_>, node: &Node<'_>) -> Option<(String, String)> {
    let entries = r.mapping(node, "metadata", Some(METADATA_KEYS))?;
    r.require(node, "metadata", &entries, &["name"]);
    let mut name = None;
    let mut version = Some("0".to_owned());
    for (key, value) in &entries {
        let path = join_path("metadata", &key.value);
        match key.value.as_str() {
            "name" => {
                let s = r.string(value, &path)?;
                let valid = !s.value.is_empty()
                    && s.value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !valid {
                    r.error(s.loc, &path, "must be letters, digits, '-', '_' or '.'");
                    return None;
                }
                name = Some(s.value);
            }
            "version" => version = r.string_or_number(value, &path).map(|s| s.value),
            "description" => {
                r.string(value, &path);
            }
            _ => {
                let labels = r.mapping(value, &path, None)?;
                for (k, v) in labels {
                    r.string(v, &join_path(&path, &k.value));
                }
            }
        }
    }
    Some((name?, version?))
}

/// Parses `spec` into a policy with placeholder metadata.
fn spec_section(r: &mut Reader<'_>, node: &Node<'_>) -> Option<Policy> {
    let entries = r.mapping(node, "spec", Some(SPEC_KEYS))?;
    let before = r.diagnostics.len();
    let mut policy = Policy {
        name: String::new(),
        version: String::new(),
        scope: Scope::Global,
        mode: None,
        default: Decision::Deny,
        tools: ToolTable {
            rules: Vec::new(),
            exact: HashMap::new(),
            globs: GlobList::new(Vec::new()).ok()?,
            glob_rules: Vec::new(),
            wildcard: None,
        },
        network: None,
        files: None,
        llm: None,
        process: None,
        max_depth: None,
        approval_timeout_s: None,
        schedule: None,
        budget: None,
        data: None,
        members: None,
    };
    let mut budget_and_zone = None;
    let mut members_at = None;
    for (key, value) in &entries {
        let path = join_path("spec", &key.value);
        match key.value.as_str() {
            "scope" => {
                if let Some(s) = r.string(value, &path) {
                    match Scope::parse(&s.value) {
                        Ok(scope) => policy.scope = scope,
                        Err(e) => r.error(s.loc, &path, e),
                    }
                }
            }
            "mode" => {
                if let Some(s) = r.string(value, &path) {
                    match s.value.parse::<Mode>() {
                        Ok(mode) => policy.mode = Some(mode),
                        Err(e) => r.error(s.loc, &path, e),
                    }
                }
            }
            "default" => {
                if let Some(s) = r.string(value, &path) {
                    match s.value.as_str() {
                        "allow" => policy.default = Decision::Allow,
                        "deny" => policy.default = Decision::Deny,
                        other => r.error(
                            s.loc,
                            &path,
                            format!("expected allow or deny, found \"{other}\""),
                        ),
                    }
                }
            }
            "tools" => {
                if let Some(t) = tools(r, value, &path) {
                    policy.tools = t;
                }
            }
            "network" => policy.network = network(r, value, &path),
            "files" => policy.files = files(r, value, &path),
            "llm" => policy.llm = llm(r, value, &path),
            "process" => policy.process = process(r, value, &path),
            "delegation" => policy.max_depth = delegation(r, value, &path),
            "approvals" => policy.approval_timeout_s = approvals(r, value, &path),
            "schedule" => policy.schedule = schedule(r, value, &path),
            "budget" => budget_and_zone = budget(r, value, &path),
            "members" => {
                members_at = Some(key.loc);
                policy.members = pattern_list(r, value, &path, |p| NameSet::new(p, false));
            }
            _ => policy.data = data(r, value, &path),
        }
    }
    // Membership is a team's: who may register into it, so that its policy (its mode, its
    // budget) is not a choice any agent makes for itself.
    if let Some(loc) = members_at
        && !matches!(policy.scope, Scope::Team(_))
    {
        r.error(
            loc,
            "spec.members",
            "only a team's policy (scope: team:<id>) lists members",
        );
    }
    // A budget's days follow the policy's own clock unless it names another zone.
    if let (Some((budget, false)), Some(schedule)) = (&mut budget_and_zone, &policy.schedule) {
        budget.timezone = schedule.timezone();
    }
    policy.budget = budget_and_zone.map(|(budget, _)| budget);
    (r.diagnostics.len() == before).then_some(policy)
}

const TOOL_KEYS: &[&str] = &[
    "allow",
    "deny_if",
    "requires_approval_if",
    "limit_per_minute",
    "limit_per_hour",
    "team_limit_per_minute",
    "team_limit_per_hour",
    "description",
];

fn tools(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<ToolTable> {
    let entries = r.mapping(node, path, None)?;
    let mut table = ToolTable {
        rules: Vec::with_capacity(entries.len()),
        exact: HashMap::with_capacity(entries.len()),
        globs: GlobList::new(Vec::new()).ok()?,
        glob_rules: Vec::new(),
        wildcard: None,
    };
    let mut globs = Vec::new();
    for (key, value) in entries {
        let rule_path = join_path(path, &key.value);
        let Some(rule) = tool_rule(r, &key.value, value, &rule_path) else {
            continue;
        };
        let index = table.rules.len();
        if key.value == "*" {
            table.wildcard = Some(index);
        } else if is_glob(&key.value) {
            match compile_glob(&key.value, false) {
                Ok(glob) => {
                    globs.push((key.value.clone(), glob));
                    table.glob_rules.push(index);
                }
                Err(e) => {
                    r.error(key.loc, &rule_path, e);
                    continue;
                }
            }
        } else {
            table.exact.insert(key.value.clone(), index);
        }
        table.rules.push(rule);
    }
    match GlobList::new(globs) {
        Ok(list) => table.globs = list,
        Err(e) => r.error(Loc::of(node), path, e),
    }
    Some(table)
}

fn tool_rule(r: &mut Reader<'_>, key: &str, node: &Node<'_>, path: &str) -> Option<ToolRule> {
    let entries = r.mapping(node, path, Some(TOOL_KEYS))?;
    let mut rule = ToolRule {
        key: key.to_owned(),
        allow: true,
        deny_if: None,
        requires_approval_if: None,
        limits: RateLimits::default(),
        team_limits: RateLimits::default(),
    };
    let mut valid = true;
    for (k, value) in &entries {
        let path = join_path(path, &k.value);
        let ok = match k.value.as_str() {
            "allow" => r.boolean(value, &path).map(|b| rule.allow = b),
            "deny_if" => condition(r, value, &path).map(|c| rule.deny_if = Some(c)),
            "requires_approval_if" => {
                condition(r, value, &path).map(|c| rule.requires_approval_if = Some(c))
            }
            "limit_per_minute" => limit(r, value, &path).map(|n| rule.limits.per_minute = Some(n)),
            "limit_per_hour" => limit(r, value, &path).map(|n| rule.limits.per_hour = Some(n)),
            "team_limit_per_minute" => {
                limit(r, value, &path).map(|n| rule.team_limits.per_minute = Some(n))
            }
            "team_limit_per_hour" => {
                limit(r, value, &path).map(|n| rule.team_limits.per_hour = Some(n))
            }
            _ => r.string(value, &path).map(drop),
        };
        valid &= ok.is_some();
    }
    valid.then_some(rule)
}

fn limit(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<u32> {
    r.integer(node, path, 1, i64::from(u32::MAX))
        .and_then(|n| u32::try_from(n).ok())
}

/// Compiles a CEL condition; a compile error points into the expression.
fn condition(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<Condition> {
    let source = r.string(node, path)?;
    match Condition::compile(&source.value) {
        Ok(c) => Some(c),
        Err(e) => {
            r.error(
                expression_loc(&source, e.line, e.col),
                path,
                format!("invalid CEL: {}", e.message),
            );
            None
        }
    }
}

/// Maps a 1-based position inside an expression to the file; where the string's source text
/// does not map one to one onto its value (escapes, block or folded style), the string's start.
fn expression_loc(source: &Located<String>, line: usize, col: usize) -> Loc {
    match source.content_offset {
        Some(offset) if line <= 1 => Loc {
            line: source.loc.line,
            col: source.loc.col + offset + col - 1,
        },
        _ => source.loc,
    }
}

/// Reads a list of patterns and compiles it with `build`, reporting a bad one at its place.
fn pattern_list<T>(
    r: &mut Reader<'_>,
    node: &Node<'_>,
    path: &str,
    build: impl Fn(&[String]) -> Result<T, String>,
) -> Option<T> {
    let items = r.string_list(node, path)?;
    for (i, item) in items.iter().enumerate() {
        if let Err(e) = build(std::slice::from_ref(&item.value)) {
            r.error(item.loc, &format!("{path}[{i}]"), e);
            return None;
        }
    }
    let values: Vec<String> = items.into_iter().map(|s| s.value).collect();
    match build(&values) {
        Ok(set) => Some(set),
        Err(e) => {
            r.error(Loc::of(node), path, e);
            None
        }
    }
}

fn network(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<NetworkRules> {
    let entries = r.mapping(node, path, Some(&["allow", "deny", "ports"]))?;
    let mut rules = NetworkRules {
        allow: None,
        deny: None,
        ports: None,
    };
    for (k, value) in &entries {
        let path = join_path(path, &k.value);
        match k.value.as_str() {
            "allow" => rules.allow = Some(pattern_list(r, value, &path, HostSet::new)?),
            "deny" => rules.deny = Some(pattern_list(r, value, &path, HostSet::new)?),
            _ => {
                let items = r.sequence(value, &path)?;
                let ports = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| r.integer(p, &format!("{path}[{i}]"), 1, 65535))
                    .filter_map(|p| u16::try_from(p).ok())
                    .collect::<Vec<_>>();
                (ports.len() == items.len()).then_some(())?;
                rules.ports = Some(ports);
            }
        }
    }
    Some(rules)
}

fn files(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<FileRules> {
    let entries = r.mapping(node, path, Some(&["read", "write", "delete"]))?;
    let mut rules = FileRules {
        read: None,
        write: None,
        delete: None,
    };
    for (k, value) in &entries {
        let path = join_path(path, &k.value);
        let prefixes = pattern_list(r, value, &path, |items| {
            items
                .iter()
                .map(|p| {
                    normalize_path(p)
                        .map_err(|_| format!("\"{p}\" must be an absolute path without NUL bytes"))
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        match k.value.as_str() {
            "read" => rules.read = Some(prefixes),
            "write" => rules.write = Some(prefixes),
            _ => rules.delete = Some(prefixes),
        }
    }
    Some(rules)
}

fn llm(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<LlmRules> {
    let entries = r.mapping(node, path, Some(&["models", "max_tokens_per_call"]))?;
    let mut rules = LlmRules {
        models: None,
        max_tokens_per_call: None,
    };
    for (k, value) in &entries {
        let path = join_path(path, &k.value);
        match k.value.as_str() {
            "models" => {
                rules.models = Some(pattern_list(r, value, &path, |p| NameSet::new(p, true))?)
            }
            _ => {
                let n = r.integer(value, &path, 1, i64::MAX)?;
                rules.max_tokens_per_call = u64::try_from(n).ok();
            }
        }
    }
    Some(rules)
}

fn process(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<ProcessRules> {
    let entries = r.mapping(node, path, Some(&["allow", "deny"]))?;
    let mut rules = ProcessRules {
        allow: None,
        deny: None,
    };
    for (k, value) in &entries {
        let path = join_path(path, &k.value);
        let set = pattern_list(r, value, &path, |p| NameSet::new(p, false))?;
        match k.value.as_str() {
            "allow" => rules.allow = Some(set),
            _ => rules.deny = Some(set),
        }
    }
    Some(rules)
}

fn delegation(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<u32> {
    let entries = r.mapping(node, path, Some(&["max_depth"]))?;
    r.require(node, path, &entries, &["max_depth"]);
    let (k, value) = entries.first()?;
    let n = r.integer(value, &join_path(path, &k.value), 0, 1000)?;
    u32::try_from(n).ok()
}

/// The longest an approval may wait: a week.
const MAX_APPROVAL_TIMEOUT_S: i64 = 7 * 24 * 3600;

fn approvals(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<u32> {
    let entries = r.mapping(node, path, Some(&["timeout_seconds"]))?;
    r.require(node, path, &entries, &["timeout_seconds"]);
    let (k, value) = entries.first()?;
    let n = r.integer(value, &join_path(path, &k.value), 1, MAX_APPROVAL_TIMEOUT_S)?;
    u32::try_from(n).ok()
}

fn schedule(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<Schedule> {
    let entries = r.mapping(node, path, Some(&["active_hours"]))?;
    r.require(node, path, &entries, &["active_hours"]);
    let (k, hours) = entries.first()?;
    let path = join_path(path, &k.value);
    let fields = r.mapping(hours, &path, Some(&["start", "end", "timezone", "days"]))?;
    r.require(hours, &path, &fields, &["start", "end"]);
    let (mut start, mut end, mut tz, mut days) = (None, None, Some(chrono_tz::UTC), None);
    for (k, value) in &fields {
        let path = join_path(&path, &k.value);
        if k.value == "days" {
            let items = r.string_list(value, &path)?;
            let mut parsed = Vec::new();
            for item in items {
                match parse_weekday(&item.value) {
                    Ok(d) => parsed.push(d),
                    Err(e) => r.error(item.loc, &path, e),
                }
            }
            days = Some(parsed);
            continue;
        }
        let s = r.string(value, &path)?;
        let result = match k.value.as_str() {
            "start" => parse_time(&s.value).map(|t| start = Some(t)),
            "end" => parse_time(&s.value).map(|t| end = Some(t)),
            _ => parse_timezone(&s.value).map(|z| tz = Some(z)),
        };
        if let Err(e) = result {
            r.error(s.loc, &path, e);
        }
    }
    let (start, end) = (start?, end?);
    if start == end {
        r.error(
            Loc::of(hours),
            &path,
            "start and end are equal; the window would be empty",
        );
        return None;
    }
    Some(Schedule::new(start, end, tz?, days))
}

/// The budget, and whether it named its time zone.
fn budget(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<(Budget, bool)> {
    let entries = r.mapping(
        node,
        path,
        Some(&["daily_usd", "monthly_usd", "action_on_exceed", "timezone"]),
    )?;
    let mut budget = Budget {
        daily_usd: None,
        monthly_usd: None,
        action_on_exceed: ExceedAction::Deny,
        timezone: chrono_tz::UTC,
    };
    let mut named_zone = false;
    for (k, value) in &entries {
        let path = join_path(path, &k.value);
        match k.value.as_str() {
            "daily_usd" => budget.daily_usd = Some(r.amount(value, &path)?),
            "monthly_usd" => budget.monthly_usd = Some(r.amount(value, &path)?),
            "timezone" => {
                let s = r.string(value, &path)?;
                match parse_timezone(&s.value) {
                    Ok(tz) => {
                        budget.timezone = tz;
                        named_zone = true;
                    }
                    Err(e) => {
                        r.error(s.loc, &path, e);
                        return None;
                    }
                }
            }
            _ => {
                let s = r.string(value, &path)?;
                budget.action_on_exceed = match s.value.as_str() {
                    "deny" => ExceedAction::Deny,
                    "pending" => ExceedAction::Pending,
                    "alert" => ExceedAction::Alert,
                    other => {
                        r.error(
                            s.loc,
                            &path,
                            format!("expected deny, pending or alert, found \"{other}\""),
                        );
                        return None;
                    }
                };
            }
        }
    }
    Some((budget, named_zone))
}

fn data(r: &mut Reader<'_>, node: &Node<'_>, path: &str) -> Option<DataRules> {
    let entries = r.mapping(node, path, Some(&["credential_action", "patterns"]))?;
    let mut rules = DataRules {
        credential_action: CredentialAction::Redact,
        patterns: Vec::new(),
    };
    for (k, value) in &entries {
        let path = join_path(path, &k.value);
        if k.value == "credential_action" {
            let s = r.string(value, &path)?;
            rules.credential_action = match s.value.as_str() {
                "block" => CredentialAction::Block,
                "redact" => CredentialAction::Redact,
                "alert" => CredentialAction::Alert,
                other => {
                    r.error(
                        s.loc,
                        &path,
                        format!("expected block, redact or alert, found \"{other}\""),
                    );
                    return None;
                }
            };
            continue;
        }
        for (i, item) in r.sequence(value, &path)?.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let fields = r.mapping(item, &item_path, Some(&["name", "regex"]))?;
            r.require(item, &item_path, &fields, &["name", "regex"]);
            let (mut name, mut regex) = (None, None);
            for (k, v) in &fields {
                let field_path = join_path(&item_path, &k.value);
                let s = r.string(v, &field_path)?;
                if k.value == "name" {
                    if CustomPattern::valid_name(&s.value) {
                        name = Some(s.value);
                    } else {
                        r.error(
                            s.loc,
                            &field_path,
                            format!(
                                "invalid pattern name \"{}\": names are letters, digits, '_' and '-'",
                                s.value
                            ),
                        );
                    }
                } else if let Err(why) = crate::pattern::check_regex(&s.value) {
                    r.error(s.loc, &field_path, format!("invalid regex: {why}"));
                } else if CustomPattern::matches_empty(&s.value) {
                    r.error(
                        s.loc,
                        &field_path,
                        "invalid regex: it can match the empty string, which would redact \
                         between every two characters",
                    );
                } else {
                    regex = Some(s.value);
                }
            }
            if let (Some(name), Some(regex)) = (name, regex) {
                rules.patterns.push(CustomPattern { name, regex });
            }
        }
    }
    Some(rules)
}
