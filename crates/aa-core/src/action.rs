//! Actions: what an agent asks permission to do.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// One action an agent wants to perform. The JSON form is tagged by `type`, e.g.
/// `{"type":"tool_call","tool":"shell","args":{"command":"ls"}}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// A call of one of the agent's tools, with its JSON arguments.
    ToolCall {
        /// The tool's name.
        tool: String,
        /// The arguments as JSON (an object for most tools).
        #[serde(default = "empty_object")]
        args: serde_json::Value,
    },
    /// A call of a (paid) language model.
    LlmCall {
        /// The model name, e.g. `gpt-4o-mini`.
        model: String,
        /// Estimated tokens the call will use, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token_estimate: Option<u64>,
    },
    /// An outbound network connection.
    Network {
        /// The host name or IP address.
        host: String,
        /// The port, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<u16>,
        /// The HTTP method, for HTTP calls.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
    },
    /// A file-system operation.
    File {
        /// What is done to the file.
        operation: FileOperation,
        /// The path as the agent gave it (policy normalises it).
        path: String,
    },
    /// Starting a process.
    ProcessExec {
        /// The program, as given (a name or a path).
        command: String,
        /// Its arguments.
        #[serde(default)]
        args: Vec<String>,
    },
    /// Spawning a child agent.
    AgentSpawn {
        /// The child's id, if already chosen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        child_id: Option<String>,
        /// Why the child is spawned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl Action {
    /// Parses an action's JSON form.
    pub fn from_json(text: &str) -> Result<Self, CoreError> {
        let action: Action =
            serde_json::from_str(text).map_err(|e| CoreError::json("action", &e))?;
        action.validate()?;
        Ok(action)
    }

    /// Converts an already parsed JSON value (for example from a YAML test file).
    pub fn from_value(value: serde_json::Value) -> Result<Self, CoreError> {
        let action: Action =
            serde_json::from_value(value).map_err(|e| CoreError::json("action", &e))?;
        action.validate()?;
        Ok(action)
    }

    /// The action's canonical JSON: what an approval is bound to (keyed by the runtime, since
    /// the action may hold a secret its stored, redacted form hides), so it cannot authorise a
    /// different action.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // An action always serialises: its fields are strings, numbers and JSON values.
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        crate::canonical::canonical(&value)
    }

    /// Checks the invariants serde cannot express.
    pub fn validate(&self) -> Result<(), CoreError> {
        let (field, value) = match self {
            Action::ToolCall { tool, .. } => ("action.tool", tool),
            Action::LlmCall { model, .. } => ("action.model", model),
            Action::Network { host, .. } => ("action.host", host),
            Action::File { path, .. } => ("action.path", path),
            Action::ProcessExec { command, .. } => ("action.command", command),
            Action::AgentSpawn { .. } => return Ok(()),
        };
        if value.is_empty() {
            return Err(CoreError::InvalidField {
                field,
                message: "must not be empty".into(),
            });
        }
        Ok(())
    }

    /// Which kind of action this is.
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::ToolCall { .. } => ActionKind::ToolCall,
            Action::LlmCall { .. } => ActionKind::LlmCall,
            Action::Network { .. } => ActionKind::Network,
            Action::File { .. } => ActionKind::File,
            Action::ProcessExec { .. } => ActionKind::ProcessExec,
            Action::AgentSpawn { .. } => ActionKind::AgentSpawn,
        }
    }
}

/// The kinds of [`Action`], named as in the JSON `type` tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// [`Action::ToolCall`].
    ToolCall,
    /// [`Action::LlmCall`].
    LlmCall,
    /// [`Action::Network`].
    Network,
    /// [`Action::File`].
    File,
    /// [`Action::ProcessExec`].
    ProcessExec,
    /// [`Action::AgentSpawn`].
    AgentSpawn,
}

impl ActionKind {
    /// The JSON tag.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::ToolCall => "tool_call",
            ActionKind::LlmCall => "llm_call",
            ActionKind::Network => "network",
            ActionKind::File => "file",
            ActionKind::ProcessExec => "process_exec",
            ActionKind::AgentSpawn => "agent_spawn",
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a file action does.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileOperation {
    /// Reading a file or listing a folder.
    Read,
    /// Creating, writing or appending.
    Write,
    /// Deleting.
    Delete,
}

impl FileOperation {
    /// The JSON name, also the policy key under `files`.
    pub fn as_str(self) -> &'static str {
        match self {
            FileOperation::Read => "read",
            FileOperation::Write => "write",
            FileOperation::Delete => "delete",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_ignore_key_order_and_tell_actions_apart() {
        let a = Action::from_json(r#"{"type":"tool_call","tool":"shell","args":{"a":1,"b":"x"}}"#);
        let b = Action::from_json(r#"{"args":{"b":"x","a":1},"tool":"shell","type":"tool_call"}"#);
        let c = Action::from_json(r#"{"type":"tool_call","tool":"shell","args":{"a":2,"b":"x"}}"#);
        let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
        assert_eq!(a.canonical_bytes(), b.canonical_bytes());
        assert_ne!(a.canonical_bytes(), c.canonical_bytes());
    }

    #[test]
    fn parses_every_documented_shape() {
        let cases = [
            (
                r#"{"type":"tool_call","tool":"shell","args":{"command":"ls"}}"#,
                ActionKind::ToolCall,
            ),
            (
                r#"{"type":"network","host":"api.openai.com","port":443}"#,
                ActionKind::Network,
            ),
            (
                r#"{"type":"file","operation":"read","path":"/etc/passwd"}"#,
                ActionKind::File,
            ),
            (
                r#"{"type":"llm_call","model":"gpt-4o"}"#,
                ActionKind::LlmCall,
            ),
            (r#"{"type":"agent_spawn"}"#, ActionKind::AgentSpawn),
            (
                r#"{"type":"process_exec","command":"git","args":["status"]}"#,
                ActionKind::ProcessExec,
            ),
        ];
        for (json, kind) in cases {
            let action = Action::from_json(json).unwrap();
            assert_eq!(action.kind(), kind, "{json}");
            let back = serde_json::to_string(&action).unwrap();
            assert_eq!(Action::from_json(&back).unwrap(), action);
        }
    }

    #[test]
    fn tool_call_args_default_to_an_empty_object() {
        let action = Action::from_json(r#"{"type":"tool_call","tool":"t"}"#).unwrap();
        assert_eq!(
            action,
            Action::ToolCall {
                tool: "t".into(),
                args: empty_object()
            }
        );
    }

    #[test]
    fn bad_actions_say_what_is_wrong() {
        let err = Action::from_json(r#"{"type":"teleport"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `teleport`"), "{err}");
        let err = Action::from_json(r#"{"type":"file","operation":"chmod","path":"/x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `chmod`"), "{err}");
        let err = Action::from_json(r#"{"type":"tool_call","tool":""}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "invalid action.tool: must not be empty");
        let err = Action::from_json("not json").unwrap_err().to_string();
        assert!(err.starts_with("invalid action:"), "{err}");
    }
}
