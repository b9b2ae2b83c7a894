"""The exceptions of the public API. Native errors never escape as such: each is turned into
one of these (or a ``ValueError`` for a bad argument)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .decision import Decision


class AssemblyError(Exception):
    """Base of every error this package raises on its own."""


class PolicyDenied(AssemblyError):
    """Under ``enforce``, an action was not allowed: denied, or pending an approval that did
    not come in time. ``decision`` has the rule, reason and policy that decided."""

    def __init__(self, what: str, decision: Decision) -> None:
        self.decision = decision
        self.rule = decision.rule
        self.reason = decision.reason
        self.policy = decision.policy
        super().__init__(f"{what} denied by {decision.rule}: {decision.reason}")


class ToolDenied(PolicyDenied):
    """A tool call was not allowed; the tool did not run."""

    def __init__(self, tool_name: str, decision: Decision) -> None:
        self.tool_name = tool_name
        super().__init__(f"tool {tool_name!r}", decision)


class LlmCallDenied(PolicyDenied):
    """A model call was not allowed; the request was not sent."""

    def __init__(self, model: str, decision: Decision) -> None:
        self.model = model
        super().__init__(f"model call to {model!r}", decision)


class RegistrationError(AssemblyError):
    """Under ``enforce``, the agent could not be registered with the runtime."""


class ReportError(AssemblyError):
    """Under ``enforce``, the runtime did not take an event (it was not recorded)."""


class NativeExtensionMissing(AssemblyError, ImportError):
    """The package's compiled part is not installed: a packaging problem, not a runtime one."""
