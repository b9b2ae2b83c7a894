"""``Decision``: what the runtime (or, when it could not answer, the mode) decided."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from . import _native

DecisionName = Literal["allow", "deny", "pending"]
Mode = Literal["enforce", "observe", "disabled"]
MODES: tuple[Mode, ...] = ("enforce", "observe", "disabled")
DECISIONS: tuple[DecisionName, ...] = ("allow", "deny", "pending")


class Decision(NamedTuple):
    """One decision on one action (immutable: a named tuple, cheap to make on every check).

    ``rule`` names what decided (``tools.shell.requires_approval_if``, ``default``, or
    ``client`` when the runtime did not answer and the mode did), ``policy`` the deciding
    policy as ``name@version``. ``resolved_locally`` is true when the client decided.
    """

    decision: DecisionName
    rule: str
    reason: str
    policy: str
    mode: Mode
    approval_id: str | None = None
    resolved_locally: bool = False

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @classmethod
    def local(cls, decision: DecisionName, mode: Mode, reason: str) -> Decision:
        """A decision the SDK made without the runtime."""
        return cls(decision, "client", reason, "", mode, None, True)

    @classmethod
    def from_native(cls, outcome: _native.Outcome) -> Decision:
        decision = outcome.decision
        mode = outcome.mode
        if decision not in DECISIONS or mode not in MODES:
            raise ValueError(f"unknown decision {decision!r} under {mode!r}")
        return cls(
            decision,
            outcome.rule,
            outcome.reason,
            outcome.policy,
            mode,
            outcome.approval_id,
            outcome.resolved_locally,
        )
